"""EMA of the trained weights: the decay formula, checkpoints, export beside the LoRA, validation with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from cinetune.cli import main
from cinetune.config import load_config
from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE
from cinetune.plan import resolve
from cinetune.training.trainer import Trainer


def _trainable(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = trainer.acc.unwrap_model(trainer.model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _expected_ema(history: list[dict[str, torch.Tensor]], decay: float, interval: int, warmup: int):
    """The EMA by its definition over the recorded weights after each optimizer step (1-based steps):
    updates at steps interval, 2 interval, ...; e <- d e + (1 - d) w, where the n-th update uses d = 0 for
    n = 1 and min(decay, n / (n + 9)) after (diffusers' ramp), or with warmup W: d = 0 up to step W, then
    decay."""
    ema: dict[str, torch.Tensor] = {}
    updates = 0
    for step, weights in enumerate(history, start=1):
        if step % interval:
            continue
        updates += 1
        if warmup:
            d = 0.0 if step <= warmup else decay
        else:
            d = 0.0 if updates == 1 else min(decay, updates / (updates + 9))
        ema = {n: w.clone() if not ema else d * ema[n] + (1 - d) * w for n, w in weights.items()}
    return ema


def _record_steps(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    history: list[dict[str, torch.Tensor]] = []
    real = Trainer.optimizer_step

    def step(self: Trainer, batches: list[Any]) -> tuple[float, float]:
        out = real(self, batches)
        history.append(_trainable(self))
        return out

    monkeypatch.setattr(Trainer, "optimizer_step", step)
    return history


@pytest.mark.parametrize(
    ("settings", "interval", "warmup"),
    [
        ({"ema_decay": 0.8}, 1, 0),
        (
            {"ema_decay": 0.7, "ema_update_interval": 2, "ema_warmup_steps": 2, "ema_device": "accelerator"},
            2,
            2,
        ),
    ],
    ids=["ramp", "interval-warmup"],
)
def test_exported_ema_lora_is_the_decay_formula_over_the_recorded_weights(
    settings: dict[str, Any],
    interval: int,
    warmup: int,
    tmp_path: Path,
    clips_dir: Path,
    make_config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    history = _record_steps(monkeypatch)
    path = make_config(tmp_path, clips_dir, None, max_train_steps=6, use_ema=True, **settings)
    assert main(["train", "--config", str(path)]) == 0
    assert len(history) == 6
    expected = _expected_ema(history, settings["ema_decay"], interval, warmup)
    output = tmp_path / "output"
    plain = load_file(str(output / DIFFUSERS_FILE))
    ema = load_file(str(output / "ema" / DIFFUSERS_FILE))
    assert (output / "ema" / COMFYUI_FILE).is_file()
    assert plain.keys() == ema.keys()
    for name, value in expected.items():
        key = "transformer." + name.replace(".default.weight", ".weight")
        torch.testing.assert_close(ema[key], value, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(plain[key], history[-1][name])  # the plain LoRA is the last weights
    assert any(not torch.allclose(ema[k], plain[k]) for k in plain)


def test_ema_lora_loads_in_diffusers_and_the_run_resumes_its_average_exactly(
    tmp_path: Path, clips_dir: Path, make_config, tiny_ltx_dir: Path
) -> None:
    from diffusers import LTXPipeline

    common = {"use_ema": True, "ema_decay": 0.9, "checkpointing_steps": 2}
    whole = make_config(tmp_path / "whole", clips_dir, None, max_train_steps=4, **common)
    assert main(["train", "--config", str(whole)]) == 0
    parts = make_config(tmp_path / "parts", clips_dir, None, max_train_steps=2, **common)
    assert main(["train", "--config", str(parts)]) == 0
    assert (tmp_path / "parts" / "output" / "checkpoint-2" / "ema.safetensors").is_file()
    args = ["--max_train_steps=4", "--resume_from_checkpoint=latest"]
    assert main(["train", "--config", str(parts), *args]) == 0
    a = load_file(str(tmp_path / "whole" / "output" / "ema" / DIFFUSERS_FILE))
    b = load_file(str(tmp_path / "parts" / "output" / "ema" / DIFFUSERS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = LTXPipeline.from_pretrained(tiny_ltx_dir)
    pipe.load_lora_weights(str(tmp_path / "whole" / "output" / "ema"))
    loaded = {n: p for n, p in pipe.transformer.named_parameters() if "lora_" in n}
    for key, value in a.items():
        name = key.removeprefix("transformer.").replace(".weight", ".default_0.weight")
        torch.testing.assert_close(loaded[name], value)
    # a checkpoint without EMA weights cannot resume an EMA run
    plain = make_config(tmp_path / "plain", clips_dir, None, max_train_steps=2, checkpointing_steps=2)
    assert main(["train", "--config", str(plain)]) == 0
    assert main(["train", "--config", str(plain), "--use_ema=true", *args]) == 2


@pytest.mark.parametrize(
    ("mode", "videos"),
    [
        ("comparison", ["validation_64x64.mp4", "validation_ema_64x64.mp4"]),
        ("ema_only", ["validation_ema_64x64.mp4"]),
    ],
)
def test_ema_validation_generates_with_the_ema_weights(
    mode: str,
    videos: list[str],
    tmp_path: Path,
    clips_dir: Path,
    make_config,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, torch.Tensor]] = []
    from cinetune.training.validation import Validator

    real = Validator.run

    def run(self, step, model, output_dir, on_video=None, tag=""):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return real(self, step, model, output_dir, on_video, tag)

    monkeypatch.setattr(Validator, "run", run)
    validation = {
        "validation_prompt": "a square",
        "validation_resolution": "64x64",
        "validation_num_video_frames": 9,
        "validation_num_inference_steps": 2,
    }
    path = make_config(
        tmp_path,
        clips_dir,
        None,
        max_train_steps=3,
        use_ema=True,
        ema_decay=0.9,
        ema_validation=mode,
        **validation,
    )
    trainer = Trainer(resolve(load_config(path)))
    result = trainer.run()
    folder = tmp_path / "output" / "validation" / "step_3"
    assert sorted(p.name for p in folder.iterdir()) == sorted(videos)
    ema = load_file(str(tmp_path / "output" / "ema" / DIFFUSERS_FILE))
    with_ema = seen[-1]
    for key, value in ema.items():
        name = key.removeprefix("transformer.").replace(".weight", ".default.weight")
        torch.testing.assert_close(with_ema[name], value)
    final = _trainable(trainer)  # the trained weights are back after validation
    plain = load_file(result["lora"])
    for name, value in final.items():
        torch.testing.assert_close(plain["transformer." + name.replace(".default.weight", ".weight")], value)
