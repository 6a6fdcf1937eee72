"""Synthetic footage with known cuts, for the split's tests and `bench/prep_split.py`.

Each scene is a coarse random texture of its own panning sideways (so frames inside a scene change, and
scenes differ); scenes meet in hard cuts, or in a fade to black and back. The true cut of a fade is the first
frame of the new scene (its first, still black, fade-in frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Scene:
    frames: int
    fade_in: int = 0  # frames rising from black at the start
    fade_out: int = 0  # frames falling to black at the end


def scene_frames(scene: Scene, seed: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block = max(8, width // 16)
    texture = rng.integers(0, 256, (-(-height // block), -(-width // block), 3), dtype=np.uint8)
    texture = texture.repeat(block, axis=0).repeat(block, axis=1)[:height, :width]
    out = np.empty((scene.frames, height, width, 3), dtype=np.uint8)
    for i in range(scene.frames):
        level = 1.0
        if scene.fade_in and i < scene.fade_in:
            level = i / scene.fade_in
        if scene.fade_out and i >= scene.frames - scene.fade_out:
            level = min(level, (scene.frames - 1 - i) / scene.fade_out)
        out[i] = (np.roll(texture, 2 * i, axis=1) * level).astype(np.uint8)  # a steady pan, wrapping around
    return out


def write_footage(
    path: Path,
    scenes: list[Scene],
    width: int = 160,
    height: int = 96,
    fps: int = 25,
    gop: int | None = None,
    audio_rate: int | None = None,
    seed: int = 0,
) -> list[int]:
    """Write the scenes one after another as H.264 (crf 18); returns the true cuts (first frame of every
    scene but the first). `gop` forces a keyframe every `gop` frames; `audio_rate` adds a stereo tone."""
    from cinetune.data.audio import add_audio_track, tone, write_audio_track

    path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(s.frames for s in scenes)
    cuts, start = [], 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        if gop:
            stream.codec_context.gop_size = gop
        sound = tone(round(total / fps * audio_rate), audio_rate, 330.0) if audio_rate else None
        audio = add_audio_track(container, sound, audio_rate) if sound is not None else None
        for number, scene in enumerate(scenes):
            if number:
                cuts.append(start)
            for frame in scene_frames(scene, seed + number, width, height):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            start += scene.frames
        container.mux(stream.encode())
        if audio is not None:
            write_audio_track(container, audio, sound)
    return cuts


# Two seconds, hard cut, 1.6 s, hard cut, 2.4 s fading out, fade in, 2 s, hard cut, a 0.8 s scene (too short
# for the default minimum), hard cut, 12.4 s (cut into pieces of the 10 s maximum).
TEST_SCENES = [
    Scene(50),
    Scene(40),
    Scene(60, fade_out=10),
    Scene(50, fade_in=10),
    Scene(20),
    Scene(310),
]
