"""Graceful stop: SIGINT / SIGTERM finish the current step (or cache entry), write a checkpoint, export
nothing and exit 130 / 143; a second signal stops at once; the next run resumes to the uninterrupted run's
LoRA.

The signals are real (the fault hook sends them to this process at a counted point, so they land at the
same place every time) and reach the handlers `cinetune train` installs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cinetune.cache.store import TensorCache
from cinetune.export.lora import DIFFUSERS_FILE
from cinetune.export.manifest import verify_manifest
from cinetune.plan import list_checkpoints

from .runs import lora, same_lora, train_here, write_run

# Windows has no SIGTERM to catch, and os.kill(pid, SIGINT) there terminates the process outright.
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigint_finishes_the_step_checkpoints_and_exits_130(
    tmp_path: Path, clips_dir: Path, shared_caches: Path, reference: Path, fault, capsys
) -> None:
    config = write_run(tmp_path, clips_dir, shared_caches)
    out = tmp_path / "output"
    fault("train.micro_batch:3:INT")  # Ctrl-C in the middle of step 3
    assert train_here(config) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "SIGINT received: stopping after the current step" in err and "stopped at step 3 of 6" in err
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    assert verify_manifest(out / "checkpoint-3") is None
    assert not (out / DIFFUSERS_FILE).exists() and not (out / "validation").exists()  # nothing partial
    assert _steps(out) == [1, 2, 3]
    fault("")
    assert train_here(config) == 0
    assert same_lora(lora(out), lora(reference))
    assert _steps(out) == [1, 2, 3, 4, 5, 6]


def test_sigterm_while_caching_keeps_the_entries_and_exits_143(
    tmp_path: Path, clips_dir: Path, reference: Path, fault, capsys
) -> None:
    config = write_run(tmp_path, clips_dir)  # its own caches
    latents = TensorCache(tmp_path / "cache" / "vae")
    fault("cache.latent:2:TERM")
    assert train_here(config) == 143
    err = " ".join(capsys.readouterr().err.split())
    written = sorted(latents.root.rglob("*.safetensors"))
    assert len(written) == 2 and all(latents.damaged(p.stem) is None for p in written)
    assert not list(latents.root.rglob("*.tmp"))
    fault("")
    assert train_here(config) == 0
    total = len(list(latents.root.rglob("*.safetensors")))
    assert f"stopped while caching video latents ({total - 2} still to encode)" in err
    assert same_lora(lora(tmp_path / "output"), lora(reference))


def test_a_second_signal_stops_at_once(
    tmp_path: Path, clips_dir: Path, shared_caches: Path, reference: Path, fault, capsys
) -> None:
    config = write_run(tmp_path, clips_dir, shared_caches)
    out = tmp_path / "output"
    fault(
        "train.micro_batch:2:INT,checkpoint.file:1:INT"
    )  # the second while the stop's checkpoint is written
    assert train_here(config) == 130
    assert "stopped at once" in capsys.readouterr().err
    assert list_checkpoints(out) == [] and (out / ".tmp-checkpoint-2").is_dir()  # never under a final name
    fault("")
    assert train_here(config) == 0  # starts over, sweeps the leftover
    assert not (out / ".tmp-checkpoint-2").exists()
    assert same_lora(lora(out), lora(reference))
