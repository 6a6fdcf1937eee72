"""The tiny Kandinsky 5 transformer's architecture as plain data (no diffusers import), for the family's
flavour table and tiny.py."""

from __future__ import annotations

TINY_QWEN_DIM = 32
TINY_CLIP_DIM = 32
TINY_TRANSFORMER_CONFIG = {
    "in_visual_dim": 16,
    "out_visual_dim": 16,
    "in_text_dim": TINY_QWEN_DIM,
    "in_text_dim2": TINY_CLIP_DIM,
    "time_dim": 16,
    "patch_size": (1, 2, 2),
    "model_dim": 32,
    "ff_dim": 64,
    "num_text_blocks": 1,
    "num_visual_blocks": 2,
    "axes_dims": (2, 2, 4),
    "visual_cond": True,
    "attention_type": "regular",
}
