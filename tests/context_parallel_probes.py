"""Probes of the context-parallelism keys for tests/test_keys.py: context_parallel_size > 1 is rejected for
every family with the reason measured by bench/context_parallel_probe.py and what to use instead; the
exchange strategy without it warns that it changes nothing."""

from __future__ import annotations

from typing import Any

from tests.memory_probes import K5, LTX2, _rejected, _warned

from cinetune.errors import NotSupportedYet

# family keys -> fragments of its measured reason
_REASONS: list[tuple[dict[str, Any], tuple[str, ...]]] = [
    ({}, ("for ltxvideo", "alltoall (Ulysses) fails", "allgather (ring) needs", "per-token timesteps")),
    (LTX2, ("for ltxvideo2", "rope_type split", "audio tokens", "per-token timesteps")),
    (K5, ("for kandinsky5-video", "no context-parallel plan", "Kandinsky5Transformer3DModel")),
]
# in every rejection: what cinetune's loop lacks, and what to use instead for long clips
_ALWAYS = ("is not supported yet", "must share one", "summed", "gradient_checkpointing", "fsdp_enable")


def probe_context_parallel_size(w: Any) -> None:
    for family, reason in _REASONS:
        _rejected(
            lambda family=family: w.plan(context_parallel_size=2, num_processes=2, **family),
            "context_parallel_size 2",
            *reason,
            *_ALWAYS,
            error=NotSupportedYet,
        )


def probe_context_parallel_comm_strategy(w: Any) -> None:
    _rejected(
        lambda: w.plan(context_parallel_size=2, num_processes=2, context_parallel_comm_strategy="alltoall"),
        "alltoall (Ulysses) fails",
        *_ALWAYS,
        error=NotSupportedYet,
    )
    _warned(
        w,
        "context_parallel_comm_strategy changes nothing",
        "context_parallel_size is 1",
        context_parallel_comm_strategy="alltoall",
    )
    assert not any("context_parallel" in m for m in w.plan(num_processes=2).warnings)


CONTEXT_PARALLEL_KEYS: dict[str, Any] = {
    "context_parallel_size": probe_context_parallel_size,
    "context_parallel_comm_strategy": probe_context_parallel_comm_strategy,
}
