"""The reliability suite's run: one config, real CLI runs (in this process, or in a subprocess with the
fault-injection hook, src/cinetune/faults.py), and LoRA comparisons."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from cinetune import cli, faults
from cinetune.export.lora import DIFFUSERS_FILE

SRC = Path(__file__).resolve().parents[2] / "src"

# 6 steps of 2 samples over the 4 demo clips, a checkpoint every 2, validation at step 3 and at the end, and
# every random draw a resume must restore (LoRA dropout, caption dropout, posterior samples).
RUN: dict[str, Any] = {
    "model_family": "ltxvideo",
    "model_flavour": "tiny",
    "train_batch_size": 2,
    "learning_rate": 1e-3,
    "max_train_steps": 6,
    "checkpointing_steps": 2,
    "checkpoints_total_limit": 2,
    "resume_from_checkpoint": "latest",
    "mixed_precision": "no",
    "lora_rank": 4,
    "lora_dropout": 0.1,
    "caption_dropout_probability": 0.3,
    "vae_latent_sampling": "sample",
    "seed": 3,
    "frame_rate": 24,
    "report_to": "none",
    "validation_steps": 3,
    "validation_prompt": "a red square",
    "validation_resolution": "64x64",
    "validation_num_video_frames": 9,
    "validation_num_inference_steps": 2,
}


def write_run(root: Path, clips: Path, caches: Path | None = None, **overrides: Any) -> Path:
    """config.json + multidatabackend.json under `root` (output in root/output); caches in `caches`
    (shared between runs whose scenario allows) or in root/cache."""
    caches = caches or root / "cache"
    root.mkdir(parents=True, exist_ok=True)
    config = {
        **RUN,
        "output_dir": str(root / "output"),
        "data_backend_config": str(root / "multidatabackend.json"),
        **overrides,
    }
    datasets = [
        {
            "id": "clips",
            "type": "local",
            "dataset_type": "video",
            "instance_data_dir": str(clips),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel",
            "cache_dir_vae": str(caches / "vae"),
            "video": {"num_frames": 9, "min_frames": 9},
        },
        {
            "id": "text-embeds",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": str(caches / "text"),
        },
    ]
    (root / "multidatabackend.json").write_text(json.dumps(datasets, indent=2))
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root / "config.json"


def train_here(config: Path, *extra: str) -> int:
    """`cinetune train` in this process; the exit code."""
    return cli.main(["train", "--config", str(config), *extra])


def train_subprocess(
    config: Path, fault: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`cinetune train` in a child process, as a user starts it; `fault` goes to CINETUNE_FAULT."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the same float sums as this process
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "cinetune.cli", "train", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def lora(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / DIFFUSERS_FILE))


def same_lora(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@contextmanager
def logged() -> Iterator[list[str]]:
    """Messages cinetune logs inside the block (the CLI resets the root logger's handlers, so a handler on
    the `cinetune` logger it is)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("cinetune")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
