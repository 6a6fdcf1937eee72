"""The captioner interface every backend implements, the prompt, and the frames a captioner sees.

A backend gets a clip's frames (sampled evenly over the clip, longest side at most `frame_size`) and the
prompt, and returns the model's answer. Errors of one clip raise `CaptionError` (reported for that clip, the
run goes on); errors no later clip can escape (a refused API key, a model that does not exist) raise a
`ConfigError` and stop the run with the captions written so far kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import numpy as np
from PIL import Image

from cinetune.data.video_io import probe

DEFAULT_PROMPT = (
    "Describe this video clip in one paragraph of plain prose, to be used as the caption of a video "
    "generation model's training clip. Say what the main subject is and what it looks like, what moves and "
    "how, how the camera moves (static, pan, tilt, zoom, dolly, tracking or handheld), and the visual style "
    "(lighting, colours, film, animation or render). Begin directly with the description: no title, no "
    "list, no opening phrase such as 'The video shows'."
)


class CaptionError(Exception):
    """One clip could not be captioned; the message is the reason in the report."""


@dataclass(frozen=True)
class ClipFrames:
    """Frames sampled from a clip, and where they came from (models that read timestamps get them)."""

    images: list[Image.Image]
    indices: list[int]
    total_frames: int
    fps: float

    @property
    def seconds(self) -> float:
        return self.total_frames / self.fps if self.fps else 0.0


class Captioner(Protocol):
    """A caption backend: `caption` is called once per clip, `close` once at the end."""

    name: str

    def caption(self, frames: ClipFrames, prompt: str) -> str: ...

    def close(self) -> None: ...


def even_indices(total: int, count: int) -> list[int]:
    """`count` frame numbers spread evenly from the first frame to the last (fewer for a shorter clip)."""
    if total <= 0:
        return []
    count = max(1, min(count, total))
    if count == 1:
        return [total // 2]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def sample_frames(path: Path, count: int, frame_size: int) -> ClipFrames:
    """Decode the clip once and keep `count` evenly spread frames, scaled so the longest side is at most
    `frame_size` (aspect kept). Raises data's MediaError for a file that cannot be read."""
    info = probe(path)
    wanted = even_indices(info.num_frames, count)
    picked: dict[int, Image.Image] = {}
    last = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for number, frame in enumerate(container.decode(stream)):
            last = frame
            if number in wanted:
                picked[number] = _fit(frame.to_image(), frame_size)
            if number >= wanted[-1]:
                break
    if last is None:
        raise CaptionError("no frame could be decoded")
    for number in wanted:  # a header that promised a frame or two more than the file holds
        picked.setdefault(number, _fit(last.to_image(), frame_size))
    return ClipFrames(
        images=[picked[n] for n in wanted], indices=wanted, total_frames=info.num_frames, fps=info.fps
    )


def _fit(image: Image.Image, frame_size: int) -> Image.Image:
    image = image.convert("RGB")
    scale = frame_size / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def render_prompt(template: str, path: Path, frames: ClipFrames) -> str:
    """The prompt for one clip: `{name}` (the clip's file name), `{seconds}` and `{frames}` are filled in;
    other braces are left as written."""
    values = {"name": path.stem, "seconds": f"{frames.seconds:.1f}", "frames": str(frames.total_frames)}
    return re.sub(r"\{(name|seconds|frames)\}", lambda m: values[m.group(1)], template)


def clean_caption(text: str) -> str:
    """One line of text: a caption file's lines are separate captions to the trainer, so the paragraph a
    model answers with (maybe over several lines, maybe in quotes or markdown) is joined into one."""
    text = re.sub(r"[*_#`]+", "", text or "")
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def with_trigger(caption: str, trigger: str | None) -> str:
    if not trigger or caption.startswith(trigger):
        return caption
    return f"{trigger} {caption}"


def as_array(frames: ClipFrames) -> np.ndarray:
    """(T, H, W, 3) uint8: the frames as one array (every frame has the clip's size)."""
    return np.stack([np.asarray(image, dtype=np.uint8) for image in frames.images])
