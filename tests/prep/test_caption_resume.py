"""A captioning run killed in the middle continues, on the next run, with the clips not yet captioned."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from cinetune.prep.captioning import CaptionOptions, caption_folder

from .fake_api import FakeChatServer, Reply

SRC = Path(__file__).resolve().parents[2] / "src"


def _wait_until(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_run_killed_mid_caption_resumes_with_the_rest(clip_folder: Path) -> None:
    release = threading.Event()
    # the third request hangs until released: the process is killed while it waits for that answer
    with FakeChatServer(
        lambda n, body: Reply(wait_for=release) if n == 2 else Reply(caption=f"clip {n}")
    ) as server:
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        command = [
            sys.executable,
            "-m",
            "cinetune.cli",
            "prep",
            "caption",
            str(clip_folder),
            "--backend",
            "openai",
            "--base_url",
            server.url,
            "--prompt",
            "Describe {name}.",
            "--frames",
            "1",
        ]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_until(lambda: len(server.requests) == 3 or process.poll() is not None, 120)
            assert process.poll() is None, process.stderr.read().decode()
            process.kill()
            process.wait(timeout=30)
        finally:
            release.set()
            if process.poll() is None:
                process.kill()
        written = {p.name: p.read_text() for p in clip_folder.glob("*.txt")}
        assert written == {"clip_00.txt": "clip 0\n", "clip_01.txt": "clip 1\n"}
        assert not [p for p in clip_folder.iterdir() if p.name.startswith(".")]  # no half-written caption
        before = len(server.requests)
        report = caption_folder(
            clip_folder,
            CaptionOptions(backend="openai", base_url=server.url, frames=1, prompt="Describe {name}."),
        )
    assert report.kept == ["clip_00.mp4", "clip_01.mp4"]
    assert sorted(report.done) == ["clip_02.mp4", "clip_03.mp4", "clip_04.mp4"]
    assert server.prompts()[before:] == [f"Describe clip_0{i}." for i in (2, 3, 4)]
    assert (clip_folder / "clip_00.txt").read_text() == "clip 0\n"
