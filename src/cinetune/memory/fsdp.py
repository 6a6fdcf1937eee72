"""FSDP2 (`fsdp_enable`): the transformer sharded over the ranks with PyTorch's `fully_shard`.

Each declared transformer block (`ModelFamily.blocks`) is one FSDP unit, then the root takes the rest (patch
embedding, output projection, norms). Every parameter, frozen or LoRA, becomes a DTensor holding 1/N of its
rows on each rank; a unit's weights are all-gathered just before its forward (and again before its backward
when `fsdp_reshard_after_forward`), and the LoRA gradients are reduce-scattered (mean over ranks), so each
rank's optimizer steps only its shard. The frozen weights may keep their dtype (bf16) while LoRA stays fp32:
FSDP2 asks one dtype of the trainable parameters only.

What differs from DDP, and is handled here so the trainer keeps one loop:

- the model is not wrapped: gradient accumulation turns the reduce-scatter off with
  `set_requires_gradient_sync` (DDP: `no_sync`), and mixed precision autocasts the forward;
- anything that reads LoRA values as tensors (checkpoints, the exported file, the finite checks) gathers the
  shards first (`full_tensor`, a collective every rank joins in the same order);
- checkpoints: `SHARDED_STATE_DICT` writes each rank's shard of the LoRA and its optimizer state with
  `torch.distributed.checkpoint`; `FULL_STATE_DICT` gathers both onto rank 0 into one file; both also keep
  the whole LoRA in the checkpoint's `lora.safetensors` (training/checkpoint.py);
- `fsdp_cpu_ram_efficient_loading`: only rank 0 reads the weights; the others build the transformer on the
  meta device and receive their shards from rank 0 (`set_model_state_dict(..., broadcast_from_rank0)`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)
SHARDED = "SHARDED_STATE_DICT"
FULL = "FULL_STATE_DICT"
FULL_OPTIMIZER_FILE = "fsdp_optimizer.pt"  # FULL_STATE_DICT: the optimizer state, parameter names as keys
FULL_MODEL_FILE = "fsdp_trained.safetensors"  # FULL_STATE_DICT: the trained parameters, module paths as keys


def apply_fsdp(
    transformer: torch.nn.Module, blocks: list[torch.nn.Module], cfg: Any, device: torch.device
) -> torch.nn.Module:
    """Shard `transformer` over every rank of the default process group: each block, then the root. The
    weights move to `device` unit by unit as they are sharded (never the whole model at once)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    # The transformers return a reshaped view of their last projection, and FSDP2 warns at every forward
    # that an in-place op on it would skip a gather. The loss (objectives.compute_loss) and validation read
    # it out of place only; tests/test_fsdp.py trains the DDP LoRA exactly. Once, not every step.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    # torch's own state_dict helpers call a function torch deprecates (nothing a user can act on)
    warnings.filterwarnings("ignore", message=r"`_get_pg_default_device` will be deprecated")
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=cfg.fsdp_reshard_after_forward)
    # The root's own weights (embeddings, output projection) are used first in the backward: keep them
    # gathered between the forward and the backward, as torchtitan does.
    fully_shard(transformer, mesh=mesh, reshard_after_forward=False)
    logger.info(
        "FSDP2: %d blocks + the root sharded over %d ranks (reshard_after_forward %s)",
        len(blocks),
        world,
        cfg.fsdp_reshard_after_forward,
    )
    return transformer


def autocast_forward(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Mixed precision for a model no engine wraps: its forward runs under autocast (what accelerate does to
    the models it prepares)."""
    if dtype == torch.float32:
        return
    model.forward = torch.autocast(device.type, dtype=dtype)(model.forward)


@contextmanager
def gradient_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """A micro-batch that is not the step's last keeps its gradients unreduced (DDP's `no_sync`)."""
    if sync:
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def full(value: Any) -> Any:
    """A DTensor gathered into the whole tensor (a collective); anything else as it is."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def local(value: Any) -> Any:
    """This rank's shard of a DTensor; anything else as it is."""
    from torch.distributed.tensor import DTensor

    return value.to_local() if isinstance(value, DTensor) else value


# ---- checkpoints ---------------------------------------------------------------------------------------
def _options(full_state: bool, broadcast: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(
        full_state_dict=full_state,
        cpu_offload=full_state,
        ignore_frozen_params=True,  # the frozen base is the pretrained file's: only what trains is saved
        broadcast_from_rank0=broadcast,
        strict=False,
    )


def save_state(folder: Path, model: torch.nn.Module, optimizer: Any, kind: str, is_main: bool) -> None:
    """Every rank calls this (collectives). SHARDED: each rank writes its shard into `folder`
    (torch.distributed.checkpoint: `__R_0.distcp` files and `.metadata`); FULL: rank 0 writes the gathered
    trained parameters and optimizer state."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> the torch optimizer
    options = _options(kind == FULL)
    model_state = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    if kind == SHARDED:
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))
        return
    if is_main:
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(folder / FULL_MODEL_FILE))
        torch.save(optimizer_state, folder / FULL_OPTIMIZER_FILE)


def load_state(folder: Path, model: torch.nn.Module, optimizer: Any, kind: str, rank0_only: bool) -> None:
    """Every rank calls this: the trained parameters and the optimizer state `save_state` wrote. FULL with
    `rank0_only` (fsdp_cpu_ram_efficient_loading): rank 0 reads the file and broadcasts each tensor."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    optimizer = getattr(optimizer, "optimizer", optimizer)
    if kind == SHARDED:
        import torch.distributed.checkpoint as dcp

        options = _options(False)
        state = {
            "model": get_model_state_dict(model, options=options),
            "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
        }
        dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(model, state["model"], options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
        return
    from safetensors.torch import load_file

    reads = not rank0_only or dist.get_rank() == 0
    model_state = load_file(str(folder / FULL_MODEL_FILE)) if reads else {}
    optimizer_state = (
        torch.load(folder / FULL_OPTIMIZER_FILE, map_location="cpu", weights_only=False) if reads else {}
    )
    options = _options(True, broadcast=rank0_only)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


# ---- loading -------------------------------------------------------------------------------------------
def load_on_rank0(family: Any, dtype: torch.dtype) -> torch.nn.Module:
    """fsdp_cpu_ram_efficient_loading: rank 0 reads the transformer (on the CPU) and sends its config; the
    other ranks build the same architecture on the meta device (no memory), filled by `shard_for_training`."""
    if dist.get_rank() == 0:
        model = family.load_transformer(dtype)
        dist.broadcast_object_list([dict(model.config)], src=0)
        return model
    from cinetune.models.base import random_module

    received: list[Any] = [None]
    dist.broadcast_object_list(received, src=0)
    return family.prepare_transformer(
        random_module(family.transformer_class, received[0], dtype, torch.device("meta"))
    )


def shard_for_training(
    transformer: torch.nn.Module, plan: Any, device: torch.device, broadcast_from_rank0: bool
) -> torch.nn.Module:
    """Shard the transformer (its adapter already in place). With `broadcast_from_rank0` the other ranks hold
    meta tensors until now: rank 0 sends every parameter (each rank keeps its shard) and every buffer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    rank0 = dist.get_rank() == 0
    full_state = transformer.state_dict() if broadcast_from_rank0 and rank0 else {}
    apply_fsdp(transformer, plan.family.blocks(transformer), plan.train, device)
    if not broadcast_from_rank0:
        return transformer
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(transformer, full_state, options=options)
    del full_state
    for module in transformer.modules():
        # buffers (persistent or not), and tensors kept as plain attributes (Kandinsky 5's time-embedding
        # frequencies), come from rank 0 too: the same modules in the same order on every rank
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = _from_rank0(buffer, device)
        for name in sorted(vars(module)):
            value = vars(module)[name]
            if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
                setattr(module, name, _from_rank0(value, value.device if not value.is_meta else device))
    left = [n for n, p in transformer.named_parameters() if local(p).is_meta]
    if left:
        raise RuntimeError(f"fsdp_cpu_ram_efficient_loading: {left[:3]} got no weights from rank 0")
    return transformer


def _from_rank0(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rank 0's value of a tensor every rank holds (the others may hold a meta one), on `device`."""
    received = torch.empty_like(tensor, device=device) if tensor.is_meta else tensor.to(device)
    dist.broadcast(received, src=0)
    return received
