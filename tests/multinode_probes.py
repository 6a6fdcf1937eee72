"""Probes of the multi-node keys for tests/test_keys.py (num_machines, machine_rank, main_process_ip,
main_process_port)."""

from __future__ import annotations

from typing import Any

from tests.memory_probes import _rejected

from cinetune.errors import ConfigError


def probe_num_machines(w: Any) -> None:
    _rejected(lambda: w.plan(num_machines=2, num_processes=2), "main_process_ip", error=ConfigError)
    _rejected(
        lambda: w.plan(num_machines=2, num_processes=3, main_process_ip="127.0.0.1"),
        "multiple of num_machines",
        error=ConfigError,
    )


def probe_machine_rank(w: Any) -> None:
    _rejected(lambda: w.plan(machine_rank=1), "the only machine is 0", error=ConfigError)
    _rejected(
        lambda: w.plan(num_machines=2, num_processes=2, main_process_ip="127.0.0.1", machine_rank=2),
        "numbered 0..1",
        error=ConfigError,
    )


def probe_main_process_ip(w: Any) -> None:
    assert w.plan(num_machines=2, num_processes=2, main_process_ip="127.0.0.1").train.main_process_ip


def probe_main_process_port(w: Any) -> None:
    _rejected(lambda: w.plan(main_process_port=70000), "main_process_port")


MULTINODE_KEYS: dict[str, Any] = {
    "num_machines": probe_num_machines,
    "machine_rank": probe_machine_rank,
    "main_process_ip": probe_main_process_ip,
    "main_process_port": probe_main_process_port,
}
