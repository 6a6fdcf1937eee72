"""Device, dtype and host-sync bugs a first CUDA run would hit, pinned on a CPU-only machine.

The `meta` device stands in for a GPU: an operation that mixes a meta tensor with a CPU tensor raises, so a
tensor built on the wrong device shows here as it would on `cuda`.
"""

from __future__ import annotations

import torch

from cinetune.training.devices import rank_checksum


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
    from cinetune.training.devices import encoder_dtype

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
    from cinetune.training.devices import enable_tf32

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


def test_compiled_blocks_do_not_recompile_at_validation_shapes() -> None:
    """After the training shape has compiled, another size and batch (validation) reuse the graph. Batch 1 vs
    2 still recompiles once (dynamo specialises sizes 0 and 1), so the training shape here has batch 2."""
    import torch._dynamo

    from cinetune.models.registry import build_family
    from cinetune.training.speed import apply_regional_compile

    torch._dynamo.reset()
    model = build_family("ltxvideo", "tiny", None).load_transformer(torch.float32).eval()
    apply_regional_compile(model, backend="eager")  # the graph logic of inductor, without its codegen time
    config = model.config

    def run(batch: int, frames: int, side: int) -> None:
        with torch.no_grad():
            model(
                hidden_states=torch.randn(batch, frames * side * side, config.in_channels),
                encoder_hidden_states=torch.randn(batch, 7, config.caption_channels),
                timestep=torch.full((batch,), 500.0),
                encoder_attention_mask=torch.ones(batch, 7),
                num_frames=frames,
                height=side,
                width=side,
            )

    run(2, 2, 2)  # the training shape, twice: every block's graph is built
    run(2, 2, 2)
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):  # restored after (monkeypatch hides it)
            run(2, 3, 4)  # validation at another size: raised RecompileError with static shapes before
            run(3, 5, 6)
    finally:
        torch._dynamo.reset()


def _meta_step(family_name: str, monkeypatch) -> list[str]:
    """One `step_loss` with the device `meta` (a fake model echoes its inputs): the blocking CPU -> device
    copies it made. Reading a meta tensor on the host (.item(), float(), .tolist()) raises, so a host sync on
    a device tensor anywhere in the step path fails here as well."""
    from types import SimpleNamespace

    from cinetune.models.registry import build_family
    from cinetune.training.batches import Batch
    from cinetune.training.step import step_loss

    family = build_family(family_name, "tiny", None)
    config = family.architecture_config()
    items = [family.synthetic_latents(config, 64, 64, 9, 24.0) for _ in range(2)]
    tensors = {k: torch.stack([i[k] for i in items]) for k in items[0]}
    captions = [family.synthetic_caption(config, length) for length in (16, 24)]  # two caption lengths
    batch = Batch(tensors=tensors, text=family.collate_text(captions), frame_rate=24.0)
    meta = torch.device("meta")

    forwards: list = []
    real_inputs = family.training_inputs
    monkeypatch.setattr(family, "training_inputs", lambda *a: forwards.extend(real_inputs(*a)) or forwards)

    def model(**kwargs):  # each stream's prediction: its target's shape, on the inputs' device
        forward = next(f for f in forwards if f.kwargs["hidden_states"] is kwargs["hidden_states"])
        outputs = {s.output: s.target * 1.0 for s in forward.streams}
        return tuple(outputs[i] for i in sorted(outputs))

    model.config = SimpleNamespace(**family.load_transformer(torch.float32).config)
    blocking: list[str] = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        out = real_to(self, *args, **kwargs)
        weights = isinstance(self, torch.nn.Parameter)  # a frozen helper (LTX-2's connectors) placed once
        if (
            self.device.type == "cpu"
            and out.device.type == "meta"
            and not (kwargs.get("non_blocking") or weights)
        ):
            blocking.append(f"{tuple(self.shape)} {self.dtype}")
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy)
    out = step_loss(
        family, model, batch, torch.Generator().manual_seed(0), "shifted_logit_normal", meta, torch.float32
    )
    assert out.total.device == meta  # the loss never left the device (float(mask.sum()) raised here before)
    return blocking


def test_step_path_has_no_host_sync_and_no_blocking_copy(monkeypatch) -> None:
    for name in ("ltxvideo", "kandinsky5-video", "ltxvideo2"):
        assert _meta_step(name, monkeypatch) == [], name


def test_masked_token_loss_stays_on_the_device() -> None:
    from cinetune.objectives import LossStream, ModelInputs, compute_loss

    meta = torch.device("meta")
    target, mask = torch.empty(2, 6, 4, device=meta), torch.empty(2, 6, dtype=torch.bool, device=meta)
    inputs = [ModelInputs({}, [LossStream("video", target, mask=mask)]) for _ in range(2)]  # two passes
    out = compute_loss(inputs, [torch.empty(2, 6, 4, device=meta)] * 2)  # float(mask.sum()) raised here
    assert out.total.device == meta
    t = torch.arange(12.0).reshape(1, 3, 4)
    none = torch.zeros(1, 3, dtype=torch.bool)
    assert compute_loss([ModelInputs({}, [LossStream("video", t, mask=none)])], [t + 1]).total == 0
    some = torch.tensor([[True, False, True]])
    assert compute_loss([ModelInputs({}, [LossStream("video", t, mask=some)])], [t + 1]).total == 1.0
