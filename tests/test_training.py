"""Tiny-model runs: the loss falls, a resumed run equals an uninterrupted one, checkpoints prune."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cinetune.config import load_config
from cinetune.plan import resolve
from cinetune.training.checkpoint import list_checkpoints
from cinetune.training.trainer import Trainer


def _train(root: Path, clips: Path, make_config, **overrides):
    return Trainer(resolve(load_config(make_config(root, clips, None, **overrides)))).run()


def test_overfit_loss_falls(tmp_path: Path, clips_dir: Path, make_config) -> None:
    result = _train(
        tmp_path,
        clips_dir,
        make_config,
        max_train_steps=60,
        learning_rate=3e-3,
        lora_rank=8,
        train_batch_size=4,
        flow_sigma_sampler="uniform",
    )
    losses = result["losses"]
    assert len(losses) == 60 and all(math.isfinite(loss) for loss in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)


def test_resumed_run_matches_uninterrupted(tmp_path: Path, clips_dir: Path, make_config) -> None:
    common = {
        "checkpointing_steps": 3,
        "gradient_accumulation_steps": 2,
        "train_batch_size": 1,
        "lora_dropout": 0.1,
        "caption_dropout_probability": 0.3,
        "vae_latent_sampling": "sample",
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 2,
        "dataset": {"video": {"num_frames": 9, "windows_per_clip": 2}},
        # validation loads a VAE while the run starts: it must not disturb the restored RNG states
        "validation_prompt": "a red square",
        "validation_resolution": "64x64",
        "validation_num_video_frames": 9,
        "validation_num_inference_steps": 2,
    }
    full = _train(tmp_path / "full", clips_dir, make_config, max_train_steps=8, **common)
    real_periodic = Trainer.periodic

    def killed_after_step_4(self, step):
        real_periodic(self, step)
        if step == 4:
            raise KeyboardInterrupt  # the process dies between two checkpoints

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "periodic", killed_after_step_4)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "cut", clips_dir, make_config, max_train_steps=8, **common)
    out = tmp_path / "cut" / "output"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3"]
    resumed = _train(
        tmp_path / "cut", clips_dir, make_config, max_train_steps=8, resume_from_checkpoint="latest", **common
    )
    assert resumed["steps"] == 8
    assert resumed["losses"] == pytest.approx(full["losses"][3:], rel=1e-6, abs=1e-7)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 4, 5, 6, 7, 8]


def test_checkpoints_are_pruned_and_written_atomically(tmp_path: Path, clips_dir: Path, make_config) -> None:
    _train(
        tmp_path, clips_dir, make_config, max_train_steps=6, checkpointing_steps=2, checkpoints_total_limit=2
    )
    out = tmp_path / "output"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    assert not list(out.glob(".tmp-*"))
    files = {p.name for p in (out / "checkpoint-6").iterdir()}
    assert {"lora.safetensors", "optimizer.pt", "scheduler.pt", "state.json", "rng_0.pt"} <= files
    state = json.loads((out / "checkpoint-6" / "state.json").read_text())
    assert state["step"] == 6


def test_bf16_run_is_finite(tmp_path: Path, clips_dir: Path, make_config) -> None:
    result = _train(
        tmp_path,
        clips_dir,
        make_config,
        max_train_steps=3,
        mixed_precision="bf16",
        gradient_checkpointing=True,
    )
    assert all(abs(loss) < 100 for loss in result["losses"])


def test_fewer_batches_than_accumulation_is_a_clear_error(
    tmp_path: Path, clips_dir: Path, make_config
) -> None:
    from cinetune.errors import DataError

    with pytest.raises(DataError, match="gradient_accumulation_steps"):
        _train(
            tmp_path,
            clips_dir,
            make_config,
            train_batch_size=2,
            gradient_accumulation_steps=4,
            dataset={"video": {"num_frames": 9, "windows_per_clip": 1}},
        )


def test_resume_with_another_lora_setup_is_a_config_error(
    tmp_path: Path, clips_dir: Path, make_config
) -> None:
    from cinetune.errors import ConfigError

    _train(tmp_path, clips_dir, make_config, max_train_steps=2, checkpointing_steps=1)
    with pytest.raises(ConfigError, match="use the same lora_rank"):
        _train(
            tmp_path, clips_dir, make_config, max_train_steps=3, lora_rank=8, resume_from_checkpoint="latest"
        )
