from __future__ import annotations

from pathlib import Path

import pytest

from cinetune.config.dataset import DatasetConfig, VideoOptions
from cinetune.data import Bucket, choose_bucket, min_frames_needed
from cinetune.models.base import FrameRule

RULE = FrameRule(temporal_multiple=8, spatial_multiple=32)


def _ds(**video: object) -> DatasetConfig:
    resolution_type = video.pop("resolution_type", "pixel")
    return DatasetConfig(
        id="d",
        instance_data_dir=Path("/data"),
        resolution=512,
        resolution_type=resolution_type,
        video=VideoOptions(**video),
    )


def test_pixel_buckets_fix_the_short_side() -> None:
    ds = _ds(num_frames=49)
    landscape = choose_bucket(1920, 1080, 100, ds, RULE, 49)
    portrait = choose_bucket(1080, 1920, 100, ds, RULE, 49)
    assert landscape == Bucket(896, 512, 49) and landscape.key == "896x512@49"
    assert portrait is not None and portrait.key == "512x896@49"
    # A small source is upscaled to the dataset's shape rather than getting a bucket of its own.
    small = choose_bucket(320, 240, 100, ds, RULE, 49)
    assert small is not None and small.key == "672x512@49"


def test_pixel_area_buckets_keep_the_area_near_resolution_squared() -> None:
    ds = _ds(num_frames=49, resolution_type="pixel_area")
    bucket = choose_bucket(1920, 1080, 100, ds, RULE, 49)
    assert bucket is not None and bucket.key == "672x384@49"
    square = choose_bucket(700, 700, 100, ds, RULE, 49)
    assert square is not None and square.key == "512x512@49"
    for b in (bucket, square):
        assert b.width % 32 == 0 and b.height % 32 == 0
        assert 0.8 * 512**2 <= b.width * b.height <= 512**2


def test_aspect_ratio_strategy_gives_every_clip_num_frames_on_the_rule() -> None:
    ds = _ds(num_frames=61)
    assert choose_bucket(640, 480, 300, ds, RULE, 61) == Bucket(672, 512, 57)
    assert choose_bucket(640, 480, 57, ds, RULE, 61) == Bucket(672, 512, 57)
    assert choose_bucket(640, 480, 56, ds, RULE, 61) is None


@pytest.mark.parametrize(
    ("avail", "options", "frames"),
    [
        (100, {}, 97),
        (100, {"max_frames": 80}, 73),
        (60, {}, 57),
        (48, {}, None),  # below min_frames (default num_frames = 49)
        (30, {"min_frames": 17}, 25),
        (100, {"frame_interval": 16}, 97),  # counts step by lcm(8, 16): 1 + 16k
        (80, {"frame_interval": 16}, 65),
        (60, {"frame_interval": 16}, 49),
    ],
)
def test_resolution_frames_strategy_uses_what_the_clip_has(
    avail: int, options: dict[str, int], frames: int | None
) -> None:
    ds = _ds(num_frames=49, bucket_strategy="resolution_frames", **options)
    bucket = choose_bucket(1280, 720, avail, ds, RULE, 49)
    if frames is None:
        assert bucket is None
    else:
        assert bucket is not None and bucket.key == f"896x512@{frames}"
        assert RULE.is_valid_frames(bucket.num_frames)


def test_min_frames_needed_rounds_up_to_a_valid_count() -> None:
    ds = _ds(num_frames=49, min_frames=20, bucket_strategy="resolution_frames")
    assert min_frames_needed(ds, RULE, 49) == 25
    assert min_frames_needed(_ds(num_frames=61), RULE, 61) == 57  # aspect_ratio: num_frames on the rule


def test_image_datasets_get_one_frame() -> None:
    ds = DatasetConfig(
        id="img",
        dataset_type="image",
        instance_data_dir=Path("/img"),
        resolution=256,
        resolution_type="pixel",
    )
    assert choose_bucket(400, 300, 1, ds, RULE, 49) == Bucket(320, 256, 1)


def test_buckets_sort_and_compare_by_shape() -> None:
    assert sorted([Bucket(64, 48, 9), Bucket(48, 64, 17), Bucket(48, 64, 9)]) == [
        Bucket(48, 64, 9),
        Bucket(48, 64, 17),
        Bucket(64, 48, 9),
    ]
