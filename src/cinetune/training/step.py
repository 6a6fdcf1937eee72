"""The flow-matching loss of a single video stream: what every family without extra modalities trains."""

from __future__ import annotations

import torch

from cinetune.models.base import ModelFamily
from cinetune.training.batches import Batch
from cinetune.training.flow import flow_loss, sample_latents, sample_sigmas


def single_stream_flow_loss(
    family: ModelFamily,
    model: torch.nn.Module,
    batch: Batch,
    generator: torch.Generator,
    sigma_sampler: str,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Draw x0 from the cached posterior, noise and sigmas from `generator`; return the masked velocity MSE.

    Random draws happen on the CPU generator, so a run is reproducible across devices and resumable.
    """
    x0 = sample_latents(batch.latents, batch.latents_std, generator)
    noise = torch.randn(x0.shape, generator=generator)
    mu = family.shift_mu(family.num_tokens(x0.shape))
    sigmas = sample_sigmas(x0.shape[0], mu, sigma_sampler, generator)
    inputs = family.prepare_inputs(
        x0.to(device), noise.to(device), sigmas.to(device), batch.text, batch.frame_rate, dtype
    )
    pred = model(**inputs.kwargs)[0]
    return flow_loss(pred, inputs.target, inputs.loss_mask)
