"""One run per output folder: a second run exits 2 naming the holder and writes nothing; a lock whose
process is gone is taken over with a warning."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cinetune.errors import RunLocked
from cinetune.training.lock import HOLDER_FILE, RunLock, read_holder

from .runs import train_subprocess, write_run


def test_a_second_run_on_the_same_output_folder_exits_2_naming_the_holder(
    tmp_path: Path, clips_dir: Path
) -> None:
    config = write_run(tmp_path, clips_dir)
    out = tmp_path / "output"
    with RunLock(out, command="cinetune train (the first run)"):
        proc = train_subprocess(config)
        assert proc.returncode == 2, proc.stderr[-2000:]
        message = " ".join(proc.stderr.split())
        assert f"another run is writing into {out}" in message
        assert f"PID {os.getpid()}" in message and "cinetune train (the first run)" in message
        assert sorted(p.name for p in out.iterdir()) == [".cinetune.lock", HOLDER_FILE]  # nothing written
        holder = read_holder(out)
        assert holder is not None and holder.pid == os.getpid() and holder.running()
    assert read_holder(out) is None  # released: the note goes with it


def test_a_lock_in_the_same_process_is_refused_too(tmp_path: Path) -> None:
    """Two runs in one process (a web UI's job runner) exclude each other as well."""
    with RunLock(tmp_path), pytest.raises(RunLocked, match=f"PID {os.getpid()}"):
        RunLock(tmp_path).acquire()


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: Path, caplog) -> None:
    """A run killed by kill -9 leaves its note; the OS released its lock, and its process is gone."""
    note = {"pid": _gone_pid(), "host": socket.gethostname(), "started": "then", "command": "cinetune train"}
    (tmp_path / HOLDER_FILE).write_text(json.dumps(note))
    with caplog.at_level(logging.WARNING, logger="cinetune"), RunLock(tmp_path, command="the new run"):
        assert read_holder(tmp_path).command == "the new run"
    assert f"taking over the stale lock of {tmp_path}" in caplog.text and "its process is gone" in caplog.text


def test_a_running_holder_is_respected_even_without_its_os_lock(tmp_path: Path) -> None:
    """The lock file was deleted (or the file system has no locks) while its run goes on: still refused."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            note = {"pid": other.pid, "host": socket.gethostname(), "started": "now", "command": "other run"}
            (tmp_path / HOLDER_FILE).write_text(json.dumps(note))
            with pytest.raises(RunLocked, match=f"PID {other.pid}"):
                RunLock(tmp_path).acquire()
        finally:
            other.kill()
