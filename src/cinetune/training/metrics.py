"""Metrics: JSONL file in the output folder, accelerate trackers (tensorboard / wandb), rich progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class MetricsLog:
    def __init__(self, output_dir: Path, accelerator: Any, enabled_trackers: bool) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.accelerator = accelerator
        self.trackers = enabled_trackers

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        if self.trackers:
            self.accelerator.log(values, step=step)

    def log_video_frames(self, step: int, name: str, frames: np.ndarray) -> None:
        """Trackers get the first, middle and last frame side by side (no video codec needed there)."""
        if not (self.trackers and self.accelerator.is_main_process):
            return
        strip = np.concatenate([frames[0], frames[len(frames) // 2], frames[-1]], axis=1)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(f"validation/{name}", strip, step, dataformats="HWC")
            elif tracker.name == "wandb":
                import wandb

                tracker.log({f"validation/{name}": wandb.Image(strip)}, step=step)


def make_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[sps]:.2f} s/step"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
