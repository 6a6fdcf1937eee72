"""Lower the HunyuanVideo VAE's peak memory while caching: temporal chunking of its causal 3D convolutions.

`enable_patch_conv(vae)` replaces the forward of every `HunyuanVideoCausalConv3d` of one VAE (this instance
only, nothing is patched globally) by one that computes the output a few frames at a time into a
preallocated tensor. Each chunk reads exactly the input frames its outputs depend on (kernel_t - 1 frames of
causal context, the first frame replicated at the start as the causal padding does), so the result is the
plain convolution's, up to floating-point summation order. What it saves: the full padded copy of the input
that `F.pad` makes, and the convolution's working memory over the whole clip.

Tiling is diffusers' own `vae.enable_tiling()`: overlapping spatial tiles blended at the seams, so its
latents differ slightly from the plain path (see the family tests for the tolerance).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

DEFAULT_CHUNK_BYTES = 256 * 2**20


def _chunked_forward(self: HunyuanVideoCausalConv3d, hidden_states: torch.Tensor) -> torch.Tensor:
    conv = self.conv
    w_left, w_right, h_top, h_bottom, t_front, t_back = self.time_causal_padding
    num_frames = hidden_states.shape[2]
    kernel_t, stride_t = conv.kernel_size[0], conv.stride[0]
    padded_frames = num_frames + t_front + t_back
    frame_bytes = hidden_states[:, :, :1].numel() * hidden_states.element_size()
    per_chunk = max(1, self._cinetune_chunk_bytes // max(1, frame_bytes) // stride_t)
    out_frames = (padded_frames - kernel_t) // stride_t + 1
    if self.pad_mode != "replicate" or t_back != 0 or out_frames <= per_chunk:
        return self._cinetune_plain_forward(hidden_states)
    out = None
    for first in range(0, out_frames, per_chunk):
        last = min(out_frames, first + per_chunk)
        # padded-input frames [start, stop) feed outputs [first, last); padded index p is input p - t_front
        start, stop = first * stride_t, (last - 1) * stride_t + kernel_t
        lo, hi = start - t_front, stop - t_front
        piece = hidden_states[:, :, max(lo, 0) : hi]
        if lo < 0:  # the causal padding repeats the first frame
            piece = torch.cat([hidden_states[:, :, :1].expand(-1, -1, -lo, -1, -1), piece], dim=2)
        piece = F.pad(piece, (w_left, w_right, h_top, h_bottom, 0, 0), mode="replicate")
        result = conv(piece)
        if out is None:
            out = result.new_empty((*result.shape[:2], out_frames, *result.shape[3:]))
        out[:, :, first:last] = result
        del piece, result
    return out


def enable_patch_conv(vae: torch.nn.Module, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Chunk every causal 3D convolution of `vae` along time, about `chunk_bytes` of input per chunk.

    Returns how many convolutions were wrapped. Calling it again only updates the chunk size.
    """
    count = 0
    for module in vae.modules():
        if isinstance(module, HunyuanVideoCausalConv3d):
            if not hasattr(module, "_cinetune_plain_forward"):
                module._cinetune_plain_forward = module.forward
                module.forward = types.MethodType(_chunked_forward, module)
            module._cinetune_chunk_bytes = int(chunk_bytes)
            count += 1
    return count


def disable_patch_conv(vae: torch.nn.Module) -> None:
    for module in vae.modules():
        if hasattr(module, "_cinetune_plain_forward"):
            del module.forward, module._cinetune_plain_forward, module._cinetune_chunk_bytes
