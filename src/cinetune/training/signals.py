"""Graceful stop: the first Ctrl-C / SIGTERM asks the run to stop where it can resume; a second stops it now.

The run polls `StopFlag.signum` at safe places (between cache entries, after an optimizer step) and then
writes a checkpoint and exits 128 + signal (130 for SIGINT, 143 for SIGTERM). Handlers are installed only in
the main thread (Python allows no other) and only for the signals the platform delivers: SIGTERM cannot be
caught on Windows (TerminateProcess), where Ctrl-Break (SIGBREAK) is the second stop key instead.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)


class StopNow(KeyboardInterrupt):  # a KeyboardInterrupt: no `except Exception` on the way swallows it
    """The second signal: leave at once (checkpoints and cache entries are written atomically)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped at once by a second {signal.Signals(signum).name}")
        self.exit_code = 128 + signum


def _stop_signals() -> list[signal.Signals]:
    if sys.platform == "win32":
        return [s for s in (signal.SIGINT, getattr(signal, "SIGBREAK", None)) if s is not None]
    return [signal.SIGINT, signal.SIGTERM]


class StopFlag:
    """Set by the first stop signal; `signum` is None until then."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum
        logger.warning(
            "%s received: stopping after the current step with a checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.request(signum)

    @contextmanager
    def handling_signals(self) -> Iterator[StopFlag]:
        """Route the stop signals to this flag inside the block (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {}
        for signum in _stop_signals():
            previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
