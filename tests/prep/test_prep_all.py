"""`cinetune prep all`: a raw folder through split, captions, the config pair, check and cache to a trained
tiny LoRA; a second run skips every stage's finished work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cinetune.cli import main
from cinetune.config import load_config
from cinetune.plan import resolve
from cinetune.prep.synthetic import Scene, write_footage

from .fake_api import FakeChatServer, Reply


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("footage") / "raw"
    write_footage(folder / "holiday.mp4", [Scene(40), Scene(45)], width=96, height=64, audio_rate=16000)
    return folder


def _args(raw: Path, project: Path, url: str, *extra: str) -> list[str]:
    return [
        "prep",
        "all",
        str(raw),
        "--project",
        str(project),
        "--backend",
        "openai",
        "--base_url",
        url,
        "--trigger",
        "HOLI",
        "--frames",
        "2",
        *extra,
    ]


TINY = [
    "--family",
    "ltxvideo",
    "--flavour",
    "tiny",
    "--resolution",
    "64x64",
    "--num_frames",
    "9",
    "--max_train_steps=2",
    "--mixed_precision=no",
    "--lora_rank=4",
    "--report_to=none",
    "--validation_num_inference_steps=2",
    "--gradient_checkpointing=false",
]


def test_raw_footage_to_a_trained_tiny_lora_then_nothing_to_redo(
    raw: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    project = tmp_path / "my-lora"
    with FakeChatServer(lambda n, body: Reply(caption="A sunny beach, the camera still.")) as server:
        assert main(_args(raw, project, server.url, "--train", *TINY)) == 0
        assert len(server.requests) == 2
        clips = sorted((project / "datasets/clips").glob("*.mp4"))
        assert [c.name for c in clips] == ["holiday-scene001.mp4", "holiday-scene002.mp4"]
        assert clips[0].with_suffix(".txt").read_text() == "HOLI A sunny beach, the camera still.\n"
        output = project / "output" / "my-lora"
        assert (output / "pytorch_lora_weights.safetensors").stat().st_size > 0
        assert json.loads((output / "cinetune_config.json").read_text())["model_flavour"] == "tiny"
        report = (project / "prep_report.txt").read_text().splitlines()
        stages = [line.split(":")[0] for line in report if not line.startswith(" ")]
        assert stages == ["split", "caption", "config", "check", "cache", "train"]
        assert report[0] == "split: 2 clip(s) written"
        config = json.loads((project / "config/config.json").read_text())
        assert config["validation_resolution"] == "64x64" and config["validation_num_video_frames"] == 9
        assert "learning_rate" in config and "cpu" not in config  # the keys set, as a quickstart writes them

        # the pair works where a user runs `cinetune train`: inside the project, paths relative to it
        monkeypatch.chdir(project)
        plan = resolve(load_config(Path("config/config.json")))
        assert plan.train.model_flavour == "tiny" and plan.data.media[0].video.num_frames == 9
        monkeypatch.chdir(tmp_path)

        assert main(_args(raw, project, server.url)) == 0  # no shaping options: the config is kept
        assert len(server.requests) == 2  # every clip already has its caption
        assert main(_args(raw, project, server.url, "--family", "kandinsky5-video")) == 2  # no other config
        assert len(server.requests) == 2
    assert "already holds another config" in capsys.readouterr().err
    again = (project / "prep_report.txt").read_text()
    assert "split: 0 clip(s) written, 2 already there" in again
    assert "caption: 0 clip(s) captioned, 2 already there" in again
    assert "config: 0 file(s) done, 2 already there" in again


def test_bad_choices_stop_before_any_work(raw: Path, tmp_path: Path, capsys) -> None:
    project = tmp_path / "p"
    assert (
        main(
            ["prep", "all", str(raw), "--project", str(project), "--family", "ltxvideo", "--num_frames", "50"]
        )
        == 2
    )
    assert "--num_frames 50: this model takes 8k+1 frames (49 or 57)" in capsys.readouterr().err
    assert not (project / "datasets").exists()
    assert main(["prep", "all", str(raw), "--project", str(project), "--resolution", "700x500"]) == 2
    assert "sides must be multiples of 32" in capsys.readouterr().err
    assert main(["prep", "caption", str(raw), "--quantize", "4bit"]) == 2
    assert "not supported yet" in capsys.readouterr().err
