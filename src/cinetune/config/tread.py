"""The `tread_config` block (TREAD token routing), in the quickstarts' shape, and its block ranges."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from cinetune.errors import ConfigError


class TreadRoute(BaseModel):
    """One route: a share of the video tokens skips the blocks start_layer_idx..end_layer_idx."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    selection_ratio: float = Field(
        ..., ge=0, lt=1, description="Share of the video tokens that skip the route (0.5: half of them)."
    )
    start_layer_idx: int = Field(
        ..., description="First video block of the route (0-based; negative counts from the end: -1 = last)."
    )
    end_layer_idx: int = Field(
        ..., description="Last video block of the route (inclusive; negative as above)."
    )


class TreadConfig(BaseModel):
    """`tread_config`: {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routes: list[TreadRoute] = Field(
        ..., min_length=1, description="Routing windows over the video blocks; they must not overlap."
    )


@dataclass(frozen=True)
class Route:
    ratio: float  # share of the video tokens that skip the route
    start: int  # first and last block of the route (resolved, inclusive)
    end: int


def resolve_routes(routes: list[TreadRoute], num_blocks: int) -> list[Route]:
    """Config routes -> block index ranges, checked: in range, start <= end, no overlap."""
    out = []
    for n, route in enumerate(routes):
        start = route.start_layer_idx + (num_blocks if route.start_layer_idx < 0 else 0)
        end = route.end_layer_idx + (num_blocks if route.end_layer_idx < 0 else 0)
        if not 0 <= start <= end < num_blocks:
            raise ConfigError(
                f"tread_config route {n}: start_layer_idx {route.start_layer_idx} and end_layer_idx "
                f"{route.end_layer_idx} give blocks {start}..{end}, outside the model's {num_blocks} video "
                "blocks (or start after end)"
            )
        out.append(Route(route.selection_ratio, start, end))
    out.sort(key=lambda r: r.start)
    for a, b in itertools.pairwise(out):
        if b.start <= a.end:
            raise ConfigError(
                f"tread_config: the routes over blocks {a.start}..{a.end} and {b.start}..{b.end} overlap"
            )
    return out
