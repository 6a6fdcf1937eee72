"""Speed options applied to the transformer after LoRA injection: attention backend, regional compilation.

Both use diffusers' own machinery: the attention dispatcher (`set_attention_backend`) and
`compile_repeated_blocks`, which compiles one transformer block class once and reuses it for every block.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.attention_dispatch import AttentionBackendName

from cinetune.errors import ConfigError

logger = logging.getLogger(__name__)
ATTENTION_BACKENDS = tuple(b.value for b in AttentionBackendName)


def check_attention_backend(name: str) -> str:
    if name not in ATTENTION_BACKENDS:
        valid = ", ".join(ATTENTION_BACKENDS)
        raise ValueError(f"attention_backend '{name}' is not a diffusers backend; one of {valid}")
    return name


def apply_attention_backend(model: torch.nn.Module, name: str) -> None:
    """Route every attention call of `model` through the diffusers backend `name` (native = torch SDPA)."""
    if name == "native":
        return  # diffusers' default
    try:
        model.set_attention_backend(name)
    except (RuntimeError, ValueError, ImportError) as exc:
        raise ConfigError(f"attention_backend '{name}' cannot run here: {exc}") from exc
    logger.info("attention backend: %s", name)


def apply_regional_compile(model: torch.nn.Module) -> None:
    """torch.compile each repeated transformer block (compiled once, reused by every block of that class)."""
    model.compile_repeated_blocks()
    logger.info("compiled the repeated blocks %s", getattr(model, "_repeated_blocks", []))
