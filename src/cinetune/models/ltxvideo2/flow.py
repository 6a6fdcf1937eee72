"""LTX-2 training math as pure functions: sigma sampling, first-frame conditioning, per-modality masked loss.

Facts (TRAINING_FACTS.md section 2, from the official trainer's `timestep_samplers.py` and `flexible`
strategy):
sigma = sigmoid(n), n ~ N(mu(N), 1), stretched so the 0.5th..99.9th percentiles of that distribution span [0,
1],
values below eps reflected around eps, clamped to [0, 1]; 10% of draws replaced by U(eps, 1). Each modality
draws
its own sigma with mu from its own token count. x_t = (1 - sigma) x0 + sigma eps, target eps - x0; the model
gets
timestep = 1000 sigma, per token. First-frame conditioning keeps the first H*W video tokens clean, gives them
timestep 0 and no loss. Loss per sample = masked video MSE + masked audio MSE (1:1), then the batch mean.
"""

from __future__ import annotations

import torch

from cinetune.models.ltxvideo.family import ltx_mu

# First-frame conditioning and the noisy input are shared with LTX-Video (cinetune.objectives).
from cinetune.objectives import first_frame_mask, noisy_and_target

__all__ = ["first_frame_mask", "noisy_and_target", "sample_sigmas", "stretched_logit_normal"]

_HIGH_PERCENTILE = 3.0902  # 99.9th percentile of N(0, 1)
_LOW_PERCENTILE = -2.5758  # 0.5th percentile


def stretched_logit_normal(
    batch_size: int,
    mu: float,
    generator: torch.Generator,
    std: float = 1.0,
    eps: float = 1e-3,
    uniform_prob: float = 0.1,
) -> torch.Tensor:
    """(batch_size,) sigmas in [0, 1]: the LTX-2 trainer's shifted logit-normal sampler, mu = ltx_mu(N)."""
    normal = torch.randn(batch_size, generator=generator) * std + mu
    sigma = torch.sigmoid(normal)
    high = torch.sigmoid(torch.tensor(mu + _HIGH_PERCENTILE * std))
    low = torch.sigmoid(torch.tensor(mu + _LOW_PERCENTILE * std))
    stretched = (sigma - low) / (high - low)
    stretched = torch.where(stretched >= eps, stretched, 2 * eps - stretched).clamp(0.0, 1.0)
    uniform = (1 - eps) * torch.rand(batch_size, generator=generator) + eps
    pick = torch.rand(batch_size, generator=generator)
    return torch.where(pick > uniform_prob, stretched, uniform)


def sample_sigmas(batch_size: int, num_tokens: int, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """sampler 'shifted_logit_normal' (the LTX-2 trainer's, mu from num_tokens) or 'uniform' U(0, 1)."""
    if sampler == "shifted_logit_normal":
        return stretched_logit_normal(batch_size, ltx_mu(num_tokens), generator)
    if sampler == "uniform":
        return torch.rand(batch_size, generator=generator)
    raise ValueError(f"unknown sigma sampler '{sampler}'")
