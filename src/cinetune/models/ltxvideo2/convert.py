"""The LTX-2 combined checkpoint, component by component: original key names -> diffusers, configs from
metadata.

The released files (`ltx-2-19b-dev.safetensors` for LTX-2.0, `ltx-2.3-22b-dev.safetensors` for LTX-2.3)
hold every component under a key prefix and the original (ltx-core) configuration as JSON in the safetensors
metadata (`config`). Each component is converted alone: `component_keys` picks its keys, `to_diffusers_key`
renames them, configs.py builds the diffusers config from the metadata and the tensor shapes. Missing metadata
values take ltx-core's defaults (the reference implementation reading the same file).

LTX-2.3 adds no new prefixes: its gated attention (`to_gate_logits`), per-block `prompt_scale_shift_table`
and the text connectors' gates keep their names, `prompt_adaln_single` becomes `prompt_adaln`, the
per-modality text projections (`video_aggregate_embed`, `audio_aggregate_embed`) become `video_text_proj_in`
/ `audio_text_proj_in`, and the vocoder with bandwidth extension nests the old names under `vocoder.` /
`bwe_generator.` beside the `mel_stft.` buffers (BigVGAN-v2 anti-aliased activations: `act_post` ->
`act_out`, `downsample.lowpass.filter` -> `downsample.filter`).

Renames work on whole dotted segments, so a short name never rewrites part of a longer one
(`adaln_single` inside `av_ca_a2v_gate_adaln_single`).
"""

from __future__ import annotations

import re
from typing import Any

TRANSFORMER_PREFIX = "model.diffusion_model."
VIDEO_CONNECTOR_PREFIX = TRANSFORMER_PREFIX + "video_embeddings_connector."
AUDIO_CONNECTOR_PREFIX = TRANSFORMER_PREFIX + "audio_embeddings_connector."
TEXT_PROJECTION_PREFIX = "text_embedding_projection."
COMPONENT_PREFIXES = {"vae": "vae.", "audio_vae": "audio_vae.", "vocoder": "vocoder."}

# diffusers -> original names of transformer modules (the inverse is used to load, this one to export LoRAs).
TRANSFORMER_RENAMES: dict[str, str] = {
    "proj_in": "patchify_proj",
    "audio_proj_in": "audio_patchify_proj",
    "time_embed": "adaln_single",
    "audio_time_embed": "audio_adaln_single",
    "prompt_adaln": "prompt_adaln_single",
    "audio_prompt_adaln": "audio_prompt_adaln_single",
    "norm_q": "q_norm",
    "norm_k": "k_norm",
    "av_cross_attn_video_scale_shift": "av_ca_video_scale_shift_adaln_single",
    "av_cross_attn_video_a2v_gate": "av_ca_a2v_gate_adaln_single",
    "av_cross_attn_audio_scale_shift": "av_ca_audio_scale_shift_adaln_single",
    "av_cross_attn_audio_v2a_gate": "av_ca_v2a_gate_adaln_single",
    "video_a2v_cross_attn_scale_shift_table": "scale_shift_table_a2v_ca_video",
    "audio_a2v_cross_attn_scale_shift_table": "scale_shift_table_a2v_ca_audio",
}
CONNECTOR_RENAMES = {"transformer_blocks": "transformer_1d_blocks", "norm_q": "q_norm", "norm_k": "k_norm"}
VOCODER_RENAMES = {
    "upsamplers": "ups",
    "resnets": "resblocks",
    "conv_in": "conv_pre",
    "conv_out": "conv_post",
    "act_out": "act_post",
}
# The video decoder's own timestep conditioning (top level of `decoder.` only; its blocks keep their names).
_DECODER_RENAMES = {"time_embedder": "last_time_embedder", "scale_shift_table": "last_scale_shift_table"}
_STATS = {
    "latents_mean": "per_channel_statistics.mean-of-means",
    "latents_std": "per_channel_statistics.std-of-means",
}
_PROJECTIONS = {
    "text_proj_in": "aggregate_embed",
    "video_text_proj_in": "video_aggregate_embed",
    "audio_text_proj_in": "audio_aggregate_embed",
}


def rename_segments(key: str, renames: dict[str, str]) -> str:
    return ".".join(renames.get(part, part) for part in key.split("."))


def _inverse(renames: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in renames.items()}


# ---- which keys belong to which component ------------------------------------------------------------------
def component_keys(keys: list[str], component: str) -> list[str]:
    """The checkpoint keys of one component: transformer, connectors, vae, audio_vae or vocoder."""
    if component == "transformer":
        return [
            k
            for k in keys
            if k.startswith(TRANSFORMER_PREFIX)
            and not k.startswith((VIDEO_CONNECTOR_PREFIX, AUDIO_CONNECTOR_PREFIX))
        ]
    if component == "connectors":
        return [
            k
            for k in keys
            if k.startswith((VIDEO_CONNECTOR_PREFIX, AUDIO_CONNECTOR_PREFIX, TEXT_PROJECTION_PREFIX))
        ]
    prefix = COMPONENT_PREFIXES[component]
    return [k for k in keys if k.startswith(prefix)]


# ---- key conversion --------------------------------------------------------------------------------------
def to_diffusers_key(key: str, component: str, encoder_depth: int = 9) -> str | None:
    """Original checkpoint key -> diffusers state-dict key of the component (None: not part of the model).

    encoder_depth: number of original video-encoder blocks (the last one is diffusers' mid block).
    """
    if component == "transformer":
        return rename_segments(key.removeprefix(TRANSFORMER_PREFIX), _inverse(TRANSFORMER_RENAMES))
    if component == "connectors":
        return _connector_key(key)
    if component == "vae":
        return _video_vae_key(key.removeprefix("vae."), encoder_depth)
    if component == "audio_vae":
        return _stats_key(key.removeprefix("audio_vae."))
    if component == "vocoder":
        return _vocoder_key(key.removeprefix("vocoder."))
    raise ValueError(f"unknown component {component}")


def _connector_key(key: str) -> str:
    if key.startswith(TEXT_PROJECTION_PREFIX):
        name, _, rest = key.removeprefix(TEXT_PROJECTION_PREFIX).partition(".")
        return f"{_inverse(_PROJECTIONS)[name]}.{rest}"
    for prefix, target in (
        (VIDEO_CONNECTOR_PREFIX, "video_connector."),
        (AUDIO_CONNECTOR_PREFIX, "audio_connector."),
    ):
        if key.startswith(prefix):
            return target + rename_segments(key.removeprefix(prefix), _inverse(CONNECTOR_RENAMES))
    raise ValueError(f"not a connector key: {key}")


def _vocoder_key(key: str) -> str:
    """Original vocoder key -> diffusers. ltx-core's anti-aliasing DownSample1d keeps its filter in a
    LowPassFilter1d child (`lowpass`), diffusers' holds it itself."""
    parts = rename_segments(key, _inverse(VOCODER_RENAMES)).split(".")
    kept = [p for i, p in enumerate(parts) if not (p == "lowpass" and i > 0 and parts[i - 1] == "downsample")]
    return ".".join(kept)


def _vocoder_original(key: str) -> str:
    parts = rename_segments(key, VOCODER_RENAMES).split(".")
    out: list[str] = []
    for i, part in enumerate(parts):
        out.append(part)
        if part == "downsample" and parts[i + 1 : i + 2] == ["filter"]:
            out.append("lowpass")
    return "vocoder." + ".".join(out)


def _stats_key(key: str) -> str | None:
    for name, original in _STATS.items():
        if key == original:
            return name
    if key.startswith("per_channel_statistics."):
        return None  # mean-of-stds, channel: unused by diffusers
    return key


def _video_vae_key(key: str, encoder_depth: int) -> str | None:
    """Original blocks alternate resnet stacks and resamplers; diffusers groups each pair into one block.

    encoder.down_blocks.{2j} -> down_blocks.{j} (resnets), {2j+1} -> down_blocks.{j}.downsamplers.0, the last
    stack -> mid_block. decoder.up_blocks.0 -> mid_block, {2j+1} -> up_blocks.{j}.upsamplers.0,
    {2j+2} -> up_blocks.{j}.
    """
    key = _stats_key(key)
    if key is None:
        return None
    key = rename_segments(key, {"res_blocks": "resnets"})
    head, _, rest = key.partition(".")
    if head == "decoder":
        name, dot, tail = rest.partition(".")
        key = f"decoder.{_inverse(_DECODER_RENAMES).get(name, name)}{dot}{tail}"
    match = re.match(r"^(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(.*)$", key)
    if not match:
        return key
    where, index, rest = match.group(1), int(match.group(2)), match.group(3)
    if where.startswith("encoder"):
        return f"encoder.{_encoder_block(index, rest, encoder_depth)}"
    return f"decoder.{_decoder_block(index, rest)}"


def _encoder_block(index: int, rest: str, depth: int) -> str:
    if index == depth - 1:
        return f"mid_block.{rest}"
    if index % 2 == 0:
        return f"down_blocks.{index // 2}.{rest}"
    return f"down_blocks.{index // 2}.downsamplers.0.{rest}"


def _decoder_block(index: int, rest: str) -> str:
    if index == 0:
        return f"mid_block.{rest}"
    if index % 2 == 1:
        return f"up_blocks.{(index - 1) // 2}.upsamplers.0.{rest}"
    return f"up_blocks.{(index - 2) // 2}.{rest}"


def diffusers_key_map(keys: list[str], component: str) -> dict[str, str]:
    """original key -> diffusers key for one component's checkpoint keys; keys diffusers does not use are
    left out.

    Works on names only, so a loader can decide what to read before reading any tensor.
    """
    blocks = {int(m.group(1)) for k in keys if (m := re.match(r"^vae\.encoder\.down_blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 9
    out = {}
    for key in keys:
        new = to_diffusers_key(key, component, depth)
        if new is not None:
            out[key] = new
    return out


def convert_state_dict(original: dict[str, Any], component: str) -> dict[str, Any]:
    """Rename one component's original state dict (keys with their prefix) to its diffusers class's keys."""
    return {new: original[old] for old, new in diffusers_key_map(list(original), component).items()}


def to_original_state_dict(diffusers_sd: dict[str, Any], component: str) -> dict[str, Any]:
    """Inverse of `convert_state_dict`, prefixes included: how the file stores a diffusers component."""
    out = {}
    for key, value in diffusers_sd.items():
        out[_original_key(key, component, diffusers_sd)] = value
    return out


def _original_key(key: str, component: str, sd: dict[str, Any]) -> str:
    if component == "connectors":
        return _connector_original(key)
    if component == "transformer":
        return TRANSFORMER_PREFIX + rename_segments(key, TRANSFORMER_RENAMES)
    if component == "vocoder":
        return _vocoder_original(key)
    if key in _STATS:
        return f"{COMPONENT_PREFIXES[component]}{_STATS[key]}"
    if component == "audio_vae":
        return "audio_vae." + key
    return "vae." + _video_vae_original(key, sd)


def _connector_original(key: str) -> str:
    head, _, rest = key.partition(".")
    if head in _PROJECTIONS:
        return f"{TEXT_PROJECTION_PREFIX}{_PROJECTIONS[head]}.{rest}"
    prefix = VIDEO_CONNECTOR_PREFIX if head == "video_connector" else AUDIO_CONNECTOR_PREFIX
    return prefix + rename_segments(rest, CONNECTOR_RENAMES)


def _video_vae_original(key: str, sd: dict[str, Any]) -> str:
    key = rename_segments(key, {"resnets": "res_blocks"})
    if key.startswith("encoder.mid_block."):
        depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down_blocks."))
        return f"encoder.down_blocks.{2 * depth}." + key.removeprefix("encoder.mid_block.")
    if key.startswith("decoder.mid_block."):
        return "decoder.up_blocks.0." + key.removeprefix("decoder.mid_block.")
    head, _, rest = key.partition(".")
    name, dot, tail = rest.partition(".")
    if head == "decoder" and name in _DECODER_RENAMES:
        return f"decoder.{_DECODER_RENAMES[name]}{dot}{tail}"
    match = re.match(r"^(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(.*)$", key)
    if not match:
        return key
    where, index, rest = match.group(1), int(match.group(2)), match.group(3)
    resampler = rest.startswith(("downsamplers.0.", "upsamplers.0."))
    rest = rest.split(".", 2)[2] if resampler else rest
    if where.startswith("encoder"):
        return f"{where}.{2 * index + int(resampler)}.{rest}"
    return f"{where}.{2 * index + (1 if resampler else 2)}.{rest}"
