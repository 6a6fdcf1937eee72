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


def test_every_torch_load_names_its_map_location() -> None:
    """A resume on several GPUs: `torch.load` without map_location puts every rank's copy on cuda:0."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1]
    missing = []
    for path in [*(root / "src").rglob("*.py"), *(root / "bench").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None)
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and getattr(func.value, "id", "") == "torch"
            ):
                if not any(k.arg == "map_location" for k in node.keywords):
                    missing.append(f"{path.name}:{node.lineno}")
    assert not missing, f"torch.load without map_location: {missing}"
