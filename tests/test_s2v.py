"""Audio from a separate audio dataset (`s2v_datasets`, `audio.auto_split: false`): the config rules, pairing
clips with same-named audio files, alignment, the cache key, and a CLI run that trains, validates (S2V from
the eval clip's linked file) and caches the linked audio."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cinetune.cli import main
from cinetune.config.load import build_data_config, load_config
from cinetune.data import SkipReport, scan_datasets, write_video
from cinetune.data.audio import extract_audio, tone
from cinetune.demo import synthetic_clip
from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.models.ltxvideo2 import audio_latents, tiny
from cinetune.models.registry import build_family
from cinetune.plan import resolve


def _wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """(channels, n) float in [-1, 1] as 16-bit PCM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").T.copy()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def _click(seconds: float, at: float, rate: int, channels: int = 2) -> np.ndarray:
    audio = np.zeros((channels, int(seconds * rate)), np.float32)
    audio[:, int(at * rate) : int(at * rate) + 480] = 0.8
    return audio


def _entries(video: dict, *audio: dict) -> list[dict]:
    return [video, *audio, {"id": "text", "dataset_type": "text_embeds", "cache_dir": "cache/text"}]


_VIDEO = {"id": "clips", "dataset_type": "video", "instance_data_dir": "clips"}
_AUDIO = {"id": "sounds", "dataset_type": "audio", "instance_data_dir": "sounds"}


def test_s2v_config_rules() -> None:
    data = build_data_config(_entries({**_VIDEO, "s2v_datasets": "sounds"}, _AUDIO))
    clips = data.media[0]
    assert clips.s2v_datasets == ["sounds"] and clips.audio is not None and not clips.audio.auto_split
    assert [d.id for d in data.audio_datasets(clips)] == ["sounds"]
    assert [d.id for d in data.media] == ["clips"]  # an audio dataset holds no samples of its own
    with_block = {**_VIDEO, "s2v_datasets": ["sounds"], "audio": {"auto_split": False, "channels": 1}}
    assert build_data_config(_entries(with_block, _AUDIO)).media[0].audio.channels == 1
    off = build_data_config(
        [{**_VIDEO, "id": "v2"}, *_entries({**_VIDEO, "s2v_datasets": "sounds", "disabled": True}, _AUDIO)]
    )
    assert [d.id for d in off.media] == ["v2"]  # the audio dataset of a disabled video dataset is unused
    bad = [
        (
            {**_VIDEO, "s2v_datasets": "sounds", "audio": {"auto_split": True}},
            [_AUDIO],
            "set auto_split false",
        ),
        ({**_VIDEO, "audio": {"auto_split": False}}, [], "set s2v_datasets"),
        ({**_VIDEO, "s2v_datasets": "nope"}, [_AUDIO], "'nope', which is no dataset"),
        ({**_VIDEO, "s2v_datasets": "sounds"}, [{**_AUDIO, "disabled": True}], "which is disabled"),
        ({**_VIDEO, "s2v_datasets": "text"}, [_AUDIO], "which is a text_embeds dataset"),
        (_VIDEO, [_AUDIO], "not linked by any video dataset"),
        ({**_VIDEO, "s2v_datasets": "sounds"}, [{**_AUDIO, "repeats": 2}], "repeats has no effect"),
        ({**_VIDEO, "s2v_datasets": []}, [_AUDIO], "s2v_datasets is empty"),
    ]
    for video, audio, message in bad:
        with pytest.raises(ConfigError, match=message):
            build_data_config(_entries(video, *audio))


def test_s2v_is_rejected_by_families_without_audio(tmp_path: Path) -> None:
    (tmp_path / "data.json").write_text(json.dumps(_entries({**_VIDEO, "s2v_datasets": "sounds"}, _AUDIO)))
    overrides = {"model_family": "ltxvideo", "data_backend_config": str(tmp_path / "data.json")}
    with pytest.raises(NotSupportedYet, match="s2v_datasets"):
        resolve(load_config(None, overrides))


def test_clips_pair_with_same_named_audio_files(tmp_path: Path) -> None:
    frames = np.zeros((30, 32, 32, 3), np.uint8)
    for name in ("a", "b", "sub/c", "d"):
        (tmp_path / "clips" / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(tmp_path / "clips" / f"{name}.mp4", frames, 24)  # no audio track of their own
    _wav(tmp_path / "sounds" / "a.wav", _click(1.25, 0.5, 16000), 16000)
    _wav(tmp_path / "sounds" / "c.wav", _click(1.25, 0.5, 16000), 16000)  # flat folder, unique name: pairs
    (tmp_path / "sounds" / "b.flac").write_bytes(b"not audio")  # unreadable: b is skipped with the reason
    entry = {**_VIDEO, "instance_data_dir": str(tmp_path / "clips"), "caption_strategy": "filename"}
    entry |= {"s2v_datasets": "sounds", "video": {"num_frames": 9}}
    sounds = {**_AUDIO, "instance_data_dir": str(tmp_path / "sounds")}
    data = build_data_config(_entries(entry, sounds))
    family = build_family("ltxvideo2", "tiny", None)
    report = SkipReport()
    samples = scan_datasets(data.datasets, family.frame_rule, 24.0, 0, report)
    paired = {s.path.stem: s.audio.path.name for s in samples}
    assert paired == {"a": "a.wav", "c": "c.wav"}
    reasons = {item.path.stem: item.reason for item in report.items}
    assert reasons["d"].startswith("no audio file: none named d.* in s2v dataset(s) 'sounds'")
    assert "allow_zero_audio" in reasons["d"] and reasons["b"].startswith("unreadable audio file: ")

    entry["audio"] = {"auto_split": False, "allow_zero_audio": True}
    data = build_data_config(_entries(entry, sounds))
    samples = scan_datasets(data.datasets, family.frame_rule, 24.0, 0, SkipReport())
    assert {s.path.stem: s.audio is not None for s in samples} == {
        "a": True,
        "b": False,
        "c": True,
        "d": False,
    }


def test_linked_audio_is_aligned_encoded_and_keyed(tmp_path: Path) -> None:
    # the audio file's first sample is the first frame's: a click at 1.0 s is 0.5 s into the window at 0.5 s
    sound = _wav(tmp_path / "sounds" / "a.wav", _click(2.0, 1.0, 48000), 48000)
    span = extract_audio(sound, 12 / 24, 1.0, sample_rate=16000, channels=2)
    assert span.valid_samples == 16000
    assert float(np.argmax(np.abs(span.samples[0]) > 0.3)) / 16000 == pytest.approx(0.5, abs=0.003)

    write_video(tmp_path / "clips" / "a.mp4", np.zeros((48, 32, 32, 3), np.uint8), 24)
    entry = {**_VIDEO, "instance_data_dir": str(tmp_path / "clips"), "caption_strategy": "filename"}
    entry |= {"s2v_datasets": "sounds", "video": {"num_frames": 17, "windows_per_clip": 1}}
    data = build_data_config(_entries(entry, {**_AUDIO, "instance_data_dir": str(tmp_path / "sounds")}))
    family = build_family("ltxvideo2", "tiny", None)
    family.configure_datasets(data)
    (sample,) = scan_datasets(data.datasets, family.frame_rule, 24.0, 0, SkipReport())
    audio_vae = tiny.tiny_components()["audio_vae"]
    entry_tensors = family._audio_entry(audio_vae, sample, 0)
    start = sample.window_starts[0] / 24
    expected = extract_audio(sound, start, 17 / 24, 16000, 2)
    # 17 frames at 24 fps: 11333 samples, 71 mel frames, ceil(71 / 4) = 18 steps, every one the VAE gives
    assert entry_tensors["audio_latents"].shape == (18, 32) == (audio_latents.latent_steps(17, 24.0), 32)
    torch.testing.assert_close(
        entry_tensors["audio_latents"], audio_latents.encode_audio(audio_vae, expected.samples)
    )
    assert bool(entry_tensors["audio_mask"].all())
    # an edited audio file changes the latent cache key; the clip's own file does not stand in for it
    key = family.latent_key_fields(sample)
    assert key["audio_file"][0] == str(sound)
    assert key["audio_steps"] == "vae"  # entries cut to the pipeline's length (before) are not reused
    os.utime(sound, ns=(sample.audio.mtime_ns + 10**9,) * 2)
    (edited,) = scan_datasets(data.datasets, family.frame_rule, 24.0, 0, SkipReport())
    assert family.latent_key_fields(edited) != key


def _project(root: Path) -> None:
    tiny.save_tiny_combined_file(root / "models" / "ltx-2-19b-dev.safetensors")
    for folder, count in (("clips", 3), ("eval", 1)):
        for i in range(count):
            name = f"{folder}_{i}"
            color = (40 + 80 * i, 200 - 60 * i, 90)
            write_video(root / folder / f"{name}.mov", synthetic_clip(color, 40, 64, 64, speed=1 + i), 25)
            (root / folder / f"{name}.txt").write_text(f"square number {i} with a {300 + 100 * i} Hz tone")
            _wav(root / "sounds" / folder / f"{name}.wav", tone(2 * 16000, 16000, 300.0 + 100 * i, 1), 16000)
    video = {"type": "local", "dataset_type": "video", "resolution": 64, "resolution_type": "pixel"}
    datasets = [
        {"id": "clips", **video, "instance_data_dir": "clips", "cache_dir_vae": "cache/vae",
         "video": {"num_frames": 33, "windows_per_clip": 1},
         "audio": {"auto_split": False, "channels": 1}, "s2v_datasets": "clip-sounds"},
        {"id": "clip-sounds", "type": "local", "dataset_type": "audio", "instance_data_dir": "sounds/clips"},
        {"id": "eval", **video, "instance_data_dir": "eval", "s2v_datasets": ["eval-sounds"]},
        {"id": "eval-sounds", "dataset_type": "audio", "instance_data_dir": "sounds/eval"},
        {"id": "text-embeds", "dataset_type": "text_embeds", "default": True, "cache_dir": "cache/text"},
    ]  # fmt: skip
    config = {
        "model_family": "ltxvideo2",
        "pretrained_model_name_or_path": "models/ltx-2-19b-dev.safetensors",
        "output_dir": "output",
        "data_backend_config": "multidatabackend.json",
        "train_batch_size": 1,
        "max_train_steps": 2,
        "learning_rate": 1e-3,
        "mixed_precision": "no",
        "lora_rank": 4,
        "frame_rate": 25,
        "validation_prompt": "square number 0 with a 300 Hz tone",
        "validation_resolution": "64x64",
        "validation_num_video_frames": 9,
        "validation_num_inference_steps": 2,
        "validation_using_datasets": True,
        "eval_dataset_id": "eval",
        "report_to": "none",
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "multidatabackend.json").write_text(json.dumps(datasets))


def test_cli_trains_on_linked_audio_and_validates_s2v(tmp_path: Path, monkeypatch) -> None:
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "config.json"]) == 0
    entries = [load_file(str(p)) for p in Path("cache/vae").rglob("*.safetensors")]
    assert len(entries) == 3  # 3 clips x 1 window; the eval clip only conditions validation
    # 33 frames at 25 fps: 21120 samples, 133 mel frames, ceil(133 / 4) = 34 audio steps (the pipeline
    # generates round(1.32 s x 25) = 33), all from the linked .wav files
    for entry in entries:
        assert entry["audio_latents"].shape == (34, 32) and bool(entry["audio_mask"].all())
    silence = audio_latents.encode_audio(tiny.tiny_components()["audio_vae"], np.zeros((2, 21120)))
    assert all(not torch.allclose(entry["audio_latents"], silence, atol=1e-3) for entry in entries)
    (video,) = Path("output/validation").rglob("*.mp4")
    import av

    with av.open(str(video)) as container:  # S2V: the eval clip's linked sound is the video's track
        (track,) = container.streams.audio
        assert track.codec_context.sample_rate == 16000  # the audio VAE's rate, not the vocoder's 24 kHz
    heard = extract_audio(video, 0.0, 9 / 25, 16000, 1).samples[0]
    spectrum = np.abs(np.fft.rfft(heard * np.hanning(heard.size)))
    assert abs(float(np.fft.rfftfreq(heard.size, 1 / 16000)[spectrum.argmax()]) - 300.0) < 10  # eval_0's tone
