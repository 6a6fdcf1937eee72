"""Errors a user can act on. The CLI turns each into a message and its exit code (2 unless said otherwise:
3 when training diverged, 128 + signal when a signal stopped the run)."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CinetuneError(Exception):
    """Base class: the message is written for the user, not for a developer."""

    exit_code = 2


class ConfigError(CinetuneError):
    """A config file or override is wrong: the message names the key and the fix."""


class DataError(CinetuneError):
    """The dataset yields nothing usable (every clip skipped, no captions, ...)."""


class NotSupportedYet(ConfigError):  # noqa: N818 (reads as the message it carries)
    """A known key asks for a feature that is not built yet."""


class RunLocked(CinetuneError):  # noqa: N818 (reads as the message it carries)
    """Another run is writing into the same output folder."""


class CacheEntryDamaged(CinetuneError):  # noqa: N818 (reads as the message it carries)
    """A cache entry failed its check when read: it is set aside, and the next run rebuilds it."""


class DiskError(CinetuneError):
    """The output (or cache) folder is full or cannot be written."""


class TrainingDiverged(CinetuneError):  # noqa: N818 (reads as the message it carries)
    """The loss or the gradients stayed non-finite for max_nonfinite_steps optimizer steps in a row."""

    exit_code = 3


class RunStopped(CinetuneError):  # noqa: N818 (reads as the message it carries)
    """A signal (Ctrl-C, SIGTERM) stopped the run where it can resume; exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def disk_error(exc: OSError, folder: Path, what: str, needed: int | None = None) -> DiskError | None:
    """A DiskError naming `folder` and the space `needed` (bytes) when `exc` says the disk is full or
    read-only; None for any other OSError."""
    folder = Path(folder)
    if exc.errno in _FULL:
        free = _free_bytes(folder)
        need = f"about {_mb(needed)} more needed, " if needed else ""
        return DiskError(
            f"no space left in {folder} while writing {what} ({need}{_mb(free)} free): free some space "
            "and run again (resume_from_checkpoint: latest continues from the last checkpoint)"
        )
    if exc.errno in _READ_ONLY:
        return DiskError(
            f"cannot write {what} into {folder}: {exc.strerror or exc} (read-only or not permitted): "
            "choose a writable output_dir / cache folder"
        )
    return None


def _free_bytes(folder: Path) -> int:
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0


def _mb(size: int | None) -> str:
    return f"{(size or 0) / 2**20:.1f} MB"


@contextmanager
def disk_errors(folder: Path, what: str) -> Iterator[None]:
    """Inside the block, an OSError that says the disk is full or read-only becomes a DiskError naming the
    folder of the file it concerns (`folder` when it names none)."""
    try:
        yield
    except OSError as exc:
        where = Path(exc.filename).parent if isinstance(exc.filename, str) else folder
        error = disk_error(exc, where, what)
        if error is None:
            raise
        raise error from exc
