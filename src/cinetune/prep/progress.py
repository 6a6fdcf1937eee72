"""Progress of a preparation stage: the CLI draws a rich bar per stage; library callers may pass nothing."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class StageProgress(Protocol):
    def start(self, total: int | None, description: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NullProgress:
    def start(self, total: int | None, description: str) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        return None


class RichStages:
    """One rich progress bar per stage, all in one live display (`with RichStages(console) as bars`)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self) -> RichStages:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def stage(self) -> _RichStage:
        return _RichStage(self.progress)


class _RichStage:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = None

    def start(self, total: int | None, description: str) -> None:
        self.task = self.progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None and n:
            self.progress.advance(self.task, n)
