"""EMA of the trained weights (`use_ema`), on diffusers' `EMAModel`.

The shadow copy lives on the CPU (`ema_device: cpu`, the default) or on the training device
(`accelerator`). It is updated after every `ema_update_interval`-th optimizer step with one `EMAModel.step`:
ema <- ema - (1 - d) (ema - w). The decay d of the n-th update is diffusers' ramp: 0 for the first (it
copies the weights), then min(ema_decay, n / (n + 9)); with `ema_warmup_steps` W the updates at optimizer
steps <= W copy the weights (d = 0) and later ones use ema_decay itself, without ramp.

The shadow weights and the update count are saved in every checkpoint (`ema.safetensors`, `ema.json`), so a
resumed run continues the same average; `swapped()` puts them into the model for validation and export.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)
EMA_FILE = "ema.safetensors"
EMA_STATE = "ema.json"


class _WarmupEMA(EMAModel):
    """diffusers' EMAModel; with warmup_steps, decay 0 up to that optimizer step, then ema_decay flat."""

    warmup_steps: int = 0
    current_step: int = 0  # the optimizer step of the update in progress

    def get_decay(self, optimization_step: int) -> float:
        if self.warmup_steps:
            return 0.0 if self.current_step <= self.warmup_steps else self.decay
        return super().get_decay(optimization_step)


class WeightEMA:
    """The EMA of the named trainable parameters of a run."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]], cfg: Any, device: torch.device) -> None:
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.device = torch.device("cpu") if cfg.ema_device == "cpu" else device
        if cfg.ema_device == "accelerator" and device.type == "cpu":
            logger.warning("ema_device: accelerator changes nothing here: training runs on the CPU")
        self.interval = cfg.ema_update_interval
        self.ema = _WarmupEMA(
            [self._source(p) for p in self.params], decay=cfg.ema_decay, foreach=self.device.type != "cpu"
        )
        self.ema.warmup_steps = cfg.ema_warmup_steps
        self.ema.to(self.device, torch.float32)

    def _source(self, param: torch.nn.Parameter) -> torch.Tensor:
        """The parameter as EMAModel reads it: on the EMA's device, fp32, marked trainable (EMAModel copies
        tensors that do not require grad instead of averaging them)."""
        if param.device == self.device and param.dtype == torch.float32:
            return param
        return param.detach().to(self.device, torch.float32).requires_grad_(True)

    @property
    def updates(self) -> int:
        return self.ema.optimization_step

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step `step` (1-based): one EMA update every `interval` steps."""
        if step % self.interval:
            return
        self.ema.current_step = step
        self.ema.step([self._source(p) for p in self.params])

    def shadow(self) -> dict[str, torch.Tensor]:
        pairs = zip(self.names, self.ema.shadow_params, strict=True)
        return {name: t.detach().to("cpu").contiguous() for name, t in pairs}

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The model holds the EMA weights inside the block, its trained weights again after it."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    # ---- checkpoint part -----------------------------------------------------------------------------------
    name = "ema"

    def save(self, folder: Path) -> None:
        save_file(self.shadow(), str(Path(folder) / EMA_FILE))
        state = {"updates": self.ema.optimization_step, "decay": self.ema.decay}
        (Path(folder) / EMA_STATE).write_text(json.dumps(state))

    def load(self, folder: Path) -> None:
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            raise ValueError(f"{folder} holds no EMA weights ({EMA_FILE}): it was written without use_ema")
        stored = load_file(str(path))
        missing = [n for n in self.names if n not in stored]
        if missing:
            raise ValueError(f"its EMA weights do not match this run's trainable weights (no {missing[0]})")
        self.ema.shadow_params = [stored[n].to(self.device, torch.float32) for n in self.names]
        self.ema.optimization_step = int(json.loads((Path(folder) / EMA_STATE).read_text())["updates"])
