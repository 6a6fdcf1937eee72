"""Fixtures of the reliability suite: the fault hook armed in this process, shared caches, and the LoRA an
uninterrupted run ends on."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinetune import faults

from .runs import train_here, write_run


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch):
    """Arm the fault-injection hook for runs in this process: fault("train.step:3:INT")."""

    def arm(spec: str) -> None:
        monkeypatch.setenv(faults.ENV, spec)
        monkeypatch.setattr(faults, "_passes", faults.Counter())

    return arm


@pytest.fixture(scope="session")
def shared_caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Caches for runs whose scenario is not about caching (their keys cover what an entry depends on)."""
    return tmp_path_factory.mktemp("shared-caches")


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, clips_dir: Path, shared_caches: Path) -> Path:
    """The output folder of the uninterrupted run (in this process), which resumed runs must end on."""
    config = write_run(tmp_path_factory.mktemp("reference"), clips_dir, shared_caches)
    assert train_here(config) == 0
    return config.parent / "output"
