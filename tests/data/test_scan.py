from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from cinetune.config.dataset import DatasetConfig, VideoOptions
from cinetune.data import Sample, SkipReport, load_pixels, scan_datasets
from cinetune.errors import DataError
from cinetune.models.base import FrameRule

from .clips import frame_index, index_clip, index_frame

RULE = FrameRule(temporal_multiple=8, spatial_multiple=8)
FPS = 25.0


def _video_ds(root: Path, ds_id: str = "clips", **video: object) -> DatasetConfig:
    # resolution 48 in pixel mode maps the 64x48 test clips onto a 64x48 bucket: no resampling of the bars.
    return DatasetConfig(
        id=ds_id, instance_data_dir=root, resolution=48, resolution_type="pixel", video=VideoOptions(**video)
    )


def _clip(root: Path, name: str, num_frames: int, caption: str | None = None) -> Path:
    path = index_clip(root / name, num_frames, fps=FPS)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def _scan(datasets: list[DatasetConfig], seed: int = 0) -> tuple[list[Sample], SkipReport]:
    report = SkipReport()
    return scan_datasets(datasets, RULE, FPS, seed, report), report


def _reasons(report: SkipReport) -> dict[str, str]:
    return {item.path.name: item.reason for item in report.items}


def test_captions_stay_with_their_clip_when_earlier_clips_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "a_broken.mp4").write_bytes(b"")
    (tmp_path / "a_broken.txt").write_text("caption of a", encoding="utf-8")
    _clip(tmp_path, "b_short.mp4", 5, "caption of b")
    _clip(tmp_path, "c.mp4", 12, "caption of c")
    _clip(tmp_path, "d_nocaption.mp4", 12)
    _clip(tmp_path, "e.mp4", 12, "caption of e")
    samples, report = _scan([_video_ds(tmp_path, num_frames=9)])
    assert {s.path.name: s.captions for s in samples} == {
        "c.mp4": ("caption of c",),
        "e.mp4": ("caption of e",),
    }
    assert _reasons(report) == {
        "a_broken.mp4": "zero-byte file",
        "b_short.mp4": "too short: 5 frames at 25 fps, need 9",
        "d_nocaption.mp4": "missing caption file: d_nocaption.txt",
    }
    assert report.kept_counts == {"clips": 2}


def test_min_and_max_frames_drop_clips_at_the_dataset_frame_rate(tmp_path: Path) -> None:
    for name, frames in (("short.mp4", 16), ("ok.mp4", 30), ("long.mp4", 50)):
        _clip(tmp_path, name, frames, name)
    ds = _video_ds(tmp_path, num_frames=9, min_frames=9, max_frames=40, frame_rate=12.5)
    samples, report = _scan([ds])
    assert [s.path.name for s in samples] == ["long.mp4", "ok.mp4"]
    assert {s.bucket.key for s in samples} == {"64x48@9"}
    # 16 frames at 25 fps are 8 at 12.5 fps; 50 are 25, so nothing is too long at this rate.
    assert _reasons(report) == {"short.mp4": "too short: 8 frames at 12.5 fps, need 9"}
    samples, report = _scan([_video_ds(tmp_path, num_frames=9, max_frames=40)])
    assert sorted(s.path.name for s in samples) == ["ok.mp4", "short.mp4"]
    assert _reasons(report) == {"long.mp4": "too long: 50 frames at 25 fps, max 40"}


def test_resolution_frames_buckets_follow_clip_length(tmp_path: Path) -> None:
    for name, frames in (("a.mp4", 20), ("b.mp4", 30), ("c.mp4", 12)):
        _clip(tmp_path, name, frames, name)
    ds = _video_ds(tmp_path, num_frames=9, bucket_strategy="resolution_frames")
    samples, _ = _scan([ds])
    assert {s.path.name: s.bucket.key for s in samples} == {
        "a.mp4": "64x48@17",
        "b.mp4": "64x48@25",
        "c.mp4": "64x48@9",
    }


def test_num_frames_off_the_rule_is_adjusted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _clip(tmp_path, "a.mp4", 60, "a")
    with caplog.at_level(logging.WARNING):
        samples, _ = _scan([_video_ds(tmp_path, num_frames=61)])
    assert samples[0].bucket.num_frames == 57
    assert any("61" in r.getMessage() and "57" in r.getMessage() for r in caplog.records)


def test_windows_are_reproducible_per_seed_and_distinct(tmp_path: Path) -> None:
    _clip(tmp_path, "a.mp4", 60, "a")
    _clip(tmp_path, "b.mp4", 12, "b")  # only 4 possible starts for 9 frames
    ds = _video_ds(tmp_path, num_frames=9, windows_per_clip=6)
    first, _ = _scan([ds], seed=1)
    again, _ = _scan([ds], seed=1)
    other, _ = _scan([ds], seed=2)
    a, b = first
    assert [s.window_starts for s in first] == [s.window_starts for s in again]
    assert a.window_starts != other[0].window_starts
    assert len(set(a.window_starts)) == 6 and all(0 <= s <= 60 - 9 for s in a.window_starts)
    assert sorted(b.window_starts) == [0, 1, 2, 3]


def test_window_draw_does_not_depend_on_other_files(tmp_path: Path) -> None:
    _clip(tmp_path, "m.mp4", 60, "m")
    ds = _video_ds(tmp_path, num_frames=9, windows_per_clip=3)
    alone, _ = _scan([ds], seed=5)
    _clip(tmp_path, "a.mp4", 60, "a")
    together, _ = _scan([ds], seed=5)
    assert [s.window_starts for s in together if s.path.name == "m.mp4"] == [alone[0].window_starts]


def test_load_pixels_returns_the_window_as_cfhw_in_unit_range(tmp_path: Path) -> None:
    _clip(tmp_path, "a.mp4", 40, "a")
    (sample,) = _scan([_video_ds(tmp_path, num_frames=9, windows_per_clip=2)], seed=3)[0]
    for window, start in enumerate(sample.window_starts):
        pixels = load_pixels(sample, window)
        assert pixels.shape == (3, 9, 48, 64) and pixels.dtype == torch.float32
        assert pixels.min() >= -1.0 and pixels.max() <= 1.0
        frames = ((pixels.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        assert [frame_index(f) for f in frames] == list(range(start, start + 9))


def test_image_datasets_take_images_and_skip_hidden_files(tmp_path: Path) -> None:
    for i, name in enumerate(("x.png", "sub/y.jpg", "._z.png")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(index_frame(i)).save(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(f"image {i}", encoding="utf-8")
    _clip(tmp_path, "v.mp4", 20, "a video in an image dataset")
    ds = DatasetConfig(
        id="img", dataset_type="image", instance_data_dir=tmp_path, resolution=48, resolution_type="pixel"
    )
    samples, report = _scan([ds])
    assert [(s.path.relative_to(tmp_path).as_posix(), s.bucket.key) for s in samples] == [
        ("sub/y.jpg", "64x48@1"),
        ("x.png", "64x48@1"),
    ]
    assert load_pixels(samples[1], 0).shape == (3, 1, 48, 64) and not len(report)


def test_nothing_usable_raises_a_data_error_with_the_reasons(tmp_path: Path) -> None:
    _clip(tmp_path, "a.mp4", 5, "a")
    (tmp_path / "b.mp4").write_bytes(b"\x00" * 100)
    (tmp_path / "b.txt").write_text("b", encoding="utf-8")
    with pytest.raises(DataError, match="no usable sample") as caught:
        _scan([_video_ds(tmp_path, num_frames=9)])
    assert "too short" in str(caught.value) and "cannot be decoded" in str(caught.value)


def test_an_empty_dataset_only_warns_when_another_has_samples(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    _clip(tmp_path / "full", "a.mp4", 12, "a")
    with caplog.at_level(logging.WARNING):
        samples, report = _scan(
            [
                _video_ds(tmp_path / "empty", "empty", num_frames=9),
                _video_ds(tmp_path / "full", "full", num_frames=9),
            ]
        )
    assert len(samples) == 1 and report.kept_counts == {"empty": 0, "full": 1}
    assert any("'empty'" in r.getMessage() for r in caplog.records)


def test_report_saves_json_and_text(tmp_path: Path) -> None:
    _clip(tmp_path / "data", "a.mp4", 12, "a")
    _clip(tmp_path / "data", "b.mp4", 12)
    _, report = _scan([_video_ds(tmp_path / "data", num_frames=9)])
    json_path, txt_path = report.save(tmp_path / "out")
    saved = json.loads(json_path.read_text(encoding="utf-8"))
    assert saved["kept"] == {"clips": 1} and saved["skipped_counts"] == {"missing caption file": 1}
    assert saved["skipped"][0]["path"].endswith("b.mp4")
    assert "b.mp4: missing caption file: b.txt" in txt_path.read_text(encoding="utf-8")
