"""Audio of a clip, aligned to its sampled frames: extraction (PyAV), log-mel spectrograms, writing an AAC
track.

Alignment: the trainer's frame i of a clip resampled to `frame_rate` fps is shown at i / frame_rate seconds
after
the video stream's first frame, so the audio of frames [start, start + n) is the span
[start / frame_rate, (start + n) / frame_rate) on the same clock (container timestamps; an audio stream that
starts later than the video is padded with silence in front). The span is resampled to the requested rate and
channel layout by libswresample (mono is duplicated to stereo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

import av
import numpy as np
import torch

_LAYOUTS = {1: "mono", 2: "stereo"}
_SEEK_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class AudioSpan:
    """Samples (channels, n) float32 in [-1, 1]; the first `valid_samples` came from the track."""

    samples: np.ndarray
    sample_rate: int
    valid_samples: int


def extract_audio(
    path: Path, start_seconds: float, duration_seconds: float, sample_rate: int = 16000, channels: int = 2
) -> AudioSpan | None:
    """The audio under video time [start, start + duration) of `path`; None for a file without audio."""
    num = round(duration_seconds * sample_rate)
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        origin = _video_origin(container)
        begin = origin + start_seconds
        if begin > _SEEK_MARGIN_SECONDS + origin:
            target = begin - _SEEK_MARGIN_SECONDS
            container.seek(int(target / stream.time_base), stream=stream, backward=True)
        # decoding stops past the span's end: a clip cut from a long recording decodes only its own span
        until = begin + duration_seconds + _SEEK_MARGIN_SECONDS
        first_time, decoded = _decode_resampled(container, stream, sample_rate, channels, until)
    out = np.zeros((channels, num), dtype=np.float32)
    if decoded.shape[1] == 0:
        return AudioSpan(out, sample_rate, 0)
    offset = round((begin - first_time) * sample_rate)  # index of the span's first sample in `decoded`
    src_from, dst_from = max(0, offset), max(0, -offset)
    count = max(0, min(num - dst_from, decoded.shape[1] - src_from))
    out[:, dst_from : dst_from + count] = decoded[:, src_from : src_from + count]
    return AudioSpan(out, sample_rate, dst_from + count if count else 0)


def _video_origin(container: av.container.InputContainer) -> float:
    """Seconds at which the first video frame is shown (the frame timeline's zero). In a file without video
    (an s2v dataset's audio file) the audio stream's start is the zero: its first sample is the first
    frame's."""
    streams = container.streams.video or container.streams.audio
    if streams:
        stream = streams[0]
        if stream.start_time is not None:
            return float(stream.start_time * stream.time_base)
    return 0.0


def _decode_resampled(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    sample_rate: int,
    channels: int,
    until: float | None = None,
) -> tuple[float, np.ndarray]:
    """Audio from the current position to `until` seconds (None: the end), resampled: (time of the first
    sample, (channels, n) array)."""
    resampler = av.AudioResampler(format="fltp", layout=_LAYOUTS[channels], rate=sample_rate)
    chunks, first_time = [], None
    for frame in container.decode(stream):
        if until is not None and frame.time is not None and frame.time > until:
            break
        if first_time is None:
            first_time = float(frame.time) if frame.time is not None else 0.0
        chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    if not chunks:
        return first_time or 0.0, np.zeros((channels, 0), dtype=np.float32)
    return first_time, np.concatenate(chunks, axis=1).astype(np.float32)


# ---- log-mel spectrogram ---------------------------------------------------------------------------------
def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    linear = 3.0 * freq / 200.0
    log_part = 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
    return np.where(freq >= 1000.0, log_part, linear)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    linear = 200.0 * mels / 3.0
    log_part = 1000.0 * np.exp((math.log(6.4) / 27.0) * (mels - 15.0))
    return np.where(mels >= 15.0, log_part, linear)


@cache
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangular filters on the Slaney scale with Slaney area normalization."""
    f_max = sample_rate / 2.0 if f_max is None else f_max
    freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    points = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(points)
    slopes = points[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    bank = np.maximum(0.0, np.minimum(down, up))
    bank *= 2.0 / (points[2 : n_mels + 2] - points[:n_mels])
    return bank


def log_mel_spectrogram(
    waveform: torch.Tensor,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 160,
    n_mels: int = 64,
) -> torch.Tensor:
    """(batch, channels, samples) -> (batch, channels, frames, n_mels) = log(max(mel magnitude, 1e-5)).

    Centered STFT (reflect padding), periodic Hann window of n_fft, magnitude (power 1), mel 0 .. sr/2:
    the LTX-2 audio VAE's input, frames = 1 + samples // hop_length.
    """
    batch, channels, samples = waveform.shape
    flat = waveform.reshape(batch * channels, samples).float()
    window = torch.hann_window(n_fft, device=flat.device)
    spec = torch.stft(
        flat, n_fft, hop_length, n_fft, window, center=True, pad_mode="reflect", return_complex=True
    )
    bank = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)).to(flat.device, torch.float32)
    mel = spec.abs().transpose(1, 2) @ bank  # (B*C, frames, n_mels)
    return torch.log(torch.clamp(mel, min=1e-5)).reshape(batch, channels, -1, n_mels)


# ---- writing
# -------------------------------------------------------------------------------------------------
def add_audio_track(
    container: av.container.OutputContainer, audio: np.ndarray, sample_rate: int
) -> av.audio.stream.AudioStream:
    """Add an AAC stream to an output container; returns it for `write_audio_track`."""
    channels = audio.shape[0]
    if channels not in _LAYOUTS:
        raise ValueError(f"audio must be mono or stereo, got {channels} channels")
    stream = container.add_stream("aac", rate=sample_rate)
    stream.layout = _LAYOUTS[channels]
    stream.time_base = Fraction(1, sample_rate)
    return stream


def write_audio_track(
    container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, audio: np.ndarray
) -> None:
    """Encode (channels, n) float samples in [-1, 1] into `stream` and flush it."""
    samples = np.ascontiguousarray(np.clip(audio, -1.0, 1.0).astype(np.float32))
    chunk = 1024
    for start in range(0, samples.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, start : start + chunk]), format="fltp", layout=stream.layout.name
        )
        frame.sample_rate = stream.rate
        frame.pts = start
        frame.time_base = Fraction(1, stream.rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def tone(
    num_samples: int, sample_rate: int, frequency: float, channels: int = 2, amplitude: float = 0.3
) -> np.ndarray:
    """A sine (channels, n); the right channel an octave up, so channel order is testable."""
    t = np.arange(num_samples) / sample_rate
    rows = [amplitude * np.sin(2 * np.pi * frequency * (2**c) * t) for c in range(channels)]
    return np.stack(rows).astype(np.float32)
