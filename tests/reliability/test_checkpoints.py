"""Checkpoints carry a manifest (sizes, sha256) written last: `latest` skips a damaged one and says why, an
explicit damaged path exits 2 with the reason, and pruning never deletes the newest one that verifies."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from cinetune.export.manifest import MANIFEST, verify_manifest
from cinetune.plan import list_checkpoints
from cinetune.training.checkpoint import Checkpointer

from .runs import logged, lora, same_lora, train_here, write_run


def _names(out: Path) -> list[str]:
    return [p.name for p in list_checkpoints(out)]


@pytest.fixture
def run(tmp_path: Path, clips_dir: Path, shared_caches: Path) -> Path:
    """A finished 6-step run with checkpoints 2, 4 and 6 (no limit)."""
    config = write_run(tmp_path, clips_dir, shared_caches, checkpoints_total_limit=None)
    assert train_here(config) == 0
    assert _names(tmp_path / "output") == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    return config


def test_latest_skips_a_truncated_checkpoint_and_resumes_from_the_one_before(
    run: Path, reference: Path
) -> None:
    out = run.parent / "output"
    manifest = json.loads((out / "checkpoint-6" / MANIFEST).read_text())
    assert set(manifest["files"]) == {
        "lora.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "state.json",
        "rng_0.pt",
    }
    lora_file = out / "checkpoint-6" / "lora.safetensors"
    size = lora_file.stat().st_size
    lora_file.write_bytes(lora_file.read_bytes()[: size // 2])  # what a full disk or a cut copy leaves
    (out / "checkpoint-4" / "optimizer.pt").unlink()
    with logged() as messages:
        assert train_here(run) == 0
    text = "\n".join(messages)
    assert (
        f"skipping {out / 'checkpoint-6'}: lora.safetensors is {size // 2} bytes, the manifest says {size} "
        "(truncated or damaged)"
    ) in text
    assert f"skipping {out / 'checkpoint-4'}: optimizer.pt is missing" in text
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in text
    assert same_lora(lora(out), lora(reference))  # steps 3-6 again: the same LoRA as the uninterrupted run
    assert all(verify_manifest(p) is None for p in list_checkpoints(out))  # 4 and 6 written anew


def test_an_explicit_damaged_checkpoint_exits_2_with_the_reason(run: Path, capsys) -> None:
    out = run.parent / "output"
    target = out / "checkpoint-4" / "optimizer.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern, same size
    target.write_bytes(bytes(data))
    assert train_here(run, f"--resume_from_checkpoint={out / 'checkpoint-4'}") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"resume_from_checkpoint: {out / 'checkpoint-4'} is damaged: optimizer.pt does not match" in err
    (out / "checkpoint-2" / MANIFEST).unlink()
    assert train_here(run, "--resume_from_checkpoint=checkpoint-2") == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_pruning_keeps_the_newest_checkpoint_that_verifies(run: Path, caplog) -> None:
    out = run.parent / "output"
    (out / "checkpoint-4" / MANIFEST).unlink()
    (out / "checkpoint-6" / "state.json").write_text("{}")
    checkpointer = Checkpointer(out, total_limit=1, accelerator=SimpleNamespace(is_main_process=True))
    with caplog.at_level(logging.WARNING, logger="cinetune"):
        checkpointer._prune()
    assert _names(out) == ["checkpoint-2", "checkpoint-6"]
    assert "it is the newest checkpoint that verifies" in caplog.text
    assert not list(out.glob(".trash-*"))
