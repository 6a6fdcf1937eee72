"""Ranks of one machine take turns loading (the two-process DDP and FSDP2 runs are in tests/test_fsdp.py)."""

from __future__ import annotations

from pathlib import Path


def test_ranks_take_turns_loading(tmp_path: Path) -> None:
    """Two ranks of one machine: the second reads its component only once the first has left its turn."""
    import threading
    import time

    from cinetune.training.ranks import in_turn

    spans: list[tuple[float, float]] = []

    def rank() -> None:
        def load() -> None:
            start = time.monotonic()
            time.sleep(0.3)
            spans.append((start, time.monotonic()))

        in_turn(tmp_path, "transformer", True)(load)

    threads = [threading.Thread(target=rank) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (_, a_end), (b_start, _) = sorted(spans)
    assert b_start >= a_end  # never two copies in host RAM at once
