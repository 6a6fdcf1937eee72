"""Non-finite steps: an optimizer step whose loss or gradient is NaN / inf is skipped, never applied.

The step's figures (loss, each loss stream, gradient norm, and whether a rank was asked to stop) are reduced
over the ranks and read in the step's one host sync, so every rank takes the same decision. A skipped step
changes neither the LoRA nor the optimizer nor the learning-rate schedule; `max_nonfinite_steps` skips in a
row stop the run (TrainingDiverged, exit code 3) with the last good checkpoint named. With fp16 the
GradScaler keeps its own rule (an overflowing gradient skips the step and lowers the scale, which is normal
at the start); only a non-finite loss counts towards the stop there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cinetune.errors import TrainingDiverged
from cinetune.memory.fsdp import full, local

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepHealth:
    loss: float  # mean over micro-batches and ranks
    grad_norm: float  # as logged: 0.0 when clipping is off
    streams: dict[str, float]  # this rank's loss streams, for the message
    raw_norm: float  # the gradient norm, also when clipping is off
    stop: bool  # some rank was asked to stop (a signal): all stop after this step

    @property
    def loss_finite(self) -> bool:
        return math.isfinite(self.loss)

    @property
    def grads_finite(self) -> bool:
        return math.isfinite(self.raw_norm)


def measure_step(
    acc: Any,
    params: list[torch.nn.Parameter],
    max_grad_norm: float,
    total: torch.Tensor,
    streams: dict[str, torch.Tensor],
    stop_requested: bool,
) -> StepHealth:
    """Clip the gradients (max_grad_norm > 0) and read the step's figures with one host sync."""
    if max_grad_norm > 0:
        norm = torch.as_tensor(acc.clip_grad_norm_(params, max_grad_norm))
    else:  # no clipping, but a non-finite gradient must still be seen
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    norm = full(norm)  # FSDP2: the norm over sharded gradients is a DTensor
    device = total.device
    shared = acc.reduce(torch.stack([total, torch.tensor(float(stop_requested), device=device)]), "mean")
    names = list(streams)
    local = [norm.reshape(1).float().to(device), *(streams[n].reshape(1).float() for n in names)]
    figures = torch.cat([shared.float(), *local]).tolist()
    loss, stop, raw_norm = figures[0], figures[1] > 0, figures[2]
    return StepHealth(
        loss=loss,
        grad_norm=raw_norm if max_grad_norm > 0 else 0.0,
        streams=dict(zip(names, figures[3:], strict=True)),
        raw_norm=raw_norm,
        stop=stop,
    )


class NonFiniteGuard:
    """Decides whether a step is applied and counts the non-finite steps in a row."""

    def __init__(
        self,
        limit: int,
        scaler_skips: bool,
        advice: str,
        last_checkpoint: Callable[[], Path | None],
    ) -> None:
        self.limit = limit
        self.scaler_skips = scaler_skips  # fp16: the GradScaler skips overflowing steps itself
        self.advice = advice
        self.last_checkpoint = last_checkpoint
        self.in_a_row = 0
        self.skipped = 0
        self.last_problem = ""

    def apply(self, health: StepHealth) -> bool:
        """Whether the optimizer (and the schedule) may step on these gradients."""
        if self.scaler_skips:
            return True
        return health.loss_finite and health.grads_finite

    def record(self, step: int, health: StepHealth) -> None:
        """After step `step`: count and log a non-finite one (`raise_if_diverged` then stops the run)."""
        bad = not health.loss_finite or (not self.scaler_skips and not health.grads_finite)
        if not bad:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.skipped += 1
        what = self.describe(health)
        logger.warning(
            "step %d: %s; optimizer step skipped (%d in a row, the run stops at %d)",
            step,
            what,
            self.in_a_row,
            self.limit,
        )
        self.last_problem = what

    def raise_if_diverged(self, step: int) -> None:
        """TrainingDiverged after `limit` non-finite steps in a row (once the step's metrics are logged)."""
        if self.in_a_row >= self.limit:
            raise TrainingDiverged(self.message(step, self.last_problem))

    def describe(self, health: StepHealth) -> str:
        parts = []
        if not health.loss_finite:
            bad = [f"{n}={v}" for n, v in health.streams.items() if not math.isfinite(v)]
            parts.append(f"non-finite loss {health.loss}" + (f" (stream {', '.join(bad)})" if bad else ""))
        if not health.grads_finite:
            parts.append(f"non-finite gradient norm {health.raw_norm}")
        return " and ".join(parts)

    def message(self, step: int, what: str) -> str:
        checkpoint = self.last_checkpoint()
        last = (
            f"the last good checkpoint is {checkpoint} (resume_from_checkpoint: latest)"
            if checkpoint is not None
            else "no checkpoint was written (checkpointing_steps keeps some)"
        )
        return (
            f"training stopped at step {step}: {self.in_a_row} optimizer steps in a row were non-finite "
            f"(max_nonfinite_steps: {self.limit}; the last: {what}); nothing was exported and {last}. "
            f"{self.advice}"
        )

    def require_finite_lora(
        self,
        model: torch.nn.Module,
        step: int,
        what: str,
        state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Nothing non-finite leaves the run: TrainingDiverged before `what` would be written. `state`: the
        adapter's state already gathered (FSDP2), else the model's trained parameters are read."""
        # the trained parameters: the adapter's (LoRA, DoRA, LyCORIS) and the training extras' (a projector)
        if state is None:
            state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        if not lora_is_finite(state):
            raise TrainingDiverged(
                f"step {step}: the LoRA weights hold non-finite values; {what} not written "
                f"(the last good checkpoint: {self.last_checkpoint() or 'none'})"
            )


def advice_for(cfg: Any) -> str:
    """What usually cures a diverging run, with this run's values."""
    tips = [f"lower the learning_rate (now {cfg.learning_rate:g})"]
    if cfg.mixed_precision != "no":
        tips.append(f"train in fp32 (mixed_precision: no, now {cfg.mixed_precision})")
    if cfg.max_grad_norm > 0:
        tips.append(f"clip gradients harder (max_grad_norm below {cfg.max_grad_norm:g})")
    else:
        tips.append("clip gradients (max_grad_norm: 1.0; 0 turns clipping off)")
    return "Try: " + "; ".join(tips) + "."


def lora_is_finite(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether every value is finite (of a DTensor: this rank's shard)."""
    return all(bool(torch.isfinite(local(t)).all()) for t in tensors.values())
