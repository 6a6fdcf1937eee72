"""Audio of a sample window -> the normalized audio tokens the LTX-2 transformer trains on.

waveform (16 kHz stereo) -> log-mel (64 bins, hop 160: 100 frames/s) -> audio VAE posterior mean (8 channels,
time and mel / 4: 25 latent steps/s) -> tokens (steps, channels x mel, channel-major) -> (x - mean) / std
with the
VAE's per-feature statistics, as LTX2Pipeline packs and normalizes audio latents.

Length: the VAE's causal encoder gives ceil(mel_frames / 4) steps, usually one more than the
round(frames / fps * 25) the pipeline generates for the same clip (121 frames at 24 fps: 127 vs 126). Cached
latents are cut to the pipeline's length, so a clip trains on exactly the audio tokens the model generates
for it
and S2V validation can feed them back unchanged; the step dropped is the last, half-padded mel window.
"""

from __future__ import annotations

import numpy as np
import torch

from cinetune.data.audio import AudioSpan, log_mel_spectrogram

LATENT_STEPS_PER_SECOND = 25


def latent_steps(num_frames: int, frame_rate: float, audio_vae: torch.nn.Module) -> int:
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
def encode_audio(audio_vae: torch.nn.Module, waveform: np.ndarray, steps: int) -> torch.Tensor:
    """(channels, samples) at the VAE's rate -> normalized tokens (steps, features); mono is duplicated."""
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
    if tokens.shape[0] < steps:
        raise ValueError(f"audio VAE gave {tokens.shape[0]} latent steps, fewer than the {steps} needed")
    tokens = tokens[:steps]
    mean = audio_vae.latents_mean.to(tokens)
    std = audio_vae.latents_std.to(tokens)
    return ((tokens - mean) / std).float().cpu()


def token_mask(
    span: AudioSpan | None, steps: int, per_second: float = LATENT_STEPS_PER_SECOND
) -> torch.Tensor:
    """(steps,) 1.0 where the token's audio came from the track, 0.0 past its end (or with no track)."""
    if span is None or span.valid_samples == 0:
        return torch.zeros(steps)
    valid_seconds = span.valid_samples / span.sample_rate
    starts = torch.arange(steps) / per_second
    return (starts < valid_seconds - 1e-6).float()
