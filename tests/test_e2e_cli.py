"""End to end through the CLI, as a user runs it from a project folder with config/config.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import torch
from diffusers import LTXPipeline

from cinetune.cli import main
from cinetune.data import write_video
from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE


def _project(root: Path, clips_dir: Path, tiny_ltx_dir: Path) -> None:
    """Quickstart layout with relative paths: config/, datasets/, cache/, output/."""
    shutil.copytree(clips_dir, root / "datasets" / "clips")
    (root / "datasets" / "clips" / "broken.mp4").write_bytes(b"")
    write_video(
        root / "datasets" / "clips" / "uncaptioned.mp4",
        torch.zeros(20, 64, 96, 3, dtype=torch.uint8).numpy(),
        24,
    )
    (root / "config").mkdir()
    config = {
        "model_type": "lora",
        "model_family": "ltxvideo",
        "model_flavour": "tiny",
        "pretrained_model_name_or_path": str(tiny_ltx_dir),
        "output_dir": "output/e2e",
        "data_backend_config": "config/multidatabackend.json",
        "resume_from_checkpoint": "latest",
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "lr_scheduler": "constant",
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "checkpoints_total_limit": 3,
        "mixed_precision": "no",
        "seed": 5,
        "lora_rank": 4,
        "lora_alpha": 8,
        "validation_steps": 2,
        "validation_prompt": "a red square moves",
        "validation_resolution": "64x64,96x64",
        "validation_num_video_frames": 9,
        "validation_num_inference_steps": 2,
        "validation_guidance": 3.0,
        "frame_rate": 24,
        "report_to": "tensorboard",
    }
    datasets = [
        {
            "id": "clips",
            "type": "local",
            "dataset_type": "video",
            "instance_data_dir": "datasets/clips",
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel",
            "cache_dir_vae": "cache/vae/clips",
            "repeats": 1,
            "video": {"num_frames": 9, "min_frames": 9, "bucket_strategy": "aspect_ratio"},
        },
        {
            "id": "text-embeds",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": "cache/text",
            "write_batch_size": 8,
        },
    ]
    (root / "config" / "config.json").write_text(json.dumps(config, indent=2))
    (root / "config" / "multidatabackend.json").write_text(json.dumps(datasets, indent=2))


def test_cache_train_resume_export_and_load_into_pipeline(
    tmp_path, clips_dir, tiny_ltx_dir, monkeypatch, capsys
) -> None:
    _project(tmp_path, clips_dir, tiny_ltx_dir)
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 0
    assert "skipped 2 file(s)" in capsys.readouterr().out
    assert main(["cache"]) == 0
    assert list(Path("cache/vae/clips").rglob("*.safetensors"))
    assert main(["train"]) == 0
    out = Path("output/e2e")
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    assert sorted(p.name for p in (out / "validation" / "step_2").iterdir()) == [
        "validation_64x64.mp4",
        "validation_96x64.mp4",
    ]
    report = (out / "data_report.txt").read_text()
    assert "broken.mp4" in report and "uncaptioned.mp4" in report
    assert list((out / "cinetune").rglob("events.out.tfevents.*")), "no tensorboard events"
    # a longer run resumes from checkpoint-4 instead of starting over
    assert main(["train", "--max_train_steps=6"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert main(["export", str(out), "--format", "comfyui"]) == 0
    assert (out / COMFYUI_FILE).exists() and (out / DIFFUSERS_FILE).exists()

    pipe = LTXPipeline.from_pretrained(tiny_ltx_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(out / DIFFUSERS_FILE)
    frames = pipe(
        "a red square moves",
        num_frames=9,
        height=64,
        width=96,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).frames[0]
    video = (frames * 255).round().astype("uint8")
    write_video(tmp_path / "with_lora.mp4", video, 24)
    with av.open(str(tmp_path / "with_lora.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 96, 64)
        assert sum(1 for _ in container.decode(stream)) == 9


def test_no_usable_clip_exits_2_with_report(tmp_path, tiny_ltx_dir, monkeypatch, capsys) -> None:
    (tmp_path / "datasets" / "clips").mkdir(parents=True)
    (tmp_path / "datasets" / "clips" / "a.mp4").write_bytes(b"not a video at all")
    (tmp_path / "datasets" / "clips" / "a.txt").write_text("a caption")
    _project_configs_only(tmp_path, tiny_ltx_dir)
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "no usable sample" in err and "a.mp4" in err


def _project_configs_only(root: Path, tiny_ltx_dir: Path) -> None:
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text(
        json.dumps(
            {
                "model_family": "ltxvideo",
                "model_flavour": "tiny",
                "pretrained_model_name_or_path": str(tiny_ltx_dir),
                "output_dir": "output",
                "mixed_precision": "no",
                "report_to": "none",
            }
        )
    )
    (root / "config" / "multidatabackend.json").write_text(
        json.dumps(
            [
                {
                    "id": "clips",
                    "dataset_type": "video",
                    "instance_data_dir": "datasets/clips",
                    "video": {"num_frames": 9},
                }
            ]
        )
    )
