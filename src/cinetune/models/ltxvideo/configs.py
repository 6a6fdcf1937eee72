"""LTX-Video transformer architectures as plain data (no diffusers import): the releases and the tiny one."""

from __future__ import annotations

# diffusers' conversion script configs: 2B for 0.9.0-0.9.5, 13B from 0.9.7.
ARCH_2B = {
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 64,
    "cross_attention_dim": 2048,
    "num_layers": 28,
    "caption_channels": 4096,
}
ARCH_13B = {
    **ARCH_2B,
    "attention_head_dim": 128,
    "cross_attention_dim": 4096,
    "num_layers": 48,
    "attention_bias": True,
    "attention_out_bias": True,
}

TINY_LATENT_CHANNELS = 16
TINY_TEXT_DIM = 32
TINY_TRANSFORMER_CONFIG = {
    "in_channels": TINY_LATENT_CHANNELS,
    "out_channels": TINY_LATENT_CHANNELS,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 4,
    "attention_head_dim": 8,
    "cross_attention_dim": 32,
    "num_layers": 2,
    "caption_channels": TINY_TEXT_DIM,
}
