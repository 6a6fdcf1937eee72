"""LTX-2 (audio + video) on diffusers' LTX2VideoTransformer3DModel / AutoencoderKLLTX2Video / LTX2Pipeline."""

from cinetune.models.ltxvideo2.family import LTX2Family

__all__ = ["LTX2Family"]
