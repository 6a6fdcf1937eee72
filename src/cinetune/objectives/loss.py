"""The one training loss: a family returns model inputs and loss streams, `compute_loss` combines them.

A stream is one prediction of the model compared with its flow-matching target (video tokens, audio tokens),
with a token mask (conditioning tokens carry no loss) and a weight. Each stream says how it is reduced, as
the official trainer of its family reduces it:

- over all tokens of the batch (LTX-Video-Trainer: mean(L * m) / mean(m)); when a batch needs several forward
  passes (Kandinsky 5 splits it by caption length), each pass counts by its number of loss tokens;
- per sample, then the mean over the batch (the LTX-2 trainer returns a per-sample loss of shape (B,) and
  reduces it); streams reduced per sample are added per sample first (LTX-2: video + audio, 1:1).

Regularizers and token routing add streams or terms here, once, for every family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cinetune.objectives.flow import flow_loss


@dataclass
class LossStream:
    """One prediction/target pair. target (B, N, C) tokens; mask (B, N) True where a token counts."""

    name: str
    target: torch.Tensor
    output: int = 0  # index of the prediction in the model's output tuple
    mask: torch.Tensor | None = None
    weight: float = 1.0
    per_sample: bool = False  # reduce per sample, then over the batch (else over all tokens of the batch)


@dataclass
class FlowState:
    """The video stream's flow-matching draw of a forward pass, in the stream's token layout (B, N, C): what
    scheduled sampling needs to move the noisy input. `inputs_at(noisy, sigmas)` gives the model arguments
    that depend on them (the noisy input, with conditioning tokens put back clean, and the timesteps)."""

    x0: torch.Tensor
    noise: torch.Tensor
    sigmas: torch.Tensor  # (B,)
    inputs_at: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]]


@dataclass
class ModelInputs:
    """One forward pass: the model's keyword arguments and the streams its outputs are scored on.

    `video_grid` (frames, height, width) is the grid of the transformer's video tokens (after patching), in
    their order; `cond_tokens` (B, N) marks the conditioning ones (a clean first frame). Token routing and
    representation alignment read them; `flow` scheduled sampling."""

    kwargs: dict[str, Any]
    streams: list[LossStream]
    video_grid: tuple[int, int, int] | None = None
    cond_tokens: torch.Tensor | None = None
    flow: FlowState | None = None
    rows: torch.Tensor | None = None  # the micro-batch's samples in this pass (None: all, in order)

    def stream(self, name: str) -> LossStream:
        return next(s for s in self.streams if s.name == name)


@dataclass
class LossOutput:
    """The scalar to backpropagate and each stream's own value (detached), for logging."""

    total: torch.Tensor
    streams: dict[str, torch.Tensor] = field(default_factory=dict)


def model_outputs(output: Any) -> tuple[torch.Tensor, ...]:
    """A model's return value as a tuple of tensors (a bare tensor, a tuple, or a diffusers BaseOutput)."""
    if isinstance(output, torch.Tensor):
        return (output,)
    if hasattr(output, "to_tuple"):
        return output.to_tuple()
    return tuple(output)


def masked_mse_per_sample(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """(B, N, C) -> (B,): mean squared error over the tokens where mask (B, N) is true; 0 where none is."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean(dim=(1, 2))
    m = mask.to(err.dtype).unsqueeze(-1)
    return (err * m).mean(dim=(1, 2)) / m.mean(dim=(1, 2)).clamp(min=1e-8)


def _token_mean(parts: list[tuple[torch.Tensor, LossStream]]) -> torch.Tensor:
    """Masked mean over every token of the batch; several forward passes count by their loss tokens."""
    if len(parts) == 1 and parts[0][1].mask is None:
        pred, stream = parts[0]
        return flow_loss(pred, stream.target)
    # The token counts stay on the device: reading them (float(mask.sum())) would stall every step.
    total, weight = torch.zeros((), device=parts[0][0].device), torch.zeros((), device=parts[0][0].device)
    for pred, stream in parts:
        share = stream.mask.sum() if stream.mask is not None else stream.target[..., 0].numel()
        total = total + flow_loss(pred, stream.target, stream.mask) * share
        weight = weight + share
    # every token a conditioning token: total is 0 and so is the loss (no 0/0); counts are whole numbers
    return total / weight.clamp(min=1.0)


def compute_loss(
    inputs: list[ModelInputs], outputs: list[Any], terms: dict[str, torch.Tensor] | None = None
) -> LossOutput:
    """Combine the streams of one micro-batch's forward passes (`outputs[i]` is the model's return for
    `inputs[i]`) into the training loss: streams reduced per sample are summed per sample and averaged over
    the batch; streams reduced over tokens are averaged over the batch's tokens; both kinds add up. `terms`
    (regularizers, already weighted: scalars) are added as they are and logged by name."""
    by_name: dict[str, list[tuple[torch.Tensor, LossStream]]] = {}
    for forward, output in zip(inputs, outputs, strict=True):
        predictions = model_outputs(output)
        for stream in forward.streams:
            pred = predictions[stream.output].reshape(stream.target.shape)
            by_name.setdefault(stream.name, []).append((pred, stream))
    per_sample: torch.Tensor | None = None
    per_token: torch.Tensor | None = None
    values: dict[str, torch.Tensor] = {}
    for name, parts in by_name.items():
        weight = parts[0][1].weight
        if parts[0][1].per_sample:
            losses = torch.cat([masked_mse_per_sample(p, s.target, s.mask) for p, s in parts])
            values[name] = losses.detach().mean()
            term = losses if weight == 1.0 else losses * weight
            per_sample = term if per_sample is None else per_sample + term
        else:
            loss = _token_mean(parts)
            values[name] = loss.detach()
            term = loss if weight == 1.0 else loss * weight
            per_token = term if per_token is None else per_token + term
    if per_sample is None and per_token is None:
        raise ValueError("compute_loss: no loss stream")
    if per_sample is None:
        total = per_token
    else:
        total = per_sample.mean() if per_token is None else per_sample.mean() + per_token
    for name, term in (terms or {}).items():
        total = total + term
        values[name] = term.detach()
    return LossOutput(total=total, streams=values)
