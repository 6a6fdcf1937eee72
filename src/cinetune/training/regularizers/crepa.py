"""CREPA (Cross-frame REPresentation Alignment, arXiv 2506.09229): a loss term that aligns one video block's
hidden states with frozen vision features of the same and neighbouring frames.

The block's output video hidden states (B, N, D) take the shape of the token grid (B, F, H, W, D) and go
through a projector (LayerNorm + Linear to the encoder's width E; trained, saved in checkpoints, never
exported with the LoRA). The cached DINOv2 features of the clip (B, F, P, E), one map per latent frame
(models/vision.py), and the projected states are brought to one spatial grid: the one of fewer tokens,
bilinear. With s(f, g) the cosine similarity of frame f's projected states and frame g's features, averaged
over the grid, a frame scores s(f, f) + exp(-d / tau) (s(f, f + d) + s(f, f - d)) (the neighbours that exist,
d = crepa_adjacent_distance, tau = crepa_adjacent_tau), a video the mean over its frames, and the term is
-crepa_lambda times the mean over the batch.

If the block is inside a TREAD route, its output holds the kept tokens only; the dropped ones are taken as
they entered the route (what the route's end would restore), so the grid is whole.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cinetune.errors import ConfigError
from cinetune.objectives import ModelInputs
from cinetune.training.routing import restore_tokens

logger = logging.getLogger(__name__)
PROJECTOR_ATTRIBUTE = "cinetune_crepa_projector"  # on the transformer: the optimizer, DDP and .to() see it
PROJECTOR_FILE = "crepa_projector.safetensors"


def _grid(tokens: torch.Tensor, source: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """(B, F, h*w, C) on the `source` grid (h, w) -> (B, F, *shape, C), bilinear when the grids differ."""
    batch, frames, _, channels = tokens.shape
    grid = tokens.reshape(batch * frames, *source, channels).permute(0, 3, 1, 2)
    if source != shape:
        grid = F.interpolate(grid, size=shape, mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(batch, frames, *shape, channels)


def _square(count: int) -> tuple[int, int]:
    """The square grid of `count` vision tokens (DINOv2's patches of a square image)."""
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"CREPA: {count} vision tokens are not a square grid")
    return side, side


def alignment(
    projected: torch.Tensor, features: torch.Tensor, distance: int, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """projected (B, F, h, w, E), features (B, F, h, w, E) on one grid -> (per-video score (B,), the frames'
    own similarity s(f, f) averaged (for logging))."""
    a = F.normalize(projected.flatten(2, 3).float(), dim=-1)
    b = F.normalize(features.flatten(2, 3).float(), dim=-1)

    def similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x * y).sum(dim=-1).mean(dim=-1)  # (B, frames)

    own = similarity(a, b)
    total = own.clone()
    frames = own.shape[1]
    d = min(distance, frames - 1)
    if d > 0:
        weight = math.exp(-d / tau)
        total[:, :-d] = total[:, :-d] + weight * similarity(a[:, :-d], b[:, d:])  # f with f + d
        total[:, d:] = total[:, d:] + weight * similarity(a[:, d:], b[:, :-d])  # f with f - d
    return total.mean(dim=1), own.mean().detach()


class Crepa:
    """The projector on the transformer, the hook that keeps the block's output, and the loss term."""

    name = "crepa"

    def __init__(self, cfg: Any, family: Any, model: torch.nn.Module) -> None:
        blocks = family.blocks(model, family.video_blocks)
        if not cfg.crepa_block_index < len(blocks):
            raise ConfigError(
                f"crepa_block_index {cfg.crepa_block_index}: the model has {len(blocks)} video blocks "
                "(0-based)"
            )
        self.weight = cfg.crepa_lambda
        self.distance, self.tau = cfg.crepa_adjacent_distance, cfg.crepa_adjacent_tau
        self.video = family.token_aligned_inputs[0][0]
        self.width = family.video_hidden_size(model.config)
        self.projector: torch.nn.Module | None = None
        self.model = model
        self.captured: torch.Tensor | None = None
        self.features: torch.Tensor | None = None  # the batch's cached vision features (B, F, P, E)
        self.terms: list[torch.Tensor] = []
        self.own: list[torch.Tensor] = []
        blocks[cfg.crepa_block_index].register_forward_hook(self._keep, with_kwargs=True)

    def attach(self, encoder_width: int) -> None:
        """Create the projector (fp32) on the transformer, before its optimizer is built."""
        self.projector = torch.nn.Sequential(
            torch.nn.LayerNorm(self.width), torch.nn.Linear(self.width, encoder_width)
        ).to(next(self.model.parameters()).device, torch.float32)
        self.model.add_module(PROJECTOR_ATTRIBUTE, self.projector)

    def _keep(self, block: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not (block.training and torch.is_grad_enabled()):
            return
        video = output[0] if isinstance(output, tuple) else output
        self.captured = restore_tokens(video)

    # ---- around a forward pass -----------------------------------------------------------------------------
    def begin(self, batch: Any) -> None:
        if "crepa_features" not in batch.tensors:
            raise ValueError("crepa_enabled but the batch holds no cached vision features (crepa_features)")
        self.features = batch.tensors["crepa_features"]
        self.terms, self.own = [], []

    def after_forward(self, forward: ModelInputs) -> None:
        hidden, self.captured = self.captured, None
        if hidden is None:
            raise ValueError("CREPA: the aligned video block did not run with gradients")
        frames, height, width = forward.video_grid
        rows = forward.rows if forward.rows is not None else slice(None)
        features = self.features[rows].to(hidden.device)  # (b, F, P, E)
        projected = self.projector(hidden.float()).reshape(hidden.shape[0], frames, height * width, -1)
        source = _square(features.shape[2])
        shape = (height, width) if height * width <= math.prod(source) else source  # the smaller grid
        score, own = alignment(
            _grid(projected, (height, width), shape),
            _grid(features.float(), source, shape),
            self.distance,
            self.tau,
        )
        self.terms.append(score)  # one score per video of this forward pass
        self.own.append(own)

    def loss_terms(self) -> dict[str, torch.Tensor]:
        """-crepa_lambda times the mean score over the micro-batch's videos (all its forward passes)."""
        if not self.terms:
            return {}
        return {"crepa": -self.weight * torch.cat(self.terms).mean()}

    # ---- checkpoint part -----------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()}
        save_file(state, str(Path(folder) / PROJECTOR_FILE))

    def load(self, folder: Path) -> None:
        path = Path(folder) / PROJECTOR_FILE
        if not path.is_file():
            raise ValueError(f"{folder} holds no CREPA projector ({PROJECTOR_FILE}): written without CREPA")
        self.projector.load_state_dict(load_file(str(path)))
