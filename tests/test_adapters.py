"""Adapters besides plain LoRA: peft DoRA (use_dora) and LyCORIS LoKr / LoHa (lora_type lycoris): they train
on every family, resume exactly, and their exported files load back where training/adapters.py says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cinetune.cli import main
from cinetune.config import load_config
from cinetune.errors import CinetuneError
from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE, DIFFUSERS_LOKR_FILE
from cinetune.models.base import ModelFamily
from cinetune.objectives.loss import model_outputs
from cinetune.plan import resolve
from cinetune.training.trainer import Trainer

FAMILIES = [
    {"model_family": "ltxvideo", "model_flavour": "tiny"},
    {"model_family": "ltxvideo2", "model_flavour": "tiny"},
    {"model_family": "kandinsky5-video", "model_flavour": "tiny"},
]


def _lycoris_file(folder: Path, algo: str, **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"lycoris_{algo}.json"
    settings = {"algo": algo, "multiplier": 1.0, "linear_dim": 4, "linear_alpha": 2, **extra}
    path.write_text(json.dumps(settings))
    return path


def _trainer(tmp_path: Path, clips_dir: Path, make_config, **kw: Any) -> Trainer:
    plan = resolve(load_config(make_config(tmp_path, clips_dir, None, **kw)))
    trainer = Trainer(plan)
    torch.manual_seed(0)
    trainer.setup_model(plan.family.load_transformer(torch.float32), total_steps=4)
    return trainer


def _batch(trainer: Trainer) -> Any:
    from cinetune.benchmark import synthetic_batch

    torch.manual_seed(1)
    return synthetic_batch(trainer, trainer.family.architecture_config(), (64, 64), 9, 2)


def _forward(family: ModelFamily, model: torch.nn.Module, batch: Any) -> torch.Tensor:
    (inputs, *_) = family.training_inputs(
        batch, torch.Generator().manual_seed(2), "uniform", torch.device("cpu"), torch.float32, model.config
    )
    with torch.no_grad():
        return model_outputs(model(**inputs.kwargs))[0]


def _perturb(model: torch.nn.Module) -> None:
    """Trained-looking adapter weights (LoRA B and LoKr w2 start at zero and would hide every mistake)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f["model_family"])
@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_lycoris_trains_every_adapted_module_on_every_family(
    family: dict[str, str], algo: str, tmp_path: Path, clips_dir: Path, make_config
) -> None:
    config = _lycoris_file(tmp_path, algo, factor=4)
    trainer = _trainer(
        tmp_path, clips_dir, make_config, **family, lora_type="lycoris", lycoris_config=str(config)
    )
    model = trainer.acc.unwrap_model(trainer.model)
    network = trainer.adapter.network
    targets = trainer.cfg.lora_target_modules  # no apply_preset: the family's LoRA targets
    adapted = set(trainer.adapter.modules.values())
    assert adapted and all(any(m == t or m.endswith("." + t) for t in targets) for m in adapted)
    assert not any(hasattr(m, "lora_A") for m in model.modules())  # no peft LoRA beside it
    assert {id(p) for p in trainer.params} == {id(p) for p in network.parameters()}
    _perturb(model)  # the second factors start at zero: with them, every factor gets a gradient
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    trainer.optimizer_step([_batch(trainer)])
    moved = [n for n, p in network.named_parameters() if not torch.equal(before[n], p)]
    assert len(moved) == len(before)


def test_dora_round_trips_through_the_pipeline_and_comfyui_holds_its_decomposition(
    tmp_path: Path, clips_dir: Path, make_config, tiny_ltx_dir: Path
) -> None:
    from diffusers import LTXPipeline

    trainer = _trainer(tmp_path, clips_dir, make_config, use_dora=True, lora_alpha=8)
    model = trainer.acc.unwrap_model(trainer.model).eval()
    assert trainer.lora_config.use_dora and trainer.adapter.shape(model)["use_dora"]
    _perturb(model)
    lora, comfyui = trainer.export_lora(tmp_path / "out")
    stored = load_file(lora)
    assert any(k.endswith(".lora_magnitude_vector") for k in stored)
    pipe = LTXPipeline.from_pretrained(tiny_ltx_dir)
    pipe.load_lora_weights(str(tmp_path / "out"))
    batch = _batch(trainer)
    torch.testing.assert_close(
        _forward(trainer.family, pipe.transformer, batch), _forward(trainer.family, model, batch)
    )
    # ComfyUI: lora_A / lora_B, alpha, and dora_scale (out, 1): m (W + s B A) / ||W + s B A|| per output row
    # is the weight peft merges
    comfy = load_file(comfyui)
    layer = model.transformer_blocks[0].attn1.to_q
    prefix = "diffusion_model.transformer_blocks.0.attn1.to_q"
    a, b = comfy[f"{prefix}.lora_A.weight"], comfy[f"{prefix}.lora_B.weight"]
    scale = float(comfy[f"{prefix}.alpha"]) / a.shape[0]
    weight = layer.base_layer.weight.detach() + scale * b @ a
    merged = comfy[f"{prefix}.dora_scale"] * weight / weight.norm(dim=1, keepdim=True)
    assert comfy[f"{prefix}.dora_scale"].shape == (weight.shape[0], 1)
    layer.merge()
    torch.testing.assert_close(merged, layer.base_layer.weight.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_lycoris_files_load_back_in_lycoris_diffusers_and_comfyui_names(
    algo: str, tmp_path: Path, clips_dir: Path, make_config
) -> None:
    from lycoris import create_lycoris_from_weights

    config = _lycoris_file(tmp_path, algo, factor=4)
    trainer = _trainer(tmp_path, clips_dir, make_config, lora_type="lycoris", lycoris_config=str(config))
    model = trainer.acc.unwrap_model(trainer.model).eval()
    _perturb(model)
    lora, comfyui = trainer.export_lora(tmp_path / "out")
    batch = _batch(trainer)
    expected = _forward(trainer.family, model, batch)
    # LyCORIS's own loader on a fresh transformer
    fresh = trainer.family.load_transformer(torch.float32).eval()
    network, _ = create_lycoris_from_weights(1.0, lora, fresh)
    network.apply_to()
    network.load_state_dict(load_file(lora), strict=True)
    torch.testing.assert_close(_forward(trainer.family, fresh, batch), expected)
    # ComfyUI names: diffusion_model.<module>.<LyCORIS part>, one alpha per module
    comfy = load_file(comfyui)
    modules = set(trainer.adapter.modules.values())
    assert {k.removeprefix("diffusion_model.").rpartition(".")[0] for k in comfy} == modules
    parts = {k.rpartition(".")[2] for k in comfy}
    assert "alpha" in parts and parts - {"alpha"} <= {
        "lokr_w1",
        "lokr_w2",
        "lokr_w2_a",
        "lokr_w2_b",
        "hada_w1_a",
        "hada_w1_b",
        "hada_w2_a",
        "hada_w2_b",
    }
    # LoKr: diffusers' model-level loader takes the peft-layout file (there is no diffusers LoHa loader)
    peft_file = tmp_path / "out" / DIFFUSERS_LOKR_FILE
    assert peft_file.is_file() == (algo == "lokr")
    if algo == "lokr":
        other = trainer.family.load_transformer(torch.float32).eval()
        other.load_lora_adapter(str(peft_file), prefix="transformer")
        torch.testing.assert_close(_forward(trainer.family, other, batch), expected, rtol=1e-4, atol=1e-5)
    with safe_open(lora, framework="pt") as handle:
        assert json.loads(handle.metadata()["lycoris_config"])["algo"] == algo


def test_lycoris_run_resumes_exactly(tmp_path: Path, clips_dir: Path, make_config) -> None:
    config = _lycoris_file(tmp_path, "lokr", factor=4, linear_dim=10000, linear_alpha=1)
    common = {"lora_type": "lycoris", "lycoris_config": str(config), "checkpointing_steps": 2}
    whole = make_config(tmp_path / "whole", clips_dir, None, max_train_steps=4, **common)
    assert main(["train", "--config", str(whole)]) == 0
    parts = make_config(tmp_path / "parts", clips_dir, None, max_train_steps=2, **common)
    assert main(["train", "--config", str(parts)]) == 0
    assert (
        main(["train", "--config", str(parts), "--max_train_steps=4", "--resume_from_checkpoint=latest"]) == 0
    )
    a = load_file(str(tmp_path / "whole" / "output" / DIFFUSERS_FILE))
    b = load_file(str(tmp_path / "parts" / "output" / DIFFUSERS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "output" / COMFYUI_FILE).is_file()
    start = load_file(str(tmp_path / "parts" / "output" / "checkpoint-2" / "lora.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in a)
    # a checkpoint of another adapter cannot resume this one
    other = _lycoris_file(tmp_path / "other", "loha")
    args = ["--max_train_steps=4", "--resume_from_checkpoint=latest", f"--lycoris_config={other}"]
    assert main(["train", "--config", str(parts), *args]) == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lora_type": "lycoris"}, "needs lycoris_config"),
        ({"lora_type": "lycoris", "lycoris_config": "missing.json"}, "file not found"),
        ({"lora_type": "lycoris", "use_dora": True, "lycoris_config": "{lokr}"}, "dora_wd"),
        ({"lora_type": "lycoris", "lycoris_config": "{glora}"}, "algo 'glora' is not supported yet"),
        ({"lora_type": "lycoris", "lycoris_config": "{lokr}", "init_lora": "{lokr}"}, "init_lora with"),
    ],
)
def test_bad_adapter_configs_fail_at_check(
    settings: dict[str, Any], message: str, tmp_path: Path, clips_dir: Path, make_config, capsys
) -> None:
    files = {"{lokr}": str(_lycoris_file(tmp_path, "lokr")), "{glora}": str(_lycoris_file(tmp_path, "glora"))}
    settings = {k: files.get(v, v) if isinstance(v, str) else v for k, v in settings.items()}
    path = make_config(tmp_path, clips_dir, None, **settings)
    assert main(["check", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_preset_that_matches_nothing_names_the_models_attention_classes(
    tmp_path: Path, clips_dir: Path, make_config
) -> None:
    config = _lycoris_file(tmp_path, "lokr", apply_preset={"target_module": ["Attention"]})
    with pytest.raises(CinetuneError, match="LTXAttention"):
        _trainer(tmp_path, clips_dir, make_config, lora_type="lycoris", lycoris_config=str(config))
    good = _lycoris_file(tmp_path / "good", "lokr", apply_preset={"target_module": ["LTXAttention"]})
    trainer = _trainer(tmp_path / "g", clips_dir, make_config, lora_type="lycoris", lycoris_config=str(good))
    assert {m.rpartition(".")[2] for m in trainer.adapter.modules.values()} >= {"to_q", "to_k", "to_v"}
