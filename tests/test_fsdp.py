"""FSDP2 (`fsdp_enable`) on CPU gloo, tiny LTX-Video: two ranks sharding the transformer train the LoRA that
two DDP ranks train (same batches, same draws: only the gradient reduction differs), a resume from a sharded or
a full checkpoint ends exactly where the run that never stopped did, and FSDP2 over two ranks follows one
process with the whole batch (tests/fsdp_reference.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_configs

LORA = "pytorch_lora_weights.safetensors"
# DDP all-reduces the LoRA gradients, FSDP2 reduce-scatters them: sums in another order, so fp32 rounding
# (about 1e-7 relative) may differ and Adam's first steps (lr 1e-3, update ~ lr) move it a little.
DDP_TOLERANCE = 1e-5


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def _train(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cinetune.cli", "train", "--config", str(config), *overrides],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc


def _lora(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / LORA))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


COMMON: dict[str, Any] = {
    "max_train_steps": 3,
    "train_batch_size": 1,
    "checkpointing_steps": 2,
    "num_processes": 2,
    "cpu": True,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, clips_dir: Path) -> dict[str, Path]:
    """The runs the tests compare, each trained once: DDP, FSDP2 sharded, FSDP2 full with rank-0 loading."""
    out: dict[str, Path] = {}
    for name, keys in (
        ("ddp", {}),
        ("sharded", {"fsdp_enable": True}),
        (
            "full",
            {
                "fsdp_enable": True,
                "fsdp_state_dict_type": "FULL_STATE_DICT",
                "fsdp_cpu_ram_efficient_loading": True,
                "fsdp_reshard_after_forward": False,
            },
        ),
    ):
        root = tmp_path_factory.mktemp(name)
        config = write_configs(root, clips_dir, None, **COMMON, **keys)
        _train(config)
        out[name] = root
    return out


@pytest.mark.slow
def test_fsdp2_trains_the_ddp_lora(runs: dict[str, Path]) -> None:
    ddp = _lora(runs["ddp"] / "output")
    sharded = _lora(runs["sharded"] / "output")
    assert _max_diff(ddp, sharded) < DDP_TOLERANCE
    assert _max_diff(ddp, {k: torch.zeros_like(v) for k, v in ddp.items()}) > 1e-3  # it trained
    # the full-state run (rank 0 read the weights, blocks kept gathered after the forward) computes the same
    assert _max_diff(sharded, _lora(runs["full"] / "output")) == 0.0
    # the sharded checkpoint: each rank's shard written by torch.distributed.checkpoint, plus the whole LoRA
    names = {p.name for p in (runs["sharded"] / "output" / "checkpoint-2").iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "lora.safetensors", "rng_1.pt"} <= names
    assert "optimizer.pt" not in names
    names = {p.name for p in (runs["full"] / "output" / "checkpoint-2").iterdir()}
    assert {"fsdp_trained.safetensors", "fsdp_optimizer.pt", "lora.safetensors"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_fsdp2_resume_is_exact(kind: str, runs: dict[str, Path], tmp_path: Path) -> None:
    """A run resumed from checkpoint-2 ends with the LoRA of the run that never stopped, bit for bit."""
    source = runs[kind]
    config = source / "config" / "config.json"
    out = tmp_path / "output"
    out.mkdir()
    shutil.copytree(source / "output" / "checkpoint-2", out / "checkpoint-2")
    _train(config, f"--output_dir={out}", "--resume_from_checkpoint=latest")
    assert _max_diff(_lora(out), _lora(source / "output")) == 0.0
