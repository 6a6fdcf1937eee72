"""Scan dataset folders into Samples (clip + captions + bucket + frame windows) and load a window's pixels.

Scanning only probes headers and first frames; pixels are read later, window by window, by the latent cache.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cinetune.config.dataset import DatasetConfig
from cinetune.data.buckets import Bucket, choose_bucket, min_frames_needed, target_frames
from cinetune.data.captions import captions_for
from cinetune.data.frames import FrameRule
from cinetune.data.report import SkipReport
from cinetune.data.s2v import AudioLinks, AudioSource, clip_audio
from cinetune.data.video_io import (
    AUDIO_EXTS,
    IMAGE_EXTS,
    VIDEO_EXTS,
    MediaError,
    MediaInfo,
    list_files,
    probe,
    read_window,
    resampled_length,
)
from cinetune.errors import DataError
from cinetune.faults import fault_point

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One usable clip. window_starts index the resampled timeline (frame_rate fps), in draw order.

    size_bytes and mtime_ns identify the file's version, so caches keyed on them notice an edited clip.
    `audio` is the file its sound comes from (its own track, or its s2v dataset's file); None when the
    dataset trains no audio or the clip trains silent (allow_zero_audio).
    """

    dataset_id: str
    path: Path
    captions: tuple[str, ...]
    info: MediaInfo
    frame_rate: float
    bucket: Bucket
    window_starts: tuple[int, ...]
    size_bytes: int
    mtime_ns: int
    audio: AudioSource | None = None


def discover_files(ds: DatasetConfig) -> list[Path]:
    """Media files under instance_data_dir, recursive and sorted: videos for a video dataset, images for an
    image dataset, audio files for an audio dataset. Hidden files and folders are left out (macOS writes
    '._clip.mp4' resource forks)."""
    root = ds.instance_data_dir
    if root is None or not root.is_dir():
        raise DataError(f"dataset '{ds.id}': instance_data_dir {root} is not a folder")
    exts = {"image": IMAGE_EXTS, "audio": AUDIO_EXTS}.get(ds.dataset_type, VIDEO_EXTS)
    return list_files(root, exts)


def draw_window_starts(
    seed: int, dataset_id: str, rel_path: str, num_starts: int, count: int
) -> tuple[int, ...]:
    """`count` distinct window starts out of range(num_starts), in draw order.

    The generator is seeded from a hash of (seed, dataset id, relative path): the draw of one clip does not
    depend on which other clips exist or were skipped, and is the same in every process and run.
    """
    digest = hashlib.sha256(f"{seed}\0{dataset_id}\0{rel_path}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "little"))
    picks = rng.choice(num_starts, size=min(count, num_starts), replace=False)
    return tuple(int(start) for start in picks)


def _too_short(avail: int, frame_rate: float, needed: int) -> str:
    return f"too short: {avail} frames at {frame_rate:g} fps, need {needed}"


@dataclass(frozen=True)
class _ScanContext:
    """What every file of one dataset is checked against."""

    ds: DatasetConfig
    rule: FrameRule
    frame_rate: float
    default_frames: int
    seed: int
    links: AudioLinks | None = None  # the s2v datasets' files, when the dataset has s2v_datasets


def _make_sample(ctx: _ScanContext, path: Path, captions: list[str]) -> Sample | str:
    """The Sample of one captioned file, or the reason it is skipped."""
    ds, rule, frame_rate, default_frames = ctx.ds, ctx.rule, ctx.frame_rate, ctx.default_frames
    try:
        info = probe(path)
    except MediaError as exc:
        return exc.reason
    audio, no_audio = clip_audio(ds, path, info.has_audio, ctx.links)
    if no_audio is not None and ds.audio is not None and not ds.audio.allow_zero_audio:
        return f"{no_audio} (the dataset trains audio; set audio.allow_zero_audio true to train it silent)"
    avail = resampled_length(info, frame_rate)
    needed = min_frames_needed(ds, rule, default_frames)
    if avail < needed:
        return _too_short(avail, frame_rate, needed)
    max_frames = ds.video.max_frames if ds.video is not None else None
    if max_frames is not None and avail > max_frames:
        return f"too long: {avail} frames at {frame_rate:g} fps, max {max_frames}"
    bucket = choose_bucket(info.width, info.height, avail, ds, rule, default_frames)
    if bucket is None:
        return _too_short(avail, frame_rate, needed)
    assert ds.instance_data_dir is not None
    rel_path = path.relative_to(ds.instance_data_dir).as_posix()
    windows = ds.video.windows_per_clip if ds.video is not None else 1
    starts = draw_window_starts(ctx.seed, ds.id, rel_path, avail - bucket.num_frames + 1, windows)
    stat = path.stat()
    return Sample(
        dataset_id=ds.id,
        path=path,
        captions=tuple(captions),
        info=info,
        frame_rate=frame_rate,
        bucket=bucket,
        window_starts=starts,
        size_bytes=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        audio=audio,
    )


def _scan_dataset(
    ds: DatasetConfig,
    rule: FrameRule,
    default_frame_rate: float,
    seed: int,
    report: SkipReport,
    links: AudioLinks | None = None,
) -> list[Sample]:
    files = discover_files(ds)
    captions, reasons = captions_for(ds, files)
    frame_rate = (ds.video.frame_rate if ds.video is not None else None) or default_frame_rate
    requested = ds.video.num_frames if ds.video is not None else 1
    # Warn once per dataset here; the bucket code then rounds silently per clip.
    rule.adjust_frames(requested, f"dataset '{ds.id}' video.num_frames")
    ctx = _ScanContext(ds, rule, frame_rate, target_frames(ds, rule, requested), seed, links)
    samples = []
    for path in files:
        fault_point("scan.file")
        if path in reasons:
            report.add(path, reasons[path], ds.id)
            continue
        result = _make_sample(ctx, path, captions[path])
        if isinstance(result, str):
            report.add(path, result, ds.id)
        else:
            samples.append(result)
    report.kept(ds.id, len(samples))
    logger.info("dataset '%s': %d of %d file(s) usable", ds.id, len(samples), len(files))
    if not samples:
        logger.warning(
            "dataset '%s' has no usable sample (%d file(s) found in %s)",
            ds.id,
            len(files),
            ds.instance_data_dir,
        )
    return samples


def scan_datasets(
    datasets: list[DatasetConfig],
    rule: FrameRule,
    default_frame_rate: float,
    seed: int,
    report: SkipReport,
    audio_datasets: list[DatasetConfig] | None = None,
) -> list[Sample]:
    """Samples of every enabled video/image dataset, in config then path order; skipped files go to `report`.
    The audio datasets that s2v_datasets name are looked up in `datasets` and `audio_datasets`.

    Raises DataError when no dataset yields a sample, with the skip summary so the user sees why.
    """
    samples: list[Sample] = []
    media = [ds for ds in datasets if ds.is_media and not ds.disabled]
    by_id = {ds.id: ds for ds in [*datasets, *(audio_datasets or [])] if ds.dataset_type == "audio"}
    for ds in media:
        links = AudioLinks([by_id[i] for i in ds.s2v_datasets]) if ds.s2v_datasets else None
        samples.extend(_scan_dataset(ds, rule, default_frame_rate, seed, report, links))
    if not samples:
        names = ", ".join(f"'{ds.id}'" for ds in media) or "none enabled"
        raise DataError(f"no usable sample: dataset(s) {names} yielded none\n{report.summary()}")
    return samples


def load_pixels(sample: Sample, window: int) -> torch.Tensor:
    """Window number `window` (an index into sample.window_starts) as float32 (C=3, F, H, W) in [-1, 1]."""
    bucket = sample.bucket
    frames = read_window(
        sample.path,
        sample.info,
        sample.window_starts[window],
        bucket.num_frames,
        sample.frame_rate,
        (bucket.width, bucket.height),
    )
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2).to(torch.float32)
    return (pixels / 127.5 - 1.0).contiguous()
