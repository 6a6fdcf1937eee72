"""The tiny LTX-2 model described as plain data (no diffusers import): the original (ltx-core) config
schema its combined file carries (`TINY_META`, `TINY_META_2_3`) and the diffusers configs of its transformer
and text connectors, which the family's flavour table and `cinetune bench` read. tiny.py builds the model."""

from __future__ import annotations

from typing import Any

TEXT_DIM = 32  # Gemma hidden size = connector width = transformer caption channels
TEXT_LAYERS = 2  # -> 3 stacked hidden states
LATENT_CHANNELS = 16
AUDIO_LATENT_CHANNELS = 2  # x 16 latent mel bins = 32 features per audio token
_WORDS = (
    "a an the of in on at with and to is are video clip shot scene person man woman child dog cat bird car "
    "tree sky sea water city street room light dark red blue green yellow white black walks runs jumps "
    "flies sits stands looks slowly quickly camera pans zooms close up wide view sunset night day rain snow "
    "square moves across screen background sound music voice loud quiet beep tone"
).split()

# The tiny model in the original schema (what a combined file's metadata `config` holds).
TINY_META: dict[str, Any] = {
    "transformer": {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "num_layers": 2,
        "cross_attention_dim": 16,
        "caption_channels": TEXT_DIM,
        "audio_num_attention_heads": 2,
        "audio_attention_head_dim": 4,
        "audio_in_channels": AUDIO_LATENT_CHANNELS * 16,
        "audio_out_channels": AUDIO_LATENT_CHANNELS * 16,
        "audio_cross_attention_dim": 8,
        "positional_embedding_max_pos": [20, 2048, 2048],
        "audio_positional_embedding_max_pos": [20],
        "positional_embedding_theta": 10000.0,
        "timestep_scale_multiplier": 1000,
        "av_ca_timestep_scale_multiplier": 1000,
        "rope_type": "split",
        "frequencies_precision": "float32",
        "connector_num_attention_heads": 4,
        "connector_attention_head_dim": 8,
        "connector_num_layers": 2,
        "connector_positional_embedding_max_pos": [4096],
        # fixed values the released config states (ltx-core checks them)
        "dropout": 0.0,
        "attention_bias": True,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "use_linear_projection": False,
        "only_cross_attention": False,
        "cross_attention_norm": True,
        "double_self_attention": False,
        "upcast_attention": False,
        "standardization_norm": "rms_norm",
        "norm_elementwise_affine": False,
        "qk_norm": "rms_norm",
        "positional_embedding_type": "rope",
        "use_audio_video_cross_attention": True,
        "share_ff": False,
        "av_cross_ada_norm": True,
        "use_middle_indices_grid": True,
    },
    "vae": {
        "latent_channels": LATENT_CHANNELS,
        "patch_size": 4,
        "encoder_blocks": [
            ["res_x", {"num_layers": 1}],
            ["compress_space_res", {"multiplier": 1}],
            ["res_x", {"num_layers": 1}],
            ["compress_time_res", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
            ["compress_all_res", {"multiplier": 1}],
            ["res_x", {"num_layers": 1}],
            ["compress_all_res", {"multiplier": 1}],
            ["res_x", {"num_layers": 1}],
        ],
        "decoder_blocks": [
            ["res_x", {"num_layers": 1, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
            ["compress_all", {"residual": True, "multiplier": 2}],
            ["res_x", {"num_layers": 1, "inject_noise": False}],
        ],
        "decoder_base_channels": 4,
        "causal_decoder": False,
        "timestep_conditioning": False,
        "norm_layer": "pixel_norm",
        "latent_log_var": "uniform",
    },
    "audio_vae": {
        "model": {
            "params": {
                "sampling_rate": 16000,
                "ddconfig": {
                    "ch": AUDIO_LATENT_CHANNELS * 16,
                    "out_ch": 2,
                    "ch_mult": [1, 1, 1],
                    "num_res_blocks": 1,
                    "attn_resolutions": [],
                    "in_channels": 2,
                    "resolution": 256,
                    "z_channels": AUDIO_LATENT_CHANNELS,
                    "norm_type": "pixel",
                    "causality_axis": "height",
                    "mid_block_add_attention": False,
                    "mel_bins": 64,
                    "double_z": True,
                },
            }
        },
        "preprocessing": {"stft": {"hop_length": 160, "filter_length": 1024, "causal": True}},
    },
    "vocoder": {
        "upsample_initial_channel": 16,
        "upsample_rates": [6, 5, 8],
        "upsample_kernel_sizes": [12, 10, 16],
        "resblock_kernel_sizes": [3],
        "resblock_dilation_sizes": [[1, 3]],
        "activation": "leaky_relu",
        "output_sampling_rate": 24000,
        "resblock": "1",
        "stereo": True,
    },
}


_T = TINY_META["transformer"]
# diffusers configs of the tiny transformer and text connectors (also what `cinetune bench` builds for `tiny`)
TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "num_attention_heads": _T["num_attention_heads"],
    "attention_head_dim": _T["attention_head_dim"],
    "cross_attention_dim": _T["cross_attention_dim"],
    "audio_in_channels": _T["audio_in_channels"],
    "audio_out_channels": _T["audio_out_channels"],
    "audio_num_attention_heads": _T["audio_num_attention_heads"],
    "audio_attention_head_dim": _T["audio_attention_head_dim"],
    "audio_cross_attention_dim": _T["audio_cross_attention_dim"],
    "num_layers": _T["num_layers"],
    "caption_channels": TEXT_DIM,
    "rope_type": "split",
    "rope_double_precision": False,
}
TINY_CONNECTORS_CONFIG: dict[str, Any] = {
    "caption_channels": TEXT_DIM,
    "text_proj_in_factor": TEXT_LAYERS + 1,
    "video_connector_num_attention_heads": _T["connector_num_attention_heads"],
    "video_connector_attention_head_dim": _T["connector_attention_head_dim"],
    "video_connector_num_layers": _T["connector_num_layers"],
    "video_connector_num_learnable_registers": 128,
    "audio_connector_num_attention_heads": _T["connector_num_attention_heads"],
    "audio_connector_attention_head_dim": _T["connector_attention_head_dim"],
    "audio_connector_num_layers": _T["connector_num_layers"],
    "audio_connector_num_learnable_registers": 128,
    "connector_rope_base_seq_len": 4096,
    "rope_type": "split",
    "rope_double_precision": False,
}


_AMP = {"resblock": "AMP1", "activation": "snakebeta", "stereo": True, "use_tanh_at_final": False}
# The tiny model in LTX-2.3's shape, in the original schema (the keys the 22B header has and ltx-core reads).
TINY_META_2_3: dict[str, Any] = {
    "transformer": {
        **_T,
        # connector widths = the transformer's text widths (16 video, 8 audio); Gemma stays TEXT_DIM wide
        "connector_num_attention_heads": 2,
        "connector_attention_head_dim": 8,
        "audio_connector_num_attention_heads": 2,
        "audio_connector_attention_head_dim": 4,
        "apply_gated_attention": True,
        "connector_apply_gated_attention": True,
        "cross_attention_adaln": True,
        "caption_proj_before_connector": True,
        "caption_projection_first_linear": False,
        "caption_projection_second_linear": False,
        "caption_proj_input_norm": False,
        "text_encoder_norm_type": "per_token_rms",
    },
    "vae": {
        **TINY_META["vae"],
        "decoder_blocks": [
            ["res_x", {"num_layers": 1}],
            ["compress_space", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
            ["compress_time", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
            ["compress_all", {"multiplier": 1}],
            ["res_x", {"num_layers": 1}],
            ["compress_all", {"multiplier": 2}],
            ["res_x", {"num_layers": 1}],
        ],
        "spatial_padding_mode": "zeros",
    },
    "audio_vae": TINY_META["audio_vae"],
    "vocoder": {
        # 100 mel frames/s -> 16 kHz (x160), then its 80-hop log-mel (200 frames/s) -> 48 kHz (x240)
        "vocoder": {
            **_AMP,
            "upsample_initial_channel": 16,
            "upsample_rates": [5, 4, 8],
            "upsample_kernel_sizes": [11, 8, 16],
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3, 5]],
            "use_bias_at_final": False,
        },
        "bwe": {
            **_AMP,
            "upsample_initial_channel": 16,
            "upsample_rates": [6, 5, 8],
            "upsample_kernel_sizes": [12, 11, 16],
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3, 5]],
            "use_bias_at_final": False,
            "apply_final_activation": False,
            "input_sampling_rate": 16000,
            "output_sampling_rate": 48000,
            "hop_length": 80,
            "n_fft": 128,
            "win_size": 128,
            "num_mels": 64,
        },
    },
}
TINY_2_3_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TINY_TRANSFORMER_CONFIG,
    "gated_attn": True,
    "cross_attn_mod": True,
    "audio_gated_attn": True,
    "audio_cross_attn_mod": True,
    "use_prompt_embeddings": False,
}
TINY_2_3_CONNECTORS_CONFIG: dict[str, Any] = {
    **TINY_CONNECTORS_CONFIG,
    "video_connector_num_attention_heads": 2,
    "video_connector_attention_head_dim": 8,
    "video_gated_attn": True,
    "audio_connector_num_attention_heads": 2,
    "audio_connector_attention_head_dim": 4,
    "audio_gated_attn": True,
    "per_modality_projections": True,
    "video_hidden_dim": _T["cross_attention_dim"],
    "audio_hidden_dim": _T["audio_cross_attention_dim"],
    "proj_bias": True,
}
