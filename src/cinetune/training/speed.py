"""Speed options applied to the transformer after LoRA injection: gradient checkpointing granularity,
attention backend, regional compilation.

All use diffusers' own machinery: `enable_gradient_checkpointing(gradient_checkpointing_func)`, the attention
dispatcher (`set_attention_backend`) and `compile_repeated_blocks`, which compiles one transformer block class
once and reuses it for every block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
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
    """Route every attention call of `model` through the diffusers backend `name` (native = torch SDPA).

    diffusers also keeps a process-wide active backend that `set_attention_backend` changes: it is set even
    for `native` (so a backend tried earlier in the process does not linger) and restored when `name`
    cannot run here.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    previous = _AttentionBackendRegistry.get_active_backend()[0]
    if name == "native" and previous == AttentionBackendName.NATIVE:
        return  # diffusers' default, already active
    try:
        model.set_attention_backend(name)
    except (RuntimeError, ValueError, ImportError) as exc:
        _AttentionBackendRegistry.set_active_backend(previous)
        raise ConfigError(f"attention_backend '{name}' cannot run here: {exc}") from exc
    logger.info("attention backend: %s", name)


def apply_regional_compile(model: torch.nn.Module, **options: Any) -> None:
    """torch.compile each repeated transformer block (compiled once, reused by every block of that class).

    Shapes are dynamic from the start: training buckets and validation (another resolution, a CFG batch of
    two) then share one graph instead of recompiling at each new shape (and hitting dynamo's recompile
    limit, after which the blocks silently run eagerly). `options` go to torch.compile (tests: backend)."""
    model.compile_repeated_blocks(dynamic=True, **options)
    logger.info("compiled the repeated blocks %s", getattr(model, "_repeated_blocks", []))


def apply_gradient_checkpointing(
    model: torch.nn.Module, interval: int, recompute_mode: Any | None = None
) -> None:
    """Recompute the activations of one transformer block in `interval` in backward (1: every block).

    diffusers' blocks loops call `model._gradient_checkpointing_func(block, *args)` for every block while
    checkpointing is on; this function checkpoints blocks 0, interval, 2 * interval, ... of each block list
    and runs the others plainly, keeping their activations: fewer recomputed blocks, more memory.
    `recompute_mode` (a context manager, e.g. a FlopCounterMode) is entered while a block is recomputed in
    backward: `cinetune bench` counts the recomputed FLOPs with it.
    """
    position: dict[int, int] = {}
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList) and "block" in name:
            position.update({id(block): index for index, block in enumerate(child)})

    def checkpoint_every_nth(block: torch.nn.Module, *args: Any) -> Any:
        if position.get(id(block), 0) % interval:
            return block(*args)
        if recompute_mode is None:
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)

        def run(*inputs: Any) -> Any:
            if torch._C._current_graph_task_id() == -1:  # the forward pass
                return block(*inputs)
            with recompute_mode:  # inside backward: the recomputation
                return block(*inputs)

        return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)

    func: Callable[..., Any] | None = (
        checkpoint_every_nth if interval > 1 or recompute_mode is not None else None
    )
    model.enable_gradient_checkpointing(func)
    if interval > 1:
        logger.info("gradient checkpointing: 1 block in %d (%d blocks)", interval, len(position))
