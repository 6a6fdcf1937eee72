"""The planner for a resolved run: profile the run's transformer and VAE (meta device), size its text
encoders, and estimate or propose (`cinetune check`, `cinetune plan`, `cinetune bench`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cinetune.memory.planner import GIB, TEXT_ENCODERS, Estimate, TextEncoderSize, estimate, propose
from cinetune.memory.profile import Profile, VaeProfile, profile_transformer, profile_vae
from cinetune.memory.vae import TEMPORAL_ROLL_VAES

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True)
class Shape:
    """What one training sample is: pixels, frames, samples per micro-batch."""

    width: int
    height: int
    frames: int
    batch: int = 1

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}, batch {self.batch}"


class RunMemory:
    """The measured parts of one run at one shape; estimates for any settings of the same architecture."""

    def __init__(self, plan: Any, shape: Shape) -> None:
        self.plan, self.shape = plan, shape
        family = plan.family
        local = None if family.loader.is_builtin_tiny else _local_config(plan, "transformer")
        self.profile: Profile = profile_transformer(
            plan, shape.width, shape.height, shape.frames, shape.batch, local
        )
        dtype = _DTYPES[plan.train.mixed_precision]
        self.vae: VaeProfile = profile_vae(
            family.vae_class_name, shape.width, shape.height, shape.frames, dtype, _local_config(plan, "vae")
        )
        self.text_encoders = _text_encoders(plan)

    def estimate(self, cfg: Any | None = None) -> Estimate:
        return estimate(
            cfg or self.plan.train,
            self.plan.family.name,
            self.profile,
            self.vae,
            batch=self.shape.batch,
            frames=self.shape.frames,
            text_encoders=self.text_encoders,
        )

    def propose(self, target_gib: float) -> tuple[dict[str, Any], Estimate] | None:
        family = self.plan.family
        return propose(
            self.plan.train,
            family.name,
            self.profile,
            self.vae,
            target_gib * GIB,
            batch=self.shape.batch,
            frames=self.shape.frames,
            temporal_roll=family.vae_class_name in TEMPORAL_ROLL_VAES,
            text_encoders=self.text_encoders,
        )


_TINY: dict[tuple[str, str], Any] = {}  # the built-in tiny models' sizes: deterministic, built once


def _tiny(plan: Any) -> dict[str, Any]:
    """The built-in tiny model's VAE config and text encoder sizes (its components are built to count)."""
    family = plan.family
    key = (family.name, family.loader.flavour)
    if key not in _TINY:
        _, encoder = family.load_text_encoder(torch.float32)
        sizes = {}
        for name, part in family.text_encoder_parts(encoder).items():
            params = sum(p.numel() for p in part.parameters())
            embedding = (
                part.get_input_embeddings().weight.numel() if hasattr(part, "get_input_embeddings") else 0
            )
            layers = max((len(m) for m in part.modules() if isinstance(m, torch.nn.ModuleList)), default=1)
            sizes[name] = TextEncoderSize(params, embedding, 0, layers)
        _TINY[key] = {"vae": dict(family.load_vae(torch.float32).config), "text_encoders": sizes}
    return _TINY[key]


def _local_config(plan: Any, part: str) -> dict[str, Any] | None:
    """A local diffusers folder's config of `part` (its architecture, instead of the flavour's)."""
    loader = plan.family.loader
    if loader.is_builtin_tiny:
        return _tiny(plan)[part]
    source = getattr(loader, "source", None)
    path = Path(source) / part / "config.json" if source else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    return None


def _text_encoders(plan: Any) -> dict[str, TextEncoderSize]:
    """The released text encoders' sizes; the built-in tiny model's are counted."""
    family = plan.family
    if not family.loader.is_builtin_tiny:
        return TEXT_ENCODERS.get(family.name, {})
    return _tiny(plan)["text_encoders"]


def largest_shape(plan: Any, samples: list[Any], batch: int) -> Shape | None:
    """The training bucket with the most pixels x frames (what sets the peak)."""
    buckets = {(s.bucket.width, s.bucket.height, s.bucket.num_frames) for s in samples}
    if not buckets:
        return None
    width, height, frames = max(buckets, key=lambda b: b[0] * b[1] * b[2])
    return Shape(width, height, frames, batch)
