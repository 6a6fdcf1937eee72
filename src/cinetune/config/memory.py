"""Schema of the memory and scale keys of `config.json`, spelled as the quickstarts spell them.

`TrainConfig` inherits these fields; what they do lives in `cinetune.memory` (one hook per feature) and the
rules between them in `cinetune.memory.rules` (called by `plan.resolve`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Weight-only quantization of frozen weights (LoRA trains on top in full precision).
QUANTIZED_PRECISIONS = (
    "int8-quanto",
    "int4-quanto",
    "int2-quanto",
    "fp8-quanto",
    "int8-torchao",
    "fp8-torchao",
    "nf4-bnb",
)
Quantized = Literal[
    "int8-quanto", "int4-quanto", "int2-quanto", "fp8-quanto", "int8-torchao", "fp8-torchao", "nf4-bnb"
]


class MemoryOptions(BaseModel):
    """Quantization, offload, block swap and VAE chunking keys."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)

    # quantization (base_model_precision is in TrainConfig, next to the model keys)
    text_encoder_1_precision: Literal["no_change"] | Quantized = Field(
        "no_change",
        description="Weight-only quantization of the (first) text encoder while caching: T5, Gemma3 "
        "(LTX-2), Qwen2.5-VL (Kandinsky 5). no_change: the compute dtype.",
    )
    text_encoder_2_precision: Literal["no_change"] | Quantized = Field(
        "no_change", description="Same for the second text encoder (Kandinsky 5's CLIP)."
    )
    quantize_via: Literal["cpu", "accelerator"] = Field(
        "cpu",
        description="Where weights are quantized: cpu (then moved; lowest peak device memory) or "
        "accelerator (moved first, quantized there: faster, higher peak).",
    )
    # group offload (diffusers' apply_group_offloading)
    enable_group_offload: bool = Field(
        False,
        description="Keep the transformer's blocks on the CPU (or disk) and bring each group to the device "
        "only for its forward and backward (diffusers group offloading); the text encoder and VAE too while "
        "caching.",
    )
    group_offload_type: Literal["block_level", "leaf_level"] = Field(
        "block_level",
        description="block_level: groups of transformer blocks; leaf_level: every layer on its own (least "
        "memory, most transfers).",
    )
    group_offload_blocks_per_group: int = Field(
        1, ge=1, description="block_level: transformer blocks per offload group (more: faster, more memory)."
    )
    group_offload_use_stream: bool = Field(
        False,
        description="Overlap transfers with compute on a side CUDA stream (pinned host memory). Falls back "
        "to plain copies, with one warning, on a device without streams (CPU).",
    )
    group_offload_to_disk_path: Path | None = Field(
        None, description="Offload the frozen weights to this folder instead of host RAM."
    )
    # block swap
    musubi_blocks_to_swap: int = Field(
        0,
        ge=0,
        description="Keep the last N transformer blocks on musubi_block_swap_device and stream each in for "
        "its forward and its backward (copies overlapped with compute on a side CUDA stream).",
    )
    musubi_block_swap_device: str = Field(
        "cpu", description="Where swapped blocks wait: cpu (pinned memory on CUDA machines) or a device."
    )
    # VAE memory
    vae_enable_patch_conv: bool = Field(
        False,
        description="Run the VAE's causal 3D convolutions a few frames at a time while caching and "
        "decoding (same latents, lower peak memory, a little slower). LTX-Video, LTX-2, Kandinsky 5.",
    )
    vae_enable_temporal_roll: bool = Field(
        False,
        description="Encode clips through the whole VAE encoder a few latent frames at a time, carrying each "
        "causal convolution's last frames over (same latents, lowest peak, slower). LTX-Video, LTX-2.",
    )
    vae_enable_tiling: bool = Field(
        False,
        description="Encode and decode in overlapping spatial tiles blended at the seams (much lower peak "
        "memory; latents differ slightly, so they are cached apart).",
    )
    vae_enable_slicing: bool = Field(
        False, description="VAE one sample of a batch at a time (diffusers' enable_slicing)."
    )
    # sharding over several processes (FSDP2) and sequence sharding (context parallelism)
    fsdp_enable: bool = Field(
        False,
        description="Shard the transformer over the processes with PyTorch FSDP2 (fully_shard on each "
        "declared transformer block, then the root): each rank holds 1/N of the frozen weights, the LoRA "
        "and its optimizer state, and gathers a block's weights only for its forward and backward. DDP "
        "(every rank holds everything) stays the default.",
    )
    fsdp_version: Literal[1, 2] = Field(
        2, description="FSDP version: 2 (DTensor fully_shard). 1 is not built."
    )
    fsdp_reshard_after_forward: bool = Field(
        True,
        description="Free a block's gathered weights after its forward and gather them again for its "
        "backward (least memory); false keeps them until the backward (one all-gather less per block, more "
        "memory).",
    )
    fsdp_state_dict_type: Literal["SHARDED_STATE_DICT", "FULL_STATE_DICT"] = Field(
        "SHARDED_STATE_DICT",
        description="Checkpoints under FSDP2: SHARDED_STATE_DICT (each rank writes its shard with "
        "torch.distributed.checkpoint) or FULL_STATE_DICT (gathered onto rank 0 into one file). Either way "
        "the checkpoint also holds the whole LoRA. sharded / full are read as these.",
    )
    fsdp_cpu_ram_efficient_loading: bool = Field(
        False,
        description="Under FSDP2, only rank 0 reads the transformer's weights into host RAM; the other ranks "
        "build it on the meta device and receive their shards from rank 0 (one copy in host RAM instead of "
        "one per rank); a FULL_STATE_DICT resume is likewise read by rank 0 and broadcast.",
    )
    fsdp_auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP"] = Field(
        "TRANSFORMER_BASED_WRAP",
        description="What FSDP2 shards as one unit: the family's declared transformer blocks "
        "(TRANSFORMER_BASED_WRAP).",
    )
    context_parallel_size: int = Field(
        1, ge=1, description="Split each clip's token sequence over this many ranks (context parallelism)."
    )
    context_parallel_comm_strategy: Literal["allgather", "alltoall"] = Field(
        "allgather",
        description="Context parallelism's exchange: allgather (ring attention) or alltoall (Ulysses).",
    )
    # memory planner
    target_vram_gb: float | None = Field(
        None,
        gt=0,
        description="Device memory to fit in, GiB: `cinetune check` says whether the config's predicted peak "
        "fits, and `cinetune plan` proposes the cheapest settings that do.",
    )

    @field_validator("fsdp_state_dict_type", mode="before")
    @classmethod
    def _state_dict_type(cls, value: object) -> object:
        """sharded / full / SHARDED / sharded_state_dict: the spellings accelerate and the quickstarts use."""
        if isinstance(value, str):
            upper = value.strip().upper()
            return {"SHARDED": "SHARDED_STATE_DICT", "FULL": "FULL_STATE_DICT"}.get(upper, upper)
        return value
