"""The kandinsky5-video family: Kandinsky 5.0 Video Lite (2B) and Pro (19B), text- and image-to-video.

Facts (TRAINING_FACTS.md section 3): HunyuanVideo VAE, 16 channels, 8x space / 4x time, latents = z * 0.476986
(no mean/std); frames 4k+1, sides multiples of 16; transformer input channels-last (B, F, H, W, 33);
text = Qwen2.5-VL hidden_states[-1] over the pipeline's chat template, its 128-token prefix dropped, plus the
CLIP pooled output; timestep 1000 sigma; RoPE positions as the pipelines build them, the RoPE scale factor a
per-flavour constant from the official configs (validation overrides the pipelines' pixel-size rule).
Text embeddings are made by the pipeline's own `encode_prompt`, one caption at a time, so a cached entry is
exactly what Kandinsky5T2VPipeline computes for that prompt (no padding to store).
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from cinetune.data import fit_image
from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.models.base import Flavour, FrameRule, GeneratedVideo, LibraryClass, ModelFamily, library_class
from cinetune.models.kandinsky5.configs import TINY_TRANSFORMER_CONFIG
from cinetune.models.kandinsky5.inputs import (
    ROPE_SCALE_HD,
    ROPE_SCALE_SD,
    SCHEDULER_SCALE,
    SHIFT_MU,
    to_channels_last,
    token_loss_mask,
    visual_input,
    visual_rope_positions,
)
from cinetune.models.loading import ComponentLoader
from cinetune.objectives import (
    FlowState,
    LossStream,
    ModelInputs,
    sample_latents,
    sample_sigmas,
    shift_sigmas,
    to_device,
)

logger = logging.getLogger(__name__)
_REPO = "kandinskylab/Kandinsky-5.0-{}-Diffusers"
# Transformer architectures (kandinsky-5 configs/*.yaml, `dit_params`); every video model takes 16 + 16 + 1
# input channels. The 10 s models use NABLA sparse attention, whose 8x8 token blocks need latent sides / 2
# divisible by 8: sides multiples of 128 pixels.
_LITE = {
    "in_visual_dim": 16,
    "out_visual_dim": 16,
    "in_text_dim": 3584,
    "in_text_dim2": 768,
    "time_dim": 512,
    "patch_size": (1, 2, 2),
    "model_dim": 1792,
    "ff_dim": 7168,
    "num_text_blocks": 2,
    "num_visual_blocks": 32,
    "axes_dims": (16, 24, 24),
    "visual_cond": True,
    "attention_type": "regular",
}
_PRO = {
    **_LITE,
    "time_dim": 1024,
    "model_dim": 4096,
    "ff_dim": 16384,
    "num_text_blocks": 4,
    "num_visual_blocks": 60,
    "axes_dims": (32, 48, 48),
}
_NABLA = {
    "attention_type": "nabla",
    "attention_wT": 11,
    "attention_wW": 3,
    "attention_wH": 3,
    "attention_add_sta": True,
    "attention_method": "topcdf",
}
_LITE_10S = {**_LITE, **_NABLA, "attention_P": 0.9}
_PRO_10S = {**_PRO, **_NABLA, "attention_P": 0.7}
# kandinsky-5 configs/k5_pro_{t2v,i2v}_5s_sft_hd.yaml: the HD Pro 5 s models use NABLA too (P 0.8). The Hub
# configs could not be read here; a NABLA table entry only makes sides stricter (%128, also %16) and is what
# `cinetune bench` builds. Training itself follows the loaded transformer's own config.
_PRO_5S_HD = {**_PRO, **_NABLA, "attention_P": 0.8}


def _flavour(
    name: str, repo: str | None, what: str, arch: dict, rope: tuple[float, ...], i2v: bool = False
) -> Flavour:
    extra = {
        "transformer_config": arch,
        "i2v": i2v,
        "sparse_attention": arch["attention_type"] == "nabla",
        "rope_scale_factor": rope,
    }
    return Flavour(name, _REPO.format(repo) if repo else None, what, extra=extra)


# RoPE scale factor per flavour, as its official config (kandinsky-5 configs/<name>.yaml,
# metrics.scale_factor): every Lite config is "_sd", (1, 2, 2) (k5_lite_t2v_{5s,10s}_{sft,pretrain}_sd,
# k5_lite_i2v_5s_sft_sd); the Pro flavours are the HD models (NABLA, resolution 1024), (1, 3.16, 3.16)
# (k5_pro_t2v_{5s,10s}_sft_hd, k5_pro_i2v_5s_sft_hd; the Pro pretrain models have no config of their own and
# take their SFT model's). The tiny test models follow Lite.
_SD, _HD = ROPE_SCALE_SD, ROPE_SCALE_HD
_FLAVOURS = [
    _flavour("t2v-lite-sft-5s", "T2V-Lite-sft-5s", "Lite 2B text-to-video, SFT, 5 s (default)", _LITE, _SD),
    _flavour(
        "t2v-lite-pretrain-5s", "T2V-Lite-pretrain-5s", "Lite 2B text-to-video, pretrain, 5 s", _LITE, _SD
    ),
    _flavour("t2v-lite-sft-10s", "T2V-Lite-sft-10s", "Lite 2B text-to-video, SFT, 10 s", _LITE_10S, _SD),
    _flavour(
        "t2v-lite-pretrain-10s",
        "T2V-Lite-pretrain-10s",
        "Lite 2B text-to-video, pretrain, 10 s",
        _LITE_10S,
        _SD,
    ),
    _flavour("t2v-pro-sft-5s-hd", "T2V-Pro-sft-5s", "Pro 19B text-to-video, SFT, 5 s, HD", _PRO_5S_HD, _HD),
    _flavour(
        "t2v-pro-pretrain-5s-hd",
        "T2V-Pro-pretrain-5s",
        "Pro 19B text-to-video, pretrain, 5 s, HD",
        _PRO_5S_HD,
        _HD,
    ),
    _flavour("t2v-pro-sft-10s-hd", "T2V-Pro-sft-10s", "Pro 19B text-to-video, SFT, 10 s, HD", _PRO_10S, _HD),
    _flavour(
        "t2v-pro-pretrain-10s-hd",
        "T2V-Pro-pretrain-10s",
        "Pro 19B text-to-video, pretrain, 10 s",
        _PRO_10S,
        _HD,
    ),
    _flavour("i2v-lite-5s", "I2V-Lite-5s", "Lite 2B image-to-video, 5 s", _LITE, _SD, i2v=True),
    _flavour(
        "i2v-pro-sft-5s", "I2V-Pro-sft-5s", "Pro 19B image-to-video, SFT, 5 s", _PRO_5S_HD, _HD, i2v=True
    ),
    _flavour(
        "tiny",
        None,
        "Tiny random text-to-video model built in memory (tests)",
        TINY_TRANSFORMER_CONFIG,
        _SD,
    ),
    _flavour(
        "tiny-i2v",
        None,
        "Tiny random image-to-video model built in memory (tests); "
        "cinetune.models.kandinsky5.tiny.save_tiny_checkpoint(folder, i2v=True) writes it as a folder",
        TINY_TRANSFORMER_CONFIG,
        _SD,
        i2v=True,
    ),
]
_I2V_MIN_FRAMES = 17
_ATTENTION_SUFFIXES = ("to_query", "to_key", "to_value", "out_layer")
_FEED_FORWARD = ("feed_forward.in_layer", "feed_forward.out_layer")
_MAX_SEQUENCE_LENGTH = 1024  # diffusers' Kandinsky 5 pipelines reject longer prompts


class TextEncoders(torch.nn.Module):
    """Qwen2.5-VL and CLIP as one module, so the cache builder moves and frees both together."""

    def __init__(self, qwen: torch.nn.Module, clip: torch.nn.Module) -> None:
        super().__init__()
        self.qwen, self.clip = qwen, clip


class Kandinsky5VideoFamily(ModelFamily):
    # regular attention runs unmasked (diffusers passes attn_mask=None); NABLA needs flex (`configure`)
    passes_attention_mask: ClassVar[bool] = False
    name: ClassVar[str] = "kandinsky5-video"
    flavours: ClassVar[dict[str, Flavour]] = {f.name: f for f in _FLAVOURS}
    default_flavour: ClassVar[str] = "t2v-lite-sft-5s"
    frame_rule: ClassVar[FrameRule] = FrameRule(temporal_multiple=4, spatial_multiple=16)
    # The official LoRA recipe's targets (TRAINING_FACTS section 3): the attention projections of self-
    # (text and visual blocks) and cross-attention and both feed-forward layers. peft matches a target as the
    # module's whole name or a dotted suffix of it, so `feed_forward.out_layer` never reaches the modulation
    # (`*_modulation.out_layer`) or output (`out_layer.out_layer`) layers that share the `out_layer` name.
    default_lora_targets: ClassVar[tuple[str, ...]] = (
        *(f"{attn}.{proj}" for attn in ("self_attention", "cross_attention") for proj in _ATTENTION_SUFFIXES),
        *_FEED_FORWARD,
    )
    default_max_sequence_length: ClassVar[int] = 512
    default_frame_rate: ClassVar[float] = 24.0
    pipeline_class: ClassVar[type] = LibraryClass("diffusers.Kandinsky5T2VPipeline")
    transformer_class: ClassVar[type] = LibraryClass("diffusers.Kandinsky5Transformer3DModel")
    latent_compression: ClassVar[tuple[int, int]] = (4, 8)
    transformer_blocks: ClassVar[tuple[str, ...]] = ("text_transformer_blocks", "visual_transformer_blocks")
    video_blocks: ClassVar[str] = "visual_transformer_blocks"
    video_blocks_config_key: ClassVar[str] = "num_visual_blocks"
    # Kandinsky5TransformerDecoderBlock(visual_embed (B, N, D), text_embed, time_embed (B, D), rope (B, N, 1,
    # d / 2, 2, 2), sparse_params): the time embedding is per sample.
    token_aligned_inputs: ClassVar[tuple[tuple[str, int], ...]] = (("visual_embed", 1), ("rope", 1))
    vae_class_name: ClassVar[str] = "AutoencoderKLHunyuanVideo"
    text_encoders: ClassVar[dict[str, str]] = {"text_encoder_1": "qwen", "text_encoder_2": "clip"}
    # ComfyUI's native Kandinsky 5 model uses the original module names, which diffusers kept.
    comfyui_renames: ClassVar[dict[str, str]] = {}

    @classmethod
    def make_loader(cls, source: str | None, flavour: Flavour) -> ComponentLoader:
        """`tiny-i2v` without a folder is the built-in tiny model too (same weights, image-conditioned)."""
        if source is None and flavour.name == "tiny-i2v":
            loader = ComponentLoader(None, "tiny")
            loader.flavour = flavour.name
            return loader
        return ComponentLoader(source or flavour.repo, flavour.name, flavour.revision)

    def __init__(self, loader: ComponentLoader) -> None:
        self.loader = loader
        spec = self.flavours[loader.flavour]
        self.conditions_on_image = bool(spec.extra.get("i2v"))
        self.rope_scale_factor: tuple[float, float, float] = spec.extra["rope_scale_factor"]
        if spec.extra.get("sparse_attention"):
            self.frame_rule = FrameRule(temporal_multiple=4, spatial_multiple=128)
        self.eval_dataset_id: str | None = None

    def configure(self, cfg: Any) -> dict[str, Any]:
        resolved = super().configure(cfg)
        self.eval_dataset_id = getattr(cfg, "eval_dataset_id", None)
        max_sequence_length = getattr(cfg, "max_sequence_length", None) or self.default_max_sequence_length
        if max_sequence_length > _MAX_SEQUENCE_LENGTH:
            raise ConfigError(
                f"max_sequence_length {max_sequence_length}: Kandinsky 5 takes at most "
                f"{_MAX_SEQUENCE_LENGTH} text tokens"
            )
        if self.flavours[self.loader.flavour].extra.get("sparse_attention"):
            if getattr(cfg, "tread_config", None) is not None:
                raise NotSupportedYet(
                    f"tread_config on the {self.loader.flavour} model is not supported yet: NABLA sparse "
                    "attention builds its block mask over the whole token grid"
                )
            # NABLA builds a flex-attention BlockMask: only diffusers' flex backend can run it.
            if cfg.attention_backend not in ("native", "flex"):
                raise ConfigError(
                    f"attention_backend '{cfg.attention_backend}': the {self.loader.flavour} model uses "
                    "NABLA sparse attention, which needs attention_backend 'flex'"
                )
            if cfg.attention_backend == "native":
                logger.info("NABLA sparse attention: using diffusers' flex attention backend")
                resolved["attention_backend"] = "flex"
            resolved.update(_nabla_compile(cfg.compile_transformer_blocks, self.loader.flavour))
        return resolved

    def video_hidden_size(self, config: Any) -> int:
        return int(config.model_dim)

    def configure_datasets(self, data: Any) -> None:
        """Image-to-video conditions on latent frame 0 and trains the others: a clip needs 2 latent frames."""
        super().configure_datasets(data)
        embeds = data.text_embeds
        if embeds is not None and "write_batch_size" in embeds.model_fields_set:
            logger.warning(
                "text_embeds dataset '%s': write_batch_size changes nothing for Kandinsky 5, which encodes "
                "captions one at a time (its text encoder runs without a mask, so a batch padded to its "
                "longest caption would change the shorter ones)",
                embeds.id,
            )
        if not self.conditions_on_image:
            return
        for ds in data.media:
            if ds.id == self.eval_dataset_id:
                continue  # conditioning images for validation, not trained on
            frames = min(ds.video.num_frames, ds.video.min_frames or ds.video.num_frames) if ds.video else 1
            if frames < 5:
                raise ConfigError(
                    f"dataset '{ds.id}': the image-to-video flavour {self.loader.flavour} trains on the "
                    f"frames after the first, so samples need at least 5 frames (got {frames}; image "
                    "datasets cannot train it)"
                )

    def component_identity(self, kind: str) -> str:
        if kind == "text":
            return "".join(
                self.loader.identity(s)
                for s in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
            )
        # I2V entries hold the first-frame latents too (the cache builder's key says whether tiles encoded).
        return f"{self.loader.identity('vae')}:i2v={self.conditions_on_image}"

    def synthetic_caption(self, config: dict[str, Any], num_tokens: int) -> dict[str, torch.Tensor]:
        return {
            "prompt_embeds": torch.randn(num_tokens, config["in_text_dim"]),
            "pooled_prompt_embeds": torch.randn(config["in_text_dim2"]),
        }

    def synthetic_latents(
        self, config: dict[str, Any], width: int, height: int, num_frames: int, frame_rate: float = 24.0
    ) -> dict[str, torch.Tensor]:
        shape = (config["in_visual_dim"], (num_frames - 1) // 4 + 1, height // 8, width // 8)
        out = {"latents": torch.randn(shape), "latents_std": torch.rand(shape) * 0.1}
        if self.conditions_on_image:
            out["image_latents"] = torch.randn(shape[0], 1, *shape[2:])
            out["image_latents_std"] = torch.rand(shape[0], 1, *shape[2:]) * 0.1
        return out

    # ---- loading -------------------------------------------------------------------------------------------
    def tiny_components(self) -> dict[str, Any]:
        from cinetune.models.kandinsky5 import tiny

        return tiny.tiny_components()

    def load_text_encoder(self, dtype: torch.dtype) -> tuple[Any, torch.nn.Module]:
        """((Qwen tokenizer, CLIP tokenizer), TextEncoders). The hub's Qwen2VLProcessor folder holds the
        tokenizer the processor calls for text, so the tokenizer alone is loaded."""
        if self.loader.is_builtin_tiny:
            parts = self.tiny_components()
            qwen, clip = parts["text_encoder"], parts["text_encoder_2"]
            tokenizers = (parts["tokenizer"], parts["tokenizer_2"])
            encoders = TextEncoders(qwen, clip)
            return tokenizers, encoders if dtype == torch.float32 else encoders.to(dtype)
        from transformers import (
            AutoTokenizer,
            CLIPTextModel,
            CLIPTokenizer,
            Qwen2_5_VLForConditionalGeneration,
        )

        tokenizers = (
            self.loader.load(AutoTokenizer, "tokenizer"),
            self.loader.load(CLIPTokenizer, "tokenizer_2"),
        )
        qwen = self.loader.load(Qwen2_5_VLForConditionalGeneration, "text_encoder", torch_dtype=dtype)
        clip = self.loader.load(CLIPTextModel, "text_encoder_2", torch_dtype=dtype)
        return tokenizers, TextEncoders(qwen, clip)

    def load_vae(self, dtype: torch.dtype) -> torch.nn.Module:
        return self.load_part(library_class(f"diffusers.{self.vae_class_name}"), "vae", dtype)

    def load_transformer(self, dtype: torch.dtype) -> torch.nn.Module:
        return self.load_part(self.transformer_class, "transformer", dtype)

    def load_scheduler(self) -> Any:
        return self.load_part(library_class("diffusers.FlowMatchEulerDiscreteScheduler"), "scheduler")

    # ---- encoding (used by the caches) ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(
        self, tokenizer: Any, text_encoder: torch.nn.Module, captions: list[str], max_sequence_length: int
    ) -> list[dict[str, torch.Tensor]]:
        """Per caption: Qwen embeddings of the prompt tokens (L, D) and the CLIP pooled vector (768,).

        One caption per call: the pipeline pads a batch to its longest prompt and encodes without a mask, and
        its transformer has no text mask either, so batching would change what a caption's tokens see.
        """
        qwen_tokenizer, clip_tokenizer = tokenizer
        pipe = self.pipeline_class(
            transformer=None,
            vae=None,
            text_encoder=text_encoder.qwen,
            tokenizer=qwen_tokenizer,
            text_encoder_2=text_encoder.clip,
            tokenizer_2=clip_tokenizer,
            scheduler=None,
        )
        param = next(text_encoder.parameters())
        out = []
        for caption in captions:
            qwen, clip, _ = pipe.encode_prompt(
                caption, max_sequence_length=max_sequence_length, device=param.device, dtype=param.dtype
            )
            out.append({"prompt_embeds": qwen[0].cpu(), "pooled_prompt_embeds": clip[0].cpu()})
        return out

    @torch.no_grad()
    def encode_video(self, vae: torch.nn.Module, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """pixels (B, 3, F, H, W) in [-1, 1] -> per sample posterior mean and std times the scaling factor.

        Image-to-video flavours also store the first frame encoded on its own, as the I2V pipeline encodes
        its conditioning image (a one-frame video).
        """
        param = next(vae.parameters())
        pixels = pixels.to(param.device, param.dtype)
        scale = vae.config.scaling_factor
        posterior = vae.encode(pixels).latent_dist
        entries = [
            {"latents": (posterior.mean[i] * scale).cpu(), "latents_std": (posterior.std[i] * scale).cpu()}
            for i in range(pixels.shape[0])
        ]
        if self.conditions_on_image:
            first = vae.encode(pixels[:, :, :1]).latent_dist
            for i, entry in enumerate(entries):
                entry["image_latents"] = (first.mean[i] * scale).cpu()
                entry["image_latents_std"] = (first.std[i] * scale).cpu()
        return entries

    # ---- training step inputs -----------------------------------------------------------------------------
    @staticmethod
    def collate_text(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Qwen embeddings zero-padded to the longest (the loss never feeds pads to the model), lengths."""
        lengths = [item["prompt_embeds"].shape[0] for item in items]
        dim = items[0]["prompt_embeds"].shape[1]
        embeds = torch.zeros(len(items), max(lengths), dim, dtype=items[0]["prompt_embeds"].dtype)
        for i, item in enumerate(items):
            embeds[i, : lengths[i]] = item["prompt_embeds"]
        return {
            "prompt_embeds": embeds,
            "prompt_lengths": torch.tensor(lengths),
            "pooled_prompt_embeds": torch.stack([item["pooled_prompt_embeds"] for item in items]),
        }

    @staticmethod
    def num_tokens(latent_shape: torch.Size) -> int:
        _, _, frames, height, width = latent_shape
        return frames * (height // 2) * (width // 2)

    @staticmethod
    def shift_mu(num_tokens: int) -> float:
        return SHIFT_MU

    def prepare_inputs(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        text: dict[str, torch.Tensor],
        frame_rate: float,
        dtype: torch.dtype,
        image_latents: torch.Tensor | None = None,
    ) -> ModelInputs:
        """Rectified-flow inputs for samples whose captions have one length (the model has no text mask).

        x_t = (1 - s) x0 + s eps, target eps - x0 as (B, F*H*W, 16) tokens, timestep 1000 s.
        """
        lengths = text["prompt_lengths"]
        if int(lengths.min()) != int(lengths.max()):
            raise ValueError("prepare_inputs takes captions of one token length; split the batch by length")
        length = int(lengths[0])
        device = latents.device
        batch, channels, frames, height, width = latents.shape

        def inputs_at(noisy: torch.Tensor, s: torch.Tensor) -> dict[str, Any]:
            """noisy: the loss stream's tokens (B, F*H*W, C); the image frame (I2V) is put back clean."""
            grid = noisy.reshape(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)
            return {
                "hidden_states": visual_input(grid, image_latents).to(dtype),
                "timestep": (s * 1000.0).to(device, dtype),
            }

        x0, eps = to_channels_last(latents).flatten(1, 3), to_channels_last(noise).flatten(1, 3)
        s = sigmas.view(-1, 1, 1).to(latents.dtype)
        kwargs = {
            **inputs_at((1.0 - s) * x0 + s * eps, sigmas),
            "encoder_hidden_states": text["prompt_embeds"][:, :length].to(device, dtype),
            "pooled_projections": text["pooled_prompt_embeds"].to(device, dtype),
            "visual_rope_pos": visual_rope_positions(latents.shape, device),
            "text_rope_pos": torch.arange(length, device=device),
            "scale_factor": self.rope_scale_factor,
            "return_dict": True,
        }
        mask = token_loss_mask(latents.shape, image_latents is not None, device)
        grid = (frames, height // 2, width // 2)  # the transformer's (1, 2, 2) patches, frame -> row -> col
        cond = None
        if image_latents is not None:  # latent frame 0 is the clean image: its tokens
            cond = torch.zeros(latents.shape[0], math.prod(grid), dtype=torch.bool, device=device)
            cond[:, : grid[1] * grid[2]] = True
        streams = [LossStream("video", eps - x0, mask=mask)]
        flow = FlowState(x0, eps, sigmas, inputs_at)
        return ModelInputs(kwargs, streams, video_grid=grid, cond_tokens=cond, flow=flow)

    def training_inputs(
        self,
        batch: Any,
        generator: torch.Generator,
        sigma_sampler: str,
        device: torch.device,
        dtype: torch.dtype,
        model_config: Any,
    ) -> list[ModelInputs]:
        """One forward per caption length in the batch (the model has no text mask; with B = 1 or equal
        lengths: one), each scored on its video tokens (all but an I2V first frame's)."""
        x0 = sample_latents(batch.latents, batch.latents_std, generator)
        noise = torch.randn(x0.shape, generator=generator)
        sigmas = sample_sigmas(x0.shape[0], SHIFT_MU, sigma_sampler, generator)
        if sigma_sampler == "uniform":
            # Kandinsky trains on sigmas shifted by scheduler_scale 5 (the logit-normal has it as its centre,
            # SHIFT_MU): 5 s / (1 + 4 s), s ~ U(0, 1).
            sigmas = shift_sigmas(sigmas, SCHEDULER_SCALE)
        image = None
        if self.conditions_on_image:
            std = batch.tensors.get("image_latents_std") if batch.use_std else None
            image = sample_latents(batch.tensors["image_latents"], std, generator)
        lengths = batch.text["prompt_lengths"]
        forwards = []
        for length in dict.fromkeys(lengths.tolist()):
            rows = (lengths == length).nonzero().flatten()
            text = {k: v[rows] for k, v in batch.text.items()}
            inputs = self.prepare_inputs(
                to_device(x0[rows], device),
                to_device(noise[rows], device),
                to_device(sigmas[rows], device),
                text,
                batch.frame_rate,
                dtype,
                image_latents=None if image is None else to_device(image[rows], device),
            )
            inputs.kwargs["sparse_params"] = sparse_params(model_config, inputs.kwargs["hidden_states"])
            inputs.rows = rows
            forwards.append(inputs)
        return forwards

    # ---- validation and export ---------------------------------------------------------------------------
    def build_pipeline(self, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler: Any) -> Any:
        """A pipeline without text encoders: validation passes cached prompt embeddings. Its RoPE scale factor
        is the flavour's constant, as in training (see `use_rope_scale_factor`)."""
        name = "Kandinsky5I2VPipeline" if self.conditions_on_image else "Kandinsky5T2VPipeline"
        pipeline_class = library_class(f"diffusers.{name}")
        pipe = pipeline_class(
            transformer=transformer,
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            scheduler=scheduler,
        )
        return self.use_rope_scale_factor(pipe)

    def use_rope_scale_factor(self, pipe: Any) -> Any:
        """Make a Kandinsky5T2VPipeline / Kandinsky5I2VPipeline pass the flavour's RoPE scale factor to the
        transformer at every size, instead of its own pixel-size rule (`self._get_scale_factor(height,
        width)`); on this instance only. Returns the pipeline."""
        scale = self.rope_scale_factor
        pipe._get_scale_factor = lambda height, width: scale
        return pipe

    @staticmethod
    def pipeline_text_kwargs(positive: dict[str, torch.Tensor], negative: dict[str, torch.Tensor]) -> dict:
        out = {}
        for prefix, entry in (("", positive), ("negative_", negative)):
            length = entry["prompt_embeds"].shape[0]
            out[f"{prefix}prompt_embeds_qwen"] = entry["prompt_embeds"][None]
            out[f"{prefix}prompt_embeds_clip"] = entry["pooled_prompt_embeds"][None]
            out[f"{prefix}prompt_cu_seqlens"] = torch.tensor([0, length], dtype=torch.int32)
        return out

    def generate(
        self,
        pipe: Any,
        positive: dict[str, torch.Tensor],
        negative: dict[str, torch.Tensor],
        *,
        width: int,
        height: int,
        num_frames: int,
        guidance_scale: float,
        num_inference_steps: int,
        frame_rate: float,
        generator: torch.Generator,
        device: torch.device,
        image: np.ndarray | None = None,
    ) -> GeneratedVideo:
        """Text-to-video, or image-to-video from `image` (uint8 H x W x 3) or, without one, from the first
        frame of a text-to-video generation of the same prompt (the model run with an empty condition)."""
        common = {
            "width": width,
            "height": height,
            "num_frames": num_frames,
            "guidance_scale": guidance_scale,
            "num_inference_steps": num_inference_steps,
            "generator": generator,
            "output_type": "np",
        }
        text = {k: v.to(device) for k, v in self.pipeline_text_kwargs(positive, negative).items()}
        self.use_rope_scale_factor(pipe)  # also when the pipeline was not made by build_pipeline
        if not self.conditions_on_image:
            return GeneratedVideo(frames=np.asarray(pipe(**text, **common).frames[0], dtype=np.float32))
        if num_frames < _I2V_MIN_FRAMES:
            # Kandinsky5I2VPipeline renormalises latent frames 0-3 against the frames after them: with none
            # after them it divides by an empty statistic and the video comes out NaN.
            logger.warning(
                "image-to-video validation needs at least %d frames; generating %d",
                _I2V_MIN_FRAMES,
                _I2V_MIN_FRAMES,
            )
            common["num_frames"] = _I2V_MIN_FRAMES
        if image is None:
            t2v = self.use_rope_scale_factor(self.pipeline_class(**pipe.components))
            t2v.set_progress_bar_config(disable=True)
            first = np.asarray(t2v(**text, **common).frames[0][0])
            image = (np.clip(first, 0, 1) * 255).round().astype(np.uint8)
        picture = Image.fromarray(fit_image(Image.fromarray(image), (width, height)))
        frames = pipe(image=picture, **text, **common).frames[0]
        return GeneratedVideo(frames=np.asarray(frames, dtype=np.float32))


def sparse_params(config: Any, hidden_states: torch.Tensor) -> dict | None:
    """NABLA sparse-attention parameters exactly as the pipelines build them; None for regular attention."""
    if config.attention_type != "nabla":
        return None
    _, _, height, width, _ = hidden_states.shape
    if (height // 2) % 8 or (width // 2) % 8:
        raise ConfigError(
            f"this model uses NABLA sparse attention, which needs sides that are multiples of 128 pixels; "
            f"got {width * 8}x{height * 8}"
        )
    pipeline = library_class("diffusers.Kandinsky5T2VPipeline")
    owner = SimpleNamespace(
        transformer=SimpleNamespace(config=config), fast_sta_nabla=pipeline.fast_sta_nabla
    )
    return pipeline.get_sparse_params(owner, hidden_states, hidden_states.device)


def _nabla_compile(asked: bool | None, flavour: str) -> dict[str, Any]:
    """flex attention run eagerly materialises the full score matrix (about 17 GB per head at 768x512, 10 s):
    the NABLA flavours compile the transformer blocks unless the config says otherwise."""
    if asked is None:
        logger.info(
            "NABLA sparse attention: compiling the transformer blocks (compile_transformer_blocks: true) so "
            "flex attention runs as a fused kernel; compile_transformer_blocks: false turns it off"
        )
        return {"compile_transformer_blocks": True}
    if not asked:
        logger.warning(
            "compile_transformer_blocks: false on the NABLA model %s: flex attention then runs eagerly and "
            "materialises the full attention matrix; expect out-of-memory at 10 s / HD sizes",
            flavour,
        )
    return {}
