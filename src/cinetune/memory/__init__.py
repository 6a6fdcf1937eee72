"""Memory and scale: each feature is a hook applied to a module as the run plan says (diffusers' `hooks/`
style), between the model families (below) and the caches and trainer (above).

- `quantize.py`  weight-only quantization of frozen weights (`base_model_precision`, text encoders);
- `offload.py`   group offload (diffusers' `apply_group_offloading`), made to train; `residency.py` brings
  offloaded weights back for the backward pass;
- `swap.py`      block swap (`musubi_blocks_to_swap`), streamed in for forward and backward;
- `vae.py`       VAE patch convolution, temporal roll, tiling, slicing;
- `fsdp.py`      FSDP2: the transformer sharded over the ranks (`fsdp_enable`), its checkpoints;
- `rules.py`     what combines with what (called by `plan.resolve`, so check and train agree);
- `planner.py`   predicted peak device memory and host RAM, and the cheapest settings that fit.

The trainer calls `prepare_base_weights` before it adds LoRA and `prepare_for_training` in place of
`accelerator.prepare`; the cache builder calls `prepare_encoder`; both read the resolved config.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from cinetune.memory.quantize import apply_quantization, is_quantized

logger = logging.getLogger(__name__)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def frozen_dtype(cfg: Any, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype the frozen weights load in: base_model_precision's, or the compute dtype (also under
    quantization: layers left unquantized keep it, and quantization starts from it)."""
    return _DTYPES.get(cfg.base_model_precision, compute_dtype)


def prepare_base_weights(transformer: torch.nn.Module, plan: Any, device: torch.device) -> int:
    """Before adapters are added: quantize the linear layers of the declared transformer blocks."""
    cfg = plan.train
    if not is_quantized(cfg.base_model_precision):
        return 0
    count = apply_quantization(
        plan.family.blocks(transformer),
        cfg.base_model_precision,
        device=device,
        via=cfg.quantize_via,
        compute_dtype=next(transformer.parameters()).dtype,
    )
    logger.info("base_model_precision %s: %d linear layers quantized", cfg.base_model_precision, count)
    return count


def prepare_for_training(
    accelerator: Any, transformer: torch.nn.Module, optimizer: Any, plan: Any, sharded: bool = False
) -> tuple[torch.nn.Module, Any]:
    """After adapters: group offload or block swap of the frozen weights (LoRA stays on the device), then
    the engine that places and wraps the model (accelerate: device placement and DDP). A model FSDP2 has
    sharded (`sharded`, memory/fsdp.py) is not wrapped: only its optimizer is prepared, and its forward
    autocast as accelerate would."""
    cfg, device = plan.train, accelerator.device
    if sharded:
        from cinetune.memory.fsdp import autocast_forward

        autocast_forward(transformer, device, _DTYPES.get(accelerator.mixed_precision, torch.float32))
        return transformer, accelerator.prepare(optimizer)
    blocks = plan.family.blocks(transformer)
    if cfg.enable_group_offload:
        from cinetune.memory.offload import apply_group_offload

        transformer._cinetune_residency = apply_group_offload(transformer, cfg, device=device, blocks=blocks)
        logger.info("group offload: %s, %s", cfg.group_offload_type, _where(cfg))
    elif cfg.musubi_blocks_to_swap:
        from cinetune.memory.swap import apply_block_swap

        transformer._cinetune_residency = apply_block_swap(transformer, cfg, device=device, blocks=blocks)
        transformer.to(device)  # the swapped blocks hold empty placeholders: only the rest moves
        logger.info(
            "block swap: the last %d of %d blocks wait on %s",
            min(cfg.musubi_blocks_to_swap, len(blocks)),
            len(blocks),
            cfg.musubi_block_swap_device,
        )
    else:
        return accelerator.prepare(transformer, optimizer)
    return accelerator.prepare(transformer, optimizer, device_placement=[False, True])


def prepare_encoder(
    encoder: torch.nn.Module,
    cfg: Any | None,
    device: torch.device,
    parts: dict[str, torch.nn.Module] | None = None,
) -> torch.nn.Module:
    """A frozen encoder for caching: a text encoder (`parts`: text_encoder_1 / _2 -> the module that is
    called) is quantized as text_encoder_N_precision says; a VAE (`parts` None) offloads its encoder and
    decoder. Then it is group-offloaded (enable_group_offload) or moved to the device."""
    encoder.requires_grad_(False).eval()
    if cfg is None:
        return encoder.to(device)
    for key, part in (parts or {}).items():
        precision = getattr(cfg, f"{key}_precision", "no_change")
        if is_quantized(precision):
            count = apply_quantization(
                [part], precision, device=device, via=cfg.quantize_via, exclude=("lm_head", "*.lm_head")
            )
            logger.info("%s_precision %s: %d linear layers quantized", key, precision, count)
    if not cfg.enable_group_offload:
        return encoder.to(device)
    from cinetune.memory.offload import offload_frozen

    if parts is None:  # a VAE: encode() and decode() call its encoder and decoder, never its forward
        parts = {n: getattr(encoder, n) for n in ("encoder", "decoder") if hasattr(encoder, n)}
    offload_frozen(encoder, list(parts.values()), cfg, device)
    return encoder


def _where(cfg: Any) -> str:
    if cfg.group_offload_to_disk_path is not None:
        return f"weights on disk in {cfg.group_offload_to_disk_path}"
    return "weights in host RAM"
