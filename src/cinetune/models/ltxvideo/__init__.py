"""LTX-Video 0.9.x on diffusers' LTXVideoTransformer3DModel / AutoencoderKLLTXVideo / LTXPipeline."""

from cinetune.models.ltxvideo.family import LTXVideoFamily

__all__ = ["LTXVideoFamily"]
