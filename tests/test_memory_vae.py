"""VAE memory options on the LTX-Video, LTX-2 and Kandinsky 5 (HunyuanVideo) VAEs.

Patch convolution and temporal roll give the plain latents (up to floating-point summation order: measured
max abs difference 0 to 4.5e-7 on latents of std ~1); tiling blends tiles at the seams, so its latents differ
(TILING below: measured on the random tiny VAEs, the worst case; trained VAEs are smoother).
"""

from __future__ import annotations

import pytest
import torch

from cinetune.memory.vae import apply_vae_memory, disable_patch_conv, enable_patch_conv, enable_temporal_roll


def _vae(family: str) -> torch.nn.Module:
    if family == "ltxvideo":
        from cinetune.models.ltxvideo.tiny import tiny_components

        return tiny_components()["vae"].eval()
    if family == "ltxvideo2":
        from cinetune.models.ltxvideo2.tiny import tiny_components

        return tiny_components()["vae"].eval()
    from cinetune.models.kandinsky5.tiny import tiny_components

    return tiny_components()["vae"].eval()


def _pixels(frames: int, size: int = 64) -> torch.Tensor:
    coarse = torch.rand(1, 3, frames, 4, 4, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(coarse, size=(frames, size, size), mode="trilinear")
    noise = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    return (0.8 * smooth + 0.2 * noise) * 2 - 1


@pytest.mark.parametrize("family", ["ltxvideo", "ltxvideo2", "kandinsky5"])
def test_patch_conv_gives_the_plain_latents_and_decode(family: str) -> None:
    vae = _vae(family)
    pixels = _pixels(17)
    with torch.no_grad():
        plain = vae.encode(pixels).latent_dist.mean
        decoded = vae.decode(plain, return_dict=False)[0] if family != "ltxvideo" else None
        assert enable_patch_conv(vae, chunk_bytes=1) > 10  # one output frame per chunk: the hardest case
        torch.testing.assert_close(vae.encode(pixels).latent_dist.mean, plain, atol=1e-5, rtol=0)
        if decoded is not None:  # the decoders' convolutions pad both ends in time (non-causal): chunked too
            torch.testing.assert_close(vae.decode(plain, return_dict=False)[0], decoded, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["ltxvideo", "ltxvideo2"])
def test_temporal_roll_gives_the_plain_latents(family: str) -> None:
    vae = _vae(family)
    pixels = _pixels(33)  # 5 latent frames: a first chunk of 1 + 8 frames, then four of 8
    with torch.no_grad():
        plain = vae.encode(pixels).latent_dist.mean
        enable_temporal_roll(vae)
        rolled = vae.encode(pixels).latent_dist.mean
        torch.testing.assert_close(rolled, plain, atol=1e-5, rtol=0)
        enable_patch_conv(vae, chunk_bytes=1)  # both at once: the roll's chunks, unchunked further
        torch.testing.assert_close(vae.encode(pixels).latent_dist.mean, plain, atol=1e-5, rtol=0)


def test_temporal_roll_is_only_built_for_the_ltx_vaes() -> None:
    with pytest.raises(ValueError, match="LTX VAEs"):
        enable_temporal_roll(_vae("kandinsky5"))


# Measured (256 px, 9 frames, tiles 192 px every 128 px): mean |tiled - plain| / std(plain) and correlation.
TILING = {"ltxvideo": (0.48, 0.78), "ltxvideo2": (0.14, 0.98), "kandinsky5": (0.29, 0.84)}


@pytest.mark.parametrize("family", list(TILING))
def test_tiling_difference_is_measured(family: str) -> None:
    vae = _vae(family)
    pixels = _pixels(9, size=256)
    with torch.no_grad():
        plain = vae.encode(pixels).latent_dist.mean
        vae.enable_tiling(
            tile_sample_min_height=192,
            tile_sample_min_width=192,
            tile_sample_stride_height=128,
            tile_sample_stride_width=128,
        )
        tiled = vae.encode(pixels).latent_dist.mean
    error = float((tiled - plain).abs().mean() / plain.std())
    correlation = float(torch.corrcoef(torch.stack([tiled.flatten(), plain.flatten()]))[0, 1])
    expected_error, expected_correlation = TILING[family]
    assert 0 < error < expected_error + 0.05, error  # seams blend: close, not equal
    assert correlation > expected_correlation - 0.05, correlation


def test_apply_vae_memory_follows_the_config() -> None:
    from cinetune.config import TrainConfig

    vae = _vae("ltxvideo2")
    cfg = TrainConfig(
        model_family="ltxvideo2", vae_enable_patch_conv=True, vae_enable_tiling=True, vae_enable_slicing=True
    )
    apply_vae_memory(vae, cfg)
    assert vae.use_tiling and vae.use_slicing
    assert sum(getattr(m, "_cinetune_patch", False) for m in vae.modules()) > 10
    disable_patch_conv(vae)
    assert not any(getattr(m, "_cinetune_patch", False) for m in vae.modules())
