"""Metrics: JSONL file in the output folder, accelerate trackers (tensorboard / wandb), rich progress bar.

metrics.jsonl is strict JSON, one object per line: a non-finite value is written as null and named, with
what it was, under "nonfinite" ({"loss": null, "nonfinite": {"loss": "nan"}}). A line cut short by a crash
is dropped when the next run opens the file, so appending never glues two records together.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cinetune.errors import disk_error


class MetricsLog:
    def __init__(self, output_dir: Path, accelerator: Any, enabled_trackers: bool) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.accelerator = accelerator
        self.trackers = enabled_trackers
        if accelerator.is_main_process:
            _drop_partial_line(self.path)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        line = json.dumps(
            strict_record({"step": step, "time": round(time.time(), 3), **values}), allow_nan=False
        )
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as exc:
            _drop_partial_line(self.path)
            error = disk_error(exc, self.path.parent, self.path.name, len(line) + 1)
            if error is None:
                raise
            raise error from exc
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


def strict_record(values: dict[str, Any]) -> dict[str, Any]:
    """NaN / inf floats become null, listed under "nonfinite" with what they were."""
    bad = {k: str(v) for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return values
    return {**{k: None if k in bad else v for k, v in values.items()}, "nonfinite": bad}


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that does not end in a newline (written by a run that died mid-line)."""
    try:
        with path.open("rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        return


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
