"""From sample indices to a training batch: cached latents of the epoch's window + caption embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cinetune.cache.builder import CacheIndex
from cinetune.data import Sample
from cinetune.models.base import ModelFamily


@dataclass
class Batch:
    latents: torch.Tensor  # (B, C, F, H, W) normalized posterior mean
    latents_std: torch.Tensor | None  # same shape, or None to train on the mean
    text: dict[str, torch.Tensor]
    frame_rate: float


def load_batch(
    indices: list[int],
    samples: list[Sample],
    cache: CacheIndex,
    family: ModelFamily,
    epoch: int,
    generator: torch.Generator,
    caption_dropout: float,
    use_std: bool,
) -> Batch:
    """Every random choice (caption line, dropout) comes from `generator`, whose state checkpoints keep."""
    latents, stds, texts = [], [], []
    for index in indices:
        sample = samples[index]
        window = epoch % len(sample.window_starts)
        entry = cache.latent(index, window, sample.dataset_id)
        latents.append(entry["latents"])
        stds.append(entry["latents_std"])
        pick = int(torch.randint(len(sample.captions), (1,), generator=generator))
        drop = float(torch.rand(1, generator=generator)) < caption_dropout
        texts.append(cache.text_embeds("" if drop else sample.captions[pick]))
    return Batch(
        latents=torch.stack(latents).float(),
        latents_std=torch.stack(stds).float() if use_std else None,
        text=family.collate_text(texts),
        frame_rate=samples[indices[0]].frame_rate,
    )
