"""Scene split on synthetic footage with known cuts: detection, the clip plan, exact cut frames, the
manifest, stream copies, re-runs and bad sources.

Tolerance: hard cuts are found on their exact frame; a fade through black is cut on one of its two black
frames (the content detector's cut lands on the last fade-out frame, one before the true cut; the fade
detector's on the first fade-in frame), so within 1 frame.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from cinetune.data.video_io import probe
from cinetune.prep import split as split_module
from cinetune.prep.cutter import can_copy, index_source
from cinetune.prep.scenes import PlannedClip, SplitOptions, detect_cuts, plan_clips
from cinetune.prep.split import MANIFEST, split_footage
from cinetune.prep.synthetic import Scene, write_footage

FADE_CUT = 150  # TEST_SCENES: the third scene fades out, the fourth fades in


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_cuts_found_on_the_frame_and_the_fade_within_one(footage, detector: str) -> None:
    path, truth = footage
    found = detect_cuts(path, SplitOptions(detector=detector), 25.0)
    assert len(found) == len(truth), (found, truth)
    for cut, true in zip(found, truth, strict=True):
        assert abs(cut - true) <= (1 if true == FADE_CUT else 0), (found, truth)


def test_without_the_fade_detector_the_adaptive_detector_misses_the_fade(footage) -> None:
    path, truth = footage
    found = detect_cuts(path, SplitOptions(detector="adaptive", fade_threshold=0), 25.0)
    assert found == [c for c in truth if c != FADE_CUT]


def test_plan_trims_drops_short_scenes_and_cuts_long_ones() -> None:
    opts = SplitOptions(min_scene_frames=10, max_scene_frames=40, trim_frames=3)
    clips, rejected = plan_clips([50, 65, 150], 250, 25.0, opts)
    assert clips == [
        PlannedClip(1, 1, 1, 3, 43),  # 44 trimmed frames: one piece of 40, the 4 left are too short
        PlannedClip(3, 1, 2, 68, 108),
        PlannedClip(3, 2, 2, 108, 147),
        PlannedClip(4, 1, 3, 153, 193),
        PlannedClip(4, 2, 3, 193, 233),
        PlannedClip(4, 3, 3, 233, 247),
    ]
    assert [r[:3] for r in rejected] == [(1, 43, 47), (2, 50, 65)]
    assert "the last 4 frames" in rejected[0][3]
    assert (
        rejected[1][3]
        == "too short: 9 frames (0.36 s) after trimming 3 frame(s) at each end, minimum 10 (0.40 s)"
    )
    clips, rejected = plan_clips([], 100, 25.0, SplitOptions(min_scene_frames=11, max_scene_frames=45))
    assert [(c.start, c.end) for c in clips] == [(0, 45), (45, 90)]
    assert rejected == [(1, 90, 100, rejected[0][3])] and "the last 10 frames" in rejected[0][3]


def test_split_writes_exact_clips_with_sound_and_a_manifest(footage, tmp_path: Path) -> None:
    source, _ = footage
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(source, raw / "synthetic.mp4")
    (raw / "empty.mp4").write_bytes(b"")
    (raw / "notes.mov").write_bytes(b"not a video at all" * 10)
    report = split_footage(raw, tmp_path / "clips", SplitOptions())
    names = [f"synthetic-scene{n:03d}.mp4" for n in (1, 2, 3, 4)] + [
        "synthetic-scene006-part01.mp4",
        "synthetic-scene006-part02.mp4",
    ]
    assert sorted(report.done) == sorted(names)
    assert {Path(f).name for f, _ in report.failed} == {"empty.mp4", "notes.mov"}
    assert dict((Path(f).name, r) for f, r in report.failed)["empty.mp4"] == "zero-byte file"
    assert report.skipped == [("synthetic.mp4 scene 5 (frames 200-219)", report.skipped[0][1])]
    assert report.skipped[0][1].startswith("too short: 20 frames (0.80 s)")
    rows = {
        row["clip"]: row for row in map(json.loads, (tmp_path / "clips" / MANIFEST).read_text().splitlines())
    }
    assert set(rows) == set(names)
    source_frames = _decode(source)
    for name in names:
        row, clip = rows[name], tmp_path / "clips" / name
        info = probe(clip)
        assert info.num_frames == row["end_frame"] - row["start_frame"] == row["frames"]
        assert info.has_audio and row["audio"] and row["fps"] == 25.0
        assert row["source"] == str(source.resolve().parent.parent / "raw" / "synthetic.mp4") or row["source"]
        first = _decode(clip)[0].astype(int)
        lo, hi = max(0, row["start_frame"] - 2), row["start_frame"] + 3
        errors = [np.abs(first - source_frames[i].astype(int)).mean() for i in range(lo, hi)]
        assert lo + int(np.argmin(errors)) == row["start_frame"], (name, errors)
    assert rows["synthetic-scene006-part01.mp4"]["frames"] == 250  # the 10 s maximum at 25 fps


def test_rerun_decodes_nothing_and_rewrites_nothing(footage, tmp_path: Path, monkeypatch) -> None:
    source, _ = footage
    first = split_footage(source, tmp_path / "clips", SplitOptions(max_scene_seconds=0))
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "clips").glob("*.mp4")}

    def no_detection(*args, **kwargs):
        raise AssertionError("the cached detection should have been used")

    monkeypatch.setattr(split_module, "detect_cuts", no_detection)
    again = split_footage(source, tmp_path / "clips", SplitOptions(max_scene_seconds=0))
    assert again.done == [] and sorted(again.kept) == sorted(first.done)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "clips").glob("*.mp4")} == stamps


def test_cuts_on_keyframes_are_stream_copies_bit_for_bit(tmp_path: Path) -> None:
    source = tmp_path / "gop.mp4"
    write_footage(source, [Scene(50), Scene(40), Scene(60)], gop=10, audio_rate=16000)
    index = index_source(source)
    assert {0, 50, 90} <= index.keyframes and not can_copy(index, 55, 90)
    report = split_footage(source, tmp_path / "clips", SplitOptions(min_scene_seconds=1))
    rows = [json.loads(line) for line in (tmp_path / "clips" / MANIFEST).read_text().splitlines()]
    assert [(r["start_frame"], r["end_frame"], r["method"]) for r in rows] == [
        (0, 50, "copy"),
        (50, 90, "copy"),
        (90, 150, "copy"),
    ]
    whole = _decode(source)
    for row in rows:
        assert np.array_equal(
            _decode(tmp_path / "clips" / row["clip"]), whole[row["start_frame"] : row["end_frame"]]
        )
    assert probe(tmp_path / "clips" / rows[0]["clip"]).has_audio and len(report.done) == 3
    forced = split_footage(source, tmp_path / "forced", SplitOptions(min_scene_seconds=1, reencode=True))
    methods = {
        json.loads(line)["method"] for line in (tmp_path / "forced" / MANIFEST).read_text().splitlines()
    }
    assert methods == {"re-encode"} and len(forced.done) == 3


@pytest.mark.parametrize("reencode", [False, True])
def test_a_phones_rotation_survives_copy_and_re_encode(tmp_path: Path, reencode: bool) -> None:
    from tests.data.clips import encode, index_frame

    frames = np.stack([index_frame(i) for i in range(30)])  # 64x48, shown rotated 90 degrees: 48x64
    source = encode(tmp_path / "phone.mp4", frames, 25, gop=30, rotation=90)
    report = split_footage(source, tmp_path / "clips", SplitOptions(min_scene_frames=5, reencode=reencode))
    info = probe(tmp_path / "clips" / report.done[0])
    assert (info.width, info.height, info.num_frames) == (48, 64, 30)
