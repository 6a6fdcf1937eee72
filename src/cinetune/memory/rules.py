"""What the memory keys combine with, checked once by `plan.resolve` (so `cinetune check` says what `cinetune
train` would): each combination either works (tests/test_memory_*.py) or is rejected here with its reason.
The README's combination table lists both."""

from __future__ import annotations

import logging
from typing import Any

import torch

from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.memory.context_parallel import check_context_parallel
from cinetune.memory.quantize import check_quantization, is_quantized
from cinetune.memory.vae import TEMPORAL_ROLL_VAES

logger = logging.getLogger(__name__)

_OFFLOAD_KEYS = (
    "group_offload_type",
    "group_offload_blocks_per_group",
    "group_offload_use_stream",
    "group_offload_to_disk_path",
)


def training_device_type(cfg: Any) -> str:
    """The device type `cinetune train` will run on (as `make_accelerator` decides)."""
    return "cpu" if cfg.cpu or not torch.cuda.is_available() else "cuda"


def check_memory(cfg: Any, family: Any) -> None:
    """Reject what cannot train correctly (with the reason); warn once about keys that change nothing."""
    _check_quantization(cfg, family)
    _check_offload(cfg)
    _check_vae(cfg, family)
    _check_training_extras(cfg)
    _check_scale(cfg, family)
    _warn_moot(cfg)


def _memory_features(cfg: Any) -> list[str]:
    """The memory features of the config that change where or how the frozen block weights are stored."""
    return [
        name
        for name, on in (
            (f"base_model_precision {cfg.base_model_precision}", is_quantized(cfg.base_model_precision)),
            ("enable_group_offload", cfg.enable_group_offload),
            ("musubi_blocks_to_swap", bool(cfg.musubi_blocks_to_swap)),
        )
        if on
    ]


def _training_extras(cfg: Any) -> list[str]:
    """The optional training features (issue 12) and adapter kinds the config turns on."""
    return [
        name
        for name, on in (
            ("tread_config", cfg.tread_config is not None),
            ("crepa_enabled", cfg.crepa_enabled),
            ("scheduled_sampling_max_step_offset", bool(cfg.scheduled_sampling_max_step_offset)),
            ("use_dora", cfg.use_dora),
            ("lora_type lycoris", cfg.lora_type == "lycoris"),
            ("use_ema", cfg.use_ema),
        )
        if on
    ]


def _check_training_extras(cfg: Any) -> None:
    """The training extras (issue 12) were built and tested on plain weights: where they meet quantized,
    offloaded or swapped blocks it has not been tested, so it is rejected rather than trusted."""
    memory, extras = _memory_features(cfg), _training_extras(cfg)
    if memory and extras:
        raise NotSupportedYet(
            f"{extras[0]} with {memory[0]} is not supported yet: the training extras have not been tested on "
            "quantized, offloaded or swapped transformer blocks; train with one of them"
        )


def _check_scale(cfg: Any, family: Any) -> None:
    """FSDP2, several machines and context parallelism: what they need and what they combine with."""
    if cfg.num_machines > 1:
        if cfg.machine_rank >= cfg.num_machines:
            raise ConfigError(
                f"machine_rank {cfg.machine_rank}: the machines are numbered 0..{cfg.num_machines - 1}"
            )
        if not cfg.main_process_ip:
            raise ConfigError(
                f"num_machines {cfg.num_machines}: set main_process_ip to machine 0's address (every machine "
                "connects to it)"
            )
        if cfg.num_processes % cfg.num_machines:
            raise ConfigError(
                f"num_processes {cfg.num_processes} is the total over all machines: it must be a multiple of "
                f"num_machines {cfg.num_machines}"
            )
    elif cfg.machine_rank:
        raise ConfigError(f"machine_rank {cfg.machine_rank} with num_machines 1: the only machine is 0")
    check_context_parallel(cfg, family)
    if not cfg.fsdp_enable:
        return
    if cfg.fsdp_version != 2:
        raise NotSupportedYet(
            "fsdp_version 1 is not supported yet: cinetune shards with FSDP2 (fsdp_version 2), which "
            "replaces it"
        )
    compiled = ["compile_transformer_blocks"] if cfg.compile_transformer_blocks else []
    untested = [*_memory_features(cfg), *compiled, *_training_extras(cfg)]
    if untested:
        why = {
            "base_model_precision": "FSDP2 shards parameters as DTensors, which quantized weights are not",
            "enable_group_offload": "FSDP2 already keeps only a shard of each block on the device; offload "
            "hooks and FSDP's gather hooks would both move the same weights",
            "musubi_blocks_to_swap": "FSDP2 already keeps only a shard of each block on the device",
        }.get(untested[0].split()[0], "it has not been tested on sharded transformer blocks")
        raise NotSupportedYet(f"{untested[0]} with fsdp_enable is not supported yet: {why}")


def _check_quantization(cfg: Any, family: Any) -> None:
    for key in ("base_model_precision", "text_encoder_1_precision", "text_encoder_2_precision"):
        check_quantization(getattr(cfg, key), key)
    if cfg.text_encoder_2_precision != "no_change" and "text_encoder_2" not in family.text_encoders:
        raise ConfigError(
            f"text_encoder_2_precision: the {family.name} family has one text encoder "
            "(text_encoder_1_precision)"
        )
    quantized = [
        k for k in ("text_encoder_1_precision", "text_encoder_2_precision") if is_quantized(getattr(cfg, k))
    ]
    if is_quantized(cfg.base_model_precision):
        quantized.append("base_model_precision")
    if quantized and cfg.enable_group_offload and cfg.group_offload_to_disk_path is not None:
        raise NotSupportedYet(
            f"{quantized[0]} {getattr(cfg, quantized[0])} with group_offload_to_disk_path is not supported "
            "yet: diffusers writes offloaded groups with safetensors, which cannot store quantized "
            "tensors; offload to host RAM (remove group_offload_to_disk_path) or keep the weights unquantized"
        )


def _check_offload(cfg: Any) -> None:
    moving = [k for k in ("enable_group_offload", "musubi_blocks_to_swap") if getattr(cfg, k)]
    if len(moving) == 2:
        raise ConfigError(
            "enable_group_offload and musubi_blocks_to_swap both move transformer blocks off the device: "
            "pick one"
        )
    if not moving:
        return
    if cfg.num_processes > 1:
        raise NotSupportedYet(
            f"{moving[0]} with several processes is not supported yet: DDP broadcasts every weight from "
            "rank 0 when it starts, offloaded ones included"
        )
    if cfg.compile_transformer_blocks:
        raise NotSupportedYet(
            f"{moving[0]} with compile_transformer_blocks is not supported yet: the offload hooks replace "
            "the blocks' forward, which the compiled blocks would have to trace"
        )
    if cfg.musubi_blocks_to_swap:
        try:
            kind = torch.device(cfg.musubi_block_swap_device).type
        except RuntimeError as exc:
            raise ConfigError(f"musubi_block_swap_device '{cfg.musubi_block_swap_device}': {exc}") from exc
        if kind not in ("cpu", "cuda"):
            raise ConfigError(
                f"musubi_block_swap_device '{cfg.musubi_block_swap_device}': swapped blocks wait on the cpu "
                "or on another cuda device"
            )
    device = training_device_type(cfg)
    if cfg.enable_group_offload and cfg.group_offload_use_stream and device == "cpu":
        logger.warning(
            "group_offload_use_stream: the training device (cpu) has no streams: offloaded groups are copied "
            "plainly, without overlapping compute"
        )


def _check_vae(cfg: Any, family: Any) -> None:
    if cfg.vae_enable_temporal_roll and family.vae_class_name not in TEMPORAL_ROLL_VAES:
        raise ConfigError(
            f"vae_enable_temporal_roll: the {family.name} VAE ({family.vae_class_name}) normalizes over all "
            "frames (GroupNorm) and attends across frames, so a clip encoded a few frames at a time would "
            "not give its latents; use vae_enable_patch_conv (same latents) or vae_enable_tiling"
        )
    if cfg.vae_enable_slicing:
        logger.warning(
            "vae_enable_slicing changes nothing in this run: cinetune encodes and decodes one video at a time"
        )


def _warn_moot(cfg: Any) -> None:
    given = cfg.model_fields_set
    moot = []
    if not cfg.enable_group_offload:
        moot += [(k, "enable_group_offload is false") for k in _OFFLOAD_KEYS if k in given]
    if cfg.group_offload_type == "leaf_level" and "group_offload_blocks_per_group" in given:
        moot.append(("group_offload_blocks_per_group", "group_offload_type is leaf_level"))
    fsdp_keys = ("fsdp_version", "fsdp_reshard_after_forward", "fsdp_state_dict_type")
    fsdp_keys += ("fsdp_cpu_ram_efficient_loading", "fsdp_auto_wrap_policy")
    if not cfg.fsdp_enable:
        moot += [(k, "fsdp_enable is false") for k in fsdp_keys if k in given]
    elif cfg.num_processes == 1:
        moot.append(("fsdp_enable", "one process holds the whole model (set num_processes)"))
    if not cfg.musubi_blocks_to_swap and "musubi_block_swap_device" in given:
        moot.append(("musubi_block_swap_device", "musubi_blocks_to_swap is 0"))
    quantizes = any(
        is_quantized(getattr(cfg, k))
        for k in ("base_model_precision", "text_encoder_1_precision", "text_encoder_2_precision")
    )
    if "quantize_via" in given and not quantizes:
        moot.append(("quantize_via", "nothing is quantized"))
    elif cfg.quantize_via == "accelerator" and training_device_type(cfg) == "cpu":
        moot.append(("quantize_via", "the training device is the CPU"))
    for key, why in moot:
        logger.warning("%s changes nothing in this run: %s", key, why)
