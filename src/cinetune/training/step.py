"""One micro-batch's loss: the family's forward passes through the model, combined by the one loss."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

import torch

from cinetune.models.base import ModelFamily
from cinetune.objectives import LossOutput, ModelInputs, compute_loss, to_device
from cinetune.training.batches import Batch


class StepHooks(Protocol):
    """What the run's optional features do around each forward pass (training/extras.py): change its inputs
    or route its tokens before it, and turn what it left behind into loss terms after it."""

    def begin(self, batch: Batch) -> None: ...

    def before_forward(
        self, model: torch.nn.Module, forward: ModelInputs, generator: torch.Generator
    ) -> None: ...

    def after_forward(self, model: torch.nn.Module, forward: ModelInputs, output: Any) -> None: ...

    def loss_terms(self) -> dict[str, torch.Tensor]: ...


def step_loss(
    family: ModelFamily,
    model: torch.nn.Module,
    batch: Batch,
    generator: torch.Generator,
    sigma_sampler: str,
    device: torch.device,
    dtype: torch.dtype,
    hooks: StepHooks | None = None,
) -> LossOutput:
    """The family turns the batch into forward passes and loss streams; the model runs each; `compute_loss`
    reduces them (with the hooks' terms). Random draws happen on the CPU generator, so a run is reproducible
    across devices; the cached latents and caption embeddings go to the device first (non-blocking copies)."""
    config = getattr(model, "module", model).config
    batch = replace(
        batch,
        tensors={k: to_device(v, device) for k, v in batch.tensors.items()},
        # counts that decide the forward passes on the host (Kandinsky's caption lengths) stay there
        text={k: v if k.endswith("_lengths") else to_device(v, device) for k, v in batch.text.items()},
    )
    inputs = family.training_inputs(batch, generator, sigma_sampler, device, dtype, config)
    if hooks is not None:
        hooks.begin(batch)
    outputs = []
    for forward in inputs:
        if hooks is not None:
            hooks.before_forward(model, forward, generator)
        outputs.append(model(**forward.kwargs))
        if hooks is not None:
            hooks.after_forward(model, forward, outputs[-1])
    return compute_loss(inputs, outputs, hooks.loss_terms() if hooks is not None else None)


def training_loss(
    family: ModelFamily,
    model: torch.nn.Module,
    batch: Batch,
    generator: torch.Generator,
    sigma_sampler: str,
    device: torch.device,
    dtype: torch.dtype,
    hooks: StepHooks | None = None,
) -> torch.Tensor:
    """The scalar to backpropagate (see `step_loss`)."""
    return step_loss(family, model, batch, generator, sigma_sampler, device, dtype, hooks).total
