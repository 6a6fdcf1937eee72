"""`cinetune configure` driven through a pseudo-terminal: a bad answer is explained and asked again, the pair
it writes passes `cinetune check`, and a second run edits that pair (Enter keeps values, other keys stay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cinetune.demo import write_demo_dataset

pexpect = pytest.importorskip("pexpect")
SRC = Path(__file__).resolve().parents[2] / "src"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "COLUMNS": "200",
        "TERM": "dumb",
        "NO_COLOR": "1",
    }


def _spawn(project: Path):
    return pexpect.spawn(
        sys.executable,
        ["-m", "cinetune.cli", "configure", "--project", str(project)],
        env=_env(),
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
    )


def _answer(child, pattern: str, text: str) -> None:
    child.expect(pattern)
    child.sendline(text)


@pytest.mark.skipif(sys.platform == "win32", reason="pexpect.spawn needs a POSIX pty")
def test_configure_writes_a_pair_that_check_accepts_and_edits_it(tmp_path) -> None:
    project = tmp_path / "proj"
    write_demo_dataset(project / "footage", num_clips=2, num_frames=30)
    child = _spawn(project)
    _answer(child, "model family", "ltxvideo")
    _answer(child, "flavour", "tiny")
    _answer(child, "model path", "")
    _answer(child, "dataset folder", "footage")
    _answer(child, r"resolution \(number\)", "3")  # 512x512 (square)
    _answer(child, "frames per sample", "25")
    _answer(child, "training steps", "0")  # the schema says why and asks again
    child.expect("max_train_steps: Input should be greater than or equal to 1")
    _answer(child, "training steps", "30")
    _answer(child, "learning rate", "-1")
    child.expect("learning_rate: Input should be greater than 0")
    _answer(child, "learning rate", "0.0002")
    _answer(child, "gradient checkpointing", "y")
    _answer(child, "mixed precision", "no")
    _answer(child, "GPU memory in GiB", "lots")  # asked again
    _answer(child, "GPU memory in GiB", "24")
    child.expect("fits 24 GiB as it is")  # the tiny model: the planner's prediction, no keys to add
    _answer(child, "validation prompt", "a red square")
    child.expect("written")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    config = json.loads((project / "config/config.json").read_text())
    datasets = json.loads((project / "config/multidatabackend.json").read_text())
    assert (config["model_flavour"], config["max_train_steps"], config["learning_rate"]) == ("tiny", 30, 2e-4)
    assert config["validation_resolution"] == "512x512" and config["validation_num_video_frames"] == 25
    assert datasets[0]["instance_data_dir"] == "footage" and datasets[0]["video"]["num_frames"] == 25
    check = subprocess.run(
        [sys.executable, "-m", "cinetune.cli", "check"],
        cwd=project,
        check=False,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    config["tracker_run_name"] = "kept"  # a key the wizard does not ask about
    (project / "config/config.json").write_text(json.dumps(config))
    child = _spawn(project)
    child.expect("editing the existing config pair")
    for pattern in (
        "model family",
        "flavour",
        "model path",
        "dataset folder",
        r"resolution \(number\)",
        "frames per sample",
    ):
        _answer(child, pattern, "")
    _answer(child, "training steps", "40")
    for pattern in (
        "learning rate",
        "gradient checkpointing",
        "mixed precision",
        "GPU memory in GiB",
        "validation prompt",
    ):
        _answer(child, pattern, "")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    edited = json.loads((project / "config/config.json").read_text())
    assert edited == {**config, "max_train_steps": 40}
