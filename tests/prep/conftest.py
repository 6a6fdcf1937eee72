"""Fixtures of the preparation tests: synthetic footage with known cuts, a folder of short clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinetune.prep.synthetic import TEST_SCENES, write_footage


@pytest.fixture(scope="session")
def footage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """raw/synthetic.mp4 (525 frames at 25 fps, 160x96, a 16 kHz stereo tone) and its true cuts."""
    path = tmp_path_factory.mktemp("raw") / "synthetic.mp4"
    return path, write_footage(path, TEST_SCENES, audio_rate=16000)


@pytest.fixture
def clip_folder(tmp_path: Path) -> Path:
    """Five short clips without captions."""
    from cinetune.demo import write_demo_dataset

    folder = write_demo_dataset(tmp_path / "clips", num_clips=5, num_frames=12, size=(64, 48))
    for caption in folder.glob("*.txt"):
        caption.unlink()
    return folder
