"""Audio of sampled frames: extraction aligned to the frames, log-mel, audio tokens as LTX-2 trains on
them."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from diffusers import LTX2Pipeline

from cinetune.data import write_video
from cinetune.data.audio import extract_audio, log_mel_spectrogram, mel_filterbank, tone
from cinetune.models.ltxvideo2 import audio_latents, tiny


def _clip_with_click(
    path: Path, click_seconds: float, fps: float = 24, frames: int = 48, rate: int = 48000
) -> Path:
    audio = np.zeros((2, int(frames / fps * rate)), np.float32)
    start = int(click_seconds * rate)
    audio[0, start : start + 480] = 0.8
    audio[1, start : start + 480] = 0.4
    return write_video(path, np.zeros((frames, 32, 32, 3), np.uint8), fps, audio=audio, sample_rate=rate)


def _onset(samples: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(samples) > 0.3)) / rate


def test_audio_of_a_window_is_aligned_to_its_frames(tmp_path: Path) -> None:
    clip = _clip_with_click(tmp_path / "click.mp4", click_seconds=1.0)
    with av.open(str(clip)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
    # frames 12..35 at 24 fps start at 0.5 s: the click (frame 24) is 0.5 s into the span
    span = extract_audio(clip, 12 / 24, 24 / 24, sample_rate=16000, channels=2)
    assert span.samples.shape == (2, 16000) and span.valid_samples == 16000
    assert _onset(span.samples[0], 16000) == pytest.approx(0.5, abs=0.003)
    assert span.samples[0].max() > 0.6 > span.samples[1].max() > 0.3  # channel order kept
    # training at 12 fps: frame 6 is shown at 0.5 s as well
    span = extract_audio(clip, 6 / 12, 1.0, sample_rate=16000, channels=1)
    assert span.samples.shape == (1, 16000) and _onset(span.samples[0], 16000) == pytest.approx(
        0.5, abs=0.003
    )
    # a span past the end of the track: padded with silence, and says how much is real
    tail = extract_audio(clip, 40 / 24, 24 / 24)
    assert tail.samples.shape == (2, 16000) and 0.3 < tail.valid_samples / 16000 < 0.4
    silent = write_video(tmp_path / "silent.mp4", np.zeros((9, 32, 32, 3), np.uint8), 24)
    assert extract_audio(silent, 0.0, 0.375) is None


def test_log_mel_is_the_ltx2_audio_vae_input() -> None:
    wave = torch.from_numpy(tone(16000, 16000, 440.0))[None]  # left 440 Hz, right 880 Hz
    mel = log_mel_spectrogram(wave)
    assert mel.shape == (1, 2, 101, 64)  # centered STFT: 1 + samples // hop frames
    centers = [int(mel_filterbank(16000, 1024, 64)[:, m].argmax()) * 16000 / 1024 for m in range(64)]
    for channel, frequency in ((0, 440.0), (1, 880.0)):
        peak = int(mel[0, channel, 50].argmax())
        assert abs(centers[peak] - frequency) < 60  # the loudest bin is the one centered on the tone
    assert float(log_mel_spectrogram(torch.zeros(1, 2, 1600)).max()) == pytest.approx(np.log(1e-5))
    bank = mel_filterbank(16000, 1024, 64)
    assert bank.shape == (513, 64) and (bank >= 0).all() and bank[:, 0].argmax() < bank[:, 63].argmax()


def test_audio_tokens_match_the_pipeline_packing_and_length() -> None:
    audio_vae = tiny.tiny_components()["audio_vae"]
    frames, fps = 121, 24
    steps = audio_latents.latent_steps(frames, fps, audio_vae)
    assert steps == 126  # what LTX2Pipeline generates for 121 frames at 24 fps
    wave = tone(round(frames / fps * 16000), 16000, 300.0)
    with torch.no_grad():
        mel = log_mel_spectrogram(torch.from_numpy(wave)[None])
        raw = audio_vae.encode(mel).latent_dist.mean
    assert mel.shape[2] == 505 and raw.shape[2] == 127  # the encoder's ceil(505 / 4): one step more
    tokens = audio_latents.encode_audio(audio_vae, wave, steps)
    assert tokens.shape == (126, tiny.AUDIO_LATENT_CHANNELS * 16)
    packed = LTX2Pipeline._pack_audio_latents(raw)[:, :126]
    expected = LTX2Pipeline._normalize_audio_latents(packed, audio_vae.latents_mean, audio_vae.latents_std)
    torch.testing.assert_close(tokens, expected[0])
    mono = audio_latents.encode_audio(audio_vae, wave[:1], steps)  # mono is duplicated into the stereo VAE
    torch.testing.assert_close(mono, audio_latents.encode_audio(audio_vae, np.repeat(wave[:1], 2, 0), steps))


def test_token_mask_marks_the_tokens_with_real_audio(tmp_path: Path) -> None:
    clip = _clip_with_click(tmp_path / "short.mp4", click_seconds=0.1, frames=24)  # 1 s of audio
    span = extract_audio(clip, 0.0, 2.0)
    mask = audio_latents.token_mask(span, 50)
    assert 24 <= int(mask.sum()) <= 27 and mask[:24].all() and not mask[30:].any()
    assert audio_latents.token_mask(None, 10).sum() == 0
