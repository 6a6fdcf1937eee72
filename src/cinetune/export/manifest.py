"""Folder manifests: the size and sha256 of every file a folder holds, written last, checked before use.

A checkpoint folder is complete and intact when its manifest verifies: a file cut short by a full disk, a
partial copy or a damaged sector shows as a size or checksum that differs. Verification reads every byte,
so its results are remembered per process for files that did not change since.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
_FORMAT = 1
_CHUNK = 1 << 22
_verified: dict[tuple, str | None] = {}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sync(path: Path) -> None:
    """Flush a written file to the disk (best effort), so that a power cut cannot leave it half there."""
    with contextlib.suppress(OSError), Path(path).open("rb+") as handle:
        os.fsync(handle.fileno())


def write_manifest(folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """Hash every file of `folder` as it is on disk and write MANIFEST last (atomically)."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
        _sync(path)
        files[path.name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": _FORMAT, **(extra or {}), "files": files}, indent=1))
    _sync(tmp)
    tmp.replace(folder / MANIFEST)
    _verified[_fingerprint(folder)] = None  # hashed from the disk just now: what verifying would find
    return folder / MANIFEST


def _fingerprint(folder: Path) -> tuple:
    """The folder's files as the file system sees them (unchanged by renaming the folder)."""
    stats = sorted((p.name, p.stat()) for p in folder.iterdir())
    return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)


def verify_manifest(folder: Path) -> str | None:
    """None when every file the manifest lists is there with its size and checksum; else the reason."""
    folder = Path(folder)
    try:
        key = _fingerprint(folder)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if key not in _verified:
        _verified[key] = _verify(folder)
    return _verified[key]


def _verify(folder: Path) -> str | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (not written completely, or by a cinetune before manifests)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is damaged ({exc})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} is {size} bytes, the manifest says {expected['size']} (truncated or damaged)"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum (damaged)"
    return None
