"""Device, dtype and host-sync bugs a first CUDA run would hit, pinned on a CPU-only machine.

The `meta` device stands in for a GPU: an operation that mixes a meta tensor with a CPU tensor raises, so a
tensor built on the wrong device shows here as it would on `cuda`.
"""

from __future__ import annotations

import torch

from cinetune.training.trainer import rank_checksum


def test_rank_checksum_is_built_on_the_parameters_device() -> None:
    meta = [torch.empty(3, 4, device="meta"), torch.empty(5, device="meta")]
    summary = rank_checksum(meta)  # a CPU arange times meta weights raised here before
    assert summary.device.type == "meta" and summary.shape == (2,) and summary.dtype == torch.float64
    a, b = torch.arange(6.0), torch.arange(6.0).flip(0)
    assert rank_checksum([a])[0] == rank_checksum([b])[0]  # same sum ...
    assert rank_checksum([a])[1] != rank_checksum([b])[1]  # ... a permutation still differs
