"""A folder of safetensors files, one per cache key, written atomically.

One file per entry makes an interrupted build resumable for free: what is on disk is complete (written to a
temporary name, then renamed), what is missing is built on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CACHE_FORMAT_VERSION = 1


def cache_key(fields: dict[str, Any]) -> str:
    """Stable hash of everything an entry depends on."""
    payload = json.dumps({"v": CACHE_FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


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
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata or {})
        tmp.replace(target)

    def load(self, key: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path(key)))

    def size_bytes(self, key: str) -> int:
        return self.path(key).stat().st_size
