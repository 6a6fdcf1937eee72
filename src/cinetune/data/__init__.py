"""Data layer: discovery, probing, captions, frame resampling, buckets and the skip report."""

from cinetune.data.buckets import Bucket, bucket_frames, bucket_size, choose_bucket, min_frames_needed
from cinetune.data.captions import captions_for
from cinetune.data.dataset import Sample, discover_files, draw_window_starts, load_pixels, scan_datasets
from cinetune.data.report import Skipped, SkipReport
from cinetune.data.video_io import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    MediaError,
    MediaInfo,
    fit_image,
    probe,
    read_window,
    resampled_length,
    source_index,
    write_video,
)

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "Bucket",
    "MediaError",
    "MediaInfo",
    "Sample",
    "SkipReport",
    "Skipped",
    "bucket_frames",
    "bucket_size",
    "captions_for",
    "choose_bucket",
    "discover_files",
    "draw_window_starts",
    "fit_image",
    "load_pixels",
    "min_frames_needed",
    "probe",
    "read_window",
    "resampled_length",
    "scan_datasets",
    "source_index",
    "write_video",
]
