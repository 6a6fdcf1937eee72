"""From sample indices to a training batch: cached latents of the epoch's window + caption embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cinetune.cache.builder import CacheIndex
from cinetune.data import Sample
from cinetune.models.base import ModelFamily


@dataclass
class Batch:
    """Every tensor a cache entry holds, stacked over the batch (float32), plus the caption embeddings.

    `tensors["latents"]` is the normalized posterior mean (B, C, F, H, W) for every family; families add what
    they cache besides (posterior std, first-frame latents, audio latents...).
    """

    tensors: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]
    frame_rate: float
    use_std: bool = True

    @property
    def latents(self) -> torch.Tensor:
        return self.tensors["latents"]

    @property
    def latents_std(self) -> torch.Tensor | None:
        return self.tensors.get("latents_std") if self.use_std else None


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
    entries, texts = [], []
    for index in indices:
        sample = samples[index]
        window = epoch % len(sample.window_starts)
        entries.append(cache.latent(index, window, sample.dataset_id))
        pick = int(torch.randint(len(sample.captions), (1,), generator=generator))
        drop = float(torch.rand(1, generator=generator)) < caption_dropout
        texts.append(cache.text_embeds("" if drop else sample.captions[pick]))
    tensors = {key: torch.stack([e[key] for e in entries]).float() for key in entries[0]}
    return Batch(
        tensors=tensors,
        text=family.collate_text(texts),
        frame_rate=samples[indices[0]].frame_rate,
        use_std=use_std,
    )
