"""The memory planner: predicted peak device memory and host RAM of a run, and the cheapest settings that fit.

`estimate` combines what `profile.py` measures on the meta device (parameters per declared block, tensors kept
for backward per block at the run's token count, what gradient checkpointing keeps instead) with the run's
settings:

- device, training: frozen weights resident on the device (by dtype or quantized storage; group offload keeps
  the blocks outside the blocks plus one or two groups, block swap all but N blocks plus two; FSDP2 over N
  ranks 1/N of the blocks plus the block gathered and the next one prefetched, or every block gathered at the
  end of the forward with fsdp_reshard_after_forward false) + LoRA (fp32
  weights, gradients and two AdamW states: 16 bytes per parameter) + activations (every block's saved
  tensors; with checkpointing 1 block in N keeps only its inputs and one block is recomputed at a time;
  FSDP2 shards the LoRA and its AdamW state too) +
  gradients in flight (twice the largest block input) + a fixed CUDA context and allocator margin;
- device, caching: the text encoder (its precision), then the VAE (weights + k x its largest activation,
  k calibrated on the CPU; patch convolution, temporal roll and tiling scale it);
- host RAM: the largest component loaded at once (one component and one shard: safetensors reads by tensor),
  the weights offloaded or swapped to host memory while training, plus the process's own baseline.

No weights and no network: the architecture is the flavour's config (as `cinetune bench` reads it). `propose`
walks settings from cheapest (fastest) to slowest and returns the first that fits a budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cinetune.memory.profile import Profile, VaeProfile
from cinetune.memory.quantize import BYTES_PER_WEIGHT

GIB = 2**30
HEADROOM = 0.9  # `propose` keeps 10% of the budget free: the estimate leaves out the allocator's transients
CUDA_CONTEXT = 0.75 * GIB  # CUDA context, kernels and allocator fragmentation: an assumed margin
HOST_BASELINE = 2.5 * GIB  # python, torch, diffusers, transformers imported; the cached batches
SHARD = 5 * GIB  # the largest safetensors shard diffusers writes (safe_open reads one tensor at a time)
LORA_BYTES = 16  # fp32 weight + fp32 gradient + AdamW exp_avg + exp_avg_sq
# The VAE's peak while encoding, in units of its largest activation (measured on the CPU: the full-size
# HunyuanVideo VAE 9 x 288 x 288 fp32, plain 6.5, patch convolution 5.5; the LTX VAEs 9.5 and 7.3).
VAE_PEAK_FACTOR = {"plain": 6.5, "patch_conv": 5.5}


@dataclass(frozen=True)
class TextEncoderSize:
    """A text encoder's parameters: all, the token embedding, outside its layers (a vision tower), layers."""

    params: float
    embedding: float
    other: float
    layers: int

    def on_device(self, offloaded: bool) -> float:
        """Parameters on the device while it encodes: all, or (group offload) what sits outside its layers
        plus the layer being run and the next."""
        if not offloaded:
            return self.params
        per_layer = (self.params - self.embedding - self.other) / self.layers
        return self.embedding + self.other + 2 * per_layer


# The released text encoders (their published configs: vocabulary x width, layers), by family and key.
TEXT_ENCODERS = {
    "ltxvideo": {"text_encoder_1": TextEncoderSize(4.762e9, 32128 * 4096, 0, 24)},  # T5 v1.1 XXL encoder
    "ltxvideo2": {"text_encoder_1": TextEncoderSize(12.19e9, 262208 * 3840, 0.42e9, 48)},  # Gemma 3 12B
    "kandinsky5-video": {
        "text_encoder_1": TextEncoderSize(8.29e9, 152064 * 3584, 0.676e9, 28),  # Qwen2.5-VL 7B
        "text_encoder_2": TextEncoderSize(0.123e9, 49408 * 768, 0, 12),  # CLIP ViT-L/14 text model
    },
}
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "no": 4}


@dataclass
class Estimate:
    """Predicted peaks in bytes, and where they come from."""

    device_train: float
    device_cache: float
    host: float
    device_parts: dict[str, float] = field(default_factory=dict)
    cache_parts: dict[str, float] = field(default_factory=dict)
    host_parts: dict[str, float] = field(default_factory=dict)
    ranks: int = 1  # FSDP2: the training figure is each rank's

    @property
    def device_peak(self) -> float:
        return max(self.device_train, self.device_cache)

    def lines(self) -> list[str]:
        def parts(values: dict[str, float]) -> str:
            return ", ".join(f"{name} {value / GIB:.2f}" for name, value in values.items() if value)

        where = "the device" if self.ranks == 1 else f"each of the {self.ranks} ranks' devices (FSDP2)"
        return [
            f"training: {self.device_train / GIB:.2f} GiB on {where} ({parts(self.device_parts)})",
            f"caching: {self.device_cache / GIB:.2f} GiB on the device ({parts(self.cache_parts)})",
            f"host RAM: {self.host / GIB:.2f} GiB at most ({parts(self.host_parts)})",
        ]


def _weight_bytes(precision: str, compute_bytes: int) -> float:
    if precision in BYTES_PER_WEIGHT:
        return BYTES_PER_WEIGHT[precision]
    return _DTYPE_BYTES.get(precision, compute_bytes)


def _resident_weights(cfg: Any, profile: Profile) -> tuple[float, float]:
    """(bytes of frozen weights on the device, bytes of frozen weights in host memory) while training."""
    per_block = _weight_bytes(cfg.base_model_precision, profile.compute_bytes)
    blocks = [n * per_block for n in profile.block_params]
    other = profile.other_params * profile.compute_bytes
    largest = max(blocks, default=0.0)
    total = sum(blocks) + other
    if cfg.enable_group_offload:
        streams = 2 if cfg.group_offload_use_stream else 1  # a prefetched group waits beside the current one
        group = largest * (
            cfg.group_offload_blocks_per_group if cfg.group_offload_type == "block_level" else 1
        )
        host = 0.0 if cfg.group_offload_to_disk_path is not None else total
        return other + streams * group, host
    if cfg.musubi_blocks_to_swap:
        swapped = sum(blocks[len(blocks) - min(cfg.musubi_blocks_to_swap, len(blocks)) :])
        return total - swapped + 2 * largest, swapped
    ranks = fsdp_ranks(cfg)
    if ranks > 1:
        if not cfg.fsdp_reshard_after_forward:  # every block stays gathered from its forward to its backward
            return total, 0.0
        # the root's own weights stay gathered; the block running and the next one (prefetched) are whole
        return other + sum(blocks) / ranks + 2 * largest, 0.0
    return total, 0.0


def fsdp_ranks(cfg: Any) -> int:
    """The ranks FSDP2 shards over: num_processes with fsdp_enable, else 1 (nothing is sharded)."""
    return cfg.num_processes if cfg.fsdp_enable else 1


def _activations(cfg: Any, profile: Profile, batch: int) -> tuple[float, float]:
    """(bytes kept for backward, bytes in flight during backward) for one micro-batch of `batch` samples."""
    saved, inputs = profile.saved_in_blocks, profile.block_inputs
    if not cfg.gradient_checkpointing:
        kept = sum(saved)
    else:
        every = cfg.gradient_checkpointing_interval
        checkpointed = [k for k in range(len(saved)) if k % every == 0]
        kept = sum(inputs[k] for k in checkpointed) + sum(s for k, s in enumerate(saved) if k % every)
        kept += max((saved[k] for k in checkpointed), default=0)  # the block being recomputed
    in_flight = 2 * max(inputs[1:] or inputs or [0])
    return (kept + profile.saved_outside) * batch, in_flight * batch


def estimate(
    cfg: Any,
    family_name: str,
    profile: Profile,
    vae: VaeProfile,
    *,
    batch: int = 1,
    frames: int = 49,
    text_encoders: dict[str, TextEncoderSize] | None = None,
) -> Estimate:
    """The run's predicted peaks (see the module docstring for what each term is)."""
    on_device, in_host = _resident_weights(cfg, profile)
    lora = profile.lora_params * LORA_BYTES / fsdp_ranks(cfg)
    kept, in_flight = _activations(cfg, profile, batch)
    device_parts = {
        "frozen weights": on_device,
        "LoRA + AdamW": lora,
        "activations": kept,
        "gradients in flight": in_flight,
        "CUDA context": CUDA_CONTEXT,
    }
    encoders = text_encoders if text_encoders is not None else TEXT_ENCODERS.get(family_name, {})
    text_peak = sum(
        size.on_device(cfg.enable_group_offload)
        * _weight_bytes(getattr(cfg, f"{key}_precision", "no_change"), profile.compute_bytes)
        for key, size in encoders.items()
    )
    vae_peak = vae.params * profile.compute_bytes + _vae_activations(cfg, vae, frames)
    cache_parts = {"text encoder": text_peak, "VAE": vae_peak, "CUDA context": CUDA_CONTEXT}
    loaded = max(  # components load in the compute dtype (then are quantized), one at a time
        profile.frozen_params * profile.compute_bytes,
        sum(size.params for size in encoders.values()) * profile.compute_bytes,
    )
    host_parts = {
        "largest component loaded": loaded + (SHARD if loaded > SHARD else 0),
        "weights waiting in host RAM": in_host,
        "process": HOST_BASELINE,
    }
    return Estimate(
        device_train=sum(device_parts.values()),
        device_cache=max(text_peak, vae_peak) + CUDA_CONTEXT,
        host=max(loaded, in_host) + HOST_BASELINE + (SHARD if loaded > SHARD else 0),
        device_parts=device_parts,
        cache_parts=cache_parts,
        host_parts=host_parts,
        ranks=fsdp_ranks(cfg),
    )


def _vae_activations(cfg: Any, vae: VaeProfile, frames: int) -> float:
    factor = VAE_PEAK_FACTOR["patch_conv" if cfg.vae_enable_patch_conv else "plain"]
    scale = 1.0
    if cfg.vae_enable_temporal_roll:
        scale *= min(1.0, 9 / max(frames, 1))  # one latent frame (1 + 8 frames) at a time
    if cfg.vae_enable_tiling:
        scale *= 0.25  # diffusers' default tiles cover about a quarter of a 768x512 frame with their overlap
    return factor * vae.largest_activation * scale


# ---- the cheapest settings that fit ----------------------------------------------------------------------
def candidates(num_blocks: int, quantized: bool, processes: int = 1) -> list[dict[str, Any]]:
    """Training settings from the fastest to the slowest (each adds to the one before). With several
    processes, FSDP2 comes before quantization: it changes no numerics (quantization, offload and swap do
    not combine with it, so the later steps go without it)."""
    steps: list[dict[str, Any]] = [{}, {"gradient_checkpointing": True}]
    base = {"gradient_checkpointing": True}
    if processes > 1:
        steps.append({**base, "fsdp_enable": True})
    if not quantized:
        steps.append({**base, "base_model_precision": "int8-quanto"})
        base = {**base, "base_model_precision": "int8-quanto"}
    swaps = sorted({n for n in (2, 4, 8, 12, 16, 24, 32, 40, 48) if n < num_blocks} | {num_blocks - 1})
    steps += [{**base, "musubi_blocks_to_swap": n} for n in swaps if n > 0]
    offload = {
        "enable_group_offload": True,
        "group_offload_type": "block_level",
        "group_offload_use_stream": True,
    }
    steps.append({**base, **offload, "group_offload_blocks_per_group": 1})
    steps.append({**base, **offload, "group_offload_type": "leaf_level"})
    steps.append(
        {**base, "base_model_precision": "int4-quanto", **offload, "group_offload_blocks_per_group": 1}
    )
    return steps


def cache_ladders(family_name: str, temporal_roll: bool) -> tuple[list[dict], list[dict]]:
    """Caching settings from the fastest to the slowest: for the VAE and for the text encoders (the two
    never sit on the device together, so each only has to fit on its own)."""
    vae: list[dict[str, Any]] = [{}, {"vae_enable_patch_conv": True}]
    if temporal_roll:
        vae.append({"vae_enable_patch_conv": True, "vae_enable_temporal_roll": True})
    vae.append({**vae[-1], "vae_enable_tiling": True})
    keys = list(TEXT_ENCODERS.get(family_name, {"text_encoder_1": None}))
    text = [{}] + [{f"{k}_precision": p for k in keys} for p in ("int8-quanto", "int4-quanto")]
    return vae, text


def propose(
    cfg: Any,
    family_name: str,
    profile: Profile,
    vae: VaeProfile,
    target_bytes: float,
    *,
    batch: int = 1,
    frames: int = 49,
    temporal_roll: bool = False,
    text_encoders: dict[str, TextEncoderSize] | None = None,
) -> tuple[dict[str, Any], Estimate] | None:
    """The first training settings (then caching settings) whose predicted peaks fit HEADROOM x
    `target_bytes`, or None when none does."""
    target_bytes *= HEADROOM
    quantized = cfg.base_model_precision in BYTES_PER_WEIGHT
    train_change = None
    processes = 1 if cfg.fsdp_enable else cfg.num_processes
    for change in candidates(len(profile.block_params), quantized, processes):
        trial = cfg.model_copy(update=change)
        result = estimate(
            trial, family_name, profile, vae, batch=batch, frames=frames, text_encoders=text_encoders
        )
        if result.device_train <= target_bytes:
            train_change = change
            break
    if train_change is None:
        return None
    chosen = dict(train_change)
    for ladder, part in zip(cache_ladders(family_name, temporal_roll), ("VAE", "text encoder"), strict=True):
        for step in ladder:
            trial = cfg.model_copy(update={**chosen, **step})
            result = estimate(
                trial, family_name, profile, vae, batch=batch, frames=frames, text_encoders=text_encoders
            )
            if result.cache_parts[part] + CUDA_CONTEXT <= target_bytes:
                chosen.update(step)
                break
        else:
            return None
    trial = cfg.model_copy(update=chosen)
    return chosen, estimate(
        trial, family_name, profile, vae, batch=batch, frames=frames, text_encoders=text_encoders
    )
