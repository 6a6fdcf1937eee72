"""VAE memory while caching and decoding: patch convolution, temporal roll, tiling, slicing.

Patch convolution (`vae_enable_patch_conv`) replaces the forward of every causal 3D convolution of one VAE
instance (LTX-Video's `LTXVideoCausalConv3d`, LTX-2's `LTX2VideoCausalConv3d`, the HunyuanVideo VAE's
`HunyuanVideoCausalConv3d` that Kandinsky 5 uses) by one that computes its output a few frames at a time into
a preallocated tensor. Each chunk reads exactly the input frames its outputs depend on, with the convolution's
own replicate padding in time (index clamping) and its own spatial padding, so the result is the plain
convolution's up to summation order. It saves the padded copy of the whole clip and the convolution's working
memory over all frames.

Temporal roll (`vae_enable_temporal_roll`, the LTX VAEs) goes further: the whole encoder runs on a few latent
frames' worth of input at a time (1 + 8c frames first, then 8c), and every causal convolution carries the
input frames its next outputs still need from one chunk to the next (the "roll"); the space-to-depth
downsamplers prepend their first frames on the first chunk only. Every layer of these encoders is causal in
time or acts per frame (per-channel RMS norms, 1x1 shortcuts), so the latents are the plain encoder's, while
no activation of the whole clip is ever held. The HunyuanVideo VAE normalizes over all frames (GroupNorm) and
attends across frames in its mid block: a chunked encode cannot give its latents, so `memory.rules` rejects
it there.

Tiling and slicing are diffusers' own `enable_tiling()` / `enable_slicing()`.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_BYTES = 256 * 2**20
PATCH_CONV_CLASSES = ("LTXVideoCausalConv3d", "LTX2VideoCausalConv3d", "HunyuanVideoCausalConv3d")
DOWNSAMPLER_CLASSES = ("LTXVideoDownsampler3d", "LTX2VideoDownsampler3d")
TEMPORAL_ROLL_VAES = ("AutoencoderKLLTXVideo", "AutoencoderKLLTX2Video")


def apply_vae_memory(vae: torch.nn.Module, cfg: Any) -> torch.nn.Module:
    """The config's VAE memory options on one VAE instance (nothing is patched globally)."""
    if cfg is None:
        return vae
    if cfg.vae_enable_patch_conv:
        enable_patch_conv(vae)
    if cfg.vae_enable_temporal_roll:
        enable_temporal_roll(vae)
    if cfg.vae_enable_tiling:
        vae.enable_tiling()
    if cfg.vae_enable_slicing:
        vae.enable_slicing()
    return vae


# ---- the time axis of a causal convolution ---------------------------------------------------------------
def _time_padding(module: torch.nn.Module, kwargs: dict[str, Any]) -> tuple[int, int]:
    """(frames repeated before the first, after the last) that the convolution's forward pads in time."""
    name = type(module).__name__
    if name == "HunyuanVideoCausalConv3d":
        return module.time_causal_padding[4], module.time_causal_padding[5]
    kernel = module.kernel_size[0]
    causal = module.is_causal if name == "LTXVideoCausalConv3d" else kwargs.get("causal", True)
    return (kernel - 1, 0) if causal else ((kernel - 1) // 2, (kernel - 1) // 2)


def _spatial(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The spatial padding the forward applies before the convolution (the LTX ones pad inside Conv3d)."""
    if type(module).__name__ != "HunyuanVideoCausalConv3d":
        return lambda x: x
    w0, w1, h0, h1, _, _ = module.time_causal_padding
    return lambda x: F.pad(x, (w0, w1, h0, h1, 0, 0), mode=module.pad_mode)


def _frames(x: torch.Tensor, first: int, stop: int, front: int) -> torch.Tensor:
    """Padded-input frames [first, stop) with replicate padding: padded index p is input clamp(p - front)."""
    index = (torch.arange(first, stop, device=x.device) - front).clamp(0, x.shape[2] - 1)
    return x.index_select(2, index)


def _chunked_forward(self: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    if args:
        kwargs["causal"] = args[0]
    roll = getattr(self, "_cinetune_roll", None)
    if roll is not None and roll.active:
        return roll.convolve(self, hidden_states, kwargs)
    if not getattr(self, "_cinetune_patch", False):
        return self._cinetune_plain_forward(hidden_states, **kwargs)
    conv = self.conv
    front, back = _time_padding(self, kwargs)
    kernel_t, stride_t, dilation_t = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    padded = hidden_states.shape[2] + front + back
    out_frames = (padded - dilation_t * (kernel_t - 1) - 1) // stride_t + 1
    frame_bytes = hidden_states[:, :, :1].numel() * hidden_states.element_size()
    per_chunk = max(1, self._cinetune_chunk_bytes // max(1, frame_bytes) // stride_t)
    if out_frames <= per_chunk:
        return self._cinetune_plain_forward(hidden_states, **kwargs)
    spatial, out = _spatial(self), None
    for first in range(0, out_frames, per_chunk):
        last = min(out_frames, first + per_chunk)
        piece = _frames(
            hidden_states, first * stride_t, (last - 1) * stride_t + dilation_t * (kernel_t - 1) + 1, front
        )
        result = conv(spatial(piece))
        if out is None:
            out = result.new_empty((*result.shape[:2], out_frames, *result.shape[3:]))
        out[:, :, first:last] = result
        del piece, result
    return out


def _wrap_convs(vae: torch.nn.Module) -> list[torch.nn.Module]:
    convs = []
    for module in vae.modules():
        if type(module).__name__ in PATCH_CONV_CLASSES:
            if not hasattr(module, "_cinetune_plain_forward"):
                module._cinetune_plain_forward = module.forward
                module.forward = types.MethodType(_chunked_forward, module)
            convs.append(module)
    return convs


def enable_patch_conv(vae: torch.nn.Module, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Chunk every causal 3D convolution of `vae` along time, about `chunk_bytes` of input per chunk; returns
    how many were wrapped. Calling it again only updates the chunk size."""
    convs = _wrap_convs(vae)
    for module in convs:
        module._cinetune_patch = True
        module._cinetune_chunk_bytes = int(chunk_bytes)
    return len(convs)


def disable_patch_conv(vae: torch.nn.Module) -> None:
    for module in vae.modules():
        if hasattr(module, "_cinetune_plain_forward"):
            module._cinetune_patch = False


# ---- temporal roll ---------------------------------------------------------------------------------------
class _Roll:
    """The carried state of one streamed encode: each convolution's unconsumed padded input frames."""

    def __init__(self) -> None:
        self.active = False
        self.first = True
        self.tails: dict[int, torch.Tensor] = {}

    def convolve(self, module: torch.nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        front, back = _time_padding(module, kwargs)
        if back:
            raise RuntimeError(
                "temporal roll needs causal convolutions (a non-causal one pads after the last frame)"
            )
        conv = module.conv
        kernel_t, stride_t, dilation_t = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
        tail = self.tails.get(id(module))
        if tail is None:  # the first chunk: the convolution's own causal padding
            padded = _frames(x, 0, x.shape[2] + front, front)
        else:
            padded = torch.cat([tail, x], dim=2)
        span = dilation_t * (kernel_t - 1) + 1
        outputs = (padded.shape[2] - span) // stride_t + 1
        self.tails[id(module)] = padded[:, :, outputs * stride_t :].clone()
        return conv(_spatial(module)(padded))


def _rolling_downsample(self: torch.nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """LTX's space-to-depth downsampler (diffusers' forward), whose first frames are prepended to the clip:
    on the first chunk of a rolled encode only."""
    roll = self._cinetune_roll
    if not roll.active:
        return self._cinetune_plain_forward(hidden_states, *args, **kwargs)
    s = self.stride
    if roll.first:
        hidden_states = torch.cat([hidden_states[:, :, : s[0] - 1], hidden_states], dim=2)

    def space_to_depth(x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(4, (-1, s[2])).unflatten(3, (-1, s[1])).unflatten(2, (-1, s[0]))
        return x.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(1, 4)

    residual = space_to_depth(hidden_states).unflatten(1, (-1, self.group_size)).mean(dim=2)
    return space_to_depth(self.conv(hidden_states, *args, **kwargs)) + residual


def enable_temporal_roll(vae: torch.nn.Module, latent_frames_per_chunk: int = 1) -> None:
    """Encode with the encoder streamed over time (see the module docstring)."""
    if type(vae).__name__ not in TEMPORAL_ROLL_VAES:
        raise ValueError(f"temporal roll is built for the LTX VAEs, not {type(vae).__name__}")
    roll = _Roll()
    for module in _wrap_convs(vae.encoder):
        module._cinetune_roll = roll
    for module in vae.encoder.modules():
        if type(module).__name__ in DOWNSAMPLER_CLASSES and not hasattr(module, "_cinetune_plain_forward"):
            module._cinetune_plain_forward = module.forward
            module.forward = types.MethodType(_rolling_downsample, module)
            module._cinetune_roll = roll
    encoder_forward = vae.encoder.forward
    step = vae.temporal_compression_ratio * latent_frames_per_chunk

    def rolled(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        frames = hidden_states.shape[2]
        if frames <= 1 + step:
            return encoder_forward(hidden_states, *args, **kwargs)
        roll.active, roll.first, roll.tails = True, True, {}
        bounds = [0, *range(1 + step, frames, step), frames]
        outputs = []
        try:
            for start, stop in itertools.pairwise(bounds):
                outputs.append(encoder_forward(hidden_states[:, :, start:stop], *args, **kwargs))
                roll.first = False
        finally:
            roll.active, roll.tails = False, {}
        return torch.cat(outputs, dim=2)

    vae.encoder.forward = rolled
