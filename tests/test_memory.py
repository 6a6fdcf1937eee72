"""Quantized frozen weights, group offload and block swap on the tiny models of all three families.

Each feature is applied through the trainer's own `setup_model` (as `cinetune train` and `cinetune bench`
do) and compared with the plain model: a LoRA trained 4 steps with offload or swap is bit-identical to the
plain one (weights offloaded to disk are empty placeholders between uses, and swapped-out blocks hold
0-element tensors, so a backward pass that used an offloaded weight would not give the same LoRA); quantized
weights give outputs within the stated tolerance of the full-precision model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.memory_helpers import FAMILIES, K5, LTX2, make_trainer, plain_run, same_weights, train_steps

from cinetune.export.lora import save_diffusers_lora
from cinetune.training.step import training_loss

# Relative L2 error of the tiny transformers' output with quantized blocks (measured: int8 0.0013-0.0018,
# fp8 0.0055-0.0092, int4 0.010-0.026, int2 0.093-0.14 over the three families).
TOLERANCE = {
    "int8-quanto": 0.005,
    "int8-torchao": 0.005,
    "fp8-quanto": 0.02,
    "fp8-torchao": 0.02,
    "int4-quanto": 0.05,
    "int2-quanto": 0.25,
}


def _prediction(trainer, batch_seed: int = 1) -> torch.Tensor:
    from cinetune.benchmark import synthetic_batch

    torch.manual_seed(batch_seed)
    batch = synthetic_batch(trainer, trainer.family.architecture_config(), (64, 64), 9, 1)
    generator = torch.Generator().manual_seed(5)
    config = trainer.acc.unwrap_model(trainer.model).config
    (inputs,) = trainer.family.training_inputs(
        batch, generator, trainer.cfg.flow_sigma_sampler, trainer.device, trainer.weight_dtype, config
    )
    with torch.no_grad():
        out = trainer.model(**inputs.kwargs)
    return (out[0] if isinstance(out, tuple) else out.sample).float()


def _plain_linear(module: torch.nn.Module) -> bool:
    """An unquantized linear layer (quanto swaps the class, torchao the weight's tensor type)."""
    return type(module) is torch.nn.Linear and type(module.weight.data) is torch.Tensor


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---- quantization ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "precision"),
    [("ltxvideo", p) for p in TOLERANCE] + [("ltxvideo2", "int8-quanto"), ("kandinsky5", "int8-torchao")],
)
def test_quantized_blocks_stay_within_tolerance(tmp_path: Path, family: str, precision: str) -> None:
    plain = make_trainer(tmp_path / "plain", **FAMILIES[family])
    quantized = make_trainer(tmp_path / "q", **FAMILIES[family], base_model_precision=precision)
    model = quantized.acc.unwrap_model(quantized.model)
    blocks = {id(m) for b in quantized.family.blocks(model) for m in b.modules()}
    plain_linears = [
        name
        for name, m in model.named_modules()
        if _plain_linear(m) and id(m) in blocks and "lora_" not in name
    ]
    assert not plain_linears, f"left unquantized in the blocks: {plain_linears[:3]}"
    outside = [m for m in model.modules() if _plain_linear(m) and id(m) not in blocks]
    assert outside  # input/output projections and embeddings keep the compute dtype
    assert {p.dtype for p in quantized.params} == {torch.float32}  # LoRA stays fp32
    error = _relative(_prediction(quantized), _prediction(plain))
    assert 0 < error < TOLERANCE[precision], error


def test_lora_trained_on_int8_base_loads_into_the_unquantized_pipeline(tmp_path: Path) -> None:
    from diffusers import LTXPipeline

    from cinetune.models.ltxvideo.tiny import tiny_components

    trainer = make_trainer(tmp_path / "run", base_model_precision="int8-quanto")
    losses, trained = train_steps(trainer)
    assert losses[-1] < losses[0]
    model = trainer.acc.unwrap_model(trainer.model)
    config = trainer.lora_config.to_dict()
    path = save_diffusers_lora(tmp_path / "out", trainer.family.pipeline_class, model, config)
    pipe = LTXPipeline(**tiny_components())
    before = _call(pipe.transformer)
    pipe.load_lora_weights(str(path))
    after = _call(pipe.transformer)
    loaded = {n: p.detach() for n, p in pipe.transformer.named_parameters() if "lora_" in n}
    scale = config["lora_alpha"] / config["r"]
    for name, a in trained.items():
        if ".lora_A." not in name:
            continue
        b = trained[name.replace(".lora_A.", ".lora_B.")]
        a2, b2 = (
            loaded[name.replace("default", "default_0")] for name in (name, name.replace("lora_A", "lora_B"))
        )
        assert torch.equal(b2 @ a2 * scale, b @ a * scale), name  # the same delta weight, module by module
    q_before = _call(_without_lora(model))
    q_after = _call(model)
    # the delta the LoRA makes on the unquantized model is the one it made on the int8 model it trained on
    assert _relative(after - before, q_after - q_before) < 0.02


def _call(transformer: torch.nn.Module) -> torch.Tensor:
    config = transformer.config
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, 2 * 4 * 4, config.in_channels, generator=generator),
            encoder_hidden_states=torch.randn(1, 8, config.caption_channels, generator=generator),
            timestep=torch.tensor([500]),
            encoder_attention_mask=torch.ones(1, 8),
            num_frames=2,
            height=4,
            width=4,
            return_dict=False,
        )[0]


class _without_lora:  # noqa: N801 (a context-free callable view of a peft model with its adapters off)
    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.config = model, model.config

    def __call__(self, **kwargs):
        self.model.disable_adapters()
        try:
            return self.model(**kwargs)
        finally:
            self.model.enable_adapters()


# ---- group offload ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "disk", "checkpointing"),
    [
        ("block_level", False, False),
        ("block_level", True, True),
        ("leaf_level", False, True),
        ("leaf_level", True, False),
    ],
)
def test_group_offload_trains_the_plain_lora(
    tmp_path: Path, kind: str, disk: bool, checkpointing: bool
) -> None:
    extra = {"gradient_checkpointing": checkpointing}
    plain = plain_run(tmp_path, **extra)
    options = {"enable_group_offload": True, "group_offload_type": kind, **extra}
    if disk:
        options["group_offload_to_disk_path"] = str(tmp_path / "offload")
    trainer = make_trainer(tmp_path / "offload-run", **options)
    losses, lora = train_steps(trainer)
    assert losses == plain[0] and same_weights(lora, plain[1])
    residency = trainer.model._cinetune_residency
    assert residency.backward_onloads > 0  # the groups came back for every backward pass
    assert not any(group.onloaded for group in residency.groups)  # and left after it
    assert all(p.device == trainer.device for p in trainer.params)  # LoRA never leaves the device
    if disk:
        assert any((tmp_path / "offload").glob("group_*.safetensors"))


@pytest.mark.parametrize("family", ["ltxvideo2", "kandinsky5"])
def test_group_offload_on_the_other_families(tmp_path: Path, family: str) -> None:
    config = {**FAMILIES[family], "gradient_checkpointing": True}
    plain = plain_run(tmp_path, **config)
    disk = {"enable_group_offload": True, "group_offload_to_disk_path": str(tmp_path / "d")}
    losses, lora = train_steps(make_trainer(tmp_path / "offload", **config, **disk))
    assert losses == plain[0] and same_weights(lora, plain[1])


def test_the_quickstart_offload_block_runs_on_the_cpu(tmp_path: Path) -> None:
    """enable_group_offload + block_level + 1 block per group + use_stream, as the LTX-2 and Kandinsky 5
    quickstarts write it: without streams it copies plainly, says so once, and trains the plain LoRA."""
    from tests.memory_helpers import write_config

    from cinetune.config import load_config
    from cinetune.plan import resolve

    quickstart = {
        "enable_group_offload": True,
        "group_offload_type": "block_level",
        "group_offload_blocks_per_group": 1,
        "group_offload_use_stream": True,
    }
    plan = resolve(load_config(write_config(tmp_path / "q", **LTX2, **quickstart)))
    assert [w for w in plan.warnings if "group_offload_use_stream" in w and "no streams" in w]
    plain = plain_run(tmp_path, **LTX2, gradient_checkpointing=False)
    assert train_steps(make_trainer(tmp_path / "run", **LTX2, **quickstart))[0] == plain[0]


# ---- block swap ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "blocks", "checkpointing"),
    [("ltxvideo", 1, False), ("ltxvideo", 2, True), ("ltxvideo2", 1, True), ("kandinsky5", 2, False)],
)
def test_block_swap_trains_the_plain_lora(
    tmp_path: Path, family: str, blocks: int, checkpointing: bool
) -> None:
    extra = {**FAMILIES[family], "gradient_checkpointing": checkpointing}
    plain = plain_run(tmp_path, **extra)
    trainer = make_trainer(tmp_path / "swap", **extra, musubi_blocks_to_swap=blocks)
    losses, lora = train_steps(trainer)
    assert losses == plain[0] and same_weights(lora, plain[1])
    declared = trainer.family.blocks(trainer.model)
    for block in declared[-blocks:]:  # swapped out between steps: no weights on the device
        assert all(p.numel() == 0 for p in block.parameters() if not p.requires_grad)
        assert all(p.numel() > 0 for p in block.parameters() if p.requires_grad)  # LoRA stays
    for block in declared[: len(declared) - blocks]:
        assert all(p.numel() > 0 for p in block.parameters())
    assert trainer.model._cinetune_residency.backward_onloads == 4 * blocks  # streamed in for each backward


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="side-stream copies and pinned memory need CUDA")
def test_block_swap_on_cuda_streams_pinned_weights(tmp_path: Path) -> None:
    extra = {**K5, "cpu": False}
    plain_trainer = make_trainer(tmp_path / "plain", **extra)
    plain = train_steps(plain_trainer)
    trainer = make_trainer(tmp_path / "swap", **extra, musubi_blocks_to_swap=2)
    losses, _ = train_steps(trainer)
    assert all(abs(a - b) < 1e-5 for a, b in zip(losses, plain[0], strict=True))
    group = trainer.model._cinetune_residency.groups[0]
    assert group.stream is not None and all(t.is_pinned() for t in group.store.values())
    assert training_loss is not None
