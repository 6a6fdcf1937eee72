"""Pure flow-matching math: sigma samplers, shifts, interpolation, and the one loss over a family's streams.

Nothing here knows a model family or the training loop; everything is a function of tensors.
"""

from cinetune.objectives.flow import flow_loss, sample_latents, sample_sigmas, shift_sigmas, to_device
from cinetune.objectives.loss import LossOutput, LossStream, ModelInputs, compute_loss

__all__ = [
    "LossOutput",
    "LossStream",
    "ModelInputs",
    "compute_loss",
    "flow_loss",
    "sample_latents",
    "sample_sigmas",
    "shift_sigmas",
    "to_device",
]
