"""Probe, read and write clips with PyAV (images with PIL).

Resampling is nearest-frame: frame i of a clip played at `frame_rate` fps is the source frame shown at time
i / frame_rate, i.e. source index round(i * src_fps / frame_rate) with ties rounded up. Python's round() would
round ties to even and make 30 -> 20 fps pick frames 0, 2, 3, 4, 6... irregularly, so `source_index` is the
single place that defines the rounding, and both the length and the reader use it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageOps

from cinetune.errors import CinetuneError

logger = logging.getLogger(__name__)

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
AUDIO_EXTS = {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus"}


def list_files(root: Path, exts: frozenset[str] | set[str]) -> list[Path]:
    """Files under `root` with one of `exts` (lower case, with the dot), recursive and sorted; hidden files
    and folders (macOS writes '._clip.mp4' resource forks) are left out."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in exts
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


# Header frame counts can be off by one or two (edit lists, a dropped trailing B-frame): a shortfall this
# small repeats the last decoded frame, anything larger means the file is truncated.
_MISSING_FRAMES_TOLERATED = 2
_EXIF_ORIENTATION = 0x0112
_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


class MediaError(CinetuneError):
    """One file cannot be used; `reason` is a short phrase for the skip report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MediaInfo:
    """What a clip holds. width/height are as displayed (rotation metadata applied); images have fps 0."""

    num_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    is_image: bool


def source_index(i: int, src_fps: float, frame_rate: float) -> int:
    """Source frame shown at resampled frame i: the nearest one, ties up (the epsilon absorbs float noise)."""
    return math.floor(i * src_fps / frame_rate + 0.5 + 1e-9)


def resampled_length(info: MediaInfo, frame_rate: float) -> int:
    """Number of frames of the clip resampled to `frame_rate` fps (1 for images)."""
    if info.is_image:
        return 1
    # source_index is non-decreasing in i, so the count is the first i that maps past the end; start from the
    # closed form and correct it with source_index itself so the two can never disagree.
    length = max(0, math.ceil((info.num_frames - 0.5) * frame_rate / info.fps))
    while source_index(length, info.fps, frame_rate) < info.num_frames:
        length += 1
    while length > 0 and source_index(length - 1, info.fps, frame_rate) >= info.num_frames:
        length -= 1
    return length


def probe(path: Path) -> MediaInfo:
    """Read a file's frame count, rate and size; raise MediaError with a short reason for a broken file.

    The frame count is the container's (stream.frames) when it records one (mp4, mov), else the number of
    video packets, counted by demuxing without decoding (mkv, webm): one packet per frame holds for every
    codec the trainer expects. Decoding every frame would be exact but costs a full decode per clip.
    The first frame is always decoded, so a clip that opens but cannot be decoded is caught here.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MediaError("file not found") from None
    if size == 0:
        raise MediaError("zero-byte file")
    if path.suffix.lower() in IMAGE_EXTS:
        return _probe_image(path)
    try:
        with av.open(str(path)) as container:
            return _probe_container(container, size)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot be decoded: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split("; last error log:")[0].strip()[:200]


def _probe_image(path: Path) -> MediaInfo:
    try:
        with Image.open(path) as img:
            img.load()
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"cannot be decoded: {exc}") from exc
    return MediaInfo(num_frames=1, fps=0.0, width=width, height=height, has_audio=False, is_image=True)


def _probe_container(container: av.container.InputContainer, file_size: int) -> MediaInfo:
    if not container.streams.video:
        raise MediaError("no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # e.g. an mp4 cut inside its trailing moov atom
        raise MediaError("cannot be decoded: the video stream has no usable codec parameters")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise MediaError("unknown frame rate")
    header_count = stream.frames if stream.frames and stream.frames > 0 else 0
    if header_count and _data_end(stream) > file_size:
        raise MediaError("truncated: the file ends before its last frame")
    packets, first = 0, None
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        packets += 1
        if first is None:
            first = next(iter(packet.decode()), None)
        if first is not None and header_count:
            break
    if first is None:  # decoders with delay (B-frames) only give their first frame on flush
        first = next(iter(stream.codec_context.decode(None)), None)
    if first is None:
        raise MediaError("no decodable video frame")
    width, height = first.width, first.height
    if _normal_rotation(first.rotation) in (90, 270):
        width, height = height, width
    return MediaInfo(
        num_frames=header_count or packets,
        fps=float(rate),
        width=width,
        height=height,
        has_audio=bool(container.streams.audio),
        is_image=False,
    )


def _data_end(stream: av.video.stream.VideoStream) -> int:
    """Byte offset where the last frames' data ends, per the container index (0 when it has none).

    A copy cut off mid-transfer keeps an mp4 header that promises every frame; comparing the index with the
    file size catches it here instead of at caching time. The last few entries cover reordered frames.
    """
    entries = getattr(stream, "index_entries", None) or []  # PyAV < 15 has no index access
    tail = [entries[i] for i in range(max(0, len(entries) - 8), len(entries))]
    return max((entry.pos + entry.size for entry in tail if entry.size > 0), default=0)


def _normal_rotation(degrees: int) -> int:
    return round(degrees / 90) * 90 % 360


def fit_image(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Scale so the image covers `size` (width, height) keeping its aspect, center-crop; uint8 (H, W, 3).

    The crop is done through resize's `box`, in source coordinates, so the center stays exact (no rounding
    of an intermediate size) and only the kept region is resampled.
    """
    target_w, target_h = size
    width, height = img.size
    if (width, height) == (target_w, target_h):  # already the bucket's size: no resampling pass
        return np.array(img.convert("RGB"), dtype=np.uint8)
    scale = max(target_w / width, target_h / height)
    crop_w, crop_h = target_w / scale, target_h / scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    out = img.convert("RGB").resize((target_w, target_h), Image.Resampling.BICUBIC, box=box)
    return np.array(out, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays


def read_window(
    path: Path, info: MediaInfo, start: int, num_frames: int, frame_rate: float, size: tuple[int, int]
) -> np.ndarray:
    """Resampled frames start..start+num_frames-1, fitted to `size` (width, height): uint8 (F, H, W, 3)."""
    path = Path(path)
    if info.is_image:
        with Image.open(path) as img:
            return fit_image(ImageOps.exif_transpose(img), size)[None]
    available = resampled_length(info, frame_rate)
    if start < 0 or num_frames < 1 or start + num_frames > available:
        raise ValueError(f"window {start}+{num_frames} is outside the {available} frames of {path}")
    wanted = [source_index(i, info.fps, frame_rate) for i in range(start, start + num_frames)]
    try:
        picked = _decode_indices(path, info, sorted(set(wanted)), size)
    except av.FFmpegError as exc:
        raise MediaError(f"cannot be decoded: {_short(exc)}") from exc
    return np.stack([picked[index] for index in wanted])


class _SeekMissedError(Exception):
    """The seek landed after the first needed frame, or the stream has no timestamps to place frames by."""


def _decode_indices(
    path: Path, info: MediaInfo, needed: list[int], size: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Fitted frames for the sorted source indices `needed`, decoded from the keyframe before the first."""
    if needed[0] > 0:
        try:
            return _decode_pass(path, info, needed, size, seek=True)
        except _SeekMissedError:
            logger.debug("%s: seek to frame %d missed; decoding from the start", path, needed[0])
    return _decode_pass(path, info, needed, size, seek=False)


def _decode_pass(
    path: Path, info: MediaInfo, needed: list[int], size: tuple[int, int], seek: bool
) -> dict[int, np.ndarray]:
    """One decode, from the start or from a seek to the keyframe before the first needed frame."""
    picked: dict[int, np.ndarray] = {}
    pending = iter(needed)
    target = next(pending, None)
    previous = None  # the raw frame decoded last; fitted only if a gap in the timestamps needs it
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start_pts = stream.start_time or 0
        if seek:
            # Half a frame early, so a timestamp rounded down in the container never puts the seek past it.
            seconds = max(0.0, (needed[0] - 0.5) / info.fps)
            container.seek(start_pts + int(seconds / stream.time_base), stream=stream, backward=True)
        for counter, frame in enumerate(container.decode(stream)):
            if frame.pts is None:
                if seek:
                    raise _SeekMissedError  # without timestamps a position after a seek is unknown
                index = counter
            else:
                index = math.floor((frame.pts - start_pts) * stream.time_base * info.fps + 0.5)
            if seek and previous is None and target is not None and index > target:
                raise _SeekMissedError
            # A gap in the timestamps (variable frame rate) holds the frame on screen at that time.
            while target is not None and target < index:
                picked[target] = _fit_frame(previous if previous is not None else frame, size)
                target = next(pending, None)
            if target is not None and target == index:
                picked[target] = _fit_frame(frame, size)
                target = next(pending, None)
            if target is None:
                return picked
            previous = frame
    return _fill_tail(path, picked, needed, previous, size)


def _fit_frame(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    img = frame.to_image()
    rotation = _normal_rotation(frame.rotation)
    if rotation:
        img = img.transpose(_ROTATIONS[rotation])
    return fit_image(img, size)


def _fill_tail(
    path: Path,
    picked: dict[int, np.ndarray],
    needed: list[int],
    last: av.VideoFrame | None,
    size: tuple[int, int],
) -> dict[int, np.ndarray]:
    missing = [index for index in needed if index not in picked]
    if last is None or len(missing) > _MISSING_FRAMES_TOLERATED:
        raise MediaError(f"ended early: {len(missing)} of the needed frames are missing")
    logger.warning("%s: the last %d frame(s) are missing; repeating the last one", path, len(missing))
    fitted = _fit_frame(last, size)
    for index in missing:
        picked[index] = fitted
    return picked


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by one edge row/column: yuv420p needs even sizes, and nothing is cut off."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    crf: int = 18,
    sample_rate: int | None = None,
) -> Path:
    """Write uint8 (F, H, W, 3) RGB frames as an H.264 yuv420p mp4 (moov first, so browsers stream it).

    audio: optional (channels, samples) float track in [-1, 1] at `sample_rate`, written as AAC.
    """
    if audio is not None and not sample_rate:
        raise ValueError("an audio track needs its sample_rate")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (F, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _even(frames)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        audio_stream = None
        if audio is not None:
            from cinetune.data.audio import add_audio_track, write_audio_track

            audio = np.asarray(audio, dtype=np.float32).reshape(-1, np.asarray(audio).shape[-1])
            audio_stream = add_audio_track(container, audio, int(sample_rate))
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
        if audio_stream is not None:
            write_audio_track(container, audio_stream, audio)
    return path
