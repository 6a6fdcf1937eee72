"""A quickstart-shaped config pair, copied into a fresh project, checks and trains without edits.

The pairs under tests/quickstarts/ set `validation_steps` without a `validation_prompt` (validation then uses
the first training caption), spell the checkpoint interval as the guides do now, and carry the guides'
`audio.duration_interval`. Only what this machine cannot have comes from the command line: the built-in tiny
model instead of the hub weights, two steps, fp32 (bf16 matmuls are slow on a CPU) and a small validation
video. The clips are exactly as long as a sample, so each caches one frame window.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest

from cinetune.cli import main
from cinetune.data import write_video
from cinetune.data.audio import tone
from cinetune.demo import synthetic_clip

QUICKSTARTS = Path(__file__).parent / "quickstarts"
# family folder -> (clips, frames per clip, fps, with sound, the tiny flavour)
_CASES = {
    "ltxvideo": (8, 125, 25, False, "tiny"),
    "ltxvideo2": (1, 61, 25, True, "tiny"),
    "kandinsky5-video": (1, 61, 24, False, "tiny"),
}


def _project(root: Path, family: str) -> None:
    count, frames, fps, sound, _ = _CASES[family]
    config = root / "config"
    config.mkdir(parents=True)
    for name in ("config.json", "multidatabackend.json"):
        shutil.copy(QUICKSTARTS / family / name, config / name)
    videos = root / "datasets" / "videos"
    videos.mkdir(parents=True)
    colours = [(220, 40, 40), (40, 80, 220), (40, 200, 80), (200, 200, 40)]
    for i in range(count):
        clip = synthetic_clip(colours[i % 4], frames, 64, 48, speed=1 + i % 3)
        audio = tone(int(frames / fps * 48000) + 4800, 48000, 330.0 + 110 * i) if sound else None
        write_video(videos / f"clip_{i}.mp4", clip, fps, audio=audio, sample_rate=48000 if sound else None)
        (videos / f"clip_{i}.txt").write_text(f"a coloured square number {i} moves across the screen")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(_CASES))
def test_quickstart_pair_trains_unchanged(tmp_path: Path, monkeypatch, capsys, family: str) -> None:
    _project(tmp_path, family)
    monkeypatch.chdir(tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "config").iterdir()}
    tiny = [f"--model_flavour={_CASES[family][4]}", "--pretrained_model_name_or_path=None"]
    assert main(["check", *tiny]) == 0
    out = capsys.readouterr().out
    assert "config OK" in out and "(the first training caption)" in out
    quick = ["--max_train_steps=2", "--validation_num_inference_steps=2", "--validation_resolution=64x64"]
    quick += ["--validation_num_video_frames=9", "--report_to=none", "--mixed_precision=no"]
    assert main(["train", *tiny, *quick]) == 0
    err = capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "config").iterdir()} == before  # files untouched
    output = tmp_path / json.loads(before["config.json"])["output_dir"]
    assert (output / "pytorch_lora_weights.safetensors").is_file()
    (video,) = (output / "validation" / "step_2").glob("*.mp4")
    with av.open(str(video)) as container:
        assert container.streams.video[0].frames == 9
    assert "validation prompt (the first caption of" in err
    if family == "ltxvideo2":  # the guide's duration_interval: accepted, and said to change nothing
        assert "duration_interval" in err and "changes nothing here" in err
