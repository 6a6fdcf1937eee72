"""LTX-2 end to end through the CLI, in the quickstart's shape: the combined checkpoint in a model folder, a
video
dataset with an `audio` block, a text_embeds dataset, clips with sound; train, resume, validate (I2V + S2V
from
an eval clip), export, and load the LoRA back into LTX2Pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import torch
from diffusers import LTX2Pipeline
from safetensors.torch import load_file

from cinetune.cli import main
from cinetune.data import write_video
from cinetune.data.audio import tone
from cinetune.demo import synthetic_clip
from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE
from cinetune.models.ltxvideo2 import tiny

_SUBJECTS = [("red", (220, 40, 40), 330.0), ("blue", (40, 80, 220), 660.0), ("green", (40, 200, 80), 495.0)]


def _clips(folder: Path, count: int, with_silent: bool) -> None:
    """60 frames at 25 fps, 96x64, each with its own tone; optionally one more clip without audio."""
    folder.mkdir(parents=True)
    for i in range(count):
        name, color, pitch = _SUBJECTS[i % len(_SUBJECTS)]
        frames = synthetic_clip(color, 60, 96, 64, speed=1 + i % 3)
        write_video(
            folder / f"clip_{i}.mp4",
            frames,
            25,
            audio=tone(2 * 48000 + 19200, 48000, pitch),
            sample_rate=48000,
        )
        (folder / f"clip_{i}.txt").write_text(f"a {name} square moves across the screen")
    if with_silent:
        write_video(folder / "silent.mp4", synthetic_clip((200, 200, 200), 60, 96, 64, speed=1), 25)
        (folder / "silent.txt").write_text("a white square moves across the screen")


def _project(root: Path) -> None:
    tiny.save_tiny_combined_file(root / "models" / "LTX-2" / "ltx-2-19b-dev.safetensors")
    _clips(root / "datasets" / "clips", 4, with_silent=True)
    _clips(root / "datasets" / "eval", 1, with_silent=False)
    audio = {
        "auto_split": True,
        "sample_rate": 16000,
        "channels": 1,
        "duration_interval": 3.0,
        "allow_zero_audio": False,
    }
    common = {"type": "local", "dataset_type": "video", "caption_strategy": "textfile", "resolution": 64}
    datasets = [
        {
            "id": "ltx2-clips",
            **common,
            "instance_data_dir": "datasets/clips",
            "resolution_type": "pixel",
            "cache_dir_vae": "cache/vae/ltxvideo2/clips",
            "repeats": 1,
            "video": {"num_frames": 61, "min_frames": 57, "bucket_strategy": "aspect_ratio"},
            "audio": audio,
        },
        {"id": "eval-clips", **common, "instance_data_dir": "datasets/eval", "audio": audio},
        {
            "id": "text-embeds",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": "cache/text",
        },
    ]
    config = {
        "model_type": "lora",
        "model_family": "ltxvideo2",
        "model_flavour": "2.0",
        "pretrained_model_name_or_path": "models/LTX-2",
        "ltx2_checkpoint_filename": "ltx-2-19b-dev.safetensors",
        "output_dir": "output/ltx2",
        "data_backend_config": "config/multidatabackend.json",
        "resume_from_checkpoint": "latest",
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "mixed_precision": "no",
        "seed": 5,
        "lora_rank": 4,
        "lora_alpha": 8,
        "frame_rate": 25,
        "first_frame_conditioning_p": 0.5,
        "validation_prompt": "a red square moves across the screen",
        "validation_resolution": "64x64",
        "validation_num_video_frames": 9,
        "validation_num_inference_steps": 2,
        "validation_using_datasets": True,
        "eval_dataset_id": "eval-clips",
        "report_to": "none",
    }
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text(json.dumps(config, indent=2))
    (root / "config" / "multidatabackend.json").write_text(json.dumps(datasets, indent=2))


def test_quickstart_ltx2_with_audio_trains_resumes_validates_and_exports(
    tmp_path, monkeypatch, capsys
) -> None:
    _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0
    err = capsys.readouterr().err
    assert "using 57" in err and "8x" in err  # 61 frames -> 57, saying why
    out = Path("output/ltx2")
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    report = (out / "data_report.txt").read_text()
    assert "silent.mp4" in report and "no audio track" in report
    entries = list(Path("cache/vae/ltxvideo2/clips").rglob("*.safetensors"))
    assert len(entries) == 4 * 4  # 4 clips x 4 windows (windows_per_clip default)
    entry = load_file(str(entries[0]))
    assert entry["latents"].shape == (16, 8, 2, 3)  # 57 frames -> 8 latent frames, 64x96 -> 2x3
    # 57 frames at 25 fps: 36480 samples, 229 mel frames, and the audio VAE's causal encoder gives
    # ceil(229 / 4) = 58 steps, all kept as the official trainer keeps them (LTX2Pipeline generates
    # round(2.28 s x 25) = 57); the track covers the whole window, so every step counts in the loss, the 58th
    # too
    assert entry["audio_latents"].shape == (58, 32) and bool(entry["audio_mask"].all())
    texts = list(Path("cache/text").rglob("*.safetensors"))
    assert texts and max(load_file(str(t))["prompt_proj"].shape[0] for t in texts) <= 9  # real tokens only

    # resumes from checkpoint-4 and goes on to 6
    assert main(["train", "--max_train_steps=6"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(losses))

    # validation: the eval clip's first frame and sound condition the video; the mp4 carries that sound
    (video,) = sorted((out / "validation" / "step_6").glob("*.mp4"))
    with av.open(str(video)) as container:
        assert container.streams.video[0].frames == 9
        (audio,) = container.streams.audio
        assert audio.codec_context.sample_rate == 16000

    # both LoRA files; the original-format one has the original names and loads back into LTX2Pipeline
    comfy = load_file(str(out / COMFYUI_FILE))
    assert any(".audio_attn1." in k for k in comfy) and all(k.startswith("diffusion_model.") for k in comfy)
    pipe = LTX2Pipeline.from_pretrained(tiny.save_tiny_checkpoint(tmp_path / "diffusers-tiny"))
    pipe.set_progress_bar_config(disable=True)

    def generate() -> torch.Tensor:
        return pipe(
            "a red square moves across the screen",
            num_frames=9,
            height=64,
            width=96,
            num_inference_steps=2,
            guidance_scale=1.0,
            use_cross_timestep=False,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            max_sequence_length=128,
        ).frames

    base = generate()
    pipe.load_lora_weights(out / DIFFUSERS_FILE)
    assert not torch.allclose(generate(), base)
