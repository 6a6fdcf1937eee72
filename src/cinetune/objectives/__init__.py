"""Pure flow-matching math: sigma samplers, shifts, interpolation, and the one loss over a family's streams.

Nothing here knows a model family or the training loop; everything is a function of tensors.
"""

from cinetune.objectives.flow import (
    first_frame_mask,
    flow_loss,
    noisy_and_target,
    sample_latents,
    sample_sigmas,
    shift_sigmas,
    to_device,
    with_clean_tokens,
)
from cinetune.objectives.loss import FlowState, LossOutput, LossStream, ModelInputs, compute_loss

__all__ = [
    "FlowState",
    "LossOutput",
    "LossStream",
    "ModelInputs",
    "compute_loss",
    "first_frame_mask",
    "flow_loss",
    "noisy_and_target",
    "sample_latents",
    "sample_sigmas",
    "shift_sigmas",
    "to_device",
    "with_clean_tokens",
]
