"""Where and in what dtype tensors live: pure functions the trainer calls, tested with meta / fake devices."""

from __future__ import annotations

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32, "fp32": torch.float32}


def enable_tf32(device: torch.device) -> None:
    """fp32 matmuls on TF32 tensor cores (about 8x on Ampere and later; the inputs keep 10 mantissa bits,
    which training tolerates). CUDA only: the CPU keeps exact fp32 matmuls, so CPU results do not move."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def encoder_dtype(asked: str, weight_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the text encoders (asked: "default") and VAEs (vae_dtype) run and cache in. On a GPU: bf16
    whatever mixed_precision says (fp16 overflows Gemma 3 and the VAEs' activations), fp32 where the GPU has
    no bf16. On the CPU, which only runs tiny and demo models, the training dtype (never fp16)."""
    if asked != "default":
        return DTYPES[asked]
    if device.type == "cpu":
        return torch.float32 if weight_dtype == torch.float16 else weight_dtype
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float32
    return torch.bfloat16


def rank_checksum(params: list[torch.Tensor]) -> torch.Tensor:
    """(2,) float64 on the parameters' device: the sum and a position-weighted sum of every value, so two
    ranks whose LoRAs differ (also by a permutation) disagree. Built where the parameters live: a CPU `arange`
    times GPU weights would fail on every multi-GPU run."""
    flat = torch.cat([p.detach().double().flatten() for p in params])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) / flat.numel()
    return torch.stack([flat.sum(), (flat * weights).sum()])
