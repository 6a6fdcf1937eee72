"""The skip report: which files were left out and why, and how many each dataset kept.

A run that silently trains on 12 of 200 clips is the most common data surprise; the report is saved next to
the outputs and summarised in the log so the user sees it before spending GPU hours.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPORT_JSON = "data_report.json"
REPORT_TXT = "data_report.txt"


@dataclass(frozen=True)
class Skipped:
    """One file left out. `reason` reads "kind: details" (e.g. "too short: 20 frames at 25 fps, need 49")."""

    path: Path
    reason: str
    dataset_id: str = ""

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0].strip()


class SkipReport:
    """Collects skipped files and kept counts while datasets are scanned."""

    def __init__(self) -> None:
        self.items: list[Skipped] = []
        self.kept_counts: dict[str, int] = {}

    def add(self, path: Path, reason: str, dataset_id: str = "") -> None:
        self.items.append(Skipped(path=Path(path), reason=reason, dataset_id=dataset_id))
        logger.debug("skipping %s: %s", path, reason)

    def kept(self, dataset_id: str, n: int) -> None:
        self.kept_counts[dataset_id] = n

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        """Skipped files per reason kind, most common first."""
        return dict(Counter(item.kind for item in self.items).most_common())

    def summary(self) -> str:
        lines = []
        if self.kept_counts:
            kept = ", ".join(f"{name}: {n}" for name, n in self.kept_counts.items())
            lines.append(f"kept {sum(self.kept_counts.values())} sample(s) ({kept})")
        if not self.items:
            lines.append("no file skipped")
            return "\n".join(lines)
        lines.append(f"skipped {len(self.items)} file(s):")
        lines.extend(f"  {count} x {kind}" for kind, count in self.counts().items())
        for item in self.items:
            where = f"[{item.dataset_id}] " if item.dataset_id else ""
            lines.append(f"  - {where}{item.path}: {item.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "kept": dict(self.kept_counts),
            "skipped_counts": self.counts(),
            "skipped": [
                {"dataset": item.dataset_id, "path": str(item.path), "reason": item.reason}
                for item in self.items
            ],
        }

    def save(self, output_dir: Path) -> tuple[Path, Path]:
        """Write data_report.json (for tools and the web UI) and data_report.txt (for people)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        json_path, txt_path = output_dir / REPORT_JSON, output_dir / REPORT_TXT
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        txt_path.write_text(self.summary() + "\n", encoding="utf-8")
        return json_path, txt_path
