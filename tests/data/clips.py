"""Synthetic clips whose pixels say which source frame they are, so tests can check which frame was picked.

Each frame shows its index in binary as 8 vertical black/white bars (bit 0 on the left); encoded lossless
(crf 0), so the bars survive exactly apart from the RGB <-> YUV round trip.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT = 64, 48
BITS = 8


def index_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    bar = width // BITS
    for bit in range(BITS):
        if (index >> bit) & 1:
            frame[:, bit * bar : (bit + 1) * bar] = 255
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Read the index back from bar centers (works at any width, as long as the crop kept every bar)."""
    width = frame.shape[1]
    centers = [int((bit + 0.5) * width / BITS) for bit in range(BITS)]
    return sum(1 << bit for bit, x in enumerate(centers) if frame[:, x].mean() > 127)


def encode(path: Path, frames: np.ndarray, fps: float, gop: int = 12, rotation: int | None = None) -> Path:
    """Lossless H.264 in whatever container the suffix names; gop sets the keyframe spacing seeks land on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "0"}
        stream.codec_context.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


def index_clip(path: Path, num_frames: int, fps: float = 25.0, gop: int = 12) -> Path:
    return encode(path, np.stack([index_frame(i) for i in range(num_frames)]), fps, gop=gop)
