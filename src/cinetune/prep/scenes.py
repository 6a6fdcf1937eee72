"""Scene detection (PySceneDetect on PyAV frames) and the plan of clips cut from the scenes.

Why PySceneDetect: its content and adaptive detectors are the field's reference for hard cuts, and its
threshold detector finds fades to black; decoding goes through its PyAV backend, so nothing else decodes the
file and the OpenCV it needs for colour conversion is the headless build. Cross-dissolves are found by
neither detector (each frame differs little from the last): such a transition stays inside one scene.

Frame numbers are the same as the trainer's (`data.video_io`): index = round((pts - start) * fps) with the
container's average rate, so a cut PySceneDetect reports at time t is frame round(t * fps).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cinetune.errors import ConfigError

logger = logging.getLogger(__name__)

DETECTORS = ("content", "adaptive")
DEFAULT_THRESHOLDS = {"content": 27.0, "adaptive": 3.0}  # PySceneDetect's own defaults


@dataclass(frozen=True)
class SplitOptions:
    """How raw footage becomes clips. Lengths in seconds unless the *_frames twin is set (it wins)."""

    detector: str = "content"
    threshold: float | None = None  # None: the detector's default
    fade_threshold: float = 12.0  # mean pixel value under which a frame counts as black; 0: no fade detection
    min_cut_distance: int = 15  # frames: a cut this close to the previous one is dropped (flashes)
    min_scene_seconds: float = 1.5
    max_scene_seconds: float = 10.0  # 0: no limit
    min_scene_frames: int | None = None
    max_scene_frames: int | None = None
    trim_frames: int = 0  # dropped at both ends of each scene (fades, transition frames)
    reencode: bool = False  # always re-encode, even where a stream copy would be exact
    crf: int = 18

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ConfigError(f"--detector '{self.detector}': one of {', '.join(DETECTORS)}")
        if self.min_scene_seconds < 0 or self.max_scene_seconds < 0 or self.trim_frames < 0:
            raise ConfigError("scene lengths and --trim_frames must not be negative")
        if self.min_cut_distance < 1:
            raise ConfigError("--min_cut_distance must be at least 1 frame")

    def min_frames(self, fps: float) -> int:
        if self.min_scene_frames is not None:
            return max(1, self.min_scene_frames)
        return max(1, math.ceil(self.min_scene_seconds * fps - 1e-9))

    def max_frames(self, fps: float) -> int | None:
        if self.max_scene_frames is not None:
            return self.max_scene_frames or None
        return math.floor(self.max_scene_seconds * fps + 1e-9) or None

    def detection_key(self) -> dict[str, object]:
        """What the detected cuts depend on (a cached detection is reused only for the same values)."""
        return {
            "detector": self.detector,
            "threshold": self.threshold,
            "fade_threshold": self.fade_threshold,
            "min_cut_distance": self.min_cut_distance,
        }


@dataclass(frozen=True)
class PlannedClip:
    """Frames [start, end) of a source, the `piece`-th piece of scene `scene` (both from 1)."""

    scene: int
    piece: int
    pieces: int
    start: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.start


def detect_cuts(
    path: Path, opts: SplitOptions, fps: float, on_frames: Callable[[int], None] | None = None
) -> list[int]:
    """Frame numbers where a new scene starts (0 excluded), sorted; one PyAV decode of the whole file."""
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, ThresholdDetector
    from scenedetect.backends.pyav import VideoStreamAv

    class _CountingStream(VideoStreamAv):
        """Reports decoded frames for the progress bar (the SceneManager decodes in its own thread)."""

        def read(self, decode: bool = True):
            frame = super().read(decode)
            if frame is not False and on_frames is not None:
                on_frames(1)
            return frame

    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # its per-file INFO lines: our bar says it
    threshold = opts.threshold if opts.threshold is not None else DEFAULT_THRESHOLDS[opts.detector]
    manager = SceneManager()
    if opts.detector == "content":
        manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=opts.min_cut_distance))
    else:
        manager.add_detector(
            AdaptiveDetector(adaptive_threshold=threshold, min_scene_len=opts.min_cut_distance)
        )
    if opts.fade_threshold > 0:
        manager.add_detector(
            ThresholdDetector(threshold=opts.fade_threshold, min_scene_len=opts.min_cut_distance)
        )
    stream = _CountingStream(str(path), suppress_output=True)
    manager.detect_scenes(stream)
    cuts = sorted({round(scene[0].seconds * fps) for scene in manager.get_scene_list()} - {0})
    return merge_close_cuts(cuts, opts.min_cut_distance)


def merge_close_cuts(cuts: list[int], distance: int) -> list[int]:
    """Cuts closer than `distance` to the one kept before them are dropped: the content and fade detectors
    both fire on a fade through black, a frame or two apart."""
    kept: list[int] = []
    for cut in cuts:
        if not kept or cut - kept[-1] >= distance:
            kept.append(cut)
    return kept


def plan_clips(
    cuts: list[int], total_frames: int, fps: float, opts: SplitOptions
) -> tuple[list[PlannedClip], list[tuple[int, int, int, str]]]:
    """(clips to write, rejected scenes as (scene, start, end, reason)) for a source of `total_frames`.

    Each scene loses `trim_frames` at both ends; a scene shorter than the minimum is rejected; a longer one
    than the maximum is cut into pieces of exactly the maximum, and a last piece shorter than the minimum is
    rejected with its reason.
    """
    bounds = [0, *[c for c in cuts if 0 < c < total_frames], total_frames]
    shortest, longest = opts.min_frames(fps), opts.max_frames(fps)
    clips: list[PlannedClip] = []
    rejected: list[tuple[int, int, int, str]] = []
    for number, (start, end) in enumerate(itertools.pairwise(bounds), start=1):
        first, last = start + opts.trim_frames, end - opts.trim_frames
        length = max(0, last - first)
        if length < shortest:
            trimmed = f" after trimming {opts.trim_frames} frame(s) at each end" if opts.trim_frames else ""
            rejected.append(
                (
                    number,
                    start,
                    end,
                    f"too short: {length} frames ({length / fps:.2f} s){trimmed}, "
                    f"minimum {shortest} ({shortest / fps:.2f} s)",
                )
            )
            continue
        step = longest or length
        starts = list(range(first, last, step))
        pieces = [(s, min(s + step, last)) for s in starts]
        if len(pieces) > 1 and pieces[-1][1] - pieces[-1][0] < shortest:
            tail = pieces.pop()
            rejected.append(
                (
                    number,
                    tail[0],
                    tail[1],
                    f"too short: the last {tail[1] - tail[0]} frames of a scene cut "
                    f"into pieces of {step}, minimum {shortest}",
                )
            )
        for index, (s, e) in enumerate(pieces, start=1):
            clips.append(PlannedClip(scene=number, piece=index, pieces=len(pieces), start=s, end=e))
    return clips, rejected
