"""Tiny random LTX-Video components built from the real diffusers/transformers classes.

The VAE keeps the real compression (32x spatial, 8x temporal: patch 4 and three spatio-temporal
downsamplings), so the tiny model obeys the same frame rule (8k+1) and spatial multiple (32) as the
released ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLLTXVideo,
    FlowMatchEulerDiscreteScheduler,
    LTXConditionPipeline,
    LTXPipeline,
    LTXVideoTransformer3DModel,
)
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from cinetune.models.base import keeps_global_rng
from cinetune.models.ltxvideo.configs import (
    TINY_LATENT_CHANNELS,
    TINY_TEXT_DIM,
    TINY_TRANSFORMER_CONFIG,
)

_WORDS = (
    "a an the of in on at with and to is are video clip shot scene person man woman child dog cat bird car "
    "tree sky sea water city street room light dark red blue green yellow white black walks runs jumps "
    "flies sits stands looks slowly quickly camera pans zooms close up wide view sunset night day rain snow"
).split()


def tiny_tokenizer() -> T5Tokenizer:
    """A unigram T5 tokenizer built offline: whole words plus single letters, so any text tokenizes."""
    pieces = (
        ["<pad>", "</s>", "<unk>"] + [f"▁{w}" for w in _WORDS] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    )
    vocab = [(piece, -float(i)) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


@keeps_global_rng
def ltx_scheduler(dynamic_shifting: bool = True) -> FlowMatchEulerDiscreteScheduler:
    """The LTX schedules: dynamic shift 0.95 -> 2.05 over 1024 -> 4096 tokens with terminal 0.1 (LTX-Video
    0.9.0 / 0.9.1 and LTX-2.0 inference), or the static shift 1 of the later LTX-Video conversions."""
    if not dynamic_shifting:
        return FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False, shift=1.0)
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )


def tiny_components(seed: int = 0, dynamic_shifting: bool = True) -> dict:
    """Fresh tiny components with deterministic random weights (the keys of LTXPipeline).

    dynamic_shifting=False gives the scheduler diffusers converts 0.9.5 and later with (static shift 1), the
    only kind LTXConditionPipeline can sample with (it sets its own sigma grid and passes no `mu`)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=TINY_TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    transformer = LTXVideoTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
    vae = AutoencoderKLLTXVideo(
        latent_channels=TINY_LATENT_CHANNELS,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    # Non-trivial per-channel statistics, so tests catch a missing or inverted normalization.
    generator = torch.Generator().manual_seed(seed + 1)
    vae.latents_mean.copy_(torch.randn(TINY_LATENT_CHANNELS, generator=generator) * 0.1)
    vae.latents_std.copy_(torch.rand(TINY_LATENT_CHANNELS, generator=generator) * 0.5 + 0.75)
    scheduler = ltx_scheduler(dynamic_shifting)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def save_tiny_checkpoint(folder: Path, seed: int = 0, pipeline_class: type = LTXPipeline) -> Path:
    """Write a tiny LTX-Video pipeline in the real diffusers folder layout (model_index.json + subfolders).

    pipeline_class=LTXConditionPipeline writes a 0.9.7 / 0.9.8-style folder: model_index.json names that
    pipeline and the scheduler has a static shift. The weights are the same for a given seed either way."""
    components = tiny_components(seed, dynamic_shifting=pipeline_class is not LTXConditionPipeline)
    pipeline_class(**components).save_pretrained(folder)
    return folder
