"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from cinetune.config import TrainConfig


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    fused = cfg.optimizer == "adamw_fused"  # torch has fused AdamW kernels for CUDA and the CPU
    return torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
        fused=True if fused else None,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """constant / constant_with_warmup / linear / cosine with linear warmup; one step per optimizer step."""
    name = cfg.lr_scheduler
    if name == "constant" and cfg.lr_warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(
        name, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=total_steps
    )
