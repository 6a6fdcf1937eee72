"""Buckets: the (width, height, frames) shape a clip trains at, chosen from its dataset entry and frame rule.

Samples of one bucket share a shape, so they can be batched together and their latents cached in one shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cinetune.config.dataset import DatasetConfig
from cinetune.data.frames import FrameRule


@dataclass(frozen=True, order=True)
class Bucket:
    """A sample shape; ordering is by width, then height, then frames, which keeps bucket lists stable."""

    width: int
    height: int
    num_frames: int

    @property
    def key(self) -> str:
        return f"{self.width}x{self.height}@{self.num_frames}"


def bucket_size(width: int, height: int, ds: DatasetConfig, rule: FrameRule) -> tuple[int, int]:
    """Bucket (width, height) for a source of this size, both sides multiples of rule.spatial_multiple.

    Sides are rounded down so the center crop only ever removes a sliver. The bucket is not capped by the
    source size: a source smaller than `resolution` is upscaled and trains at its dataset's shape.
    Integer arithmetic keeps equal aspects in equal buckets regardless of float rounding.
    """
    if width < 1 or height < 1:
        raise ValueError(f"invalid source size {width}x{height}")
    if ds.resolution_type == "pixel":
        short = rule.side_down(ds.resolution)
        long = rule.side_down(short * max(width, height) // min(width, height))
        return (long, short) if width >= height else (short, long)
    area = ds.resolution * ds.resolution
    bucket_w = rule.side_down(math.isqrt(area * width // height))
    bucket_h = rule.side_down(math.isqrt(area * height // width))
    return bucket_w, bucket_h


def _frame_step(ds: DatasetConfig, rule: FrameRule) -> int:
    """Distance between valid frame counts: the rule's, and with resolution_frames also frame_interval's.

    Counts are 1 + step * k. Rounding to a multiple of frame_interval and then down to the rule (k*8+1) would
    waste frames (57 -> 56 -> 49 with interval 8), and no count is both 8k+1 and a multiple of 8; stepping by
    the least common multiple keeps every count valid and the buckets frame_interval apart.
    """
    video = ds.video
    if video is not None and video.bucket_strategy == "resolution_frames":
        return math.lcm(rule.temporal_multiple, video.frame_interval)
    return rule.temporal_multiple


def _down(num_frames: int, step: int) -> int:
    return (num_frames - 1) // step * step + 1


def target_frames(ds: DatasetConfig, rule: FrameRule, default_frames: int) -> int:
    """Frames per sample of an aspect_ratio dataset: video.num_frames (default_frames with no video block)."""
    if ds.dataset_type == "image":
        return 1
    requested = ds.video.num_frames if ds.video is not None else default_frames
    return rule.frames_down(requested)


def min_frames_needed(ds: DatasetConfig, rule: FrameRule, default_frames: int) -> int:
    """Fewest resampled frames a clip needs to get a bucket: the check behind "too short"."""
    target = target_frames(ds, rule, default_frames)
    video = ds.video
    if video is None or ds.dataset_type == "image":
        return target
    if video.bucket_strategy == "aspect_ratio":
        return max(target, video.min_frames or 0)
    minimum = video.min_frames or target
    step = _frame_step(ds, rule)
    return 1 + math.ceil((minimum - 1) / step) * step  # the smallest valid count not below min_frames


def bucket_frames(avail_frames: int, ds: DatasetConfig, rule: FrameRule, default_frames: int) -> int | None:
    """Frames of the bucket of a clip with `avail_frames` resampled frames, or None when it is too short."""
    video = ds.video
    if ds.dataset_type == "image" or video is None or video.bucket_strategy == "aspect_ratio":
        frames = target_frames(ds, rule, default_frames)
        return frames if avail_frames >= min_frames_needed(ds, rule, default_frames) else None
    cap = min(avail_frames, video.max_frames or avail_frames)
    if cap < 1:
        return None
    frames = _down(cap, _frame_step(ds, rule))
    return frames if frames >= min_frames_needed(ds, rule, default_frames) else None


def choose_bucket(
    width: int, height: int, avail_frames: int, ds: DatasetConfig, rule: FrameRule, default_frames: int
) -> Bucket | None:
    """The bucket of a (width x height, avail_frames) source in dataset `ds`, or None when it is too short.

    aspect_ratio: every clip gets frames_down(video.num_frames) frames. resolution_frames: a clip uses
    min(avail, max_frames) frames rounded down to the frame step (see `_frame_step`), at least min_frames
    (default video.num_frames). Image datasets: 1 frame. `default_frames` stands in for video.num_frames when
    the entry has no video block.
    """
    frames = bucket_frames(avail_frames, ds, rule, default_frames)
    if frames is None:
        return None
    bucket_w, bucket_h = bucket_size(width, height, ds, rule)
    return Bucket(width=bucket_w, height=bucket_h, num_frames=frames)
