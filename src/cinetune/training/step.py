"""One micro-batch's loss: the family's forward passes through the model, combined by the one loss."""

from __future__ import annotations

from dataclasses import replace

import torch

from cinetune.models.base import ModelFamily
from cinetune.objectives import LossOutput, compute_loss, to_device
from cinetune.training.batches import Batch


def step_loss(
    family: ModelFamily,
    model: torch.nn.Module,
    batch: Batch,
    generator: torch.Generator,
    sigma_sampler: str,
    device: torch.device,
    dtype: torch.dtype,
) -> LossOutput:
    """The family turns the batch into forward passes and loss streams; the model runs each; `compute_loss`
    reduces them. Random draws happen on the CPU generator, so a run is reproducible across devices; the
    cached latents and caption embeddings go to the device first, by non-blocking copies."""
    config = getattr(model, "module", model).config
    batch = replace(
        batch,
        tensors={k: to_device(v, device) for k, v in batch.tensors.items()},
        # counts that decide the forward passes on the host (Kandinsky's caption lengths) stay there
        text={k: v if k.endswith("_lengths") else to_device(v, device) for k, v in batch.text.items()},
    )
    inputs = family.training_inputs(batch, generator, sigma_sampler, device, dtype, config)
    outputs = [model(**forward.kwargs) for forward in inputs]
    return compute_loss(inputs, outputs)


def training_loss(
    family: ModelFamily,
    model: torch.nn.Module,
    batch: Batch,
    generator: torch.Generator,
    sigma_sampler: str,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The scalar to backpropagate (see `step_loss`)."""
    return step_loss(family, model, batch, generator, sigma_sampler, device, dtype).total
