"""LTX-2 prompt encoding, cached compactly, and the frozen text connectors that turn the cache into context.

The pipeline's path is: Gemma3, left-padded to 1024 tokens with <bos> first -> all hidden states (embeddings +
every layer) stacked -> per-sample, per-layer masked normalization -> `text_proj_in` (one Linear per token) ->
the video and audio connectors (two 1-D transformer stacks that move the real tokens to the front and fill the
other positions with 128 learnable registers, so their output has no padding left) -> the transformer.

Everything up to `text_proj_in` is a per-token function of the real tokens only, and pads leave it as the
projection of zero. So the cache keeps the projected real tokens (n x 3840 for LTX-2.0, instead of the 1024 x
188160 stacked hidden states); `run_connectors` re-pads them to the same length and position and runs the
frozen
connectors, which gives bit-for-bit the pipeline's context. Caching the connector *output* instead would cost
2 x 1024 x 3840 values per caption: it holds no padding to drop, because the registers fill every position.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.connectors import per_layer_masked_mean_norm

PROJ_KEY = "prompt_proj"  # cached per caption: (real tokens, caption_channels)


class PromptEncoder(torch.nn.Module):
    """Gemma3 and the connectors' input projection: what the text cache is built with (one module to move)."""

    def __init__(self, gemma: torch.nn.Module, text_proj_in: torch.nn.Linear, caption_channels: int) -> None:
        super().__init__()
        self.gemma = gemma
        self.text_proj_in = text_proj_in
        self.caption_channels = caption_channels


def check_v1(connectors: LTX2TextConnectors) -> None:
    if connectors.config.per_modality_projections:
        from cinetune.errors import NotSupportedYet

        raise NotSupportedYet(
            "these text connectors use per-modality projections (LTX-2.3): not supported yet; "
            "use an LTX-2.0 checkpoint (model_flavour 2.0)"
        )


def make_prompt_encoder(gemma: torch.nn.Module, connectors: LTX2TextConnectors) -> PromptEncoder:
    """Keep only the projection of the connectors: their blocks are not needed to build the cache."""
    check_v1(connectors)
    return PromptEncoder(gemma, connectors.text_proj_in, connectors.config.caption_channels)


@torch.no_grad()
def encode_prompts(
    tokenizer, encoder: PromptEncoder, captions: list[str], max_sequence_length: int
) -> list[dict[str, torch.Tensor]]:
    """Per caption {PROJ_KEY: (real tokens, caption_channels)}: LTX2Pipeline's input to its connectors."""
    param = next(encoder.text_proj_in.parameters())
    device = param.device
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
    # One caption at a time: the stacked states of one 1024-token caption are 385 MB in bf16 for LTX-2.0.
    for row_ids, row_mask in zip(inputs.input_ids, inputs.attention_mask, strict=True):
        ids, mask = row_ids[None].to(device), row_mask[None].to(device)
        hidden = encoder.gemma(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1
        ).hidden_states
        stacked = torch.stack(hidden, dim=-1).to(param.dtype)  # (1, L, D, layers)
        normed = per_layer_masked_mean_norm(stacked, mask.sum(dim=-1), device=device, padding_side="left")
        projected = encoder.text_proj_in(normed)
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


@torch.no_grad()
def run_connectors(
    connectors: LTX2TextConnectors, text: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collated projections -> (video context, audio context, context mask), as LTX2TextConnectors.forward.

    Pads are set to the projection of zero (what the pipeline's zeroed pads project to) before the blocks.
    """
    param = next(connectors.parameters())
    projected = text[PROJ_KEY].to(param.device, param.dtype)
    mask = text["prompt_attention_mask"].to(param.device)
    bias = connectors.text_proj_in.bias
    pad_value = bias if bias is not None else torch.zeros((), device=param.device, dtype=param.dtype)
    projected = torch.where(mask.bool().unsqueeze(-1), projected, pad_value)
    additive = (mask.to(torch.int64) - 1).to(param.dtype).reshape(mask.shape[0], 1, -1, mask.shape[-1])
    additive = additive * torch.finfo(param.dtype).max
    video, video_mask = connectors.video_connector(projected, additive)
    binary = (video_mask < 1e-6).to(torch.int64).reshape(video.shape[0], video.shape[1], 1)
    video = video * binary
    audio, _ = connectors.audio_connector(projected, additive)
    return video, audio, binary.squeeze(-1)
