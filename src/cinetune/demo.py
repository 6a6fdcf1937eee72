"""`make demo`: synthetic captioned clips, a tiny LTX-Video, a short run with validation and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cinetune.config import load_config, parse_overrides
from cinetune.data import write_video
from cinetune.plan import resolve

_SUBJECTS = [
    ("red", (220, 40, 40)),
    ("blue", (40, 80, 220)),
    ("green", (40, 200, 80)),
    ("yellow", (230, 210, 40)),
]


def synthetic_clip(
    color: tuple[int, int, int], num_frames: int, width: int, height: int, speed: int
) -> np.ndarray:
    """A colored square moving across a dark gradient: cheap, compressible, and visibly learnable."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames[..., 2] = np.linspace(20, 90, height, dtype=np.uint8)[None, :, None]
    side = height // 3
    for i in range(num_frames):
        x = (i * speed) % max(1, width - side)
        y = height // 3
        frames[i, y : y + side, x : x + side] = color
    return frames


def write_demo_dataset(
    folder: Path, num_clips: int = 8, num_frames: int = 40, size: tuple[int, int] = (96, 64), fps: int = 24
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_clips):
        name, color = _SUBJECTS[i % len(_SUBJECTS)]
        clip = synthetic_clip(color, num_frames, size[0], size[1], speed=1 + i % 3)
        write_video(folder / f"clip_{i:02d}.mp4", clip, fps)
        (folder / f"clip_{i:02d}.txt").write_text(
            f"a {name} square moves across the screen\n{name} square, dark background", encoding="utf-8"
        )
    return folder


def write_demo_configs(root: Path, data_dir: Path) -> Path:
    config_dir = root / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model_family": "ltxvideo",
        "model_flavour": "tiny",
        "output_dir": str(root / "output"),
        "data_backend_config": str(config_dir / "multidatabackend.json"),
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 2,
        "max_train_steps": 24,
        "checkpointing_steps": 12,
        "checkpoints_total_limit": 2,
        "mixed_precision": "no",
        "lora_rank": 8,
        "lora_alpha": 8,
        "seed": 7,
        "validation_steps": 12,
        "validation_prompt": "a red square moves across the screen",
        "validation_resolution": "96x64",
        "validation_num_video_frames": 17,
        "validation_num_inference_steps": 4,
        "validation_guidance": 3.0,
        "frame_rate": 24,
        "report_to": "tensorboard",
        "resume_from_checkpoint": "latest",
    }
    datasets = [
        {
            "id": "demo-clips",
            "type": "local",
            "dataset_type": "video",
            "instance_data_dir": str(data_dir),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel",
            "repeats": 0,
            "cache_dir_vae": str(root / "cache" / "vae"),
            "video": {
                "num_frames": 17,
                "min_frames": 17,
                "bucket_strategy": "aspect_ratio",
                "windows_per_clip": 2,
            },
        },
        {
            "id": "text-embeds",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": str(root / "cache" / "text"),
        },
    ]
    (config_dir / "config.json").write_text(json.dumps(config, indent=2))
    (config_dir / "multidatabackend.json").write_text(json.dumps(datasets, indent=2))
    return config_dir / "config.json"


def run_demo(root: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    from cinetune.training.trainer import Trainer

    data_dir = write_demo_dataset(root / "data")
    config_path = write_demo_configs(root, data_dir)
    return Trainer(resolve(load_config(config_path, parse_overrides(overrides or [])))).run()
