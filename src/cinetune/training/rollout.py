"""Scheduled sampling (rollout): the model moves its own training input from a higher sigma down to the
training sigma before the loss step, so it learns from inputs carrying its own errors (exposure bias).

Per sample of a forward pass: with probability p (scheduled_sampling_probability, or the ramp from
_prob_start to _prob_end over _ramp_steps optimizer steps from _start_step, linear or cosine), a rollout of k
steps, k in 0..scheduled_sampling_max_step_offset drawn by _strategy (uniform; biased_early round(u^2 k_max):
short ones more often; biased_late round((1 - u^2) k_max)). A step is one training timestep, 1/1000 in sigma
(the families' timestep is 1000 sigma): the input starts on the flow path at sigma + k/1000 (at most 1),
x = (1 - s) x0 + s eps, and k Euler steps x <- x + (s' - s) v, with v the model's own prediction (no
gradient, every token: no routing), bring it to the training sigma. The training forward then takes that x;
its target stays eps - x0. Only the video stream rolls out (LTX-2's audio keeps its teacher-forced input).
The draws come from the run's generator. ReflexFlow's additions (the anti-drift regularizer and the
frequency-compensated loss weight) are not built.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cinetune.objectives import ModelInputs
from cinetune.objectives.loss import model_outputs

STEP = 1.0 / 1000.0  # one training timestep in sigma


class Rollout:
    def __init__(self, cfg: Any) -> None:
        self.max_offset = cfg.scheduled_sampling_max_step_offset
        self.probability_fixed = cfg.scheduled_sampling_probability
        self.start, self.end = cfg.scheduled_sampling_prob_start, cfg.scheduled_sampling_prob_end
        self.ramp_steps, self.ramp_start = (
            cfg.scheduled_sampling_ramp_steps,
            cfg.scheduled_sampling_start_step,
        )
        self.shape, self.strategy = cfg.scheduled_sampling_ramp_shape, cfg.scheduled_sampling_strategy
        self.last_offsets: torch.Tensor | None = None  # of the latest forward pass (tests, metrics)

    def probability(self, step: int) -> float:
        """The probability at optimizer step `step` (steps done so far)."""
        if not self.ramp_steps:
            return self.probability_fixed
        if step < self.ramp_start:
            return self.start
        progress = min(1.0, (step - self.ramp_start) / self.ramp_steps)
        if self.shape == "cosine":
            progress = 0.5 - 0.5 * math.cos(math.pi * progress)
        return self.start + (self.end - self.start) * progress

    def offsets(self, batch: int, step: int, generator: torch.Generator) -> torch.Tensor:
        """(B,) rollout lengths in training timesteps; 0 = no rollout."""
        chosen = torch.rand(batch, generator=generator) < self.probability(step)
        u = torch.rand(batch, generator=generator)
        if self.strategy == "uniform":
            k = torch.floor(u * (self.max_offset + 1)).clamp(max=self.max_offset)
        elif self.strategy == "biased_early":
            k = torch.round(u**2 * self.max_offset)
        else:  # biased_late
            k = torch.round((1 - u**2) * self.max_offset)
        return (k * chosen).long()

    @torch.no_grad()
    def apply(
        self, model: torch.nn.Module, forward: ModelInputs, step: int, generator: torch.Generator
    ) -> None:
        """Replace the forward pass's noisy video input by the model's own rollout to its sigma."""
        flow = forward.flow
        if flow is None:
            raise ValueError("scheduled sampling needs the family's flow state (ModelInputs.flow)")
        offsets = self.offsets(flow.sigmas.shape[0], step, generator)
        self.last_offsets = offsets
        if int(offsets.max()) == 0:
            return
        model = getattr(model, "module", model)  # no gradient, no DDP sync
        video = next(s for s in forward.streams if s.name == "video")
        target = flow.sigmas
        offsets = offsets.to(target.device)
        current = torch.clamp(target + offsets * STEP, max=1.0)
        s = current.view(-1, 1, 1).to(flow.x0.dtype)
        x = (1 - s) * flow.x0 + s * flow.noise
        for n in range(int(offsets.max())):
            following = torch.where(offsets > n, torch.maximum(current - STEP, target), current)
            output = model(**{**forward.kwargs, **flow.inputs_at(x, current)})
            velocity = model_outputs(output)[video.output].reshape(x.shape).to(x.dtype)
            x = x + (following - current).view(-1, 1, 1).to(x.dtype) * velocity
            current = following
        forward.kwargs.update(flow.inputs_at(x, target))
