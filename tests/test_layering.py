"""Core never imports the CLI or the web server layer (ARCHITECTURE.md): they are leaves."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cinetune"
LEAVES = ("cinetune.cli", "cinetune.server")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_does_not_import_cli_or_server() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("cli.py", "server"):
            continue
        bad = [name for name in _imports(path) if name.startswith(LEAVES)]
        if bad:
            offenders.append(f"{rel}: {bad}")
    assert not offenders, offenders
    assert len(list(SRC.rglob("*.py"))) > 20  # the walk really saw the package
