"""Shared fixtures: a tiny LTX-Video checkpoint in the real diffusers layout, clips, config writers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Bit-for-bit comparisons (offload, swap, resume against the plain run) need BLAS results that do not
# depend on where a tensor's memory starts: MKL picks kernels by alignment on some CPUs (measured on an AMD
# EPYC host: group offload's copied weights gave LoRAs 1e-9..1e-5 apart). Strict conditional
# reproducibility fixes that; set before torch loads MKL, and inherited by the processes tests launch.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_ltx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cinetune.models.ltxvideo.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ltx") / "LTX-Video-tiny")


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cinetune.demo import write_demo_dataset

    return write_demo_dataset(
        tmp_path_factory.mktemp("clips") / "clips", num_clips=4, num_frames=30, size=(96, 64), fps=24
    )


def write_configs(
    root: Path,
    data_dir: Path,
    model_dir: Path | None,
    config_format: str = "json",
    dataset: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """A config pair in the quickstart's shape: config/config.json + config/multidatabackend.json."""
    config_dir = root / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "model_family": "ltxvideo",
        "model_flavour": "tiny",
        "output_dir": str(root / "output"),
        "data_backend_config": str(config_dir / "multidatabackend.json"),
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "max_train_steps": 4,
        "mixed_precision": "no",
        "lora_rank": 4,
        "seed": 3,
        "frame_rate": 24,
        "report_to": "none",
        "vae_latent_sampling": "mean",
    }
    if model_dir is not None:
        config["pretrained_model_name_or_path"] = str(model_dir)
    config.update(overrides)
    video = {
        "id": "clips",
        "type": "local",
        "dataset_type": "video",
        "instance_data_dir": str(data_dir),
        "caption_strategy": "textfile",
        "resolution": 64,
        "resolution_type": "pixel",
        "cache_dir_vae": str(root / "cache" / "vae"),
        "video": {"num_frames": 9, "min_frames": 9},
    }
    video.update(dataset or {})
    datasets = [
        video,
        {
            "id": "text-embeds",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": str(root / "cache" / "text"),
        },
    ]
    (config_dir / "multidatabackend.json").write_text(json.dumps(datasets, indent=2))
    if config_format == "toml":
        lines = [f"{k} = {json.dumps(v)}" for k, v in config.items()]
        path = config_dir / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path
    path = config_dir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture
def make_config():
    return write_configs


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random transformers Dinov2Model in a local folder (CREPA's crepa_model), 14 px patches."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=24, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=28, patch_size=14
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-dinov2") / "dinov2-tiny"
    Dinov2Model(config).save_pretrained(folder)
    return folder
