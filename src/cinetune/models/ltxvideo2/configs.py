"""diffusers configs of the LTX-2 components, from the original (ltx-core) config in the checkpoint metadata.

`meta` is the file's `config` JSON (sections transformer, vae, audio_vae, vocoder); `shapes` maps the
component's diffusers keys to tensor shapes. Values the weights determine (layer counts, widths, registers,
biases, which LTX-2.3 parts exist) come from `shapes`; the rest from `meta`, with ltx-core's defaults for
missing entries. A file without metadata gets the values diffusers published for the release its weights
belong to (scripts/convert_ltx2_to_diffusers.py, versions 2.0 and 2.3).

LTX-2.0 and LTX-2.3 are told apart by their weights, as ltx-core does by its header: 2.3 has gated attention
(`to_gate_logits`), prompt AdaLN (`prompt_adaln`, a 9-row `scale_shift_table`), no `caption_projection` in the
transformer but per-modality text projections in front of the connectors, and a vocoder with bandwidth
extension (`bwe_generator`). So a 2.3 file loads whatever `model_flavour` says.
"""

from __future__ import annotations

import re
from typing import Any

Shapes = dict[str, tuple[int, ...]]

_LTX2_VIDEO_VAE = {
    "latent_channels": 128,
    "patch_size": 4,
    "encoder_blocks": [
        ["res_x", {"num_layers": 4}],
        ["compress_space_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 6}],
        ["compress_time_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 6}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 2}],
        ["compress_all_res", {"multiplier": 2}],
        ["res_x", {"num_layers": 2}],
    ],
    "decoder_blocks": [
        ["res_x", {"num_layers": 5, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 5, "inject_noise": False}],
    ],
    "decoder_base_channels": 128,
    "causal_decoder": False,
}
# The 22B file's vocoder header (LTX-2.3): used when a file with a bandwidth-extension stage has no metadata.
_LTX2_3_VOCODER: dict[str, Any] = {
    "vocoder": {
        "upsample_initial_channel": 1536,
        "resblock": "AMP1",
        "upsample_rates": [5, 2, 2, 2, 2, 2],
        "resblock_kernel_sizes": [3, 7, 11],
        "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "use_tanh_at_final": False,
        "activation": "snakebeta",
        "use_bias_at_final": False,
    },
    "bwe": {
        "upsample_initial_channel": 512,
        "resblock": "AMP1",
        "upsample_rates": [6, 5, 2, 2, 2],
        "resblock_kernel_sizes": [3, 7, 11],
        "upsample_kernel_sizes": [12, 11, 4, 4, 4],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "use_tanh_at_final": False,
        "activation": "snakebeta",
        "use_bias_at_final": False,
        "input_sampling_rate": 16000,
        "output_sampling_rate": 48000,
        "hop_length": 80,
        "n_fft": 512,
        "num_mels": 64,
    },
}
_GEMMA3_12B_WIDTH = 3840  # Gemma-3 12B hidden size: LTX-2.0 / 2.3's text encoder
_DOWNSAMPLE = {
    "compress_space_res": "spatial",
    "compress_time_res": "temporal",
    "compress_all_res": "spatiotemporal",
}
_UPSAMPLE = {"compress_space": "spatial", "compress_time": "temporal", "compress_all": "spatiotemporal"}
_STRIDES = {"spatial": (1, 2), "temporal": (2, 1), "spatiotemporal": (2, 2)}  # (time, space)


# LTX-2.0 (19B) as diffusers' 2.0 conversion publishes it (scripts/convert_ltx2_to_diffusers.py): what
# `transformer_config` / `connectors_config` infer from the released file, and what `cinetune bench` builds.
LTX2_0_TRANSFORMER: dict[str, Any] = {
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 128,
    "cross_attention_dim": 4096,
    "vae_scale_factors": (8, 32, 32),
    "pos_embed_max_pos": 20,
    "base_height": 2048,
    "base_width": 2048,
    "gated_attn": False,
    "cross_attn_mod": False,
    "audio_in_channels": 128,
    "audio_out_channels": 128,
    "audio_patch_size": 1,
    "audio_patch_size_t": 1,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "audio_cross_attention_dim": 2048,
    "audio_scale_factor": 4,
    "audio_pos_embed_max_pos": 20,
    "audio_sampling_rate": 16000,
    "audio_hop_length": 160,
    "audio_gated_attn": False,
    "audio_cross_attn_mod": False,
    "num_layers": 48,
    "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 3840,
    "attention_bias": True,
    "attention_out_bias": True,
    "rope_theta": 10000.0,
    "rope_double_precision": True,
    "causal_offset": 1,
    "timestep_scale_multiplier": 1000,
    "cross_attn_timestep_scale_multiplier": 1000,
    "rope_type": "split",
    "use_prompt_embeddings": True,
}
LTX2_0_CONNECTORS: dict[str, Any] = {
    "caption_channels": 3840,  # Gemma3 12B hidden size
    "text_proj_in_factor": 49,  # embeddings + 48 layers, stacked
    "video_connector_num_attention_heads": 30,
    "video_connector_attention_head_dim": 128,
    "video_connector_num_layers": 2,
    "video_connector_num_learnable_registers": 128,
    "video_gated_attn": False,
    "audio_connector_num_attention_heads": 30,
    "audio_connector_attention_head_dim": 128,
    "audio_connector_num_layers": 2,
    "audio_connector_num_learnable_registers": 128,
    "audio_gated_attn": False,
    "connector_rope_base_seq_len": 4096,
    "rope_theta": 10000.0,
    "rope_double_precision": True,
    "rope_type": "split",
    "per_modality_projections": False,
}


# LTX-2.3 (22B) as diffusers' 2.3 conversion publishes it, what the 22B header infers to, and what
# `cinetune bench` builds: the 2.0 transformer with gated attention and prompt AdaLN in both streams and no
# caption projection (the text is projected to 4096 / 2048 in front of the connectors). perturbed_attn (STG)
# is left off: training never perturbs. 18.99 B parameters (diffusers 0.42.1, meta device); with the
# connectors (3.17 B, which hold the per-modality projections) 22.16 B, the published 22B.
LTX2_3_TRANSFORMER: dict[str, Any] = {
    **LTX2_0_TRANSFORMER,
    "gated_attn": True,
    "cross_attn_mod": True,
    "audio_gated_attn": True,
    "audio_cross_attn_mod": True,
    "use_prompt_embeddings": False,
}
LTX2_3_CONNECTORS: dict[str, Any] = {
    "caption_channels": 3840,
    "text_proj_in_factor": 49,
    "video_connector_num_attention_heads": 32,
    "video_connector_attention_head_dim": 128,
    "video_connector_num_layers": 8,
    "video_connector_num_learnable_registers": 128,
    "video_gated_attn": True,
    "audio_connector_num_attention_heads": 32,
    "audio_connector_attention_head_dim": 64,
    "audio_connector_num_layers": 8,
    "audio_connector_num_learnable_registers": 128,
    "audio_gated_attn": True,
    "connector_rope_base_seq_len": 4096,
    "rope_theta": 10000.0,
    "rope_double_precision": True,
    "rope_type": "split",
    "per_modality_projections": True,
    "video_hidden_dim": 4096,
    "audio_hidden_dim": 2048,
    "proj_bias": True,
}


def _count(shapes: Shapes, pattern: str) -> int:
    found = {m.group(1) for k in shapes if (m := re.match(pattern, k))}
    return len(found)


def transformer_config(meta: dict[str, Any] | None, shapes: Shapes) -> dict[str, Any]:
    """LTX2VideoTransformer3DModel config: widths and depth from the weights, head sizes from metadata.

    Gated attention and prompt AdaLN (LTX-2.3) follow the header as ltx-core reads it, and the weights where
    the header does not say; a header contradicting the weights fails the strict load with a clear error.
    """
    t = (meta or {}).get("transformer", {})
    inner, in_channels = shapes["proj_in.weight"]
    audio_inner, audio_in = shapes["audio_proj_in.weight"]
    head_dim = t.get("attention_head_dim", 128)
    audio_head_dim = t.get("audio_attention_head_dim", 64)
    max_pos = t.get("positional_embedding_max_pos", [20, 2048, 2048])
    cross_mod = bool(
        t.get("cross_attention_adaln", "transformer_blocks.0.prompt_scale_shift_table" in shapes)
    )
    gated = bool(t.get("apply_gated_attention", "transformer_blocks.0.attn1.to_gate_logits.weight" in shapes))
    config = {
        "in_channels": in_channels,
        "out_channels": shapes["proj_out.weight"][0],
        "num_attention_heads": inner // head_dim,
        "attention_head_dim": head_dim,
        "cross_attention_dim": shapes["transformer_blocks.0.attn2.to_k.weight"][1],
        "pos_embed_max_pos": max_pos[0],
        "base_height": max_pos[1],
        "base_width": max_pos[2],
        "gated_attn": gated,
        "cross_attn_mod": cross_mod,
        "audio_in_channels": audio_in,
        "audio_out_channels": shapes["audio_proj_out.weight"][0],
        "audio_num_attention_heads": audio_inner // audio_head_dim,
        "audio_attention_head_dim": audio_head_dim,
        "audio_cross_attention_dim": shapes["transformer_blocks.0.audio_attn2.to_k.weight"][1],
        "audio_pos_embed_max_pos": t.get("audio_positional_embedding_max_pos", [20])[0],
        "audio_gated_attn": gated,
        "audio_cross_attn_mod": cross_mod,
        "num_layers": _count(shapes, r"^transformer_blocks\.(\d+)\."),
        "norm_eps": t.get("norm_eps", 1e-6),
        "rope_theta": t.get("positional_embedding_theta", 10000.0),
        "timestep_scale_multiplier": t.get("timestep_scale_multiplier", 1000),
        "use_prompt_embeddings": "caption_projection.linear_1.weight" in shapes,
    }
    if "caption_projection.linear_1.weight" in shapes:
        config["caption_channels"] = shapes["caption_projection.linear_1.weight"][1]
    if meta is None:  # as published (diffusers' 2.0 and 2.3 conversion configs, the 19B / 22B headers)
        config.update(
            rope_type="split", rope_double_precision=True, cross_attn_timestep_scale_multiplier=1000
        )
    else:
        config.update(
            rope_type=t.get("rope_type", "split"),  # ltx-core's default
            rope_double_precision=t.get("frequencies_precision", False) == "float64",
            # the 22B header writes 1000.0
            cross_attn_timestep_scale_multiplier=int(t.get("av_ca_timestep_scale_multiplier", 1)),
        )
    return config


def is_ltx2_3(transformer: dict[str, Any]) -> bool:
    """An LTX-2.3 transformer config: text cross-attention modulated by sigma (prompt AdaLN). Such a model
    gates its A/V cross-attention on the other stream's sigma (av_timesteps.py)."""
    return bool(transformer.get("cross_attn_mod") or transformer.get("audio_cross_attn_mod"))


def connectors_config(meta: dict[str, Any] | None, shapes: Shapes) -> dict[str, Any]:
    """LTX2TextConnectors config: projection widths, heads (from the gates when gated) and registers from the
    weights.

    LTX-2.0 projects Gemma's stacked states back to Gemma's width, so the video connector's width is Gemma's
    hidden size. LTX-2.3 projects them to each stream's width (4096 video, 2048 audio): Gemma's hidden size is
    then the header's `caption_channels` (ltx-core takes Gemma-3 12B's 3840).
    """
    t = (meta or {}).get("transformer", {})
    per_modality = "video_text_proj_in.weight" in shapes
    proj = shapes["video_text_proj_in.weight" if per_modality else "text_proj_in.weight"]
    head_dim = t.get("connector_attention_head_dim", 128)
    video_heads, video_head_dim = _connector_heads(shapes, "video_connector", head_dim)
    audio_heads, audio_head_dim = _connector_heads(
        shapes, "audio_connector", t.get("audio_connector_attention_head_dim", head_dim)
    )
    caption_channels = (
        t.get("caption_channels", _GEMMA3_12B_WIDTH) if per_modality else video_heads * video_head_dim
    )
    config: dict[str, Any] = {
        "caption_channels": caption_channels,
        "text_proj_in_factor": proj[1] // caption_channels,
        "video_connector_num_attention_heads": video_heads,
        "video_connector_attention_head_dim": video_head_dim,
        "video_connector_num_layers": _count(shapes, r"^video_connector\.transformer_blocks\.(\d+)\."),
        "video_connector_num_learnable_registers": _registers(shapes, "video_connector"),
        "video_gated_attn": _connector_gate(shapes, "video_connector") is not None,
        "audio_connector_num_attention_heads": audio_heads,
        "audio_connector_attention_head_dim": audio_head_dim,
        "audio_connector_num_layers": _count(shapes, r"^audio_connector\.transformer_blocks\.(\d+)\."),
        "audio_connector_num_learnable_registers": _registers(shapes, "audio_connector"),
        "audio_gated_attn": _connector_gate(shapes, "audio_connector") is not None,
        "per_modality_projections": per_modality,
    }
    if per_modality:
        config.update(
            video_hidden_dim=proj[0],
            audio_hidden_dim=shapes["audio_text_proj_in.weight"][0],
            proj_bias="video_text_proj_in.bias" in shapes,
        )
    if meta is None:
        config.update(connector_rope_base_seq_len=4096, rope_type="split", rope_double_precision=True)
    else:
        config.update(
            connector_rope_base_seq_len=t.get("connector_positional_embedding_max_pos", [1])[0],
            rope_theta=t.get("positional_embedding_theta", 10000.0),
            rope_type=t.get("rope_type", "split"),  # ltx-core's default
            rope_double_precision=t.get("frequencies_precision", False) == "float64",
        )
    return config


def _connector_gate(shapes: Shapes, connector: str) -> tuple[int, ...] | None:
    return shapes.get(f"{connector}.transformer_blocks.0.attn1.to_gate_logits.weight")


def _connector_heads(shapes: Shapes, connector: str, head_dim: int) -> tuple[int, int]:
    """(heads, head size): a gated connector's gate has one logit per head; else the header's head size."""
    inner = shapes[f"{connector}.transformer_blocks.0.attn1.to_q.weight"][0]
    gate = _connector_gate(shapes, connector)
    heads = gate[0] if gate is not None else inner // head_dim
    return heads, inner // heads


def _registers(shapes: Shapes, connector: str) -> int | None:
    shape = shapes.get(f"{connector}.learnable_registers")
    return shape[0] if shape else None


def video_vae_config(meta: dict[str, Any] | None, shapes: Shapes) -> dict[str, Any]:
    """AutoencoderKLLTX2Video config from the original block lists (encoder_blocks / decoder_blocks)."""
    vae = {**_LTX2_VIDEO_VAE, **((meta or {}).get("vae", {}))}
    channels = latent = vae.get("latent_channels", 128)
    layers, block_out, downsample = [], [], []
    for name, raw in vae["encoder_blocks"]:
        params = {"num_layers": raw} if isinstance(raw, int) else raw
        if name == "res_x":
            layers.append(params["num_layers"])
        elif name in _DOWNSAMPLE:
            channels *= params.get("multiplier", 2)
            block_out.append(channels)
            downsample.append(_DOWNSAMPLE[name])
        else:
            raise ValueError(f"video VAE encoder block '{name}' has no diffusers equivalent")
    dec_layers, dec_noise, up_types, residual, factors = [], [], [], [], []
    for name, raw in reversed(vae["decoder_blocks"]):
        params = {"num_layers": raw} if isinstance(raw, int) else raw
        if name == "res_x":
            dec_layers.append(params["num_layers"])
            dec_noise.append(bool(params.get("inject_noise", False)))
        elif name in _UPSAMPLE:
            up_types.append(_UPSAMPLE[name])
            residual.append(bool(params.get("residual", False)))
            factors.append(params.get("multiplier", 1))
        else:
            raise ValueError(f"video VAE decoder block '{name}' has no diffusers equivalent")
    dec_channels, width = [], vae.get("decoder_base_channels", 128) * 8
    for factor in factors:
        dec_channels.append(width)
        width //= factor
    patch = vae.get("patch_size", 4)
    padding = vae.get("spatial_padding_mode")
    return {
        "in_channels": vae.get("in_channels", 3),
        "out_channels": vae.get("out_channels", 3),
        "latent_channels": latent,
        "block_out_channels": tuple(block_out),
        "down_block_types": ("LTX2VideoDownBlock3D",) * len(block_out),
        "decoder_block_out_channels": tuple(reversed(dec_channels)),
        "layers_per_block": tuple(layers),
        "decoder_layers_per_block": tuple(dec_layers),
        "spatio_temporal_scaling": (True,) * len(block_out),
        "decoder_spatio_temporal_scaling": (True,) * len(up_types),
        "decoder_inject_noise": tuple(dec_noise),
        "downsample_type": tuple(downsample),
        "upsample_type": tuple(up_types),  # diffusers reverses the other decoder lists, not this one
        "upsample_residual": tuple(reversed(residual)),
        "upsample_factor": tuple(reversed(factors)),
        "timestep_conditioning": "decoder.scale_shift_table" in shapes,
        "patch_size": patch,
        "patch_size_t": 1,
        "encoder_causal": True,
        "decoder_causal": bool(vae.get("causal_decoder", False)),
        "encoder_spatial_padding_mode": padding or "zeros",
        "decoder_spatial_padding_mode": padding or "reflect",
        "spatial_compression_ratio": patch * 2 ** sum(_STRIDES[d][1] == 2 for d in downsample),
        "temporal_compression_ratio": 2 ** sum(_STRIDES[d][0] == 2 for d in downsample),
    }


def audio_vae_config(meta: dict[str, Any] | None, shapes: Shapes) -> dict[str, Any]:
    """AutoencoderKLLTX2Audio config from the original ddconfig / preprocessing sections."""
    if meta is None or "audio_vae" not in meta:
        return {}  # diffusers' AutoencoderKLLTX2Audio defaults are the LTX-2.0 audio VAE
    section = meta["audio_vae"]
    params = section.get("model", {}).get("params", {})
    dd = params.get("ddconfig", {})
    stft = section.get("preprocessing", {}).get("stft", {})
    mel = section.get("preprocessing", {}).get("mel", {})
    attn = dd.get("attn_resolutions", [8, 16, 32])
    return {
        "base_channels": dd.get("ch", 128),
        "output_channels": dd.get("out_ch", 2),
        "ch_mult": tuple(dd.get("ch_mult", (1, 2, 4))),
        "num_res_blocks": dd.get("num_res_blocks", 2),
        "attn_resolutions": tuple(attn) if attn else None,
        "in_channels": dd.get("in_channels", 2),
        "resolution": dd.get("resolution", 256),
        "latent_channels": dd.get("z_channels", 8),
        "norm_type": dd.get("norm_type", "pixel"),
        "causality_axis": dd.get("causality_axis", "height"),
        "dropout": dd.get("dropout", 0.0),
        "mid_block_add_attention": dd.get("mid_block_add_attention", True),
        "sample_rate": params.get("sampling_rate", 16000),
        "mel_hop_length": stft.get("hop_length", 160),
        "is_causal": stft.get("causal", True),
        "mel_bins": dd.get("mel_bins") or mel.get("n_mel_channels") or 64,
        "double_z": dd.get("double_z", True),
    }


def vocoder_config(meta: dict[str, Any] | None, shapes: Shapes) -> dict[str, Any]:
    """LTX2Vocoder config (LTX-2.0's HiFi-GAN) or, when the file has a bandwidth-extension stage (LTX-2.3's
    `vocoder.bwe` header section, `bwe_generator` weights), LTX2VocoderWithBWE's: see `vocoder_class`."""
    v = (meta or {}).get("vocoder", {})
    if "bwe" in v or "bwe_generator.conv_in.weight" in shapes:
        return _bwe_vocoder_config(v if "bwe" in v else _LTX2_3_VOCODER, shapes)
    config = _generator_config(v, shapes)
    config["output_sampling_rate"] = v.get("output_sampling_rate", 24000)
    return config


def vocoder_class(config: dict[str, Any]) -> type:
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE

    return LTX2VocoderWithBWE if "bwe_hidden_channels" in config else LTX2Vocoder


def _under(shapes: Shapes, prefix: str) -> Shapes:
    return {k.removeprefix(prefix): v for k, v in shapes.items() if k.startswith(prefix)}


def _generator_config(cfg: dict[str, Any], shapes: Shapes, final: bool = True) -> dict[str, Any]:
    """One ltx-core `Vocoder` (mel -> waveform generator) as LTX2Vocoder arguments.

    ltx-core's resblock "1" is HiFi-GAN's (LeakyReLU, whatever `activation` says); "AMP1" is BigVGAN-v2's:
    Snake / SnakeBeta activations, each anti-aliased (2x up, act, 2x down, 12-tap filters). `final`: ltx-core
    ends the generator with tanh (`use_tanh_at_final`) or else a clamp to [-1, 1]; the BWE stage has neither.
    Widths come from the weights when given, else from the header (ltx-core: 128 mel inputs, 2 outputs).
    """
    amp = cfg.get("resblock", "1") == "AMP1"
    conv_in, conv_out = shapes.get("conv_in.weight"), shapes.get("conv_out.weight")
    final_bias = ("conv_out.bias" in shapes) if shapes else cfg.get("use_bias_at_final", True)
    final_act = ("tanh" if cfg.get("use_tanh_at_final", True) else "clamp") if final else None
    return {
        "in_channels": conv_in[1] if conv_in else 128,
        "hidden_channels": conv_in[0] if conv_in else cfg.get("upsample_initial_channel", 1024),
        "out_channels": conv_out[0] if conv_out else 2,
        "upsample_kernel_sizes": list(cfg.get("upsample_kernel_sizes", [16, 15, 8, 4, 4])),
        "upsample_factors": list(cfg.get("upsample_rates", [6, 5, 2, 2, 2])),
        "resnet_kernel_sizes": list(cfg.get("resblock_kernel_sizes", [3, 7, 11])),
        "resnet_dilations": [list(d) for d in cfg.get("resblock_dilation_sizes", [[1, 3, 5]] * 3)],
        "act_fn": cfg.get("activation", "snake") if amp else "leaky_relu",
        "leaky_relu_negative_slope": 0.1,
        "antialias": amp,
        "antialias_ratio": 2,
        "antialias_kernel_size": 12,
        "final_act_fn": final_act,
        "final_bias": final_bias,
    }


def _bwe_vocoder_config(v: dict[str, Any], shapes: Shapes) -> dict[str, Any]:
    """LTX2VocoderWithBWE: the 16 kHz generator, a causal log-mel of its output (the STFT and mel bases are
    weights of the file) and the generator that predicts the residual over a 3x sinc resampling to 48 kHz.

    Stage 1 ends with ltx-core's final activation (the 22B header: `use_tanh_at_final` false, so a clamp);
    diffusers' own 2.3 conversion leaves it out, which differs once the stage-1 waveform leaves [-1, 1].
    """
    stage, bwe = v.get("vocoder", {}), v["bwe"]
    first = _generator_config(stage, _under(shapes, "vocoder."))
    second = _generator_config(bwe, _under(shapes, "bwe_generator."), final=False)
    basis = shapes.get("mel_stft.stft_fn.forward_basis")
    mel = shapes.get("mel_stft.mel_basis")
    n_fft = basis[2] if basis else bwe.get("n_fft", 512)
    return {
        **first,
        **{f"bwe_{k}": value for k, value in second.items()},
        "filter_length": n_fft,
        "hop_length": bwe.get("hop_length", 80),
        "window_length": n_fft,  # ltx-core's MelSTFT windows the whole n_fft
        "num_mel_channels": mel[0] if mel else bwe.get("num_mels", 64),
        "input_sampling_rate": bwe.get("input_sampling_rate", 16000),
        "output_sampling_rate": bwe.get("output_sampling_rate", 48000),
    }
