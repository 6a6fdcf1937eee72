"""Runs of a project (train, cache, prep) in their own processes, so they outlive the tab and the server.

A job is `python -m cinetune.cli <command> ...` started in the project folder (no shell), its output going
to `.cinetune/jobs/<kind>.log` and a note (`<kind>.json`: PID, process start time, command, output folder)
beside it. A restarted server reads the note, asks the OS whether that process still runs (PID and start time,
so a reused PID is not taken for it) and carries on showing its log and metrics. One job at a time per
project; train and cache also take the run lock (training/lock.py) themselves, so a run started from a
terminal on the same output folder is named instead of being overwritten. Stop is graceful: SIGINT
(Ctrl-Break on Windows), which the run answers with a checkpoint and exit 130; it resumes from there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from cinetune.training.lock import read_holder

JOBS_DIR = Path(".cinetune/jobs")
KINDS = ("train", "cache", "prep")


class JobConflictError(RuntimeError):
    """A job cannot start (another runs) or be stopped (none runs)."""


@dataclass(frozen=True)
class JobNote:
    kind: str
    pid: int
    create_time: float
    command: list[str]
    started: float
    output_dir: str  # the run's output folder (metrics.jsonl, validation/, checkpoints), absolute
    total_steps: int | None = None
    returncode: int | None = None


def _alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class Jobs:
    """The jobs of every project under the server's root; Popen handles of the ones this server started."""

    def __init__(self) -> None:
        self._procs: dict[tuple[Path, str], subprocess.Popen] = {}

    @staticmethod
    def note_path(project: Path, kind: str) -> Path:
        return project / JOBS_DIR / f"{kind}.json"

    @staticmethod
    def log_path(project: Path, kind: str) -> Path:
        return project / JOBS_DIR / f"{kind}.log"

    def read(self, project: Path, kind: str) -> JobNote | None:
        try:
            return JobNote(**json.loads(self.note_path(project, kind).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def status(self, project: Path, kind: str) -> dict:
        """{'state': none|running|finished|stopped|failed, 'returncode', 'note'} of the project's job."""
        note = self.read(project, kind)
        if note is None:
            return {"state": "none", "returncode": None, "note": None}
        proc = self._procs.get((project, kind))
        if proc is not None and proc.poll() is not None and note.returncode is None:
            note = JobNote(**{**asdict(note), "returncode": proc.returncode})
            self._write(project, note)
        if note.returncode is None and _alive(note.pid, note.create_time):
            state = "running"
        else:
            state = _ended_state(note.returncode, self.log_path(project, kind))
        return {"state": state, "returncode": note.returncode, "note": asdict(note)}

    def running(self, project: Path) -> str | None:
        return next((k for k in KINDS if self.status(project, k)["state"] == "running"), None)

    def start(
        self, project: Path, kind: str, args: list[str], output_dir: Path, total_steps: int | None = None
    ) -> JobNote:
        busy = self.running(project)
        if busy:
            raise JobConflictError(f"a {busy} job is already running in this project; stop it first")
        holder = read_holder(output_dir)
        if kind != "prep" and holder is not None and holder.running():
            raise JobConflictError(f"{output_dir} is in use by {holder.describe()}")
        log = self.log_path(project, kind)
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "cinetune.cli", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "TERM": "dumb", "NO_COLOR": "1"}
        with log.open("w", encoding="utf-8") as handle:
            proc = subprocess.Popen(  # no shell; its own session / process group: it outlives the server
                command,
                cwd=project,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                **_detached(),
            )
        self._procs[(project, kind)] = proc
        note = JobNote(
            kind=kind,
            pid=proc.pid,
            create_time=_create_time(proc.pid),
            command=command,
            started=time.time(),
            output_dir=str(output_dir),
            total_steps=total_steps,
        )
        self._write(project, note)
        return note

    def stop(self, project: Path, kind: str) -> None:
        """Ask the job to stop where it can resume (the first stop signal; a second one stops it at once)."""
        status = self.status(project, kind)
        if status["state"] != "running":
            raise JobConflictError(f"no {kind} job is running")
        pid = status["note"]["pid"]
        if sys.platform == "win32":
            os.kill(pid, signal.CTRL_BREAK_EVENT)  # its own process group: SIGBREAK (training/signals.py)
        else:
            os.kill(pid, signal.SIGINT)

    def _write(self, project: Path, note: JobNote) -> None:
        path = self.note_path(project, note.kind)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(note), indent=2), encoding="utf-8")
        tmp.replace(path)


def _detached() -> dict:
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _ended_state(returncode: int | None, log: Path) -> str:
    """How an ended job ended: its exit code when this server saw it, else the last lines of its log."""
    if returncode is not None:
        return "finished" if returncode == 0 else "stopped" if returncode in (130, 143, 131) else "failed"
    tail = read_tail(log, 4000)
    if "\ndone" in tail or tail.startswith("done"):
        return "finished"
    if "stopped" in tail:
        return "stopped"
    return "failed"


def read_tail(path: Path, size: int) -> str:
    """The last `size` bytes of a text file (decoded leniently); '' when it does not exist."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            handle.seek(max(0, end - size))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_from(path: Path, offset: int) -> tuple[str, int]:
    """Complete lines of `path` written since byte `offset`, and the offset after them."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return "", offset
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", errors="replace"), offset + end
