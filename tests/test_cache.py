"""Caches: keys never reuse stale entries, builds resume, captions are shared, one encoder at a time."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cinetune.cache.builder import CacheBuilder
from cinetune.config import load_config
from cinetune.data import SkipReport, scan_datasets
from cinetune.models.registry import build_family


def _setup(tmp_path: Path, clips_dir: Path, make_config, model_dir: Path | None = None):
    loaded = load_config(make_config(tmp_path, clips_dir, model_dir))
    family = build_family("ltxvideo", "tiny", str(model_dir) if model_dir else None)
    samples = scan_datasets(loaded.data.media, family.frame_rule, 24.0, 3, SkipReport())
    builder = CacheBuilder(
        family,
        text_root=tmp_path / "text",
        latent_roots={"clips": tmp_path / "vae"},
        device=torch.device("cpu"),
        dtype=torch.float32,
        max_sequence_length=128,
    )
    return family, samples, builder


def test_latent_key_changes_with_everything_the_entry_depends_on(tmp_path, clips_dir, make_config) -> None:
    _, samples, builder = _setup(tmp_path, clips_dir, make_config)
    sample = samples[0]
    base = builder.latent_key(sample, 0)
    assert builder.latent_key(sample, 0) == base
    variants = [
        replace(sample, frame_rate=25.0),
        replace(sample, bucket=replace(sample.bucket, num_frames=17)),
        replace(sample, bucket=replace(sample.bucket, width=sample.bucket.width + 32)),
        replace(sample, mtime_ns=sample.mtime_ns + 1),
        replace(sample, size_bytes=sample.size_bytes + 1),
        replace(sample, window_starts=(sample.window_starts[0] + 1,)),
    ]
    keys = {builder.latent_key(v, 0) for v in variants}
    assert base not in keys and len(keys) == len(variants)
    other_dtype = CacheBuilder(
        builder.family,
        text_root=tmp_path / "t",
        latent_roots={},
        device=torch.device("cpu"),
        dtype=torch.bfloat16,
        max_sequence_length=128,
    )
    assert other_dtype.latent_key(sample, 0) != base
    assert other_dtype.text_key("a cat") != builder.text_key("a cat")


def test_model_identity_enters_the_key(tmp_path, clips_dir, make_config, tiny_ltx_dir) -> None:
    _, samples, builtin = _setup(tmp_path / "a", clips_dir, make_config)
    _, _, folder = _setup(tmp_path / "b", clips_dir, make_config, tiny_ltx_dir)
    assert builtin.latent_key(samples[0], 0) != folder.latent_key(samples[0], 0)
    assert builtin.text_key("x") != folder.text_key("x")


def test_interrupted_build_resumes_and_captions_are_shared(
    tmp_path, clips_dir, make_config, monkeypatch
) -> None:
    family, samples, builder = _setup(tmp_path, clips_dir, make_config)
    real = family.encode_video
    calls = {"n": 0}

    def flaky(vae, pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(vae, pixels)

    monkeypatch.setattr(family, "encode_video", flaky)
    with pytest.raises(KeyboardInterrupt):
        builder.build(samples)
    assert not list((tmp_path / "vae").rglob("*.tmp"))
    monkeypatch.setattr(family, "encode_video", real)
    _, _, again = _setup(tmp_path, clips_dir, make_config)
    index = again.build(samples)
    assert index.stats["latent_encoded"] == sum(len(s.window_starts) for s in samples) - 2
    assert index.stats["text_encoded"] == 0  # all captions were written before the VAE phase
    # one embedding per distinct caption line, plus the empty caption used for caption dropout
    captions = {c for s in samples for c in s.captions}
    assert len(list((tmp_path / "text").rglob("*.safetensors"))) == len(captions) + 1
    entry = index.latent(0, 0, "clips")
    assert entry["latents"].shape == entry["latents_std"].shape == (16, 2, 2, 3)


def test_text_encoder_is_released_before_the_vae_loads(tmp_path, clips_dir, make_config, monkeypatch) -> None:
    family, samples, builder = _setup(tmp_path, clips_dir, make_config)
    refs: list[weakref.ref] = []
    real_text, real_vae = family.load_text_encoder, family.load_vae

    def load_text(dtype):
        tokenizer, encoder = real_text(dtype)
        refs.append(weakref.ref(encoder))
        return tokenizer, encoder

    def load_vae(dtype):
        gc.collect()
        assert refs and refs[0]() is None, "text encoder still alive when the VAE is loaded"
        return real_vae(dtype)

    monkeypatch.setattr(family, "load_text_encoder", load_text)
    monkeypatch.setattr(family, "load_vae", load_vae)
    builder.build(samples)
    assert refs
