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
from cinetune.data.audio import AudioSpan, extract_audio, log_mel_spectrogram, mel_filterbank, tone
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


# (frames, fps) -> (the VAE's latent steps, the pipeline's round(frames / fps * 25)), with
# samples = round(frames / fps * 16000), mel frames = 1 + samples // 160, steps = ceil(mel / 4)
_LENGTHS = {
    (121, 24): (127, 126),  # 80667 samples, 505 mel frames
    (57, 25): (58, 57),  # 36480 samples, 229 mel frames
    (9, 25): (10, 9),  # 5760 samples, 37 mel frames
    (17, 24): (18, 18),  # 11333 samples, 71 mel frames: the same count
    (97, 30): (81, 81),  # 51733 samples, 324 mel frames
    (49, 24): (52, 51),  # 32667 samples, 205 mel frames
}


@pytest.fixture(scope="module")
def audio_vae() -> torch.nn.Module:
    return tiny.tiny_components()["audio_vae"]


@pytest.mark.parametrize(("frames", "fps"), list(_LENGTHS))
def test_audio_tokens_are_every_step_the_vae_gives(audio_vae: torch.nn.Module, frames: int, fps: int) -> None:
    """The cached tokens are LTX2Pipeline's packing and normalization of diffusers' AutoencoderKLLTX2Audio
    encoding of the window's waveform, all of its steps (ceil(mel_frames / 4), as the official LTX-2 trainer
    keeps them); `latent_steps` (with or without the VAE) predicts that count, and `encode_audio` cuts to a
    pipeline's length only when asked."""
    vae_steps, generated = _LENGTHS[(frames, fps)]
    wave = tone(audio_latents.window_samples(frames, fps), 16000, 300.0)
    with torch.no_grad():
        mel = log_mel_spectrogram(torch.from_numpy(wave)[None])
        raw = audio_vae.encode(mel).latent_dist.mean
    assert mel.shape[2] == 1 + wave.shape[1] // 160
    assert raw.shape[2] == vae_steps == -(-mel.shape[2] // 4)  # the VAE's own output length
    assert (
        audio_latents.latent_steps(frames, fps, audio_vae)
        == audio_latents.latent_steps(frames, fps)
        == vae_steps
    )
    assert audio_latents.pipeline_steps(frames, fps, audio_vae) == generated
    tokens = audio_latents.encode_audio(audio_vae, wave)
    assert tokens.shape == (vae_steps, tiny.AUDIO_LATENT_CHANNELS * 16)
    packed = LTX2Pipeline._pack_audio_latents(raw)
    expected = LTX2Pipeline._normalize_audio_latents(packed, audio_vae.latents_mean, audio_vae.latents_std)
    torch.testing.assert_close(tokens, expected[0])
    # S2V validation feeds the pipeline its own length: the first `generated` tokens
    torch.testing.assert_close(audio_latents.encode_audio(audio_vae, wave, generated), tokens[:generated])
    with pytest.raises(ValueError, match="fewer than"):
        audio_latents.encode_audio(audio_vae, wave, vae_steps + 1)


def test_mono_audio_is_duplicated_into_the_stereo_vae(audio_vae: torch.nn.Module) -> None:
    wave = tone(16000, 16000, 300.0)
    mono = audio_latents.encode_audio(audio_vae, wave[:1])
    torch.testing.assert_close(mono, audio_latents.encode_audio(audio_vae, np.repeat(wave[:1], 2, 0)))


def test_every_step_of_a_fully_covered_window_counts_in_the_loss() -> None:
    """The VAE's extra last step (ceil(mel / 4) > round(seconds * 25)) came from the track: it counts. A step
    whose last mel frame is centred past the track's end does not."""
    for (frames, fps), (steps, _) in _LENGTHS.items():
        samples = audio_latents.window_samples(frames, fps)
        full = AudioSpan(np.zeros((2, samples), np.float32), 16000, samples)
        assert bool(audio_latents.token_mask(full, steps).all()), (frames, fps)
    # 9 frames at 25 fps: step 9 ends with mel frame 36, centred on sample 5760, the window's end
    short = AudioSpan(np.zeros((2, 5760), np.float32), 16000, 5759)
    assert audio_latents.token_mask(short, 10).tolist() == [1.0] * 9 + [0.0]
    half = AudioSpan(np.zeros((2, 5760), np.float32), 16000, 2880)  # a track that ends at 0.18 s
    assert audio_latents.token_mask(half, 10).tolist() == [1.0] * 5 + [0.0] * 5  # centres 0, 0.04 .. 0.16 s


def test_token_mask_marks_the_tokens_with_real_audio(tmp_path: Path) -> None:
    clip = _clip_with_click(tmp_path / "short.mp4", click_seconds=0.1, frames=24)  # 1 s of audio
    span = extract_audio(clip, 0.0, 2.0)
    mask = audio_latents.token_mask(span, 50)
    assert 24 <= int(mask.sum()) <= 27 and mask[:24].all() and not mask[30:].any()
    assert audio_latents.token_mask(None, 10).sum() == 0
