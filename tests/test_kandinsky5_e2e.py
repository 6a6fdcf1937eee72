"""kandinsky5-video end to end through the CLI, in the quickstart's project layout, for T2V and I2V flavours:
check, cache, train with validation and checkpoints, resume, export, and load the LoRA into the pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from diffusers import Kandinsky5I2VPipeline, Kandinsky5T2VPipeline
from PIL import Image
from safetensors.torch import load_file

from cinetune.cli import main
from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE
from cinetune.models.kandinsky5 import tiny

NEGATIVE = "Static, 2D cartoon, cartoon, 2d animation, paintings, images, worst quality, low quality, ugly"


def _project(root: Path, clips_dir: Path, model_dir: Path, flavour: str, eval_images: bool) -> None:
    """config/config.json + config/multidatabackend.json as in the Kandinsky 5 Video quickstart."""
    shutil.copytree(clips_dir, root / "datasets" / "videos")
    config = {
        "model_type": "lora",
        "model_family": "kandinsky5-video",
        "model_flavour": flavour,
        "pretrained_model_name_or_path": str(model_dir),
        "output_dir": "output/kandinsky5",
        "data_backend_config": "config/multidatabackend.json",
        "resume_from_checkpoint": "latest",
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "mixed_precision": "no",
        "seed": 7,
        "lora_rank": 4,
        "validation_steps": 2,
        "validation_prompt": "a red square moves",
        "validation_negative_prompt": NEGATIVE,
        "validation_resolution": "96x64",
        "validation_num_video_frames": 17 if flavour == "tiny-i2v" else 9,
        "validation_num_inference_steps": 2,
        "validation_guidance": 5.0,
        "frame_rate": 24,
        "report_to": "none",
        "offload_during_startup": True,
        "vae_enable_patch_conv": True,
    }
    datasets = [
        {
            "id": "my-video-dataset",
            "type": "local",
            "dataset_type": "video",
            "instance_data_dir": "datasets/videos",
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel",
            "cache_dir_vae": "cache/vae/videos",
            "video": {"num_frames": 9, "min_frames": 9, "frame_rate": 24},
            "repeats": 1,
        },
        {
            "id": "text-embeds",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": "cache/text/kandinsky5",
            "disabled": False,
        },
    ]
    if eval_images:
        (root / "datasets" / "eval").mkdir(parents=True)
        Image.new("RGB", (120, 80), (220, 40, 40)).save(root / "datasets" / "eval" / "red.png")
        datasets.append(
            {
                "id": "eval-images",
                "type": "local",
                "dataset_type": "image",
                "instance_data_dir": "datasets/eval",
                "caption_strategy": "instanceprompt",
                "instance_prompt": "a red square",
                "cache_dir_vae": "cache/vae/eval",
            }
        )
        config["eval_dataset_id"] = "eval-images"
    (root / "config").mkdir()
    (root / "config" / "config.json").write_text(json.dumps(config, indent=2))
    (root / "config" / "multidatabackend.json").write_text(json.dumps(datasets, indent=2))


def _frames(pipe, **kwargs) -> np.ndarray:
    common = {"height": 64, "width": 96, "num_inference_steps": 2, "output_type": "np"}
    return pipe(**common, **kwargs, generator=torch.Generator().manual_seed(0)).frames[0]


@pytest.mark.parametrize("flavour", ["tiny", "tiny-i2v"])
def test_train_resume_export_and_load_into_pipeline(
    tmp_path: Path,
    clips_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    flavour: str,
) -> None:
    i2v = flavour == "tiny-i2v"
    model_dir = tiny.save_tiny_checkpoint(tmp_path / "model", i2v=i2v)
    _project(tmp_path, clips_dir, model_dir, flavour, eval_images=i2v)
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 0
    assert "4k+1 frames, sides multiple of 16" in capsys.readouterr().out
    assert main(["cache"]) == 0
    latents = list(Path("cache/vae/videos").rglob("*.safetensors"))
    # 4 clips x 4 windows (windows_per_clip default); the eval dataset is not trained on
    assert len(latents) == 4 * 4 and not Path("cache/vae/eval").exists()
    entry = load_file(str(latents[0]))
    assert entry["latents"].shape == (16, 3, 8, 12)
    assert ("image_latents" in entry) == i2v
    assert main(["train"]) == 0
    out = Path("output/kandinsky5")
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    video = out / "validation" / "step_2" / "validation_96x64.mp4"
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) == (17 if i2v else 9)
    assert main(["train", "--max_train_steps=6"]) == 0  # resumes from checkpoint-4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(
        np.isfinite(json.loads(line)["loss"]) for line in (out / "metrics.jsonl").read_text().splitlines()
    )
    assert main(["export", str(out), "--format", "comfyui"]) == 0
    lora, comfy = load_file(str(out / DIFFUSERS_FILE)), load_file(str(out / COMFYUI_FILE))
    assert "transformer.visual_transformer_blocks.0.cross_attention.to_query.lora_A.weight" in lora
    assert "transformer.text_transformer_blocks.0.self_attention.out_layer.lora_B.weight" in lora
    # default targets: attention and feed-forward (the official recipe), never modulation or the output layer
    assert "transformer.visual_transformer_blocks.1.feed_forward.in_layer.lora_A.weight" in lora
    assert "transformer.text_transformer_blocks.0.feed_forward.out_layer.lora_B.weight" in lora
    assert not any("modulation" in key or key.startswith("transformer.out_layer.") for key in lora)
    assert len(lora) == 2 * (6 + 2 * 10)  # A and B of 6 modules per text block, 10 per visual block
    assert "diffusion_model.visual_transformer_blocks.1.self_attention.to_value.alpha" in comfy
    assert "diffusion_model.visual_transformer_blocks.0.feed_forward.out_layer.alpha" in comfy

    pipeline_class = Kandinsky5I2VPipeline if i2v else Kandinsky5T2VPipeline
    pipe = pipeline_class.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    extra = (
        {"image": Image.new("RGB", (96, 64), (200, 30, 30)), "num_frames": 17} if i2v else {"num_frames": 9}
    )
    before = _frames(pipe, prompt="a red square moves", **extra)
    pipe.load_lora_weights(out / DIFFUSERS_FILE)
    after = _frames(pipe, prompt="a red square moves", **extra)
    assert after.shape == (extra["num_frames"], 64, 96, 3) and np.isfinite(after).all()
    assert np.abs(after - before).max() > 0  # the trained LoRA changes what the pipeline generates
