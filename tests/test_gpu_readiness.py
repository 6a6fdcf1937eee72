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


def test_encoders_run_in_bf16_on_a_gpu_whatever_mixed_precision_says(monkeypatch) -> None:
    from cinetune.training.trainer import encoder_dtype

    cuda, cpu = torch.device("cuda", 3), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for weights in (torch.float16, torch.bfloat16, torch.float32):
        assert encoder_dtype("default", weights, cuda) == torch.bfloat16  # fp16 before: Gemma 3 overflows
    assert encoder_dtype("fp32", torch.float16, cuda) == torch.float32  # vae_dtype asks otherwise
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert encoder_dtype("default", torch.float16, cuda) == torch.float32  # a GPU without bf16: fp32
    assert encoder_dtype("default", torch.float32, cpu) == torch.float32  # CPU runs keep their dtype
    assert encoder_dtype("default", torch.float16, cpu) == torch.float32


def test_tf32_is_on_for_cuda_only(monkeypatch) -> None:
    from cinetune.training.trainer import enable_tf32

    calls: list[str] = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    enable_tf32(torch.device("cpu"))
    assert calls == []
    enable_tf32(torch.device("cuda", 0))
    assert calls == ["high"]


def test_non_finite_cache_entries_are_never_written(tmp_path, clips_dir, make_config, monkeypatch) -> None:
    import pytest

    from cinetune.cache.builder import CacheBuilder
    from cinetune.config import load_config
    from cinetune.data import SkipReport, scan_datasets
    from cinetune.errors import DataError
    from cinetune.models.registry import build_family

    loaded = load_config(make_config(tmp_path, clips_dir, None))
    family = build_family("ltxvideo", "tiny", None)
    samples = scan_datasets(loaded.data.media, family.frame_rule, 24.0, 3, SkipReport())
    builder = CacheBuilder(
        family,
        text_root=tmp_path / "text",
        latent_roots={"clips": tmp_path / "vae"},
        device=torch.device("cpu"),
        dtype=torch.float32,
        vae_dtype=torch.bfloat16,
        max_sequence_length=128,
    )
    real = family.encode_sample

    def overflowing(*args):
        tensors = real(*args)
        assert tensors["latents"].dtype == torch.bfloat16  # the VAE ran in vae_dtype
        return {**tensors, "latents": tensors["latents"] * float("inf")}

    monkeypatch.setattr(family, "encode_sample", overflowing)
    with pytest.raises(DataError, match=r"non-finite values \(latents\) for .*clip_00"):
        builder.build(samples[:1])
    assert not list((tmp_path / "vae").rglob("*.safetensors"))
    assert list((tmp_path / "text").rglob("*.safetensors"))  # the text entries were finite and written
