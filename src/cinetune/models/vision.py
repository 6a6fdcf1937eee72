"""Frozen vision features of training clips for CREPA, from transformers' DINOv2 (`Dinov2Model`).

`crepa_model` is a torch-hub style name (`dinov2_vits14`, `dinov2_vitb14`, `dinov2_vitl14`, `dinov2_vitg14`,
mapped to the facebook/dinov2-* repos), a hub id or a local folder. One feature map per latent frame: the
pixel frames at linspace(0, T - 1, F) (F latent frames of T pixel frames, as SimpleTuner's CREPA aligns
them), resized to `crepa_encoder_image_size` squared (bilinear), normalized with ImageNet's mean and std as
DINOv2 was trained, and encoded; the features are the normalized patch tokens (the last hidden state without
the CLS token), (F, P, D) with P = (size / 14)^2. The cache stores them with the clip's latents.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cinetune.errors import ConfigError

logger = logging.getLogger(__name__)
DINOV2_REPOS = {
    "dinov2_vits14": "facebook/dinov2-small",
    "dinov2_vitb14": "facebook/dinov2-base",
    "dinov2_vitl14": "facebook/dinov2-large",
    "dinov2_vitg14": "facebook/dinov2-giant",
}
# hidden_size of each repo's config.json: the projector is sized without reading the hub (cinetune check,
# bench); any other source's config is read.
DINOV2_WIDTHS = {
    "facebook/dinov2-small": 384,
    "facebook/dinov2-base": 768,
    "facebook/dinov2-large": 1024,
    "facebook/dinov2-giant": 1536,
}
PATCH_SIZE = 14
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def dinov2_source(name: str) -> str:
    return DINOV2_REPOS.get(name, name)


class FrameFeatures:
    """What the latent cache needs to add vision features to its entries."""

    def __init__(self, model: str, image_size: int) -> None:
        self.source = dinov2_source(model)
        self.image_size = image_size

    @property
    def identity(self) -> dict[str, Any]:
        """The cache-key fields of the features (a local folder: its config file's size and mtime too)."""
        fields: dict[str, Any] = {"model": self.source, "size": self.image_size, "tokens": "patch"}
        config = Path(self.source) / "config.json"
        if config.is_file():
            stat = config.stat()
            fields["config"] = [stat.st_size, stat.st_mtime_ns]
        return fields

    def width(self) -> int:
        """The features' width (the DINOv2 hidden size), from its config alone."""
        from transformers import Dinov2Config

        if self.source in DINOV2_WIDTHS:
            return DINOV2_WIDTHS[self.source]
        try:
            return int(Dinov2Config.from_pretrained(self.source).hidden_size)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"crepa_model '{self.source}': no DINOv2 config there ({str(exc).splitlines()[0]})"
            ) from exc

    def patches(self) -> int:
        """Feature tokens per frame: the (size / patch)^2 grid."""
        return (self.image_size // PATCH_SIZE) ** 2

    def load(self, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import Dinov2Model

        try:
            model = Dinov2Model.from_pretrained(self.source, torch_dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"crepa_model '{self.source}': cannot load a DINOv2 model ({str(exc).splitlines()[0]})"
            ) from exc
        patch = model.config.patch_size
        if self.image_size % patch:
            raise ConfigError(
                f"crepa_encoder_image_size {self.image_size}: not a multiple of the DINOv2 patch size {patch}"
            )
        return model.requires_grad_(False).eval()

    @torch.no_grad()
    def encode(self, model: torch.nn.Module, pixels: torch.Tensor, latent_frames: int) -> torch.Tensor:
        """pixels (3, T, H, W) in [-1, 1] -> (latent_frames, P, D) patch features."""
        frames = pixels.shape[1]
        picks = torch.linspace(0, frames - 1, latent_frames).long()
        param = next(model.parameters())
        images = ((pixels[:, picks].permute(1, 0, 2, 3).float() + 1) / 2).to(param.device)
        images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        mean = torch.tensor(_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(_STD, device=images.device).view(1, 3, 1, 1)
        hidden = model(pixel_values=((images - mean) / std).to(param.dtype)).last_hidden_state
        return hidden[:, 1:].float().cpu()
