"""A full disk or a read-only output folder: the run stops with a message naming the folder and the space
needed, the last good checkpoint (and every cache entry written) stays intact, and a resume after freeing
space continues exactly. The faults are injected where the file system would raise them (ENOSPC mid-write
after part of the file is on disk, a free-space figure too small, EROFS), since tests cannot fill real disks
on every machine."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections import namedtuple
from pathlib import Path

import filelock
import pytest
import torch

from cinetune.cache import store
from cinetune.cache.store import TensorCache
from cinetune.export.manifest import verify_manifest
from cinetune.plan import list_checkpoints
from cinetune.training.metrics import MetricsLog

from .runs import lora, same_lora, train_here, write_run


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint_and_resumes_exactly(
    tmp_path: Path, clips_dir: Path, shared_caches: Path, reference: Path, capsys
) -> None:
    config = write_run(tmp_path, clips_dir, shared_caches)
    out = tmp_path / "output"
    real_save = torch.save

    def fills_up(obj: object, path: object, *args, **kwargs) -> None:
        if ".tmp-checkpoint-4" in str(path) and str(path).endswith("optimizer.pt"):
            Path(path).write_bytes(b"\0" * 1000)  # part of the file made it to the disk
            raise _enospc(path)
        real_save(obj, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", fills_up)
        assert train_here(config) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(rf"no space left in {out} while writing checkpoint-4 \(about [\d.]+ MB more needed", err)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert verify_manifest(out / "checkpoint-2") is None and not list(out.glob(".tmp-*"))
    assert train_here(config) == 0  # space freed
    assert same_lora(lora(out), lora(reference))


def test_too_little_free_space_stops_before_a_checkpoint_is_started(
    tmp_path: Path, clips_dir: Path, shared_caches: Path, capsys
) -> None:
    config = write_run(tmp_path, clips_dir, shared_caches)
    out = tmp_path / "output"
    usage = namedtuple("usage", "total used free")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 50_000, 50_000))
        assert train_here(config) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(
        rf"no space left in {out} while writing checkpoint-2 \(about [\d.]+ MB more needed, 0.0 MB free", err
    )
    assert list_checkpoints(out) == [] and not list(out.glob(".tmp-*"))


def test_disk_full_while_caching_keeps_the_entries_written(
    tmp_path: Path, clips_dir: Path, reference: Path, capsys
) -> None:
    config = write_run(tmp_path, clips_dir)
    latents = TensorCache(tmp_path / "cache" / "vae")
    real_save_file = store.save_file
    written: list[str] = []

    def fills_up(tensors: dict, path: str, metadata: dict | None = None) -> None:
        if latents.root in Path(path).parents:
            if len(written) == 2:
                Path(path).write_bytes(b"\0" * 100)
                raise _enospc(path)
            written.append(path)
        real_save_file(tensors, path, metadata=metadata)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "save_file", fills_up)
        assert train_here(config) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"no space left in {latents.root} while writing the latent cache (about" in err
    entries = list(latents.root.rglob("*.safetensors"))
    assert len(entries) == 2 and all(latents.damaged(p.stem) is None for p in entries)
    assert not list(latents.root.rglob("*.tmp"))
    assert train_here(config) == 0
    assert same_lora(lora(tmp_path / "output"), lora(reference))


def test_a_read_only_output_folder_is_named(tmp_path: Path, clips_dir: Path, capsys) -> None:
    config = write_run(tmp_path, clips_dir)

    def read_only(self: filelock.BaseFileLock, *args, **kwargs) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), self.lock_file)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(filelock.FileLock, "acquire", read_only)
        assert train_here(config) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot write the run lock into {tmp_path / 'output'}: Read-only file system" in err


def test_a_line_cut_short_in_metrics_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    MetricsLog(tmp_path, type("Acc", (), {"is_main_process": True})(), enabled_trackers=False).log(
        2, {"loss": 0.4}
    )
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == '{"step": 1, "loss": 0.5}' and lines[1].startswith('{"step": 2, "time"')
    assert len(lines) == 2
