"""Probes of the context-parallelism keys for tests/test_keys.py."""

from __future__ import annotations

from typing import Any

from tests.memory_probes import _rejected

from cinetune.errors import NotSupportedYet


def probe_context_parallel_size(w: Any) -> None:
    _rejected(lambda: w.plan(context_parallel_size=2, num_processes=2), "context", error=NotSupportedYet)


def probe_context_parallel_comm_strategy(w: Any) -> None:
    _rejected(
        lambda: w.plan(context_parallel_size=2, num_processes=2, context_parallel_comm_strategy="alltoall"),
        "context",
        error=NotSupportedYet,
    )


CONTEXT_PARALLEL_KEYS: dict[str, Any] = {
    "context_parallel_size": probe_context_parallel_size,
    "context_parallel_comm_strategy": probe_context_parallel_comm_strategy,
}
