"""Audio of a sample window -> the normalized audio tokens the LTX-2 transformer trains on.

waveform (16 kHz stereo) -> log-mel (64 bins, hop 160: 100 frames/s) -> audio VAE posterior mean (8 channels,
time and mel / 4: 25 latent steps/s) -> tokens (steps, channels x mel, channel-major) -> (x - mean) / std
with the VAE's per-feature statistics, as LTX2Pipeline packs and normalizes audio latents.

Length: a window of F frames at fps has round(F / fps * 16000) samples, 1 + samples // 160 mel frames
(centered STFT), and the VAE's causal encoder gives ceil(mel_frames / 4) latent steps (`latent_steps`): 121
frames at 24 fps give 505 mel frames and 127 steps. Training keeps them all, as the official LTX-2 trainer
does (its preprocessing trims / pads the track to the clip's duration and keeps every step the encoder
gives). That is usually one step more than the round(F / fps * 25) LTX2Pipeline generates for the clip
(`pipeline_steps`: 126); only where tokens are fed to a pipeline (S2V validation, `eval_clip_audio`) are they
cut to its length, the step dropped being the last.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cinetune.data.audio import AudioSpan, log_mel_spectrogram
from cinetune.errors import ConfigError

LATENT_STEPS_PER_SECOND = 25
# The LTX-2 audio VAE's input (TRAINING_FACTS section 2), for counts made without a VAE (`cinetune bench`).
SAMPLE_RATE = 16000
MEL_HOP_LENGTH = 160
TEMPORAL_COMPRESSION = 4


def window_samples(num_frames: int, frame_rate: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples of audio under num_frames frames at frame_rate (what `extract_audio` returns)."""
    return round(num_frames / frame_rate * sample_rate)


def latent_steps(num_frames: int, frame_rate: float, audio_vae: torch.nn.Module | None = None) -> int:
    """Latent steps the audio VAE gives for the audio of num_frames at frame_rate: ceil(mel_frames / 4), with
    1 + samples // hop mel frames. Without `audio_vae`, the LTX-2 audio VAE's rate, hop and compression."""
    rate, hop, compression = SAMPLE_RATE, MEL_HOP_LENGTH, TEMPORAL_COMPRESSION
    if audio_vae is not None:
        config = audio_vae.config
        rate, hop = config.sample_rate, config.mel_hop_length
        compression = audio_vae.temporal_compression_ratio
    mel_frames = 1 + window_samples(num_frames, frame_rate, rate) // hop
    return -(-mel_frames // compression)


def pipeline_steps(num_frames: int, frame_rate: float, audio_vae: torch.nn.Module) -> int:
    """Audio tokens LTX2Pipeline generates for a clip of num_frames at frame_rate: round(seconds * 25)."""
    config = audio_vae.config
    per_second = config.sample_rate / config.mel_hop_length / audio_vae.temporal_compression_ratio
    return round(num_frames / frame_rate * per_second)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, T, M) -> (B, T, C * M), channel-major features (LTX2Pipeline._pack_audio_latents)."""
    return latents.transpose(1, 2).flatten(2, 3)


def unpack(tokens: torch.Tensor, mel_bins: int) -> torch.Tensor:
    """(B, T, C * M) -> (B, C, T, M)."""
    return tokens.unflatten(2, (-1, mel_bins)).transpose(1, 2)


@torch.no_grad()
def encode_audio(audio_vae: torch.nn.Module, waveform: np.ndarray, steps: int | None = None) -> torch.Tensor:
    """(channels, samples) at the VAE's rate -> normalized tokens (steps, features), every step the VAE gives
    or, with `steps`, the first `steps` of them (a pipeline's length); mono is duplicated."""
    param = next(audio_vae.parameters())
    wave = torch.from_numpy(np.ascontiguousarray(waveform)).float()[None]
    if wave.shape[1] < audio_vae.config.in_channels:
        wave = wave.expand(-1, audio_vae.config.in_channels, -1)
    mel = log_mel_spectrogram(
        wave,
        sample_rate=audio_vae.config.sample_rate,
        hop_length=audio_vae.config.mel_hop_length,
        n_mels=audio_vae.config.mel_bins,
    )
    posterior = audio_vae.encode(mel.to(param.device, param.dtype)).latent_dist
    tokens = pack(posterior.mean)[0]
    if steps is not None:
        if tokens.shape[0] < steps:
            raise ValueError(f"audio VAE gave {tokens.shape[0]} latent steps, fewer than the {steps} needed")
        tokens = tokens[:steps]
    mean = audio_vae.latents_mean.to(tokens)
    std = audio_vae.latents_std.to(tokens)
    return ((tokens - mean) / std).float().cpu()


def token_mask(
    span: AudioSpan | None, steps: int, per_second: float = LATENT_STEPS_PER_SECOND
) -> torch.Tensor:
    """(steps,) 1.0 where the token's audio came from the track, 0.0 past its end (or with no track).

    Latent step i of the causal encoder ends with mel frame 4i, centred at i / 25 s: the token counts when
    that centre lies within the track's samples, its end included (the last mel frame of a window may be
    centred on the window's end, so every step of a fully covered window counts, the VAE's extra last step
    too)."""
    if span is None or span.valid_samples == 0:
        return torch.zeros(steps)
    centres = torch.arange(steps, dtype=torch.float64) * (span.sample_rate / per_second)  # in samples
    return (centres <= span.valid_samples + 1e-6).float()


def eval_clip_audio(
    ds: Any,
    links: Any,
    image: np.ndarray,
    num_frames: int,
    frame_rate: float,
    audio_vae: torch.nn.Module,
    max_clips: int = 8,
) -> tuple[np.ndarray, torch.Tensor] | None:
    """(waveform, tokens (1, steps, features)) of the eval clip of `ds` whose first frame is `image` (from
    its own track, or its s2v file through `links`); None when no clip with sound has that first frame."""
    from cinetune.data import discover_files, probe, read_window
    from cinetune.data.audio import extract_audio
    from cinetune.data.s2v import clip_audio

    for path in discover_files(ds)[:max_clips]:
        info = probe(path)
        source = None if info.is_image else clip_audio(ds, path, info.has_audio, links)[0]
        if source is None:
            continue
        first = read_window(path, info, 0, 1, info.fps or frame_rate, (info.width, info.height))[0]
        if first.shape == image.shape and np.array_equal(first, image):
            rate = audio_vae.config.sample_rate
            span = extract_audio(source.path, 0.0, num_frames / frame_rate, rate, ds.audio.channels)
            # the pipeline generates pipeline_steps tokens: the VAE's extra last step is cut
            tokens = encode_audio(audio_vae, span.samples, pipeline_steps(num_frames, frame_rate, audio_vae))
            return span.samples, tokens[None]
    return None


def check_audio_options(dataset_id: str, options: Any) -> None:
    """A dataset `audio` block LTX-2 can train: its audio VAE takes 16 kHz."""
    if options.sample_rate != 16000:
        raise ConfigError(
            f"dataset '{dataset_id}': audio.sample_rate={options.sample_rate}, "
            "but LTX-2's audio VAE takes 16000 Hz"
        )
