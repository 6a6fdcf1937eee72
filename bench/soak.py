"""Soak test: a long tiny-model run with frequent checkpoints and validations, host memory sampled as it goes.

A leak that costs a few kB per step is invisible in a 6-step test and fatal in a 20,000-step run. This runs
the real `Trainer` (scan, cache, train, checkpoints, validation, export) on the tiny LTX-Video model and the
demo's synthetic clips, samples the process's resident memory (RSS) every `--sample-every` steps, and prints
the RSS slope after the warm-up (least squares, MB per 100 steps; goal: flat, under 1 MB per 100 steps) and
how many checkpoints `checkpoints_total_limit` kept. Not part of `make test`:

    python bench/soak.py                         # 2,000 steps, checkpoint every 50, validation every 200
    python bench/soak.py --steps 400 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from cinetune.config import load_config
from cinetune.demo import write_demo_dataset
from cinetune.plan import list_checkpoints, resolve
from cinetune.training.trainer import Trainer


def write_config(root: Path, args: argparse.Namespace) -> Path:
    clips = write_demo_dataset(root / "clips", num_clips=4, num_frames=30, size=(96, 64), fps=24)
    config = {
        "model_family": "ltxvideo",
        "model_flavour": "tiny",
        "output_dir": str(root / "output"),
        "data_backend_config": str(root / "multidatabackend.json"),
        "train_batch_size": 2,
        "learning_rate": 1e-4,
        "max_train_steps": args.steps,
        "checkpointing_steps": args.checkpoint_every,
        "checkpoints_total_limit": args.keep,
        "validation_steps": args.validate_every,
        "validation_prompt": "a red square",
        "validation_resolution": "64x64",
        "validation_num_video_frames": 9,
        "validation_num_inference_steps": 2,
        "mixed_precision": "no",
        "lora_rank": 4,
        "seed": 3,
        "frame_rate": 24,
        "logging_steps": 1,
        "report_to": "none",
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
            "cache_dir_vae": str(root / "cache" / "vae"),
            "video": {"num_frames": 9, "min_frames": 9},
        },
        {
            "id": "text",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": str(root / "cache" / "text"),
        },
    ]
    (root / "multidatabackend.json").write_text(json.dumps(datasets))
    (root / "config.json").write_text(json.dumps(config))
    return root / "config.json"


def slope_mb_per_100(samples: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS over steps, in MB per 100 steps."""
    steps = [s for s, _ in samples]
    rss = [r / 2**20 for _, r in samples]
    mean_s, mean_r = statistics.fmean(steps), statistics.fmean(rss)
    num = sum((s - mean_s) * (r - mean_r) for s, r in zip(steps, rss, strict=True))
    den = sum((s - mean_s) ** 2 for s in steps)
    return 100 * num / den


def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    trainer = Trainer(resolve(load_config(write_config(root, args))))
    process = psutil.Process()
    samples: list[tuple[int, int]] = []
    periodic = trainer.periodic

    def sampled(step: int) -> None:  # after the step's checkpoint and validation, if any
        periodic(step)
        if step % args.sample_every == 0:
            samples.append((step, process.memory_info().rss))

    trainer.periodic = sampled  # type: ignore[method-assign]
    start = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - start
    after = [s for s in samples if s[0] >= args.warmup]
    out = Path(trainer.cfg.output_dir)
    return {
        "steps": result["steps"],
        "seconds": round(seconds, 1),
        "rss_mb_first": round(samples[0][1] / 2**20, 1),
        "rss_mb_at_warmup": round(after[0][1] / 2**20, 1),
        "rss_mb_last": round(samples[-1][1] / 2**20, 1),
        "rss_mb_max": round(max(r for _, r in samples) / 2**20, 1),
        "rss_slope_mb_per_100_steps": round(slope_mb_per_100(after), 3),
        "samples_after_warmup": len(after),
        "checkpoints_kept": [p.name for p in list_checkpoints(out)],
        "validation_steps_written": sorted(int(p.name[5:]) for p in (out / "validation").iterdir()),
        "metrics_lines": len((out / "metrics.jsonl").read_text().splitlines()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--validate-every", type=int, default=200)
    parser.add_argument("--keep", type=int, default=3, help="checkpoints_total_limit")
    parser.add_argument("--warmup", type=int, default=400, help="steps before the slope is measured")
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cinetune-soak-") as tmp:
        figures = soak(args, Path(tmp))
    figures["load_average"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    flat = figures["rss_slope_mb_per_100_steps"] < 1.0
    for key, value in figures.items():
        print(f"{key:28s} {value}")
    print(f"{'verdict':28s} {'flat (under 1 MB per 100 steps)' if flat else 'GROWING: look for a leak'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
