"""Several ranks on one machine: loading in turns, and waiting for each other's cache entries on disk.

- A component is read into host RAM and moved to the rank's device inside a turn: an OS file lock in this
  machine's temporary folder, so the ranks of one node take turns and at most one copy of a component sits in
  host RAM at a time (8 ranks x 40 GB of LTX-2 otherwise). The lock is released by the OS if a rank dies.
- The cache is split: each rank encodes its share of the entries (cache/builder.py, `share`), then waits
  until every other entry is on disk by polling the files, not at a collective: a long encode on one rank
  can then never trip the process group's timeout. The index is the set of entry keys, which every rank
  computes the same way from the samples, so there is nothing to send between ranks.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

from cinetune.errors import RunStopped

logger = logging.getLogger(__name__)
T = TypeVar("T")


def turn_lock_path(output_dir: Path) -> Path:
    """One lock per run and machine (the temporary folder is the node's own)."""
    digest = hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"cinetune-load-{digest}.lock"


@contextmanager
def loading_turn(output_dir: Path, what: str, enabled: bool = True) -> Iterator[None]:
    """Hold this machine's loading turn for the run in `output_dir` (no-op when `enabled` is false)."""
    if not enabled:
        yield
        return
    with FileLock(str(turn_lock_path(output_dir))):
        logger.debug("loading turn: %s", what)
        yield


def in_turn(output_dir: Path, what: str, enabled: bool) -> Callable[[Callable[[], T]], T]:
    """`load` run inside this machine's loading turn: `in_turn(...)(lambda: load().to(device))`."""

    def run(load: Callable[[], T]) -> T:
        with loading_turn(output_dir, what, enabled):
            return load()

    return run


def wait_for_entries(
    count_missing: Callable[[], int],
    stop_signal: Callable[[], int | None],
    poll_seconds: float = 2.0,
    log_every: float = 60.0,
) -> None:
    """Until `count_missing()` is 0: the entries other ranks encode. A stop signal ends the wait (the entries
    written are kept); a rank that dies ends the whole launch (torchrun), so no timeout is needed here."""
    told = time.monotonic()
    while (missing := count_missing()) > 0:
        signum = stop_signal()
        if signum is not None:
            raise RunStopped(f"stopped while waiting for {missing} cache entries other ranks encode", signum)
        if time.monotonic() - told >= log_every:
            logger.info("waiting for %d cache entries the other ranks are encoding", missing)
            told = time.monotonic()
        time.sleep(poll_seconds)
