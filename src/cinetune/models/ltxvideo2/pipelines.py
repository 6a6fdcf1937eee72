"""Validation pipelines for LTX-2 (2.0 and 2.3): text-to-video, image-to-video, sound-to-video, all from
cached prompts.

The pipelines take `prompt_embeds` and run their `connectors` on them. Validation hands them the cached
projections (text.py) and, in the connectors slot, `CachedPromptConnectors`, which runs the frozen connector
blocks on those: the same context the pipeline computes from raw Gemma states, without Gemma.

Sound-to-video (an eval clip with audio): the clip's audio latents condition the video. The pipeline has no
such
mode, so a forward pre-hook on the transformer replaces the audio stream by the clean latents with timestep 0
at
every step (as a conditioning modality is fed in training: clean, timestep 0); the video written carries the
clip's own audio.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from cinetune.models.ltxvideo2.text import PROJ_KEY, run_connectors

# Validation samples with plain classifier-free guidance: no STG / modality guidance / rescale (the 2.3
# defaults of diffusers' pipeline, each one more transformer pass per step). Cross-attention timesteps:
# LTX-2.0 each stream's own, as it was trained; LTX-2.3 passes diffusers' 2.3 default (True), which the
# family's hook (av_timesteps.py) overrides with ltx-core's rule: scale/shift the stream's own timesteps,
# gates the other stream's sigma.
LTX2_0_CALL = {
    "use_cross_timestep": False,
    "stg_scale": 0.0,
    "audio_stg_scale": 0.0,
    "spatio_temporal_guidance_blocks": None,
    "modality_scale": 1.0,
    "audio_modality_scale": 1.0,
    "guidance_rescale": 0.0,
    "audio_guidance_rescale": 0.0,
}
LTX2_3_CALL = {**LTX2_0_CALL, "use_cross_timestep": True}


class CachedPromptConnectors(torch.nn.Module):
    """Stands in the pipelines' `connectors` slot: prompt_embeds are cached projections, not Gemma states."""

    def __init__(self, connectors: torch.nn.Module) -> None:
        super().__init__()
        self.inner = connectors

    @property
    def device(self) -> torch.device:  # DiffusionPipeline reads these from every component
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def forward(
        self, prompt_embeds: torch.Tensor, attention_mask: torch.Tensor, padding_side: str = "left", **_: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if padding_side != "left":
            raise ValueError("cached LTX-2 prompts are left-padded")
        video, audio, mask = run_connectors(
            self.inner, {PROJ_KEY: prompt_embeds, "prompt_attention_mask": attention_mask}
        )
        return video.to(prompt_embeds.dtype), audio.to(prompt_embeds.dtype), mask


def build(components: dict[str, Any], image: bool) -> Any:
    """A T2V or I2V pipeline without Gemma; `components` holds transformer, vae, audio_vae, vocoder,
    connectors
    (wrapped) and scheduler."""
    from diffusers import LTX2ImageToVideoPipeline, LTX2Pipeline

    cls = LTX2ImageToVideoPipeline if image else LTX2Pipeline
    pipe = cls(text_encoder=None, tokenizer=None, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def audio_conditioned(transformer: torch.nn.Module, tokens: torch.Tensor) -> Iterator[None]:
    """While active, every transformer call sees `tokens` (1, T, C) as a clean audio stream (timestep 0)."""

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        audio = kwargs["audio_hidden_states"]
        clean = tokens.to(audio.device, audio.dtype).expand(audio.shape[0], -1, -1)
        if clean.shape[1] != audio.shape[1]:
            raise ValueError(f"conditioning audio has {clean.shape[1]} tokens, the pipeline {audio.shape[1]}")
        zeros = torch.zeros(audio.shape[0], device=audio.device, dtype=kwargs["timestep"].dtype)
        kwargs.update(audio_hidden_states=clean, audio_timestep=zeros, audio_sigma=zeros)
        return args, kwargs

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
