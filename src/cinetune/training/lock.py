"""One run per output folder: an OS file lock (`filelock`) plus a note of who holds it.

`cinetune train` and `cinetune cache` (and anything else that writes a run's folder, such as a web UI's job
runner) take the lock before writing anything. The OS releases the lock when its process dies, even by
kill -9, so a crashed run never blocks the next one; the note it leaves (PID, host, start time, command) is
then stale, and the next run says it takes it over. A second run while the first is alive exits with code 2
and names the holder. A run over several machines writes one output folder on storage they share: machine 0's
launcher holds its lock and the others' launchers take none (`run_lock`, `machine_rank`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from cinetune.errors import RunLocked, disk_error

logger = logging.getLogger(__name__)
LOCK_FILE = ".cinetune.lock"
HOLDER_FILE = ".cinetune.lock.json"
INHERITED = "CINETUNE_RUN_LOCK"  # set for the processes a locked run launches (DDP ranks)


@dataclass(frozen=True)
class LockHolder:
    pid: int
    host: str
    started: str
    command: str
    create_time: float | None = None  # the process's start, so that a reused PID is not taken for it

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, started {self.started}: {self.command}"

    def running(self) -> bool | None:
        """Whether the holder still runs; None when that cannot be told (another host)."""
        if self.host != socket.gethostname():
            return None
        try:
            started = psutil.Process(self.pid).create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return psutil.pid_exists(self.pid)
        return self.create_time is None or abs(started - self.create_time) < 1.0


def read_holder(output_dir: Path) -> LockHolder | None:
    """Who holds (or last held) the lock of `output_dir`, from its note; None without a readable note."""
    try:
        return LockHolder(**json.loads((Path(output_dir) / HOLDER_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


class RunLock:
    def __init__(self, output_dir: Path, command: str | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.command = command or " ".join(sys.argv)
        self._lock = FileLock(str(self.output_dir / LOCK_FILE), timeout=0)

    def acquire(self) -> None:
        """Take the lock or raise RunLocked naming the holder; a stale note is taken over with a warning."""
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise self._locked(read_holder(self.output_dir)) from None
        except OSError as exc:
            raise disk_error(exc, self.output_dir, "the run lock") or exc from exc
        previous = read_holder(self.output_dir)
        running = previous.running() if previous is not None and previous.pid != os.getpid() else False
        if running:
            # the OS lock is free but its holder runs: the lock file was deleted, or locks do not work here
            self._lock.release()
            raise self._locked(previous)
        if previous is not None and previous.pid != os.getpid():
            state = "its process is gone" if running is False else "it holds no lock any more"
            logger.warning(
                "taking over the stale lock of %s (%s): %s", self.output_dir, previous.describe(), state
            )
        self._write_note()

    def _write_note(self) -> None:
        holder = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            command=self.command,
            create_time=psutil.Process().create_time(),
        )
        tmp = self.output_dir / f"{HOLDER_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(asdict(holder), indent=2), encoding="utf-8")
            tmp.replace(self.output_dir / HOLDER_FILE)
        except OSError as exc:
            self._lock.release()
            tmp.unlink(missing_ok=True)
            raise disk_error(exc, self.output_dir, "the run lock") or exc from exc

    def _locked(self, holder: LockHolder | None) -> RunLocked:
        who = holder.describe() if holder else "a process that has not written its details yet"
        return RunLocked(
            f"another run is writing into {self.output_dir} ({who}); wait for it to end or stop it, "
            "or give this run another output_dir"
        )

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        note = read_holder(self.output_dir)
        if note is not None and note.pid == os.getpid():
            (self.output_dir / HOLDER_FILE).unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


@contextmanager
def run_lock(output_dir: Path, command: str | None = None, machine_rank: int = 0) -> Iterator[None]:
    """Hold the lock of `output_dir` for the block. A DDP rank does not lock again when its launcher holds
    the lock (`launched_env`) or when it is not rank 0 (rank 0 takes it under a bare torchrun). In a run
    over several machines the output folder is shared storage and machine 0's launcher holds its lock: the
    launcher of another machine (`machine_rank` > 0) joins that run and takes no lock (it would find machine
    0's and stop)."""
    if os.environ.get(INHERITED) == _key(output_dir) or os.environ.get("RANK", "0") != "0":
        yield
        return
    if machine_rank > 0:
        logger.info(
            "machine %d joins machine 0's run in %s: machine 0's launcher holds its run lock, this one takes "
            "none",
            machine_rank,
            output_dir,
        )
        yield
        return
    with RunLock(output_dir, command):
        yield


def launched_env(output_dir: Path) -> dict[str, str]:
    """The environment for processes a locked run starts to share its lock (torchrun ranks)."""
    return {**os.environ, INHERITED: _key(output_dir)}


def _key(output_dir: Path) -> str:
    return str(Path(output_dir).resolve())
