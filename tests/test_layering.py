"""The package's layers import downwards only (docs/ARCHITECTURE.md), so no import cycle joins them.

Low to high: faults < errors < config < objectives < data < export < models < memory < cache < plan <
training < benchmark < prep < check < demo < cli < server. A module may import its own layer and the layers
below it; the CLI and the web server are leaves nothing imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cinetune"
LAYERS = (
    "faults",
    "errors",
    "config",
    "objectives",
    "data",
    "export",
    "models",
    "memory",
    "cache",
    "plan",
    "training",
    "benchmark",
    "prep",
    "check",
    "demo",
    "cli",
    "server",
)
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "cinetune" and len(parts) > 1 else None


def test_every_module_belongs_to_a_layer() -> None:
    tops = {path.relative_to(SRC).parts[0].removesuffix(".py") for path in SRC.rglob("*.py")}
    assert tops - {"__init__", "__main__"} <= set(LAYERS), tops - set(LAYERS)


def test_imports_go_down_the_layers_only() -> None:
    offenders = []
    files = list(SRC.rglob("*.py"))
    for path in files:
        own = path.relative_to(SRC).parts[0].removesuffix(".py")
        if own not in RANK:
            continue
        for line, module in _imports(path):
            layer = _layer(module)
            if layer in RANK and RANK[layer] > RANK[own]:
                offenders.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {module} ({layer})")
    assert not offenders, "\n".join(offenders)
    assert len(files) > 40  # the walk really saw the package


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: a data module importing the models layer is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from cinetune.models.base import ModelFamily\n")
    ((_, module),) = _imports(bad)
    assert RANK[_layer(module)] > RANK["data"]
