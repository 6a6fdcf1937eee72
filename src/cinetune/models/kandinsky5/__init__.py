"""Kandinsky 5.0 Video on diffusers' Kandinsky5 transformer and pipelines and the HunyuanVideo VAE."""

from cinetune.models.kandinsky5.family import Kandinsky5VideoFamily

__all__ = ["Kandinsky5VideoFamily"]
