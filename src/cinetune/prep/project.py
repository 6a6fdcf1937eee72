"""The project folder `cinetune prep all` fills, and its `config/` pair in the quickstarts' shape.

    my-lora/
      config/config.json, config/multidatabackend.json   (paths in them relative to my-lora/)
      datasets/clips/      the scene clips, their captions and the split manifest
      cache/, output/      what check / cache / train write
      prep_report.txt      a line per stage, then every skipped or failed file with its reason

The pair is built with the schema's own pydantic models, so it always validates; the run itself loads it
through the config loader with relative paths taken from the project folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cinetune.config import DataBackendConfig, DatasetConfig, LoadedConfig, TrainConfig
from cinetune.config.load import build_data_config, build_train_config, read_file
from cinetune.data.buckets import bucket_size
from cinetune.data.frames import FrameRule
from cinetune.errors import ConfigError

CLIPS_DIR = Path("datasets/clips")
CONFIG = Path("config/config.json")
BACKEND = Path("config/multidatabackend.json")
# Resolutions offered for every family (those whose sides break a flavour's rule are left out).
RESOLUTIONS = (
    (768, 512),
    (512, 768),
    (512, 512),
    (960, 544),
    (544, 960),
    (768, 768),
    (1024, 576),
    (576, 1024),
)


@dataclass(frozen=True)
class Recipe:
    """A family's starting point: the values of its example config under examples/."""

    frames: tuple[int, ...]  # frame counts offered (the family's rule: 8k+1 or 4k+1)
    default_frames: int
    frame_rate: float
    guidance: float
    inference_steps: int
    extra: tuple[tuple[str, Any], ...] = ()


RECIPES = {
    "ltxvideo": Recipe((25, 49, 73, 97, 121), 49, 25, 3.0, 40),
    "ltxvideo2": Recipe((25, 49, 73, 97, 121), 97, 25, 3.0, 30),
    "kandinsky5-video": Recipe((29, 61, 97, 121), 61, 24, 5.0, 50, (("vae_enable_patch_conv", True),)),
}


def orientation(width: int, height: int) -> str:
    return "landscape" if width > height else "portrait" if width < height else "square"


def resolution_choices(rule: FrameRule) -> list[str]:
    """'768x512 (landscape)', ... : the resolutions a family's rule allows, each with its label."""
    m = rule.spatial_multiple
    return [f"{w}x{h} ({orientation(w, h)})" for w, h in RESOLUTIONS if w % m == 0 and h % m == 0]


def parse_resolution(text: str, rule: FrameRule) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("(")[0].strip().split("x"))
    except ValueError:
        raise ConfigError(f"--resolution '{text}': expected WIDTHxHEIGHT, e.g. 768x512") from None
    m = rule.spatial_multiple
    if width % m or height % m or width < m or height < m:
        raise ConfigError(
            f"--resolution {width}x{height}: sides must be multiples of {m} for this model; "
            f"choices: {', '.join(resolution_choices(rule))}"
        )
    return width, height


def check_frames(frames: int, rule: FrameRule, recipe: Recipe) -> int:
    if not rule.is_valid_frames(frames):
        lower = rule.frames_down(frames)
        raise ConfigError(
            f"--num_frames {frames}: this model takes {rule.temporal_multiple}k+1 frames ({lower} or "
            f"{lower + rule.temporal_multiple}); choices: {', '.join(map(str, recipe.frames))}"
        )
    return frames


def area_resolution(width: int, height: int, rule: FrameRule) -> int:
    """The dataset `resolution` (pixel_area) whose bucket for a clip of this very shape is width x height."""
    for side in range(math.isqrt(width * height), math.isqrt(width * height) + 64):
        probe = DatasetConfig(id="probe", instance_data_dir=Path(), resolution=side)
        if bucket_size(width, height, probe, rule) == (width, height):
            return side
    return math.isqrt(width * height)


def build_pair(
    project: Path,
    family: str,
    flavour: str | None,
    rule: FrameRule,
    size: tuple[int, int],
    frames: int,
    caption_output: str,
    overrides: dict[str, Any],
) -> tuple[TrainConfig, DataBackendConfig]:
    """The config pair of a project, paths relative to the project folder."""
    recipe = RECIPES[family]  # the registry's name of the family (aliases resolved by the caller)
    width, height = size
    values: dict[str, Any] = {
        "model_type": "lora",
        "model_family": family,
        **({"model_flavour": flavour} if flavour else {}),
        "data_backend_config": str(BACKEND.as_posix()),
        "output_dir": f"output/{project.name}",
        "resume_from_checkpoint": "latest",
        "seed": 42,
        "train_batch_size": 1,
        "max_train_steps": 2000,
        "checkpointing_steps": 250,
        "checkpoints_total_limit": 5,
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 100,
        "optimizer": "adamw",
        "max_grad_norm": 1.0,
        "mixed_precision": "bf16",
        "gradient_checkpointing": True,
        "lora_rank": 32,
        "lora_alpha": 32,
        "caption_dropout_probability": 0.05,
        "validation_steps": 250,
        "validation_resolution": f"{width}x{height}",
        "validation_num_video_frames": frames,
        "validation_guidance": recipe.guidance,
        "validation_num_inference_steps": recipe.inference_steps,
        "frame_rate": recipe.frame_rate,
        "report_to": "tensorboard",
        "tracker_project_name": "video-training",
        "tracker_run_name": project.name,
        **dict(recipe.extra),
    }
    values.update(overrides)
    train = build_train_config(values, where="cinetune prep all")
    clips = {
        "id": "clips",
        "type": "local",
        "dataset_type": "video",
        "instance_data_dir": CLIPS_DIR.as_posix(),
        "caption_strategy": "jsonl" if caption_output == "jsonl" else "textfile",
        "resolution": area_resolution(width, height, rule),
        "resolution_type": "pixel_area",
        "cache_dir_vae": "cache/vae/clips",
        "video": {"num_frames": frames, "min_frames": frames, "bucket_strategy": "aspect_ratio"},
    }
    embeds = {
        "id": "text-embeds",
        "type": "local",
        "dataset_type": "text_embeds",
        "default": True,
        "cache_dir": "cache/text",
    }
    return train, build_data_config([clips, embeds], where="cinetune prep all")


def write_pair(project: Path, train: TrainConfig, data: DataBackendConfig) -> None:
    """config/config.json and config/multidatabackend.json: only the keys set, as a quickstart writes them."""
    (project / CONFIG).parent.mkdir(parents=True, exist_ok=True)
    config = train.model_dump(mode="json", exclude_unset=True)
    datasets = [d.model_dump(mode="json", exclude_unset=True) for d in data.datasets]
    (project / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (project / BACKEND).write_text(json.dumps(datasets, indent=2) + "\n", encoding="utf-8")


_TRAIN_PATHS = ("output_dir", "data_backend_config")
_DATA_PATHS = ("instance_data_dir", "cache_dir", "cache_dir_vae", "metadata_file")


def load_project(project: Path, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """The project's config pair as the loader reads it, relative paths taken from the project folder (so
    `cinetune train` run inside the folder and `prep all` run from anywhere read the same files)."""
    raw = read_file(project / CONFIG)
    if not isinstance(raw, dict):
        raise ConfigError(f"{project / CONFIG}: expected an object of key: value")
    raw = {**raw, **(overrides or {})}
    for key in _TRAIN_PATHS:
        if isinstance(raw.get(key), str):
            raw[key] = str(_rooted(project, raw[key]))
    train = build_train_config(raw, where=str(project / CONFIG))
    backend_path = Path(train.data_backend_config)
    entries = read_file(backend_path)
    if isinstance(entries, list):
        entries = [
            {**e, **{k: str(_rooted(project, e[k])) for k in _DATA_PATHS if isinstance(e.get(k), str)}}
            if isinstance(e, dict)
            else e
            for e in entries
        ]
    data = build_data_config(entries, where=str(backend_path))
    return LoadedConfig(train=train, data=data, config_path=project / CONFIG)


def _rooted(project: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else project / path
