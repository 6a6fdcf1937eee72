"""Kandinsky 5 transformer inputs as pure functions (TRAINING_FACTS section 3).

Latents are cached as (C, F, H, W) like every family's; the transformer reads channels-last
(B, F, H, W, 33): 16 noisy channels, 16 condition channels, 1 mask channel. Text-to-video fills condition
and mask with zeros. Image-to-video follows Kandinsky5I2VPipeline: the clean image latent replaces the
noisy channels of latent frame 0, condition channels stay zero, the mask is 1 on frame 0, one scalar
timestep for the whole clip, and frame 0 is never stepped (so it carries no loss here).
"""

from __future__ import annotations

import math

import torch

# Kandinsky's training recipe shifts sigma by scheduler_scale 5: s*sigma / (1 + (s - 1) * sigma). A static
# shift of sigmoid(n) by s is sigmoid(n + ln s), so the logit-normal centre is ln 5 at every resolution.
SCHEDULER_SCALE = 5.0
SHIFT_MU = math.log(SCHEDULER_SCALE)


# RoPE `scale_factor` (divides the visual RoPE angles per axis: time, height, width). The official configs set
# one constant per model, whatever the size: kandinsky-5 configs/*.yaml `metrics.scale_factor` is (1, 2, 2)
# in every Lite config and every Pro "_sd" config, (1, 3.16, 3.16) in the Pro "_hd" ones (NABLA, resolution
# 1024); the Lite LoRA recipe's `common.scale_factor` is (1, 2, 2) too. diffusers' pipelines instead pick
# (1, 2, 2) only when both sides are in [480, 854] pixels, so e.g. a 672x384 bucket would get (1, 3.16, 3.16).
ROPE_SCALE_SD = (1.0, 2.0, 2.0)
ROPE_SCALE_HD = (1.0, 3.16, 3.16)


def visual_rope_positions(latent_shape: torch.Size, device: torch.device) -> list[torch.Tensor]:
    """[arange(F), arange(H / 2), arange(W / 2)] for latents (B, C, F, H, W): patch (1, 2, 2) grid."""
    _, _, frames, height, width = latent_shape
    return [
        torch.arange(frames, device=device),
        torch.arange(height // 2, device=device),
        torch.arange(width // 2, device=device),
    ]


def to_channels_last(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, F, H, W, C)."""
    return latents.permute(0, 2, 3, 4, 1)


def visual_input(noisy: torch.Tensor, image_latents: torch.Tensor | None) -> torch.Tensor:
    """noisy (B, C, F, H, W) [+ image (B, C, 1, H, W)] -> model input (B, F, H, W, 2C + 1).

    Without an image: condition and mask channels are zero (text-to-video). With one: frame 0 of the noisy
    channels is the clean image latent and its mask is 1 (image-to-video, as Kandinsky5I2VPipeline).
    """
    noisy = noisy.clone()
    mask = torch.zeros_like(noisy[:, :1])
    if image_latents is not None:
        noisy[:, :, :1] = image_latents.to(noisy.dtype)
        mask[:, :, :1] = 1.0
    return to_channels_last(torch.cat([noisy, torch.zeros_like(noisy), mask], dim=1))


def token_loss_mask(latent_shape: torch.Size, image_conditioned: bool, device: torch.device) -> torch.Tensor:
    """(B, F*H*W) bool: every token, or every token but latent frame 0's when an image conditions it."""
    batch, _, frames, height, width = latent_shape
    mask = torch.ones(batch, frames, height * width, dtype=torch.bool, device=device)
    if image_conditioned:
        mask[:, 0] = False
    return mask.flatten(1)
