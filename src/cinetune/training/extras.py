"""The optional training features of a run, gathered in one place the trainer calls at fixed points.

Each feature is off by default and lives in its own module (ema.py, routing.py, rollout.py,
regularizers/crepa.py); `RunExtras` builds the ones the config turns on and answers the trainer's few
questions: what to do around each forward pass (the `StepHooks` of training/step.py), after an optimizer
step, which extra state a checkpoint holds, which weights validation and export run with.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from cinetune.models.vision import FrameFeatures
from cinetune.objectives import ModelInputs
from cinetune.training.ema import WeightEMA
from cinetune.training.regularizers.crepa import PROJECTOR_ATTRIBUTE, Crepa
from cinetune.training.rollout import Rollout
from cinetune.training.routing import TokenRouter

Weights = Callable[[], AbstractContextManager[Any]]


def frame_features(cfg: Any) -> FrameFeatures | None:
    """The vision features the latent cache stores for CREPA, or None."""
    return FrameFeatures(cfg.crepa_model, cfg.crepa_encoder_image_size) if cfg.crepa_enabled else None


class RunExtras:
    def __init__(self, cfg: Any, family: Any, model: torch.nn.Module) -> None:
        """On the unwrapped transformer with its adapter, before the optimizer is built: hooks, and the
        trainable modules features add (the CREPA projector)."""
        self.cfg = cfg
        self.router = TokenRouter(family, model, list(cfg.tread_config.routes)) if cfg.tread_config else None
        self.rollout = Rollout(cfg) if cfg.scheduled_sampling_max_step_offset > 0 else None
        self.crepa = None
        if cfg.crepa_enabled:  # after the router: its hook sees the route's restored output
            self.crepa = Crepa(cfg, family, model)
            self.crepa.attach(frame_features(cfg).width())
        self.ema: WeightEMA | None = None
        self.step = 0  # optimizer steps taken

    def start(self, model: torch.nn.Module, device: torch.device) -> None:
        """Once the trainable weights are final (fp32, init_lora, device): the EMA of the adapter's."""
        if self.cfg.use_ema:
            named = [
                (n, p)
                for n, p in model.named_parameters()
                if p.requires_grad and not n.startswith(PROJECTOR_ATTRIBUTE)
            ]
            self.ema = WeightEMA(named, self.cfg, device)

    # ---- around each forward pass (StepHooks) ----------------------------------------------------------
    def begin(self, batch: Any) -> None:
        if self.crepa is not None:
            self.crepa.begin(batch)

    def before_forward(
        self, model: torch.nn.Module, forward: ModelInputs, generator: torch.Generator
    ) -> None:
        if self.rollout is not None:  # the model's own input first (no gradient, every token)
            self.rollout.apply(model, forward, self.step, generator)
        if self.router is not None:
            self.router.prepare(forward, generator)

    def after_forward(self, model: torch.nn.Module, forward: ModelInputs, output: Any) -> None:
        if self.router is not None:
            self.router.finish()
        if self.crepa is not None:
            self.crepa.after_forward(forward)

    def loss_terms(self) -> dict[str, torch.Tensor]:
        return self.crepa.loss_terms() if self.crepa is not None else {}

    # ---- around the loop -------------------------------------------------------------------------------
    def after_optimizer_step(self, step: int) -> None:
        """`step`: the optimizer step just taken (1-based)."""
        self.step = step
        if self.ema is not None:
            self.ema.update(step)

    def checkpoint_parts(self) -> list[Any]:
        """Objects with `save(folder)` and `load(folder)`: state a resumed run needs besides the LoRA."""
        return [part for part in (self.ema, self.crepa) if part is not None]

    def validation_variants(self) -> list[tuple[str, Weights]]:
        """(file-name tag, weights to validate with) pairs: the trained weights, the EMA's, or both."""
        plain: list[tuple[str, Weights]] = [("", nullcontext)]
        if self.ema is None or self.cfg.ema_validation == "none":
            return plain
        ema: list[tuple[str, Weights]] = [("_ema", self.ema.swapped)]
        return ema if self.cfg.ema_validation == "ema_only" else plain + ema

    def export_variants(self, output_dir: Path) -> list[tuple[Path, Weights]]:
        """Besides the LoRA in OUTPUT_DIR: (folder, weights) of the other exported LoRAs (OUTPUT_DIR/ema)."""
        return [] if self.ema is None else [(Path(output_dir) / "ema", self.ema.swapped)]
