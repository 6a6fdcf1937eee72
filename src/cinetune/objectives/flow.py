"""Flow-matching math as pure functions. sigma = 1 is pure noise; x_t = (1 - sigma) x0 + sigma eps."""

from __future__ import annotations

import torch


def sample_sigmas(batch_size: int, mu: float, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """(batch_size,) training sigmas in (0, 1).

    shifted_logit_normal: sigmoid(n), n ~ N(mu, 1), as both LTX trainers draw them (mu from the token count).
    uniform: U(0, 1).
    """
    if sampler == "shifted_logit_normal":
        return torch.sigmoid(torch.randn(batch_size, generator=generator) + mu)
    if sampler == "uniform":
        return torch.rand(batch_size, generator=generator)
    raise ValueError(f"unknown sigma sampler '{sampler}'")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Static shift s * sigma / (1 + (s - 1) * sigma): more of the draws at high noise for s > 1.

    For a logit-normal draw this is the same as adding ln(s) to its centre: sigmoid(n + ln s).
    """
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between predicted and target velocity; with a (B, N) token mask: mean(L * m) / mean(m)."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype).unsqueeze(-1).expand_as(err)
    return (err * m).sum() / m.sum().clamp(min=1.0)


def first_frame_mask(
    batch_size: int,
    num_tokens: int,
    frame_tokens: int,
    probability: float,
    generator: torch.Generator,
    per_batch: bool = False,
) -> torch.Tensor:
    """(B, N) bool: True on the first `frame_tokens` tokens (latent frame 0) of the samples drawn for
    first-frame conditioning. `per_batch`: one draw decides for the whole batch (LTX-Video-Trainer); else one
    draw per sample (the LTX-2 trainer). A one-frame clip has nothing left to denoise: never conditioned.
    """
    mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool)
    if probability <= 0 or frame_tokens >= num_tokens:
        return mask
    draws = torch.rand(1 if per_batch else batch_size, generator=generator)
    chosen = (draws < probability).expand(batch_size)
    mask[chosen, :frame_tokens] = True
    return mask


def with_clean_tokens(
    x0: torch.Tensor, noisy: torch.Tensor, sigmas: torch.Tensor, clean: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's view of noisy tokens (B, N, C) at `sigmas` (B,): conditioning tokens (`clean`, (B, N)) put
    back to x0 with sigma 0, so the sigma becomes per token (B, N); without clean tokens, as they are."""
    if clean is None:
        return noisy, sigmas
    per_token = sigmas.view(-1, 1).expand(x0.shape[0], x0.shape[1]).to(x0.dtype)
    return torch.where(clean.unsqueeze(-1), x0, noisy), per_token * (~clean).to(per_token.dtype)


def noisy_and_target(
    x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, clean: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens (B, N, C) -> (noisy input, velocity target eps - x0, per-token sigma (B, N)).

    `clean` (B, N) bool marks conditioning tokens: kept as x0 with sigma 0 (the families scale it to their
    timestep: 1000 sigma, rounded for LTX-Video).
    """
    s = sigmas.view(-1, 1, 1).to(x0.dtype)
    noisy = (1 - s) * x0 + s * noise
    if clean is None:
        clean = torch.zeros(x0.shape[:2], dtype=torch.bool, device=x0.device)
    noisy, per_token = with_clean_tokens(x0, noisy, sigmas, clean)
    return noisy, noise - x0, per_token


def sample_latents(
    latents: torch.Tensor, latents_std: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """Draw x0 from the cached (normalized) posterior: mean + std * eps. Without a std, the mean itself."""
    if latents_std is None:
        return latents
    eps = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    return latents + latents_std * to_device(eps, latents.device).to(latents.dtype)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU tensor (a draw of the CPU generator, a cached latent) on `device` without stalling the host: to a
    GPU through pinned memory with a non-blocking copy, which queues behind the running kernels instead of
    waiting for them (a copy from pageable memory is synchronous). Draws stay on the CPU generator, so a run
    is reproducible across devices and its generator state is all a checkpoint needs."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
