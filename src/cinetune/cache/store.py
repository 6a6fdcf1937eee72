"""A folder of safetensors files, one per cache key, written atomically and checked when read.

One file per entry makes an interrupted build resumable for free: what is on disk is complete (written to a
temporary name, then renamed), what is missing is built on the next run. Each entry carries a checksum of
its tensors in its metadata, so a truncated or corrupted file is caught when read instead of being trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cinetune.errors import CacheEntryDamaged
from cinetune.faults import fault_point

logger = logging.getLogger(__name__)
CACHE_FORMAT_VERSION = 1
CHECKSUM_KEY = "cinetune_crc32"
DAMAGED_SUFFIX = ".damaged"


def cache_key(fields: dict[str, Any]) -> str:
    """Stable hash of everything an entry depends on."""
    payload = json.dumps({"v": CACHE_FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """CRC-32 over the names, dtypes, shapes and bytes of `tensors` (CPU, contiguous). A CRC catches the
    damage a disk or a cut copy does, at a fraction of a cryptographic hash's cost on every read."""
    crc = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        crc = zlib.crc32(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode(), crc)
        crc = zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


class TensorCache:
    """Entries are dicts of tensors, stored as `root/ab/abcdef....safetensors`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def save(
        self, key: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        try:
            save_file(tensors, str(tmp), metadata={**(metadata or {}), CHECKSUM_KEY: tensors_digest(tensors)})
            fault_point("cache.write")
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self, key: str) -> tuple[dict[str, torch.Tensor] | None, str | None]:
        """(tensors, None), or (None, why the entry cannot be used)."""
        path = self.path(key)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except FileNotFoundError:
            return None, "missing"
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            return None, f"not a readable safetensors file ({str(exc).splitlines()[0]}): truncated or damaged"
        expected = metadata.get(CHECKSUM_KEY)
        if expected is not None and tensors_digest(tensors) != expected:
            return None, "its tensors do not match the checksum written with them: damaged"
        return tensors, None

    def damaged(self, key: str) -> str | None:
        """Why an existing entry cannot be used (read in full and checked), or None when it is sound."""
        return self.read(key)[1]

    def set_aside(self, key: str) -> Path:
        """Rename a damaged entry out of the way (kept for inspection); the next build makes it anew."""
        path = self.path(key)
        aside = path.with_name(path.name + DAMAGED_SUFFIX)
        with contextlib.suppress(OSError):
            path.replace(aside)
        return aside

    def load(self, key: str) -> dict[str, torch.Tensor]:
        """The entry's tensors; a damaged entry is set aside and raises CacheEntryDamaged."""
        tensors, reason = self.read(key)
        if tensors is None:
            path, aside = self.path(key), self.set_aside(key)
            raise CacheEntryDamaged(
                f"cache entry {path} is damaged ({reason}); it was moved to {aside.name} and the next run "
                "rebuilds it"
            )
        return tensors

    def size_bytes(self, key: str) -> int:
        return self.path(key).stat().st_size
