"""A truncated or corrupted cache entry (text or latent) is detected when read, reported, set aside and built
again: never trained on, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cinetune import cli
from cinetune.cache.store import DAMAGED_SUFFIX, TensorCache
from cinetune.training.trainer import Trainer

from .runs import logged, lora, same_lora, train_here, write_run


def _flip_last_byte(path: Path) -> None:
    """Same size, one byte of tensor data changed: only the checksum can tell."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x55
    path.write_bytes(bytes(data))


def _entries(cache: TensorCache) -> dict[str, Path]:
    return {p.stem: p for p in sorted(cache.root.rglob("*.safetensors"))}


def test_damaged_entries_are_rebuilt_when_the_cache_is_built(tmp_path: Path, clips_dir: Path) -> None:
    config = write_run(tmp_path, clips_dir)
    assert cli.main(["cache", "--config", str(config)]) == 0
    text, latents = TensorCache(tmp_path / "cache" / "text"), TensorCache(tmp_path / "cache" / "vae")
    text_key, text_path = next(iter(_entries(text).items()))
    latent_key, latent_path = list(_entries(latents).items())[1]
    # copies: a loaded tensor may map the file, which the damage below rewrites in place
    originals = {
        key: {k: v.clone() for k, v in cache.load(key).items()}
        for cache, key in ((text, text_key), (latents, latent_key))
    }
    latent_path.write_bytes(latent_path.read_bytes()[:-100])  # truncated
    _flip_last_byte(text_path)  # corrupted
    with logged() as messages:
        assert cli.main(["cache", "--config", str(config)]) == 0
    assert any(
        f"latent cache entry {latent_path} is damaged (not a readable safetensors file" in m for m in messages
    )
    assert any(
        f"text cache entry {text_path} is damaged (its tensors do not match the checksum" in m
        for m in messages
    )
    for cache, key in ((text, text_key), (latents, latent_key)):
        rebuilt = cache.load(key)
        assert all(torch.equal(rebuilt[k], originals[key][k]) for k in originals[key])
        assert cache.path(key).with_name(cache.path(key).name + DAMAGED_SUFFIX).exists()  # kept to inspect


def test_damage_found_while_training_stops_with_a_checkpoint_and_resumes_exactly(
    tmp_path: Path, clips_dir: Path, reference: Path, capsys
) -> None:
    config = write_run(tmp_path, clips_dir)
    latents = TensorCache(tmp_path / "cache" / "vae")
    real_periodic = Trainer.periodic

    def damage_after_step_3(self: Trainer, step: int) -> None:
        real_periodic(self, step)
        if step == 3:  # the disk goes bad under a running job: step 4 reads a damaged entry
            for path in _entries(latents).values():
                _flip_last_byte(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "periodic", damage_after_step_3)
        assert train_here(config) == 2
    err = " ".join(capsys.readouterr().err.split())
    out = tmp_path / "output"
    assert "is damaged (its tensors do not match the checksum written with them: damaged)" in err
    assert f"Stopped at step 3: {out / 'checkpoint-3'} holds the state" in err
    assert len(list(latents.root.rglob("*" + DAMAGED_SUFFIX))) == 1  # the one read, set aside
    assert train_here(config) == 0  # rebuilds the damaged entries, resumes from checkpoint-3
    assert not any(latents.damaged(key) for key in _entries(latents))
    assert same_lora(lora(out), lora(reference))
