"""Fault-injection hook for the reliability tests (tests/reliability/). It does nothing unless the environment
variable CINETUNE_FAULT is set, and nothing in cinetune sets it.

`fault_point(name)` marks a place where a real run can die: between two cache entries, in the middle of a
checkpoint, after an optimizer step. CINETUNE_FAULT="name:N[:SIGNAL]" (several joined by commas) makes the
process send itself SIGNAL (default KILL, which no handler can catch: what `kill -9` or a power cut does)
the N-th time it reaches `name`. Counting passes instead of timing them makes every injected fault land at
the same place on every run.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "CINETUNE_FAULT"
_passes: Counter[str] = Counter()


def _plan() -> dict[tuple[str, int], str]:
    plan = {}
    for part in filter(None, os.environ.get(ENV, "").split(",")):
        name, count, *sig = part.strip().split(":")
        plan[(name, int(count))] = sig[0] if sig else "KILL"
    return plan


def fault_point(name: str) -> None:
    """Reached `name` once more; with CINETUNE_FAULT naming this pass, signal this process."""
    if ENV not in os.environ:
        return
    _passes[name] += 1
    action = _plan().get((name, _passes[name]))
    if action is None:
        return
    signum = getattr(signal, f"SIG{action}", None)
    if signum is None:  # SIGKILL does not exist on Windows: end the process as abruptly
        os._exit(137)
    os.kill(os.getpid(), signum)
