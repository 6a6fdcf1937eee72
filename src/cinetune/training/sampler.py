"""Deterministic bucketed batches: every batch comes from one bucket, order is a function of (seed, epoch).

Resuming needs only (epoch, batch position): nothing random is carried between epochs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One training example: a sample (index into the sample list) seen once; repeats give several items."""

    sample_index: int
    group: str  # bucket key + frame rate: what may share a batch


def epoch_batches(
    items: list[Item], batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's batches (lists of sample indices) for one epoch.

    Items are shuffled within their group, cut into full batches (a remainder smaller than the batch is left
    for this epoch; it takes part in the next shuffle), batches are shuffled, then dealt to ranks so every
    rank gets the same number.
    """
    rng = np.random.default_rng([seed, epoch])
    groups: dict[str, list[int]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item.sample_index)
    batches: list[list[int]] = []
    for group in sorted(groups):
        members = groups[group]
        order = rng.permutation(len(members))
        for start in range(0, len(members) - batch_size + 1, batch_size):
            batches.append([members[j] for j in order[start : start + batch_size]])
    order = rng.permutation(len(batches))
    batches = [batches[j] for j in order]
    per_rank = len(batches) // world_size
    return batches[rank * per_rank : (rank + 1) * per_rank]


def plan_epoch(
    samples: list[Any],
    repeats: dict[str, int],
    batch_size: int,
    accumulation: int,
    seed: int,
    process_index: int,
    world_size: int,
) -> tuple[list[Item], int]:
    """Epoch items (each sample repeats + 1 times, grouped by bucket and frame rate) and optimizer steps per
    epoch; a DataError when no batch, or too few batches for one accumulation group, can be formed. Called
    right after the scan, before anything is cached, and by `cinetune check`."""
    items = [
        Item(i, f"{s.bucket.key}@{s.frame_rate:g}fps")
        for i, s in enumerate(samples)
        for _ in range(repeats[s.dataset_id] + 1)
    ]
    check_batchable(items, batch_size, world_size)
    batches = len(epoch_batches(items, batch_size, seed, 0, process_index, world_size))
    if batches < accumulation:
        from cinetune.errors import DataError

        raise DataError(
            f"an epoch has {batches} batch(es) per process but gradient_accumulation_steps is "
            f"{accumulation}: lower gradient_accumulation_steps or train_batch_size, raise the dataset's "
            "repeats, or add clips"
        )
    return items, batches // accumulation


def check_batchable(items: list[Item], batch_size: int, world_size: int) -> None:
    """Warn about buckets too small to fill a batch; raise if no batch can be formed at all."""
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item.group] += 1
    small = {g: n for g, n in counts.items() if n < batch_size}
    for group, n in sorted(small.items()):
        logger.warning(
            "bucket %s has %d sample(s), fewer than train_batch_size=%d: it will not train",
            group,
            n,
            batch_size,
        )
    full = sum(n // batch_size for n in counts.values())
    if full < world_size:
        from cinetune.errors import DataError

        raise DataError(
            f"not enough samples for one batch per process: {full} full batch(es) of {batch_size} across "
            f"{world_size} process(es); lower train_batch_size or add clips (buckets: {dict(counts)})"
        )
