"""What the memory planner measures of a run without weights: the transformer built on the meta device.

The flavour's transformer is built from its architecture config on PyTorch's meta device (shapes and dtypes,
no storage: a 19B model costs nothing), LoRA is added as the run adds it, and one training forward pass runs
on inputs of the run's exact shapes, made by the family's own `training_inputs` from synthetic cached
tensors (as `cinetune bench` makes them). Autograd's saved-tensor hooks record every tensor kept for the
backward pass, by declared transformer block, deduplicated by storage; a hook on each block records the
tensors it receives (what gradient checkpointing keeps instead). Attention runs as the fused kernels run on a
GPU (flash / memory-efficient attention keep q, k, v, the output and one float per query row), not as the
meta device's math fallback, which would keep the whole attention matrix.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from cinetune.memory.residency import output_tensors

META = torch.device("meta")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True)
class Profile:
    """The transformer of a run, as measured on the meta device (counts in parameters, sizes in bytes)."""

    block_params: tuple[int, ...]  # frozen parameters of each declared block, forward order
    other_params: int  # frozen parameters outside the blocks
    lora_params: int
    saved_in_blocks: tuple[int, ...]  # bytes kept for backward inside each block (no checkpointing)
    saved_outside: int  # bytes kept for backward outside the blocks
    block_inputs: tuple[int, ...]  # bytes of the tensors each block receives
    tokens: int  # video tokens per sample
    compute_bytes: int  # bytes per value of the compute dtype

    @property
    def frozen_params(self) -> int:
        return sum(self.block_params) + self.other_params


class _FusedAttention(torch.autograd.Function):
    """Scaled dot-product attention as flash / memory-efficient kernels save it for backward."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        # The profile measures what forward saves and stops there; a backward through it is a misuse.
        raise RuntimeError("the memory profile's attention stand-in has no backward (forward only)")


@contextmanager
def _fused_attention() -> Any:
    """torch's SDPA and flex attention (Kandinsky's NABLA) on meta tensors, as the GPU kernels save."""
    import torch.nn.attention.flex_attention as flex

    originals = (torch.nn.functional.scaled_dot_product_attention, flex.flex_attention)

    def patched(original: Any) -> Any:
        @functools.wraps(original)
        def attention(
            query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kw: Any
        ) -> Any:
            if query.device.type != "meta":
                return original(query, key, value, *args, **kw)
            out = _FusedAttention.apply(query, key, value)
            return (out, out.new_empty(out.shape[:-1], dtype=torch.float32)) if kw.get("return_lse") else out

        return attention

    torch.nn.functional.scaled_dot_product_attention = patched(originals[0])
    flex.flex_attention = patched(originals[1])
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention, flex.flex_attention = originals


def _fresh_family(plan: Any) -> Any:
    """A family configured as the plan's, whose frozen helper modules (LTX-2's connectors) can be built on the
    meta device without touching the plan's own (already resolved: its warnings are not repeated)."""
    import logging

    from cinetune.models.registry import build_family

    cfg = plan.train
    root = logging.getLogger("cinetune")
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        family = build_family(cfg.model_family, cfg.model_flavour, cfg.pretrained_model_name_or_path)
        family.configure(cfg)
        if plan.data is not None:
            family.configure_datasets(plan.data)
    finally:
        root.setLevel(level)
    return family


@dataclass
class _Batch:
    """What a family's `training_inputs` reads of a batch (training.batches.Batch, a layer above)."""

    tensors: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]
    frame_rate: float
    use_std: bool = False

    @property
    def latents(self) -> torch.Tensor:
        return self.tensors["latents"]

    @property
    def latents_std(self) -> None:
        return None


@contextmanager
def _first_blocks(model: torch.nn.Module, family: Any, keep: int) -> Any:
    """Run the model with only the first `keep` blocks of each declared list (what is measured per block is
    the same for every repeat of a block), restoring the lists after; yields the kept blocks and each list's
    full length."""
    names = family.transformer_blocks
    full = {name: getattr(model, name) for name in names}
    try:
        for name in names:
            setattr(model, name, torch.nn.ModuleList(list(full[name])[:keep]))
        yield [b for name in names for b in getattr(model, name)], [len(full[name]) for name in names]
    finally:
        for name, blocks in full.items():
            setattr(model, name, blocks)


def _storage(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage._cdata, storage.nbytes()


def profile_transformer(
    plan: Any, width: int, height: int, frames: int, batch: int = 1, config: dict[str, Any] | None = None
) -> Profile:
    """Measure the plan's transformer (of `config`; default: the flavour's architecture) at (width, height,
    frames) x batch on the meta device."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg, family = plan.train, _fresh_family(plan)
    dtype = _DTYPES[cfg.mixed_precision]
    config = config or family.architecture_config()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(META):
            model = family.transformer_class.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    model = family.prepare_transformer(model)
    model.requires_grad_(False)
    if cfg.attention_backend != "native":
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        active = _AttentionBackendRegistry.get_active_backend()[0]
        model.set_attention_backend(cfg.attention_backend)  # e.g. NABLA's flex attention
        _AttentionBackendRegistry.set_active_backend(active)  # diffusers keeps one per process
    family.use_random_frozen_modules(META, dtype)
    frozen = sum(p.numel() for p in model.parameters())
    blocks = family.blocks(model)
    block_params = tuple(sum(p.numel() for p in b.parameters()) for b in blocks)
    lora_config = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules
    )
    # peft's own injection, with adapter weights left uninitialised (meta: their values do not matter)
    inject_adapter_in_model(lora_config, model, "default", low_cpu_mem_usage=True)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
        if "lora_" in name:
            param.data = param.data.to(dtype)  # see _measure: the trainer's fp32 LoRA under autocast
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.train()
    latents = [family.synthetic_latents(config, width, height, frames, cfg.frame_rate) for _ in range(batch)]
    text = [family.synthetic_caption(config, cfg.max_sequence_length) for _ in range(batch)]
    tensors = {key: torch.stack([item[key] for item in latents]) for key in latents[0]}
    inputs = family.training_inputs(
        _Batch(tensors=tensors, text=family.collate_text(text), frame_rate=cfg.frame_rate),
        torch.Generator().manual_seed(0),
        cfg.flow_sigma_sampler,
        META,
        dtype,
        model.config,
    )
    with _first_blocks(model, family, keep=2) as (kept, counts):
        saved, inputs_bytes = _measure(model, kept, inputs, autocast=dtype != torch.float32)
    # the repeated blocks keep the same tensors: the measured second block of each list stands for the rest
    per_block, per_input = [], []
    offset = 0
    for count in counts:
        measured = list(range(offset, offset + min(count, 2)))
        offset += len(measured)
        per_block += [saved[k] for k in measured] + [saved[measured[-1]]] * (count - len(measured))
        per_input += [inputs_bytes[k] for k in measured] + [inputs_bytes[measured[-1]]] * (
            count - len(measured)
        )
    saved = {**dict(enumerate(per_block)), -1: saved[-1]}
    inputs_bytes = per_input
    return Profile(
        block_params=block_params,
        other_params=frozen - sum(block_params),
        lora_params=lora,
        saved_in_blocks=tuple(saved[k] for k in range(len(blocks))),
        saved_outside=saved[-1],
        block_inputs=tuple(inputs_bytes),
        tokens=family.num_tokens(tensors["latents"].shape) // batch,
        compute_bytes=torch.empty((), dtype=dtype).element_size(),
    )


def _measure(
    model: torch.nn.Module, blocks: list[torch.nn.Module], inputs: list[Any], autocast: bool = False
) -> tuple[dict, list]:
    """Saved-for-backward bytes by block (-1: outside the blocks) and each block's input bytes, over the
    forward passes of one micro-batch.

    The trainer keeps LoRA weights in fp32 and trains under autocast: peft casts each LoRA layer's input to
    fp32 and autocast casts it back to the compute dtype for the matmul, which keeps that copy for backward.
    The profile runs LoRA in the compute dtype (no casts) and, with `autocast`, counts that one copy per LoRA
    layer from a hook on its input."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    current = [-1]
    saved: dict[int, dict[int, int]] = {k: {} for k in range(-1, len(blocks))}
    received = [0] * len(blocks)
    given: set[int] = set()
    handles = []
    for k, block in enumerate(blocks):

        def pre(module: Any, args: Any, kwargs: Any, k: int = k) -> None:
            current[0] = k
            tensors = output_tensors([*args, *kwargs.values()])  # RoPE comes as a (cos, sin) tuple
            for key, nbytes in {_storage(t) for t in tensors}:
                if key not in given:  # context, timestep embeddings, RoPE: the same tensors for every block
                    given.add(key)
                    received[k] += nbytes

        def post(module: Any, args: Any, output: Any) -> None:
            current[0] = -1

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post))

    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage(t)
        if key not in params and key not in seen:  # a storage kept by several ops counts once
            seen.add(key)
            saved[current[0]][key] = nbytes
        return t

    def cast_copy(module: Any, args: Any) -> None:
        x = args[0]
        saved[current[0]][-len(seen) - 1] = x.numel() * x.element_size()  # a storage of its own
        seen.add(-len(seen) - 1)

    if autocast:
        for name, module in model.named_modules():
            if ".lora_A." in name and isinstance(module, torch.nn.Linear):
                handles.append(module.register_forward_pre_hook(cast_copy))
    try:
        with _fused_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            for forward in inputs:
                model(**forward.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {k: sum(v.values()) for k, v in saved.items()}, received


@dataclass(frozen=True)
class VaeProfile:
    """The video VAE's encoder at one clip size, measured on the meta device (sizes in bytes)."""

    params: int
    largest_activation: int  # the largest tensor any of its modules produces while encoding


def profile_vae(
    class_name: str, width: int, height: int, frames: int, dtype: torch.dtype, config: dict | None = None
) -> VaeProfile:
    """The VAE of `config` (default: the diffusers class's own, the released architecture) encoding one clip
    on the meta device."""
    from cinetune.models.base import library_class

    cls = library_class(f"diffusers.{class_name}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(META):
            vae = cls.from_config(config) if config else cls()
    finally:
        torch.set_default_dtype(previous)
    largest = [0]

    def post(module: Any, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(post) for m in vae.encoder.modules()]
    try:
        with torch.no_grad():
            vae.encoder(torch.empty(1, 3, frames, height, width, device=META, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return VaeProfile(params=sum(p.numel() for p in vae.parameters()), largest_activation=largest[0])
