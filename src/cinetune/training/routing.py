"""TREAD token routing (`tread_config.routes`): a random subset of the video tokens skips a range of blocks.

For each route (`selection_ratio` r, `start_layer_idx`, `end_layer_idx` over the family's video blocks,
negative = from the end), round(r N) of the N video tokens are left out before the route's first block and put
back after its last one, unchanged: they skip the route. The kept tokens are drawn per sample, uniformly, from
the run's generator, with the conditioning tokens (a clean first frame) always kept. Every block input that is
aligned with the video tokens (the family declares them: RoPE cos/sin, per-token timestep embeddings,
attention masks) is cut to the kept tokens the same way, so positions and timesteps follow their tokens. Audio
tokens (LTX-2) are a separate stream and are never routed. Routing is on only while the model trains with
gradients: validation and scheduled-sampling rollouts see every token.

Mechanics: forward hooks on the declared blocks, with `inspect` binding the block's arguments (diffusers
passes them by keyword, or by position under gradient checkpointing). The draw of a forward pass is attached
to the tensors it routes, so gradient checkpointing, which reruns a block (and its hooks) in backward with the
same input tensors, reruns it on the same tokens, also when several forward passes share one backward.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch

from cinetune.config.tread import resolve_routes

logger = logging.getLogger(__name__)
_START = "_cinetune_tread_start"  # attribute of a route's full input tensor: its plan
_ROUTED = "_cinetune_tread"  # attribute of a routed (kept-token) tensor between the route's blocks: its plan


@dataclass
class RoutePlan:
    """One route of one forward pass: the kept token indices (B, K), sorted, and what the route needs."""

    kept: torch.Tensor
    num_tokens: int
    full: torch.Tensor | None = None  # the video hidden states entering the route


def draw_kept(
    batch: int, num_tokens: int, ratio: float, keep: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """(B, K) sorted indices of the tokens that go through a route: a uniform random subset of size
    K = N - round(ratio N), every token of `keep` (B, N) included (K grows to hold them all)."""
    dropped = round(ratio * num_tokens)
    scores = torch.rand(batch, num_tokens, generator=generator)
    if keep is not None:
        scores = torch.where(keep.cpu(), -1.0, scores)  # forced tokens first
        dropped = min(dropped, num_tokens - int(keep.sum(dim=1).max()))
    kept = scores.argsort(dim=1)[:, : num_tokens - dropped]
    return kept.sort(dim=1).values


def _take(value: Any, kept: torch.Tensor, dim: int, num_tokens: int) -> Any:
    """`value` cut to the kept tokens along `dim` (a tensor, or each tensor of a tuple); left as it is when
    that axis is not the N tokens (e.g. a timestep embedding per sample, shape (B, 1, D))."""
    if isinstance(value, tuple):
        return tuple(_take(v, kept, dim, num_tokens) for v in value)
    if not isinstance(value, torch.Tensor) or value.ndim <= dim % value.ndim:
        return value
    axis = dim % value.ndim
    if value.shape[axis] != num_tokens:
        return value
    batch = kept.shape[0]
    if value.shape[0] != batch:
        value = value.expand(batch, *value.shape[1:])
    moved = value.movedim(axis, 1)
    index = kept.to(value.device).view(batch, -1, *([1] * (moved.ndim - 2))).expand(-1, -1, *moved.shape[2:])
    return torch.gather(moved, 1, index).movedim(1, axis)


def restore_tokens(video: torch.Tensor) -> torch.Tensor:
    """A block's video output as the whole token sequence: inside a route, the kept tokens' states put back
    among the others as they entered the route (what the route's end restores); else as it is."""
    plan = getattr(video, _ROUTED, None)
    if plan is None:
        return video
    index = plan.kept.to(video.device)[..., None].expand(-1, -1, video.shape[-1])
    return plan.full.scatter(1, index, video.to(plan.full.dtype))


class TokenRouter:
    """The hooks of every route on the family's video blocks, and the draw of each forward pass."""

    def __init__(self, family: Any, model: torch.nn.Module, routes: list[Any]) -> None:
        blocks = family.blocks(model, family.video_blocks)
        self.routes = resolve_routes(routes, len(blocks))
        self.inputs: dict[str, Any] = dict(family.token_aligned_inputs)
        self.video = next(iter(self.inputs))  # the first declared input: the video hidden states
        self.pending: list[RoutePlan] | None = None
        self.signatures = {}
        self.handles = []
        for index, route in enumerate(self.routes):
            for position in range(route.start, route.end + 1):
                block = blocks[position]
                self.signatures[id(block)] = inspect.signature(block.forward)
                role = (position == route.start, position == route.end)
                self.handles.append(
                    block.register_forward_pre_hook(self._pre_hook(index, role[0]), with_kwargs=True)
                )
                self.handles.append(block.register_forward_hook(self._post_hook(role[1]), with_kwargs=True))
        said = ", ".join(f"{r.ratio:g} of the tokens skip blocks {r.start}..{r.end}" for r in self.routes)
        logger.info("TREAD: %s", said)

    def prepare(self, forward: Any, generator: torch.Generator) -> None:
        """Draw the kept tokens of every route for the next forward pass of `forward` (ModelInputs)."""
        hidden = forward.kwargs.get("hidden_states")
        batch = hidden.shape[0]
        frames, height, width = forward.video_grid
        num_tokens = frames * height * width
        keep = forward.cond_tokens
        self.pending = [
            RoutePlan(draw_kept(batch, num_tokens, r.ratio, keep, generator), num_tokens) for r in self.routes
        ]

    def finish(self) -> None:
        self.pending = None

    # ---- hooks ---------------------------------------------------------------------------------------------
    def _pre_hook(self, route: int, is_start: bool) -> Any:
        def hook(block: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if not (block.training and torch.is_grad_enabled()):
                return None
            bound = self.signatures[id(block)].bind(*args, **kwargs).arguments
            video = bound[self.video]
            if is_start:
                plan = getattr(video, _START, None)  # set: gradient checkpointing reruns this block
                if plan is None:
                    if self.pending is None:
                        return None
                    plan = self.pending[route]
                    plan.full = video
                    setattr(video, _START, plan)
            else:
                plan = getattr(video, _ROUTED, None)
                if plan is None:
                    return None
            for name, dim in self.inputs.items():
                if name in bound and (is_start or name != self.video):  # inside: the video is cut already
                    bound[name] = _take(bound[name], plan.kept, dim, plan.num_tokens)
            if is_start:
                setattr(bound[self.video], _ROUTED, plan)
            return (), bound

        return hook

    def _post_hook(self, is_end: bool) -> Any:
        def hook(block: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if not (block.training and torch.is_grad_enabled()):
                return None
            plan = getattr(kwargs.get(self.video), _ROUTED, None)
            if plan is None:
                return None
            video_out = output[0] if isinstance(output, tuple) else output
            setattr(video_out, _ROUTED, plan)
            if is_end:
                video_out = restore_tokens(video_out)
            return (video_out, *output[1:]) if isinstance(output, tuple) else video_out

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
