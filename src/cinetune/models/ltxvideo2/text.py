"""LTX-2 prompt encoding, cached compactly, and the frozen text connectors that turn the cache into context.

The pipeline's path is: Gemma3, left-padded to 1024 tokens with <bos> first -> all hidden states (embeddings +
every layer) stacked -> a per-token feature extractor -> the video and audio connectors (two 1-D transformer
stacks that move the real tokens to the front and fill the other positions with 128 learnable registers, so
their output has no padding left) -> the transformer.

The feature extractor differs between releases (diffusers' LTX2TextConnectors, ltx-core's
FeatureExtractorV1 / V2):
- LTX-2.0: per-sample, per-layer masked mean / range normalization, then one `text_proj_in` (3840 wide)
  feeding both connectors;
- LTX-2.3: per-token RMS normalization of each layer, rescaled by sqrt(stream width / Gemma width), then one
  projection per stream (`video_text_proj_in` to 4096, `audio_text_proj_in` to 2048).

Either way everything up to the connectors is a function of each real token alone (2.0's statistics are over
the real tokens only), and pads leave it as the projection of zero. So the cache keeps the projected real
tokens (n x 3840 for 2.0, n x (4096 + 2048) for 2.3: video then audio features side by side, instead of the
1024 x 188160 stacked hidden states), as the LTX-2 trainer caches its feature extractor's output;
`run_connectors` re-pads them to the same length and position and runs the frozen connectors, which gives
bit-for-bit the pipeline's context. Caching the connector *output* instead would cost 1024 x (video + audio
width) values per caption: it holds no padding to drop, because the registers fill every position.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

PROJ_KEY = "prompt_proj"  # cached per caption: (real tokens, projected features)


class PromptEncoder(torch.nn.Module):
    """Gemma3 and the connectors' input projection(s): what the text cache is built with (one module)."""

    def __init__(self, gemma: torch.nn.Module, connectors: LTX2TextConnectors) -> None:
        super().__init__()
        config = connectors.config
        self.gemma = gemma
        self.caption_channels = config.caption_channels
        self.per_modality = bool(config.per_modality_projections)
        if self.per_modality:
            self.video_text_proj_in = connectors.video_text_proj_in
            self.audio_text_proj_in = connectors.audio_text_proj_in
        else:
            self.text_proj_in = connectors.text_proj_in

    @property
    def projection_weight(self) -> torch.Tensor:
        """Where and in which dtype the features are computed."""
        return (self.video_text_proj_in if self.per_modality else self.text_proj_in).weight

    def project(self, stacked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stacked hidden states (B, L, D, layers), left-padded with `mask` (B, L) -> (B, L, cached width)."""
        from diffusers.pipelines.ltx2.connectors import per_layer_masked_mean_norm, per_token_rms_norm

        if not self.per_modality:
            normed = per_layer_masked_mean_norm(
                stacked, mask.sum(dim=-1), device=stacked.device, padding_side="left"
            )
            return self.text_proj_in(normed)
        normed = per_token_rms_norm(stacked).flatten(2, 3)
        parts = []
        for proj in (self.video_text_proj_in, self.audio_text_proj_in):
            parts.append(proj(normed * math.sqrt(proj.out_features / self.caption_channels)))
        return torch.cat(parts, dim=-1)


def make_prompt_encoder(gemma: torch.nn.Module, connectors: LTX2TextConnectors) -> PromptEncoder:
    """Keep only the projection(s) of the connectors: their blocks are not needed to build the cache."""
    return PromptEncoder(gemma, connectors)


def cached_width(transformer_config: dict) -> int:
    """Features per cached token for a transformer config: Gemma's width for LTX-2.0 (its caption projection
    is in the transformer); for LTX-2.3 the two streams' text widths, which its connectors produce."""
    if transformer_config.get("use_prompt_embeddings", True):
        return transformer_config["caption_channels"]
    return transformer_config["cross_attention_dim"] + transformer_config["audio_cross_attention_dim"]


@torch.no_grad()
def encode_prompts(
    tokenizer, encoder: PromptEncoder, captions: list[str], max_sequence_length: int
) -> list[dict[str, torch.Tensor]]:
    """Per caption {PROJ_KEY: (real tokens, features)}: LTX2Pipeline's input to its connector blocks."""
    weight = encoder.projection_weight
    device, dtype = weight.device, weight.dtype
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    inputs = tokenizer(
        [c.strip() for c in captions],
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    out = []
    # One caption at a time: the stacked states of one 1024-token caption are 385 MB in bf16 for LTX-2.
    for row_ids, row_mask in zip(inputs.input_ids, inputs.attention_mask, strict=True):
        ids, mask = row_ids[None].to(device), row_mask[None].to(device)
        hidden = encoder.gemma(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1
        ).hidden_states
        stacked = torch.stack(hidden, dim=-1).to(dtype)  # (1, L, D, layers)
        projected = encoder.project(stacked, mask)
        out.append({PROJ_KEY: projected[0, projected.shape[1] - int(mask.sum()) :].cpu()})
    return out


def collate_prompts(
    items: list[dict[str, torch.Tensor]], max_sequence_length: int
) -> dict[str, torch.Tensor]:
    """Left-pad cached real tokens back to the encoding length: (B, L, D) projections and the (B, L) mask."""
    dim = items[0][PROJ_KEY].shape[1]
    embeds = torch.zeros(len(items), max_sequence_length, dim, dtype=items[0][PROJ_KEY].dtype)
    mask = torch.zeros(len(items), max_sequence_length, dtype=torch.long)
    for i, item in enumerate(items):
        n = item[PROJ_KEY].shape[0]
        if n > max_sequence_length:
            raise ValueError(
                f"cached caption has {n} tokens, more than max_sequence_length={max_sequence_length}"
            )
        embeds[i, max_sequence_length - n :] = item[PROJ_KEY]
        mask[i, max_sequence_length - n :] = 1
    return {PROJ_KEY: embeds, "prompt_attention_mask": mask}


def _stream_inputs(
    connectors: LTX2TextConnectors, projected: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The video and audio connectors' inputs from collated projections; pads become the projection of zero
    (the bias), as the pipeline's zeroed pads project to."""
    config = connectors.config
    if config.per_modality_projections:
        widths = (config.video_hidden_dim, config.audio_hidden_dim)
        if projected.shape[-1] != sum(widths):
            raise ValueError(
                f"cached prompt features are {projected.shape[-1]} wide; these LTX-2.3 connectors take "
                f"{widths[0]} + {widths[1]}: the text cache was built for another model"
            )
        streams = projected.split(widths, dim=-1)
        projections = (connectors.video_text_proj_in, connectors.audio_text_proj_in)
    else:
        if projected.shape[-1] != config.caption_channels:
            raise ValueError(
                f"cached prompt features are {projected.shape[-1]} wide; these LTX-2.0 connectors take "
                f"{config.caption_channels}: the text cache was built for another model"
            )
        streams = (projected, projected)
        projections = (connectors.text_proj_in, connectors.text_proj_in)
    padded = []
    for stream, proj in zip(streams, projections, strict=True):
        pad = (
            proj.bias if proj.bias is not None else torch.zeros((), device=stream.device, dtype=stream.dtype)
        )
        padded.append(torch.where(keep, stream, pad))
    return padded[0], padded[1]


@torch.no_grad()
def run_connectors(
    connectors: LTX2TextConnectors, text: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collated projections -> (video context, audio context, context mask), as LTX2TextConnectors.forward."""
    param = next(connectors.parameters())
    projected = text[PROJ_KEY].to(param.device, param.dtype)
    mask = text["prompt_attention_mask"].to(param.device)
    video_in, audio_in = _stream_inputs(connectors, projected, mask.bool().unsqueeze(-1))
    additive = (mask.to(torch.int64) - 1).to(param.dtype).reshape(mask.shape[0], 1, -1, mask.shape[-1])
    additive = additive * torch.finfo(param.dtype).max
    video, video_mask = connectors.video_connector(video_in, additive)
    binary = (video_mask < 1e-6).to(torch.int64).reshape(video.shape[0], video.shape[1], 1)
    video = video * binary
    audio, _ = connectors.audio_connector(audio_in, additive)
    return video, audio, binary.squeeze(-1)
