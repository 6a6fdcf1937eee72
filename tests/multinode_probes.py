"""Probes of the multi-node keys for tests/test_keys.py (num_machines, machine_rank, main_process_ip,
main_process_port): each changes the torchrun command `cinetune train` launches (read, not run) or is
rejected. The real two-machine run on 127.0.0.1 is tests/test_multinode.py."""

from __future__ import annotations

from typing import Any

import pytest
from tests.memory_probes import _rejected

from cinetune import cli
from cinetune.errors import ConfigError
from cinetune.training.lock import INHERITED

TWO = {"num_machines": 2, "num_processes": 2, "main_process_ip": "10.0.0.7"}


def _launched(w: Any, **keys: Any) -> tuple[list[str], dict[str, str]]:
    """The command and environment `cinetune train` would start torchrun with."""
    launched: list[tuple[list[str], dict[str, str]]] = []

    class Launched:
        def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
            launched.append((cmd, env))

        def wait(self) -> int:
            return 0

    with pytest.MonkeyPatch.context() as patch:
        for name in ("WORLD_SIZE", "RANK", INHERITED):
            patch.delenv(name, raising=False)
        patch.setattr(cli.subprocess, "Popen", Launched)
        assert cli.main(["train", "--config", str(w.write(**keys))]) == 0
    ((cmd, env),) = launched
    return cmd, env


def probe_num_machines(w: Any) -> None:
    one, _ = _launched(w, num_processes=2)
    two, _ = _launched(w, **TWO)
    assert "--standalone" in one and "--nproc_per_node=2" in one and "--nnodes=2" not in " ".join(one)
    # one process per machine is still launched: torchrun joins it to the other machine's
    assert "--standalone" not in two and "--nnodes=2" in two and "--nproc_per_node=1" in two
    _rejected(lambda: w.plan(**{**TWO, "num_processes": 3}), "multiple of num_machines", error=ConfigError)


def probe_machine_rank(w: Any) -> None:
    zero, zero_env = _launched(w, **TWO)
    one, one_env = _launched(w, **TWO, machine_rank=1)
    assert "--node_rank=0" in zero and "--node_rank=1" in one
    assert INHERITED in zero_env and INHERITED not in one_env  # machine 0 holds the run lock, 1 joins
    _rejected(lambda: w.plan(machine_rank=1), "the only machine is 0", error=ConfigError)
    _rejected(lambda: w.plan(**TWO, machine_rank=2), "numbered 0..1", error=ConfigError)


def probe_main_process_ip(w: Any) -> None:
    cmd, _ = _launched(w, **TWO)
    assert "--master_addr=10.0.0.7" in cmd
    _rejected(lambda: w.plan(num_machines=2, num_processes=2), "main_process_ip", error=ConfigError)


def probe_main_process_port(w: Any) -> None:
    default, _ = _launched(w, **TWO)
    changed, _ = _launched(w, **TWO, main_process_port=29611)
    assert "--master_port=29500" in default and "--master_port=29611" in changed
    _rejected(lambda: w.plan(main_process_port=70000), "main_process_port")


MULTINODE_KEYS: dict[str, Any] = {
    "num_machines": probe_num_machines,
    "machine_rank": probe_machine_rank,
    "main_process_ip": probe_main_process_ip,
    "main_process_port": probe_main_process_port,
}
