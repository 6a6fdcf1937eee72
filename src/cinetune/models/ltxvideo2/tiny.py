"""Tiny random LTX-2 components built from the real diffusers / transformers classes.

The shapes keep the real rules: the video VAE compresses 32x in space and 8x in time (patch 4 and the released
spatial / temporal / spatio-temporal downsampling order), the audio VAE takes 16 kHz stereo 64-bin log-mels
and
compresses time and mel 4x, Gemma's hidden states (embeddings + each layer) are stacked for the connectors,
whose
width equals Gemma's hidden size, and the text is left-padded to 1024 tokens with 128 learnable registers.

`TINY_META` is the same model described in the original (ltx-core) config schema, as the released combined
file
stores it in its metadata; `save_tiny_combined_file` writes such a file with the original key names.

`version="2.3"` (flavour `tiny-2.3`, `TINY_META_2_3`) builds the LTX-2.3 shape of it: gated attention and
prompt AdaLN in the transformer, no caption projection there but per-modality text projections (to the video
and audio widths) in gated connectors, the 22B video decoder's block order (spatio-temporal, spatio-temporal,
temporal, then spatial upsampling, no residuals, zero padding) and a BigVGAN-v2 vocoder with bandwidth
extension to 48 kHz.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2Pipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from cinetune.models.base import keeps_global_rng
from cinetune.models.ltxvideo.tiny import ltx_scheduler
from cinetune.models.ltxvideo2 import configs
from cinetune.models.ltxvideo2.convert import to_original_state_dict
from cinetune.models.ltxvideo2.tiny_configs import (
    _WORDS,
    AUDIO_LATENT_CHANNELS,
    LATENT_CHANNELS,
    TEXT_DIM,
    TEXT_LAYERS,
    TINY_2_3_CONNECTORS_CONFIG,
    TINY_2_3_TRANSFORMER_CONFIG,
    TINY_CONNECTORS_CONFIG,
    TINY_META,
    TINY_META_2_3,
    TINY_TRANSFORMER_CONFIG,
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built offline; like Gemma's it starts every text with <bos>, pads left."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for word in _WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=1024,
    )


def _text_encoder(vocab_size: int) -> Gemma3ForConditionalGeneration:
    config = Gemma3Config(
        text_config=Gemma3TextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            sliding_window=64,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        mm_tokens_per_image=4,
    )
    return Gemma3ForConditionalGeneration(config).eval()


def _connectors() -> LTX2TextConnectors:
    return LTX2TextConnectors(**TINY_CONNECTORS_CONFIG)


def _transformer() -> LTX2VideoTransformer3DModel:
    return LTX2VideoTransformer3DModel(**TINY_TRANSFORMER_CONFIG)


def _video_vae() -> AutoencoderKLLTX2Video:
    return AutoencoderKLLTX2Video(
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(16, 32, 32, 32),
        decoder_block_out_channels=(8, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    )


def _audio_vae() -> AutoencoderKLLTX2Audio:
    return AutoencoderKLLTX2Audio(
        base_channels=AUDIO_LATENT_CHANNELS * 16,
        output_channels=2,
        ch_mult=(1, 1, 1),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        latent_channels=AUDIO_LATENT_CHANNELS,
        norm_type="pixel",
        causality_axis="height",
        mid_block_add_attention=False,
        sample_rate=16000,
        mel_hop_length=160,
        is_causal=True,
        mel_bins=64,
    )


def _vocoder() -> LTX2Vocoder:
    meta = TINY_META["vocoder"]
    return LTX2Vocoder(
        in_channels=2 * 64,
        hidden_channels=meta["upsample_initial_channel"],
        out_channels=2,
        upsample_kernel_sizes=meta["upsample_kernel_sizes"],
        upsample_factors=meta["upsample_rates"],
        resnet_kernel_sizes=meta["resblock_kernel_sizes"],
        resnet_dilations=meta["resblock_dilation_sizes"],
        act_fn="leaky_relu",
        output_sampling_rate=meta["output_sampling_rate"],
    )


def tiny_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The LTX-2.0 inference schedule: dynamic shift 0.95 -> 2.05 over 1024 -> 4096 tokens, terminal 0.1."""
    return ltx_scheduler(dynamic_shifting=True)


def _randomize_statistics(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial latent statistics, so tests catch a missing or inverted normalization."""
    size = module.latents_mean.shape[0]
    module.latents_mean.copy_(torch.randn(size, generator=generator) * 0.1)
    module.latents_std.copy_(torch.rand(size, generator=generator) * 0.5 + 0.75)


def _bwe_vocoder() -> LTX2VocoderWithBWE:
    vocoder = LTX2VocoderWithBWE(**configs.vocoder_config(TINY_META_2_3, {}))
    with torch.no_grad():  # the STFT and mel bases are weights of the released file, zeros at init
        for name in ("mel_stft.stft_fn.forward_basis", "mel_stft.stft_fn.inverse_basis"):
            buffer = vocoder.get_buffer(name)
            buffer.copy_(torch.randn_like(buffer) * 0.1)
        vocoder.mel_stft.mel_basis.copy_(torch.rand_like(vocoder.mel_stft.mel_basis))
    return vocoder


def _model_parts(version: str) -> dict[str, Any]:
    """Builders of the parts that differ between the releases, in the order they draw random weights."""
    if version == "2.3":
        return {
            "connectors": lambda: LTX2TextConnectors(**TINY_2_3_CONNECTORS_CONFIG),
            "transformer": lambda: LTX2VideoTransformer3DModel(**TINY_2_3_TRANSFORMER_CONFIG),
            "vae": lambda: AutoencoderKLLTX2Video(**configs.video_vae_config(TINY_META_2_3, {})),
            "audio_vae": _audio_vae,
            "vocoder": _bwe_vocoder,
        }
    if version != "2.0":
        raise ValueError(f"no tiny LTX-2 of version {version!r} (2.0 or 2.3)")
    return {
        "connectors": _connectors,
        "transformer": _transformer,
        "vae": _video_vae,
        "audio_vae": _audio_vae,
        "vocoder": _vocoder,
    }


@keeps_global_rng
def tiny_components(seed: int = 0, version: str = "2.0") -> dict[str, Any]:
    """Fresh tiny components with deterministic random weights (the keys of LTX2Pipeline)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    components = {"tokenizer": tokenizer, "text_encoder": _text_encoder(len(tokenizer))}
    components.update({name: build() for name, build in _model_parts(version).items()})
    components["scheduler"] = tiny_scheduler()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        _randomize_statistics(components["vae"], generator)
        _randomize_statistics(components["audio_vae"], generator)
    return components


def save_tiny_checkpoint(folder: Path, seed: int = 0, version: str = "2.0") -> Path:
    """A tiny LTX-2 pipeline in the real diffusers layout (model_index.json, a folder per component)."""
    LTX2Pipeline(**tiny_components(seed, version)).save_pretrained(folder)
    return Path(folder)


_STORED = ("transformer", "connectors", "vae", "audio_vae", "vocoder")


def save_tiny_combined_file(
    path: Path, seed: int = 0, with_text_encoder: bool = True, version: str = "2.0"
) -> Path:
    """The tiny model as ONE safetensors file with the original key names and config metadata, like the
    release.

    Gemma and its tokenizer are not in the released file; with `with_text_encoder` they are written beside it
    (text_encoder/, tokenizer/), as the hub repo holds them.
    """
    components = tiny_components(seed, version)
    tensors: dict[str, torch.Tensor] = {}
    for name in _STORED:
        state = {k: v.contiguous() for k, v in components[name].state_dict().items()}
        tensors.update(to_original_state_dict(state, name))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = TINY_META_2_3 if version == "2.3" else TINY_META
    save_file(tensors, str(path), metadata={"config": json.dumps(meta)})
    if with_text_encoder:
        components["text_encoder"].save_pretrained(path.parent / "text_encoder")
        components["tokenizer"].save_pretrained(path.parent / "tokenizer")
    return path
