from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from cinetune.data import MediaError, MediaInfo, fit_image, probe, read_window, resampled_length, write_video

from .clips import encode, frame_index, index_clip, index_frame


def _indices(frames: np.ndarray) -> list[int]:
    return [frame_index(frame) for frame in frames]


def _info(num_frames: int, fps: float) -> MediaInfo:
    return MediaInfo(num_frames=num_frames, fps=fps, width=64, height=48, has_audio=False, is_image=False)


def test_probe_reads_count_rate_and_size(tmp_path: Path) -> None:
    info = probe(index_clip(tmp_path / "a.mp4", 20, fps=30))
    assert info == MediaInfo(num_frames=20, fps=30.0, width=64, height=48, has_audio=False, is_image=False)


def test_probe_counts_packets_when_the_container_has_no_frame_count(tmp_path: Path) -> None:
    path = index_clip(tmp_path / "a.mkv", 23, fps=24)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # the case the packet count exists for
    assert probe(path).num_frames == 23


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("zero", "zero-byte file"),
        ("garbage", "cannot be decoded"),
        ("cut_moov_last", "cannot be decoded"),
        ("cut_moov_first", "truncated"),
        ("audio_only", "no video stream"),
        ("bad_image", "cannot be decoded"),
    ],
)
def test_probe_gives_a_reason_for_broken_files(tmp_path: Path, kind: str, reason: str) -> None:
    path = tmp_path / ("x.png" if kind == "bad_image" else "x.mp4")
    if kind == "zero":
        path.touch()
    elif kind in ("garbage", "bad_image"):
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "audio_only":
        _audio_only(path)
    else:
        whole = tmp_path / "whole.mp4"
        if kind == "cut_moov_last":
            index_clip(whole, 30)
        else:
            write_video(whole, np.stack([index_frame(i) for i in range(30)]), fps=25)
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) * 8 // 10])
    with pytest.raises(MediaError) as caught:
        probe(path)
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize(
    ("num_frames", "src_fps", "frame_rate"), [(30, 30, 15), (48, 24, 25), (50, 25, 24), (7, 30, 20)]
)
def test_resampled_length_counts_targets_whose_source_frame_exists(
    num_frames: int, src_fps: float, frame_rate: float
) -> None:
    # From the definition, in exact fractions: source = floor(i * src / dst + 1/2) must be < num_frames.
    ratio = Fraction(src_fps) / Fraction(frame_rate)
    expected = sum(1 for i in range(10 * num_frames) if int(i * ratio + Fraction(1, 2)) < num_frames)
    assert resampled_length(_info(num_frames, src_fps), frame_rate) == expected


def test_resampled_length_of_known_cases() -> None:
    assert resampled_length(_info(30, 30), 15) == 15
    assert resampled_length(_info(30, 30), 30) == 30
    assert resampled_length(_info(48, 24), 25) == 50
    assert resampled_length(MediaInfo(1, 0.0, 8, 8, False, True), 25) == 1


def test_read_at_half_rate_picks_every_other_frame(tmp_path: Path) -> None:
    path = index_clip(tmp_path / "a.mp4", 30, fps=30)
    info = probe(path)
    frames = read_window(path, info, 0, 15, 15.0, (64, 48))
    assert frames.shape == (15, 48, 64, 3) and frames.dtype == np.uint8
    assert _indices(frames) == list(range(0, 30, 2))


def test_read_24_fps_at_25_repeats_the_nearest_frame(tmp_path: Path) -> None:
    path = index_clip(tmp_path / "a.mp4", 48, fps=24)
    frames = read_window(path, probe(path), 0, 25, 25.0, (64, 48))
    # i * 24/25 rounded: 12.48 -> 12 repeats frame 12, and from there every index lags by one.
    assert _indices(frames) == [*range(13), *range(12, 24)]


def test_read_with_start_offset_seeks_to_the_right_frames(tmp_path: Path) -> None:
    path = index_clip(tmp_path / "a.mp4", 200, fps=30, gop=10)
    frames = read_window(path, probe(path), 70, 9, 15.0, (64, 48))
    assert _indices(frames) == list(range(140, 158, 2))


def test_read_last_window_reaches_the_last_frame(tmp_path: Path) -> None:
    path = index_clip(tmp_path / "a.mkv", 40, fps=25, gop=8)
    info = probe(path)
    frames = read_window(path, info, 31, 9, 25.0, (32, 24))
    assert frames.shape == (9, 24, 32, 3)
    assert _indices(frames) == list(range(31, 40))


def test_read_outside_the_clip_is_refused(tmp_path: Path) -> None:
    path = index_clip(tmp_path / "a.mp4", 10, fps=25)
    with pytest.raises(ValueError, match="outside"):
        read_window(path, probe(path), 5, 9, 25.0, (64, 48))


def test_read_crops_the_center_at_the_exact_size(tmp_path: Path) -> None:
    # Columns carry their x coordinate (2x), so the kept columns tell where the crop was taken.
    ramp = np.repeat((np.arange(128) * 2).astype(np.uint8)[None, :, None], 3, axis=2)
    path = encode(tmp_path / "wide.mp4", np.repeat(np.repeat(ramp, 48, axis=0)[None], 3, axis=0), fps=25)
    frames = read_window(path, probe(path), 0, 1, 25.0, (48, 48))
    assert frames.shape == (1, 48, 48, 3)
    row = frames[0, 24, :, 0].astype(int)
    assert abs(row[0] - 80) <= 3 and abs(row[-1] - 174) <= 3  # columns 40..87 of 128


def test_fit_image_scales_the_short_side_then_crops_the_middle() -> None:
    source = np.zeros((50, 100, 3), np.uint8)
    source[:, 50:] = 255  # left half black, right half white
    out = fit_image(Image.fromarray(source), (20, 20))
    # Scale 0.4 keeps source columns 25..75: the black/white edge lands in the middle of the output.
    assert out.shape == (20, 20, 3)
    assert out[:, :9].max() < 30 and out[:, 11:].min() > 225


def test_rotated_clip_is_read_upright(tmp_path: Path) -> None:
    coded = np.zeros((48, 64, 3), np.uint8)
    coded[:8, :8] = 255  # marker in the coded top-left corner
    path = encode(tmp_path / "phone.mp4", np.stack([coded] * 2), fps=25, rotation=90)
    info = probe(path)
    assert (info.width, info.height) == (48, 64)
    frame = read_window(path, info, 0, 1, 25.0, (48, 64))[0]
    # Rotating 90 degrees counter-clockwise takes the top-left corner to the bottom-left.
    assert frame[-4, 4].mean() > 200 and frame[4, 4].mean() < 50


def test_image_reads_as_one_frame(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    Image.fromarray(index_frame(37, width=96, height=48)).save(path)
    info = probe(path)
    assert (info.num_frames, info.is_image, info.width, info.height) == (1, True, 96, 48)
    frames = read_window(path, info, 0, 1, 25.0, (48, 24))
    assert frames.shape == (1, 24, 48, 3)


def test_write_video_round_trip_pads_odd_sizes(tmp_path: Path) -> None:
    frames = np.stack([np.full((47, 63, 3), 20 * i, np.uint8) for i in range(10)])
    path = write_video(tmp_path / "out" / "val.mp4", frames, fps=12.0)
    info = probe(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (10, 12.0, 64, 48)
    back = read_window(path, info, 0, 10, 12.0, (64, 48))
    assert np.abs(back[:, :47, :63].astype(int) - frames.astype(int)).mean() < 3
