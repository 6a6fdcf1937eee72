"""Test helper: ltx-core modules' weights under the key prefixes of the released LTX-2 combined file."""

from __future__ import annotations

import torch


def combined_tensors(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The transformer (`dit`), video VAE (`encoder`, `decoder`, with random per-channel statistics set on
    both) and text connectors (`video_connector`, `audio_connector`) as the release file names them."""
    stats = {"mean-of-means": torch.randn(16) * 0.1, "std-of-means": torch.rand(16) + 0.5}
    for part in ("encoder", "decoder"):
        for name, value in stats.items():
            models[part].per_channel_statistics.get_buffer(name).copy_(value)
    tensors = {f"model.diffusion_model.{k}": v for k, v in models["dit"].state_dict().items()}
    for part in ("encoder", "decoder"):
        for key, value in models[part].state_dict().items():
            tensors["vae." + key if key.startswith("per_channel") else f"vae.{part}.{key}"] = value
    for part in ("video", "audio"):
        for key, value in models[f"{part}_connector"].state_dict().items():
            tensors[f"model.diffusion_model.{part}_embeddings_connector.{key}"] = value
    return tensors
