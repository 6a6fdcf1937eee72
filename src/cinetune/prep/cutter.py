"""Writing a clip: frames [start, end) of a source, as a stream copy where that is exact, else re-encoded.

A stream copy is exact when the clip starts on a keyframe, ends on a keyframe (or the end of the file), and
the packets between the two keyframes, in decode order, are exactly the clip's frames: no frame of the clip
waits behind the next keyframe and no frame of another scene rides along (open GOPs, B-frames across the
cut). Everything else is decoded from the keyframe before `start` and re-encoded as H.264 on exactly the cut
frames. The sound is always cut sample-exactly to the clip's time span and written as AAC (the trainer's
audio extraction, `data.audio`, reads it back aligned to the first frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from cinetune.data.audio import add_audio_track, extract_audio, write_audio_track

# Codecs an .mp4 holds that every reader of the clips (PyAV, browsers, the trainer) decodes.
COPYABLE_CODECS = {"h264", "hevc", "av1", "vp9"}


@dataclass(frozen=True)
class SourceIndex:
    """A source's video packets, from one demux pass (no decoding)."""

    fps: Fraction
    codec: str
    frames: int
    order: tuple[int, ...]  # frame index of each packet, in decode order
    keyframes: frozenset[int]
    audio_channels: int  # 0: no sound
    audio_rate: int


def frame_index(pts: int, start_pts: int, time_base: Fraction, fps: Fraction) -> int:
    """The trainer's numbering (`data.video_io`): the frame shown at (pts - start) seconds."""
    return math.floor((pts - start_pts) * time_base * fps + Fraction(1, 2))


def index_source(path: Path) -> SourceIndex:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = Fraction(rate.numerator, rate.denominator)
        start = stream.start_time or 0
        base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
        order, keys = [], set()
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            index = frame_index(packet.pts, start, base, fps)
            order.append(index)
            if packet.is_keyframe:
                keys.add(index)
        audio = container.streams.audio[0] if container.streams.audio else None
        return SourceIndex(
            fps=fps,
            codec=stream.codec_context.name,
            frames=max(order) + 1 if order else 0,
            order=tuple(order),
            keyframes=frozenset(keys),
            audio_channels=min(2, audio.codec_context.channels) if audio is not None else 0,
            audio_rate=audio.codec_context.sample_rate if audio is not None else 0,
        )


def can_copy(index: SourceIndex, start: int, end: int) -> bool:
    """True when the packets from keyframe `start` up to keyframe `end` are exactly frames start..end-1."""
    if index.codec not in COPYABLE_CODECS or start not in index.keyframes:
        return False
    if end < index.frames and end not in index.keyframes:
        return False
    try:
        first = next(i for i, f in enumerate(index.order) if f == start)
    except StopIteration:
        return False
    last = next((i for i in range(first + 1, len(index.order)) if index.order[i] == end), len(index.order))
    return sorted(index.order[first:last]) == list(range(start, end))


def write_clip(
    source: Path, index: SourceIndex, start: int, end: int, out: Path, copy: bool, crf: int
) -> str:
    """Write frames [start, end) of `source` (with its sound) to `out` atomically; returns 'copy' or
    're-encode'."""
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    sound = _sound(source, index, start, end)
    try:
        options = {"movflags": "+faststart"}
        with (
            av.open(str(source)) as container,
            av.open(str(tmp), "w", format="mp4", options=options) as output,
        ):
            video = container.streams.video[0]
            # every stream exists before the first packet is muxed: the header is written then
            out_video = (
                output.add_stream_from_template(video) if copy else _h264_stream(output, video, index, crf)
            )
            out_audio = add_audio_track(output, sound.samples, sound.sample_rate) if sound else None
            if copy:
                _copy_video(container, out_video, output, index, start, end)
            else:
                _reencode_video(container, out_video, output, index, start, end)
            if sound is not None:
                write_audio_track(output, out_audio, sound.samples)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return "copy" if copy else "re-encode"


def _seek(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, frame: int, fps: Fraction
) -> None:
    """To the keyframe at or before `frame`, half a frame early: a rounded timestamp never lands past."""
    if frame <= 0:
        return
    seconds = (frame - Fraction(1, 2)) / fps
    base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
    container.seek((stream.start_time or 0) + int(seconds / base), stream=stream, backward=True)


def _copy_video(container, out_stream, output, index: SourceIndex, start: int, end: int) -> None:
    stream = container.streams.video[0]
    base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
    origin = stream.start_time or 0
    _seek(container, stream, start, index.fps)
    offset = None
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        number = frame_index(packet.pts, origin, base, index.fps)
        if offset is None:
            if not (packet.is_keyframe and number == start):
                continue  # the seek landed on an earlier keyframe: skip to the clip's own
            offset = packet.pts
        elif packet.is_keyframe and number >= end:
            break
        packet.pts -= offset
        if packet.dts is not None:
            packet.dts -= offset
        packet.stream = out_stream
        output.mux(packet)
    if offset is None:
        raise av.error.InvalidDataError(0, "the keyframe the clip starts on was not found")


def _reencode_video(container, out_stream, output, index: SourceIndex, start: int, end: int) -> None:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
    origin = stream.start_time or 0
    written = -1
    for from_seek in (start > 0, False):  # a seek that lands past the first frame: decode from the start
        if not from_seek and written >= 0:
            break
        if from_seek:
            _seek(container, stream, start, index.fps)
        elif start > 0:
            container.seek(origin, stream=stream, backward=True)
        for count, frame in enumerate(container.decode(stream)):
            number = frame_index(frame.pts, origin, base, index.fps) if frame.pts is not None else count
            if number < start:
                continue
            if written < 0 and from_seek and number > start:
                break
            if number >= end:
                break
            if written < 0 and frame.rotation:  # a phone's portrait clip: keep its display rotation
                out_stream.set_display_rotation(frame.rotation)
            picture = frame.reformat(format="yuv420p", width=out_stream.width, height=out_stream.height)
            picture.pts, picture.time_base = number - start, Fraction(1) / index.fps
            output.mux(out_stream.encode(picture))
            written = max(written, 0) + 1
        if written >= 0:
            break
    if written < 0:
        raise av.error.InvalidDataError(0, f"no frame decoded from frame {start} on")
    output.mux(out_stream.encode())


def _h264_stream(output, video, index: SourceIndex, crf: int):
    out_stream = output.add_stream("libx264", rate=index.fps)
    width, height = video.codec_context.width, video.codec_context.height
    out_stream.width, out_stream.height = width - width % 2, height - height % 2  # yuv420p: even sides
    out_stream.pix_fmt = "yuv420p"
    out_stream.time_base = Fraction(1) / index.fps
    out_stream.options = {"crf": str(crf)}
    return out_stream


def _sound(source: Path, index: SourceIndex, start: int, end: int):
    """The clip's sound, cut to its time span at the source's rate (None without a sound track)."""
    if not index.audio_channels:
        return None
    span = extract_audio(
        source,
        float(start / index.fps),
        float((end - start) / index.fps),
        index.audio_rate,
        index.audio_channels,
    )
    return span if span is not None and span.valid_samples > 0 else None
