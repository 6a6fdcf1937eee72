"""What a preparation stage did: files done, found already done, skipped or failed, each with its reason.

Bad input never stops a stage: an unreadable source, a scene too short, a captioner error or an empty answer
is one entry with its reason, and the stage goes on with the other files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

Progress = Callable[[int], None]  # advance the stage's progress bar by n units


def no_progress(_: int) -> None:
    return None


@dataclass
class StageReport:
    """One stage of `cinetune prep`."""

    stage: str
    done: list[str] = field(default_factory=list)  # what this run wrote
    kept: list[str] = field(default_factory=list)  # already there from an earlier run, left as it was
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, reason): not an error of the tool
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    notes: list[str] = field(default_factory=list)
    unit: str = "file"

    def line(self) -> str:
        """One line for the run's report: `split: 12 clips written, 4 already there, 2 skipped, 1 failed`."""
        parts = [f"{len(self.done)} {self.unit}(s) {_VERB.get(self.stage, 'done')}"]
        if self.kept:
            parts.append(f"{len(self.kept)} already there")
        if self.skipped:
            kinds = Counter(reason.split(":", 1)[0] for _, reason in self.skipped)
            parts.append(f"{len(self.skipped)} skipped ({', '.join(f'{n} {k}' for k, n in kinds.items())})")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        return f"{self.stage}: " + ", ".join(parts)

    def details(self) -> list[str]:
        """The notes, then every skipped and failed entry with its reason."""
        lines = [f"  {note}" for note in self.notes]
        lines += [f"  skipped {what}: {reason}" for what, reason in self.skipped]
        lines += [f"  failed  {what}: {reason}" for what, reason in self.failed]
        return lines

    def to_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "done": self.done,
            "kept": self.kept,
            "skipped": [{"what": w, "reason": r} for w, r in self.skipped],
            "failed": [{"file": w, "reason": r} for w, r in self.failed],
            "notes": self.notes,
        }


_VERB = {"split": "written", "caption": "captioned"}
