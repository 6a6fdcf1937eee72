"""Several ranks on one machine: loading in turns, and waiting for each other's cache entries on disk.

- A component is read into host RAM and moved to the rank's device inside a turn: an OS file lock in this
  machine's temporary folder, so the ranks of one node take turns and at most one copy of a component sits in
  host RAM at a time (8 ranks x 40 GB of LTX-2 otherwise). The lock is released by the OS if a rank dies.
- The cache is split: each rank encodes its share of the entries (cache/builder.py, `share`), then waits
  until every other entry is on disk by polling the files, not at a collective: a long encode on one rank
  can then never trip the process group's timeout. The index is the set of entry keys, which every rank
  computes the same way from the samples, so there is nothing to send between ranks.
- Several machines: that wait on the files, the checkpoints and the exported LoRA need the output folder (and
  the cache folders) on storage every machine sees. `check_shared_storage` proves it once the process group
  is up, before anything is cached: a run on machine-local folders would otherwise wait for ever for entries
  written on another machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from cinetune.errors import ConfigError, RunStopped

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


SHARED_PROBE = ".cinetune-shared-{}.probe"


def spans_machines(num_processes: int) -> bool:
    """Whether the ranks may sit on several machines: torchrun (and accelerate launch) set LOCAL_WORLD_SIZE,
    this machine's ranks; without it, the launch cannot tell, so it is taken as possible."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return num_processes > 1 and (local is None or int(local) < num_processes)


def storage_folders(output_dir: Path, cache_roots: tuple[Path, dict[str, Path]]) -> dict[str, Path]:
    """The folders every rank writes to or reads the others' files from, by the key that names each: the
    output folder and the cache folders not inside it (`Trainer.cache_roots`)."""
    text_root, latent_roots = cache_roots
    named = {"output_dir": Path(output_dir), "text_embeds cache_dir": Path(text_root)}
    named |= {f"cache_dir_vae of dataset {key}": Path(root) for key, root in latent_roots.items()}
    inside = Path(output_dir).resolve()
    return {
        key: folder
        for key, folder in named.items()
        if key == "output_dir" or not folder.resolve().is_relative_to(inside)
    }


def check_shared_storage(acc: Any, folders: dict[str, Path], wait_seconds: float = 5.0) -> None:
    """Every rank sees the files the others write in `folders` (key -> folder), or every rank raises the same
    ConfigError: global rank 0 writes a file with a random nonce into each folder, the nonce goes to every
    rank through the process group, and each rank looks for it (up to `wait_seconds`, for network file
    systems that show new files late); what each saw is gathered, so no rank is left waiting."""
    from accelerate.utils import broadcast_object_list, gather_object

    if not spans_machines(acc.num_processes):
        return
    host = socket.gethostname()
    nonce, failed = secrets.token_hex(16), ""
    probes = {key: Path(folder) / SHARED_PROBE.format(nonce) for key, folder in folders.items()}
    if acc.is_main_process:
        try:
            for probe in probes.values():
                probe.parent.mkdir(parents=True, exist_ok=True)
                probe.write_text(nonce, encoding="utf-8")
        except OSError as exc:
            failed = f"rank 0 ({host}) cannot write {exc.filename}: {exc.strerror or exc}"
    nonce, failed = broadcast_object_list([nonce, failed])  # rank 0's nonce, after its files are written
    probes = {key: Path(folder) / SHARED_PROBE.format(nonce) for key, folder in folders.items()}
    unseen = [] if failed else _unseen(probes, nonce, wait_seconds)
    paths = {key: str(folder) for key, folder in folders.items()}
    seen_by = gather_object([(acc.process_index, host, paths, unseen)])
    if acc.is_main_process:
        for probe in probes.values():
            with suppress(OSError):
                probe.unlink(missing_ok=True)
    if failed:
        raise ConfigError(f"a run over several machines writes into shared folders, but {failed}")
    blind = [(rank, where, theirs, missing) for rank, where, theirs, missing in seen_by if missing]
    if not blind:
        logger.info("shared storage: all %d ranks see %s", acc.num_processes, ", ".join(folders))
        return
    keys = [key for key in folders if any(key in missing for *_, missing in blind)]
    _, wrote, ours, _ = seen_by[0]
    cannot = "; ".join(
        f"rank {rank} ({where}) cannot see it in {key} {theirs[key]}"
        for rank, where, theirs, missing in blind
        for key in missing
    )
    named = " and ".join(keys)
    raise ConfigError(
        f"{named} {'is' if len(keys) == 1 else 'are'} not on storage every machine sees: rank 0 ({wrote}) "
        f"wrote a file into {', '.join(ours[key] for key in keys)}; {cannot}. A run over several machines "
        f"needs {named} (checkpoints, the cache each rank writes its share of, the LoRA) on storage every "
        "machine mounts (NFS, a cluster file system) at the path the config gives"
    )


def _unseen(probes: dict[str, Path], nonce: str, wait_seconds: float) -> list[str]:
    """The keys of the probes this rank cannot read with `nonce` in them, after up to `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    while True:
        unseen = [key for key, probe in probes.items() if _read(probe) != nonce]
        if not unseen or time.monotonic() >= deadline:
            return unseen
        time.sleep(0.5)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def close_process_group() -> None:
    """End the run's process group where every rank reaches the same point (the run's end, an agreed stop).
    Left to the interpreter's exit, gloo's threads were torn down mid-flight now and then: "terminate called
    without an active exception" (SIGABRT) after a run had written everything."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
