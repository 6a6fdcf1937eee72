"""The ltxvideo family: how LTX-Video 0.9.x encodes text and video, and what its transformer is trained on.

Facts (TRAINING_FACTS.md section 1): T5 last hidden state, right-padded to the serving pipeline's length
(LTXPipeline 128 tokens, T5 run without a mask; LTXConditionPipeline 256, mask passed to T5), bool mask; VAE
latents normalized (z - mean_c) * sf / std_c; tokens ordered frame -> row -> col; target velocity eps - x0;
sigma = sigmoid(N(mu(N), 1)) with mu(N) = 0.95 + (N - 1024) * 1.1 / 3072 over video tokens N;
timestep round(1000 sigma); RoPE scale (8 / fps, 32, 32). First-frame conditioning
(`first_frame_conditioning_p`, LTX-Video-Trainer's `training_strategies.py`): one draw per batch; when drawn,
every sample's latent frame 0 tokens stay clean, get timestep 0 and no loss.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from cinetune.errors import ConfigError
from cinetune.models.base import (
    Flavour,
    FrameRule,
    GeneratedVideo,
    LibraryClass,
    ModelFamily,
    library_class,
)
from cinetune.models.loading import ComponentLoader
from cinetune.models.ltxvideo.configs import ARCH_2B, ARCH_13B, TINY_TRANSFORMER_CONFIG
from cinetune.objectives import (
    FlowState,
    LossStream,
    ModelInputs,
    first_frame_mask,
    sample_latents,
    sample_sigmas,
    to_device,
    with_clean_tokens,
)

logger = logging.getLogger(__name__)

# From 0.9.1 the VAE decoder is timestep-conditioned; diffusers' LTX docs decode with a little noise.
_DECODE = {"decode_timestep": 0.05, "decode_noise_scale": 0.025}

# The diffusers pipeline that serves a release at inference, and how it encodes prompts (its
# `_get_t5_prompt_embeds`): captions are cached exactly as that pipeline encodes them, and validation
# generates with it. LTXPipeline right-pads to 128 tokens and runs T5 WITHOUT the attention mask (the pads
# take part in T5's self-attention, so they change the real tokens' states); LTXConditionPipeline, the
# pipeline diffusers documents for 0.9.7 and 0.9.8 (and the length LTX-Video-Trainer uses), pads to 256 and
# passes the mask.
_SERVED_BY_LTX = {"pipeline": "LTXPipeline", "max_sequence_length": 128, "t5_attention_mask": False}
_SERVED_BY_CONDITION = {
    "pipeline": "LTXConditionPipeline",
    "max_sequence_length": 256,
    "t5_attention_mask": True,
}
_2B = {"transformer_config": ARCH_2B, **_SERVED_BY_LTX}
_2B_NOISE = {"transformer_config": ARCH_2B, "pipeline_kwargs": _DECODE, **_SERVED_BY_LTX}
_13B_NOISE = {"transformer_config": ARCH_13B, "pipeline_kwargs": _DECODE, **_SERVED_BY_CONDITION}

_FLAVOURS = [
    Flavour("0.9.0", "Lightricks/LTX-Video", "LTX-Video 2B v0.9 (first release)", extra=_2B),
    Flavour("0.9.1", "Lightricks/LTX-Video-0.9.1", "LTX-Video 2B v0.9.1", extra=_2B_NOISE),
    Flavour("0.9.5", "Lightricks/LTX-Video-0.9.5", "LTX-Video 2B v0.9.5", extra=_2B_NOISE),
    Flavour("0.9.7-13b-dev", "Lightricks/LTX-Video-0.9.7-dev", "LTX-Video 13B v0.9.7 dev", extra=_13B_NOISE),
    Flavour(
        "0.9.7-13b-distilled",
        "Lightricks/LTX-Video-0.9.7-distilled",
        "LTX-Video 13B v0.9.7 distilled",
        extra=_13B_NOISE,
    ),
    Flavour(
        "0.9.8-13b-distilled",
        "Lightricks/LTX-Video-0.9.8-13B-distilled",
        "LTX-Video 13B v0.9.8 distilled",
        extra=_13B_NOISE,
    ),
    Flavour(
        "tiny",
        None,
        "Tiny random model built in memory (tests and `make demo`)",
        extra={"transformer_config": TINY_TRANSFORMER_CONFIG, **_SERVED_BY_LTX},
    ),
]


def ltx_mu(num_tokens: int) -> float:
    """LTX resolution-dependent shift: mu(N) = 0.95 + (N - 1024) * 1.1 / 3072, N video tokens, not clamped."""
    return 0.95 + (num_tokens - 1024) * 1.1 / 3072


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B, F*H*W, C): tokens frame -> row -> col (patch size 1 in every release)."""
    return latents.flatten(2).transpose(1, 2)


def unpack_latents(tokens: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """(B, F*H*W, C) -> (B, C, F, H, W)."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, num_frames, height, width)


class LTXVideoFamily(ModelFamily):
    name: ClassVar[str] = "ltxvideo"
    flavours: ClassVar[dict[str, Flavour]] = {f.name: f for f in _FLAVOURS}
    default_flavour: ClassVar[str] = "0.9.5"
    frame_rule: ClassVar[FrameRule] = FrameRule(temporal_multiple=8, spatial_multiple=32)
    default_lora_targets: ClassVar[tuple[str, ...]] = ("to_k", "to_q", "to_v", "to_out.0")
    # Class defaults (the 2B releases); each instance takes its flavour's values (`_SERVED_BY_*`).
    default_max_sequence_length: ClassVar[int] = 128
    default_frame_rate: ClassVar[float] = 25.0
    transformer_class: ClassVar[type] = LibraryClass("diffusers.LTXVideoTransformer3DModel")
    latent_compression: ClassVar[tuple[int, int]] = (8, 32)
    vae_class_name: ClassVar[str] = "AutoencoderKLLTXVideo"
    # diffusers -> original (ComfyUI) module names, for LoRA targets outside the attention blocks.
    comfyui_renames: ClassVar[dict[str, str]] = {
        "proj_in": "patchify_proj",
        "time_embed": "adaln_single",
        "norm_q": "q_norm",
        "norm_k": "k_norm",
    }
    run_options: ClassVar[frozenset[str]] = frozenset({"first_frame_conditioning_p"})
    image_validation_on_request: ClassVar[bool] = True

    def __init__(self, loader: ComponentLoader) -> None:
        self.loader = loader
        served = self.flavours[loader.flavour].extra
        # The serving pipeline: validation generates with it and the LoRA is saved through it (LTXPipeline and
        # LTXConditionPipeline share LTXVideoLoraLoaderMixin, so the file loads into either).
        self.pipeline_name: str = served["pipeline"]
        # What the trainer encodes captions at when max_sequence_length is unset.
        self.default_max_sequence_length = served["max_sequence_length"]
        self.t5_attention_mask: bool = served["t5_attention_mask"]
        self.first_frame_p = 0.0

    @property
    def pipeline_class(self) -> type:
        return library_class(f"diffusers.{self.pipeline_name}")

    def configure(self, cfg: Any) -> dict[str, Any]:
        resolved = super().configure(cfg)
        self.first_frame_p = getattr(cfg, "first_frame_conditioning_p", 0.0)
        length = getattr(cfg, "max_sequence_length", None)
        if length and length != self.default_max_sequence_length:
            logger.warning(
                "max_sequence_length=%d: %s encodes prompts for flavour %s at %d tokens%s, so this LoRA "
                "trains on text embeddings that inference will not reproduce",
                length,
                self.pipeline_name,
                self.loader.flavour,
                self.default_max_sequence_length,
                "" if self.t5_attention_mask else " (T5 sees the pads: its states depend on the length)",
            )
        return resolved

    # ---- loading -------------------------------------------------------------------------------------------
    def tiny_components(self) -> dict[str, Any]:
        from cinetune.models.ltxvideo import tiny

        return tiny.tiny_components()

    def load_text_encoder(self, dtype: torch.dtype) -> tuple[Any, torch.nn.Module]:
        from transformers import AutoTokenizer, T5EncoderModel

        if self.loader.is_builtin_tiny:
            from cinetune.models.ltxvideo import tiny

            tokenizer = tiny.tiny_tokenizer()
        else:
            tokenizer = self.load_part(AutoTokenizer, "tokenizer")
        return tokenizer, self.load_part(T5EncoderModel, "text_encoder", dtype)

    def load_vae(self, dtype: torch.dtype) -> torch.nn.Module:
        return self.load_part(library_class(f"diffusers.{self.vae_class_name}"), "vae", dtype)

    def load_transformer(self, dtype: torch.dtype) -> torch.nn.Module:
        return self.load_part(self.transformer_class, "transformer", dtype)

    def load_scheduler(self) -> Any:
        scheduler = self.load_part(library_class("diffusers.FlowMatchEulerDiscreteScheduler"), "scheduler")
        if self.pipeline_name == "LTXConditionPipeline" and scheduler.config.use_dynamic_shifting:
            # LTXConditionPipeline sets its own sigma grid and passes no `mu`: diffusers would raise when
            # validation starts sampling; say it before training.
            raise ConfigError(
                f"flavour {self.loader.flavour} validates with LTXConditionPipeline, which cannot sample "
                f"with the dynamic-shift scheduler of '{self.loader.source}' (use_dynamic_shifting=true): "
                "point pretrained_model_name_or_path at a 0.9.7 / 0.9.8 diffusers folder, or set "
                "disable_validation"
            )
        return scheduler

    # ---- encoding (used by the caches) ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(
        self, tokenizer: Any, text_encoder: torch.nn.Module, captions: list[str], max_sequence_length: int
    ) -> list[dict[str, torch.Tensor]]:
        """As the flavour's serving pipeline: right-pad to max_sequence_length, run T5 with the attention mask
        (LTXConditionPipeline) or without it (LTXPipeline); keep the real tokens only.

        The transformer masks pads with a -10000 bias, so dropping them (and padding with zeros at collate
        time, masked again) gives the same result as the pipeline's padded embeddings.
        """
        device = next(text_encoder.parameters()).device
        inputs = tokenizer(
            captions,
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        mask = inputs.attention_mask.bool()
        hidden = text_encoder(
            inputs.input_ids.to(device), attention_mask=mask.to(device) if self.t5_attention_mask else None
        )[0]
        lengths = mask.sum(dim=1).tolist()
        return [{"prompt_embeds": hidden[i, : int(n)].cpu()} for i, n in enumerate(lengths)]

    @torch.no_grad()
    def encode_video(self, vae: torch.nn.Module, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """pixels (B, 3, F, H, W) in [-1, 1] -> per sample normalized posterior mean, std (C, F', H', W')."""
        param = next(vae.parameters())
        posterior = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
        mean_c = vae.latents_mean.view(1, -1, 1, 1, 1).to(posterior.mean)
        std_c = vae.latents_std.view(1, -1, 1, 1, 1).to(posterior.mean)
        scale = vae.config.scaling_factor
        latents = (posterior.mean - mean_c) * scale / std_c
        latents_std = posterior.std * scale / std_c
        return [
            {"latents": latents[i].cpu(), "latents_std": latents_std[i].cpu()}
            for i in range(latents.shape[0])
        ]

    # ---- training step inputs -----------------------------------------------------------------------------
    @staticmethod
    def collate_text(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad real-token embeddings to the longest in the batch; mask marks real tokens."""
        length = max(item["prompt_embeds"].shape[0] for item in items)
        dim = items[0]["prompt_embeds"].shape[1]
        embeds = torch.zeros(len(items), length, dim, dtype=items[0]["prompt_embeds"].dtype)
        mask = torch.zeros(len(items), length, dtype=torch.bool)
        for i, item in enumerate(items):
            n = item["prompt_embeds"].shape[0]
            embeds[i, :n] = item["prompt_embeds"]
            mask[i, :n] = True
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask}

    @staticmethod
    def shift_mu(num_tokens: int) -> float:
        return ltx_mu(num_tokens)

    def prepare_inputs(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        text: dict[str, torch.Tensor],
        frame_rate: float,
        dtype: torch.dtype,
        *,
        first_frame: torch.Tensor | None = None,
    ) -> ModelInputs:
        """Rectified-flow inputs: x_t = (1 - s) x0 + s eps, target eps - x0, timestep round(1000 s).

        `first_frame` (B, N) marks clean conditioning tokens (LTX-Video-Trainer's first-frame conditioning):
        they stay x0, get timestep 0 (the timestep becomes per token) and carry no loss."""
        _, _, frames, height, width = latents.shape
        x0, eps = pack_latents(latents), pack_latents(noise)

        def inputs_at(noisy: torch.Tensor, s: torch.Tensor) -> dict[str, Any]:
            noisy, token_sigmas = with_clean_tokens(x0, noisy, s, first_frame)
            return {"hidden_states": noisy.to(dtype), "timestep": torch.round(token_sigmas * 1000.0)}

        s = sigmas.view(-1, 1, 1).to(x0.dtype)
        kwargs = {
            **inputs_at((1 - s) * x0 + s * eps, sigmas),
            "encoder_hidden_states": text["prompt_embeds"].to(latents.device, dtype),
            "encoder_attention_mask": text["prompt_attention_mask"].to(latents.device),
            "num_frames": frames,
            "height": height,
            "width": width,
            "rope_interpolation_scale": (
                self.frame_rule.temporal_multiple / frame_rate,
                self.frame_rule.spatial_multiple,
                self.frame_rule.spatial_multiple,
            ),
            "return_dict": False,
        }
        # LTX-Video-Trainer: the mean over every loss token of the batch, mean(L * m) / mean(m).
        mask = None if first_frame is None else ~first_frame
        streams = [LossStream("video", eps - x0, mask=mask)]
        flow = FlowState(x0, eps, sigmas, inputs_at)
        grid = (frames, height, width)
        return ModelInputs(kwargs, streams, video_grid=grid, cond_tokens=first_frame, flow=flow)

    def training_inputs(
        self,
        batch: Any,
        generator: torch.Generator,
        sigma_sampler: str,
        device: torch.device,
        dtype: torch.dtype,
        model_config: Any,
    ) -> list[ModelInputs]:
        """One forward; with first_frame_conditioning_p, one draw per batch decides whether every sample's
        first latent frame conditions it (LTX-Video-Trainer). Draws come from `generator`."""
        x0 = sample_latents(batch.latents, batch.latents_std, generator)
        noise = torch.randn(x0.shape, generator=generator)
        batch_size, _, frames, height, width = x0.shape
        sigmas = sample_sigmas(batch_size, self.shift_mu(frames * height * width), sigma_sampler, generator)
        first = None
        if self.first_frame_p > 0:
            first = first_frame_mask(
                batch_size, frames * height * width, height * width, self.first_frame_p, generator, True
            )
        inputs = self.prepare_inputs(
            to_device(x0, device),
            to_device(noise, device),
            to_device(sigmas, device),
            batch.text,
            batch.frame_rate,
            dtype,
            first_frame=to_device(first, device) if first is not None and bool(first.any()) else None,
        )
        return [inputs]

    def component_identity(self, kind: str) -> str:
        """The text entries also depend on whether T5 saw the attention mask (the length is keyed already)."""
        identity = super().component_identity(kind)
        return f"{identity}:t5_mask={self.t5_attention_mask}" if kind == "text" else identity

    # ---- validation and export ---------------------------------------------------------------------------
    def build_pipeline(self, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler: Any) -> Any:
        """The flavour's serving pipeline without text encoder: validation passes cached prompt embeddings
        (LTXConditionPipeline without conditions generates text-to-video)."""
        return self.pipeline_class(
            transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=None, tokenizer=None
        )

    def generate(
        self,
        pipe: Any,
        positive: dict[str, torch.Tensor],
        negative: dict[str, torch.Tensor],
        *,
        image: np.ndarray | None = None,
        **kwargs: Any,
    ) -> GeneratedVideo:
        """Text-to-video; with `image` (validation_using_datasets) image-to-video: LTXImageToVideoPipeline for
        the flavours LTXPipeline serves, LTXConditionPipeline's own `image` for 0.9.7 / 0.9.8. The image is
        cropped and resized to the validation size as training clips are."""
        if image is None:
            return super().generate(pipe, positive, negative, **kwargs)
        from PIL import Image

        from cinetune.data import fit_image

        if self.pipeline_name == "LTXPipeline":
            pipe = library_class("diffusers.LTXImageToVideoPipeline")(**pipe.components)
            pipe.set_progress_bar_config(disable=True)
        size = (kwargs["width"], kwargs["height"])
        picture = Image.fromarray(fit_image(Image.fromarray(image), size))
        text = {k: v.to(kwargs["device"]) for k, v in self.pipeline_text_kwargs(positive, negative).items()}
        output = pipe(
            image=picture,
            **text,
            width=kwargs["width"],
            height=kwargs["height"],
            num_frames=kwargs["num_frames"],
            guidance_scale=kwargs["guidance_scale"],
            num_inference_steps=kwargs["num_inference_steps"],
            generator=kwargs["generator"],
            output_type="np",
            **self.pipeline_call_kwargs(kwargs["frame_rate"]),
        )
        return GeneratedVideo(frames=np.asarray(output.frames[0], dtype=np.float32))

    def pipeline_call_kwargs(self, frame_rate: float) -> dict[str, Any]:
        flavour = self.flavours[self.loader.flavour]
        return {"frame_rate": frame_rate, **flavour.extra.get("pipeline_kwargs", {})}

    @staticmethod
    def pipeline_text_kwargs(positive: dict[str, torch.Tensor], negative: dict[str, torch.Tensor]) -> dict:
        # The pipeline concatenates negative and positive embeddings for CFG: pad both to one length.
        both = LTXVideoFamily.collate_text([positive, negative])
        embeds, mask = both["prompt_embeds"], both["prompt_attention_mask"]
        return {
            "prompt_embeds": embeds[:1],
            "prompt_attention_mask": mask[:1],
            "negative_prompt_embeds": embeds[1:],
            "negative_prompt_attention_mask": mask[1:],
        }
