"""Non-finite loss or gradient: the step is skipped (no update), logged with the stream, and
max_nonfinite_steps in a row stop the run with exit code 3; no non-finite LoRA, checkpoint or video is
written; metrics.jsonl stays strict JSON."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cinetune.config import load_config
from cinetune.errors import TrainingDiverged
from cinetune.export.lora import DIFFUSERS_FILE
from cinetune.export.manifest import verify_manifest
from cinetune.plan import list_checkpoints, resolve
from cinetune.training.guard import NonFiniteGuard, StepHealth
from cinetune.training.metrics import strict_record
from cinetune.training.trainer import Trainer

from .runs import train_here, write_run


def test_exploding_learning_rate_stops_with_code_3_and_writes_nothing_non_finite(
    tmp_path: Path, clips_dir: Path, shared_caches: Path, capsys: pytest.CaptureFixture
) -> None:
    config = write_run(tmp_path, clips_dir, shared_caches, learning_rate=1e12, max_train_steps=20)
    assert train_here(config) == 3
    err = " ".join(capsys.readouterr().err.split())
    out = tmp_path / "output"
    checkpoints = list_checkpoints(out)
    assert checkpoints, "the steps before the loss went non-finite were checkpointed"
    assert f"the last good checkpoint is {checkpoints[-1]}" in err
    assert "5 optimizer steps in a row were non-finite" in err
    assert "lower the learning_rate (now 1e+12)" in err
    assert "optimizer step skipped" in err and "non-finite loss nan (stream video=nan)" in err
    assert not (out / DIFFUSERS_FILE).exists()  # nothing exported
    for folder in checkpoints:
        assert verify_manifest(folder) is None
        assert all(torch.isfinite(t).all() for t in load_file(str(folder / "lora.safetensors")).values())
    for video in out.rglob("*.mp4"):  # validation only ran on finite weights: never a black NaN video
        assert video.stat().st_size > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]  # strict
    skipped = [r for r in records if r["loss"] is None]
    assert len(skipped) == 5 and all(r["nonfinite"]["loss"] == "nan" for r in skipped)
    assert [r["step"] for r in skipped] == list(range(records[-1]["step"] - 4, records[-1]["step"] + 1))


def _trainer(tmp_path: Path, clips_dir: Path, shared_caches: Path, **overrides) -> Trainer:
    trainer = Trainer(resolve(load_config(write_run(tmp_path, clips_dir, shared_caches, **overrides))))
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.scan()
    trainer.cache()
    trainer.prepare()
    return trainer


def _snapshot(trainer: Trainer) -> list[torch.Tensor]:
    state = [p.detach().clone() for p in trainer.params]
    for slot in trainer.optimizer.state_dict()["state"].values():
        state += [v.clone() for v in slot.values() if isinstance(v, torch.Tensor)]
    return state


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_a_skipped_step_changes_nothing_and_names_the_stream(
    tmp_path: Path, clips_dir: Path, shared_caches: Path, max_grad_norm: float, caplog
) -> None:
    trainer = _trainer(tmp_path, clips_dir, shared_caches, max_grad_norm=max_grad_norm, lora_dropout=0.0)
    batches = trainer.load_group([[0, 1]])
    trainer.optimizer_step(batches)  # one real step: AdamW has state to keep
    before, lr = _snapshot(trainer), trainer.scheduler.get_last_lr()
    bad = trainer.load_group([[0, 1]])
    bad[0].tensors["latents"][0, 0, 0, 0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="cinetune"):
        loss, _ = trainer.optimizer_step(bad)
    assert math.isnan(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(trainer), strict=True))
    assert trainer.scheduler.get_last_lr() == lr and all(p.grad is None for p in trainer.params)
    assert (
        "step 1: non-finite loss nan (stream video=nan) and non-finite gradient norm nan; optimizer step "
        "skipped (1 in a row, the run stops at 5)"
    ) in caplog.text
    # a finite loss with an infinite gradient (clipping on or off) is skipped too
    hook = trainer.params[0].register_hook(lambda grad: grad * float("inf"))
    loss, _ = trainer.optimizer_step(trainer.load_group([[2, 3]]))
    hook.remove()
    assert math.isfinite(loss) and trainer.guard.in_a_row == 2
    assert "non-finite gradient norm" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(trainer), strict=True))
    trainer.optimizer_step(trainer.load_group([[2, 3]]))  # a good step applies and resets the count
    assert trainer.guard.in_a_row == 0
    assert not torch.equal(before[0], trainer.params[0].detach())


def _health(loss: float, norm: float) -> StepHealth:
    return StepHealth(loss=loss, grad_norm=norm, streams={"video": loss}, raw_norm=norm, stop=False)


def test_fp16_keeps_the_grad_scalers_own_skip() -> None:
    """With a GradScaler an overflowing gradient is the scaler's business (it skips the step and lowers the
    scale); only a non-finite loss counts towards the stop."""
    guard = NonFiniteGuard(2, scaler_skips=True, advice="", last_checkpoint=lambda: None)
    for step in range(1, 10):
        assert guard.apply(_health(0.5, math.inf))  # the optimizer step goes to the scaler, which skips it
        guard.record(step, _health(0.5, math.inf))
    assert guard.in_a_row == 0
    guard.record(10, _health(math.nan, math.nan))
    guard.raise_if_diverged(10)
    guard.record(11, _health(math.inf, math.nan))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written"):
        guard.raise_if_diverged(11)
    plain = NonFiniteGuard(2, scaler_skips=False, advice="", last_checkpoint=lambda: None)
    assert not plain.apply(_health(0.5, math.inf)) and plain.apply(_health(0.5, 3.0))


def test_metrics_records_are_strict_json() -> None:
    record = strict_record({"step": 4, "loss": math.nan, "grad_norm": -math.inf, "lr": 1e-3})
    assert json.loads(json.dumps(record, allow_nan=False)) == {
        "step": 4,
        "loss": None,
        "grad_norm": None,
        "lr": 1e-3,
        "nonfinite": {"loss": "nan", "grad_norm": "-inf"},
    }
