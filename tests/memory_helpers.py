"""Shared by the memory tests: a Trainer whose tiny transformer carries the config's memory features,
trained a few optimizer steps on fixed synthetic batches through the real `setup_model` / `optimizer_step`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cinetune.benchmark import synthetic_batch
from cinetune.config import load_config
from cinetune.plan import resolve
from cinetune.training.trainer import Trainer

LTX = {"model_family": "ltxvideo", "model_flavour": "tiny"}
LTX2 = {"model_family": "ltxvideo2", "model_flavour": "tiny"}
K5 = {"model_family": "kandinsky5-video", "model_flavour": "tiny"}
FAMILIES = {"ltxvideo": LTX, "ltxvideo2": LTX2, "kandinsky5": K5}


def write_config(root: Path, **config: Any) -> Path:
    """A config pair whose dataset is never read (the steps train on synthetic batches)."""
    root.mkdir(parents=True, exist_ok=True)
    base = {
        "output_dir": str(root / "output"),
        "data_backend_config": str(root / "multidatabackend.json"),
        "mixed_precision": "no",
        "lora_rank": 4,
        "learning_rate": 1e-2,
        "max_train_steps": 4,
        "seed": 3,
        "report_to": "none",
        "vae_latent_sampling": "mean",
        **LTX,
        **config,
    }
    datasets = [
        {"id": "clips", "type": "local", "dataset_type": "video", "instance_data_dir": str(root)},
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True},
    ]
    (root / "multidatabackend.json").write_text(json.dumps(datasets))
    (root / "config.json").write_text(json.dumps(base))
    return root / "config.json"


def make_trainer(root: Path, **config: Any) -> Trainer:
    trainer = Trainer(resolve(load_config(write_config(root, **config))))
    torch.manual_seed(0)  # the same LoRA init in every run
    trainer.setup_model(trainer.family.load_transformer(trainer.weight_dtype), total_steps=10)
    return trainer


def lora_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = trainer.acc.unwrap_model(trainer.model)
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_steps(trainer: Trainer, steps: int = 4) -> tuple[list[float], dict[str, torch.Tensor]]:
    """`steps` optimizer steps on the same two synthetic batches (fixed seeds) -> (losses, LoRA weights)."""
    torch.manual_seed(1)
    config = trainer.family.architecture_config()
    batches = [synthetic_batch(trainer, config, (64, 64), 9, 1) for _ in range(2)]
    trainer.state.generator.manual_seed(5)
    losses = [trainer.optimizer_step([batches[step % 2]])[0] for step in range(steps)]
    return losses, lora_state(trainer)


_PLAIN: dict[tuple, tuple[list[float], dict[str, torch.Tensor]]] = {}


def plain_run(root: Path, **config: Any) -> tuple[list[float], dict[str, torch.Tensor]]:
    """`train_steps` of a config without the feature under test, trained once per test session (the
    memory tests compare many features against the same few plain runs)."""
    key = tuple(sorted(config.items()))
    if key not in _PLAIN:
        _PLAIN[key] = train_steps(make_trainer(root / "plain", **config))
    return _PLAIN[key]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
