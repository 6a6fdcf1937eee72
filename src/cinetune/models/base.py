"""The ModelFamily interface and the typed containers the generic trainer reads.

A family is a small spec: what it can do is declared as data (frame rule, latent layout, LoRA targets),
and the few computations that differ between architectures are methods. The trainer never
branches on a family name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameRule:
    """Valid sample shapes: frames = temporal_multiple * k + 1, sides multiples of spatial_multiple."""

    temporal_multiple: int
    spatial_multiple: int

    def frames_down(self, num_frames: int) -> int:
        """Largest valid frame count <= num_frames (at least 1)."""
        if num_frames < 1:
            return 1
        return (num_frames - 1) // self.temporal_multiple * self.temporal_multiple + 1

    def is_valid_frames(self, num_frames: int) -> bool:
        return num_frames >= 1 and (num_frames - 1) % self.temporal_multiple == 0

    def side_down(self, pixels: int) -> int:
        return max(self.spatial_multiple, pixels // self.spatial_multiple * self.spatial_multiple)

    def adjust_frames(self, num_frames: int, what: str) -> int:
        """Adjust a requested frame count down to the rule, warning with the reason."""
        fixed = self.frames_down(num_frames)
        if fixed != num_frames:
            logger.warning(
                "%s=%d breaks the frame rule (frames = %dk+1); using %d",
                what,
                num_frames,
                self.temporal_multiple,
                fixed,
            )
        return fixed


@dataclass
class Flavour:
    """One release of a family: where its weights live and what it needs."""

    name: str
    repo: str | None
    description: str
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextEmbeds:
    """Caption embeddings of the real tokens only (no padding): what the cache stores per caption."""

    tensors: dict[str, torch.Tensor]


@dataclass
class ModelInputs:
    """What `predict` consumes: model kwargs plus the flow-matching target and loss mask."""

    kwargs: dict[str, Any]
    target: torch.Tensor
    loss_mask: torch.Tensor | None = None


class ModelFamily:
    """Interface every family implements. Subclasses set the ClassVars and the methods below."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    flavours: ClassVar[dict[str, Flavour]]
    default_flavour: ClassVar[str]
    frame_rule: ClassVar[FrameRule]
    default_lora_targets: ClassVar[tuple[str, ...]]
    default_max_sequence_length: ClassVar[int]
    default_frame_rate: ClassVar[float] = 25.0
    pipeline_class: ClassVar[type]
    comfyui_renames: ClassVar[dict[str, str]] = {}

    def training_loss(
        self,
        model: torch.nn.Module,
        batch: Any,
        generator: torch.Generator,
        sigma_sampler: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """One flow-matching loss on a cached batch. Families with several modalities override this."""
        from cinetune.training.step import single_stream_flow_loss

        return single_stream_flow_loss(self, model, batch, generator, sigma_sampler, device, dtype)
