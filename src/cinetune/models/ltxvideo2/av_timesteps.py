"""LTX-2.3's audio <-> video cross-attention modulation as ltx-core computes it since 1.1.4, on diffusers'
LTX2VideoTransformer3DModel.

Each block's A/V cross-attention is modulated by global AdaLN outputs of each stream: a scale/shift and a
gate. ltx-core from 1.1.4 (Lightricks called the earlier wiring a bug; ComfyUI PR #14097) conditions a
stream's scale/shift on its OWN per-token timesteps (0 on a clean first frame) and only its gate on the OTHER
stream's sigma, times the A/V factor cross_attn_timestep_scale_multiplier / timestep_scale_multiplier.
ltx-core 1.0.0 fed the other stream's sigma to both. diffusers 0.42.1 feeds one value to both as well: each
stream's own timesteps with `use_cross_timestep=False`, the other stream's sigma with True (what LTX2Pipeline
passes).

`apply_av_cross_timesteps(transformer)` gives the transformer the fixed rule, whatever `use_cross_timestep` a
caller passes, with diffusers' hook machinery: a hook on the transformer holds the call's `timestep`,
`audio_timestep`, `sigma` and `audio_sigma` (passed pre-scaled x1000, as diffusers takes them) while the call
runs, and a hook on each of the four AdaLN modules replaces the timestep they are called with:

    av_cross_attn_video_scale_shift  <- timestep          (video, per token when the call gives it per token)
    av_cross_attn_audio_scale_shift  <- audio_timestep
    av_cross_attn_video_a2v_gate     <- audio_sigma x factor
    av_cross_attn_audio_v2a_gate     <- sigma x factor

The hooks sit on the modules themselves (HookRegistry replaces their `forward`), so they hold under peft's
LoRA layers (injected below them), DDP / accelerate wrappers (which call the module) and gradient
checkpointing (the four AdaLN modules run once per forward, outside the checkpointed blocks). Applying
twice changes nothing. LTX-2.0 is not hooked: it was trained with each stream's own timesteps
(`use_cross_timestep=False`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.hooks import HookRegistry, ModelHook

HOOK_NAME = "cinetune_ltx2_3_av_cross_timesteps"
ADALN_MODULES = (
    "av_cross_attn_video_scale_shift",
    "av_cross_attn_audio_scale_shift",
    "av_cross_attn_video_a2v_gate",
    "av_cross_attn_audio_v2a_gate",
)
_FORWARD = inspect.signature(LTX2VideoTransformer3DModel.forward)


def cross_timesteps(
    timestep: torch.Tensor,
    audio_timestep: torch.Tensor | None,
    sigma: torch.Tensor | None,
    audio_sigma: torch.Tensor | None,
    factor: float,
) -> dict[str, torch.Tensor]:
    """What each A/V cross-attention AdaLN module takes under the fixed rule, from a transformer call's
    arguments (defaults as the transformer's: audio_timestep = timestep, audio_sigma = sigma)."""
    if sigma is None:
        raise ValueError(
            "the LTX-2.3 A/V cross-attention gates take the other stream's sigma: pass `sigma` (and "
            "`audio_sigma`) to the transformer, pre-scaled x1000 as `timestep`"
        )
    audio_timestep = timestep if audio_timestep is None else audio_timestep
    audio_sigma = sigma if audio_sigma is None else audio_sigma
    return {
        "av_cross_attn_video_scale_shift": timestep.flatten(),
        "av_cross_attn_audio_scale_shift": audio_timestep.flatten(),
        "av_cross_attn_video_a2v_gate": audio_sigma.flatten() * factor,
        "av_cross_attn_audio_v2a_gate": sigma.flatten() * factor,
    }


class _CallTimesteps(ModelHook):
    """On the transformer: the four AdaLN inputs of the call in progress (None outside a call)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.current: dict[str, torch.Tensor] | None = None

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        bound = _FORWARD.bind_partial(module, *args, **kwargs).arguments
        previous = self.current
        self.current = cross_timesteps(
            bound["timestep"],
            bound.get("audio_timestep"),
            bound.get("sigma"),
            bound.get("audio_sigma"),
            self.factor,
        )
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.current = previous


class _CrossTimestep(ModelHook):
    """On one A/V cross-attention AdaLN module: its timestep replaced by the fixed rule's."""

    def __init__(self, call: _CallTimesteps, name: str) -> None:
        super().__init__()
        self.call = call
        self.name = name

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        if self.call.current is None:  # called on its own, not by the transformer: left as it is
            return args, kwargs
        timestep = self.call.current[self.name]
        if args:
            return (timestep, *args[1:]), kwargs
        return args, {**kwargs, "timestep": timestep}


def _unwrapped(transformer: torch.nn.Module) -> torch.nn.Module:
    while hasattr(transformer, "module") and isinstance(transformer.module, torch.nn.Module):  # DDP
        transformer = transformer.module
    return transformer


def has_av_cross_timesteps(transformer: torch.nn.Module) -> bool:
    model = _unwrapped(transformer)
    registry = getattr(model, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(HOOK_NAME) is not None


def apply_av_cross_timesteps(transformer: torch.nn.Module) -> torch.nn.Module:
    """Hook an LTX-2.3 transformer (or a DDP wrapper of one) to the fixed A/V cross-attention timesteps;
    returns it. A transformer already hooked is left as it is."""
    model = _unwrapped(transformer)
    if has_av_cross_timesteps(model):
        return transformer
    config = model.config
    call = _CallTimesteps(config.cross_attn_timestep_scale_multiplier / config.timestep_scale_multiplier)
    HookRegistry.check_if_exists_or_initialize(model).register_hook(call, HOOK_NAME)
    for name in ADALN_MODULES:
        registry = HookRegistry.check_if_exists_or_initialize(getattr(model, name))
        registry.register_hook(_CrossTimestep(call, name), HOOK_NAME)
    return transformer


def remove_av_cross_timesteps(transformer: torch.nn.Module) -> None:
    """Back to diffusers' own wiring (`use_cross_timestep` decides)."""
    model = _unwrapped(transformer)
    if has_av_cross_timesteps(model):
        model._diffusers_hook.remove_hook(HOOK_NAME, recurse=True)
