"""The ltxvideo2 family: LTX-2.0 (19B) and LTX-2.3 (22B) audio + video DiTs, Gemma3 text, on diffusers' LTX2
classes.

Facts followed (TRAINING_FACTS.md sections 0, 2, 4): video latents as LTX-Video (128 ch, 32x / 8x, normalized
posterior mean, frame -> row -> col tokens); Gemma3 prompts left-padded to 1024, 49 stacked hidden states,
frozen
connectors (text.py); audio 16 kHz stereo log-mel -> audio VAE -> 25 tokens/s (audio_latents.py); timesteps
passed to the transformer as 1000 sigma; sigmas from the LTX-2 trainer's stretched shifted logit-normal, each
modality with mu of its own token count (flow.py); loss = video + audio, each masked, per sample; first-frame
conditioning: clean first-frame tokens, timestep 0, no loss. LTX-2.0 cross-attention timesteps are each
stream's own (`use_cross_timestep=False`), as the released model was trained. LTX-2.3 (the same objective
and sigma sampling in the LTX-2 trainer) takes each stream's sigma for its prompt AdaLN; its A/V
cross-attention scale/shift take the stream's own per-token timesteps and the gates the other stream's sigma,
as ltx-core computes them since 1.1.4 (av_timesteps.py, hooked on the transformer when it is loaded for
training and when validation builds its pipeline); its text cache holds the per-modality projections
(text.py).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.models.base import (
    Flavour,
    FrameRule,
    GeneratedVideo,
    LibraryClass,
    ModelFamily,
    library_class,
    random_module,
)
from cinetune.models.ltxvideo.family import ltx_mu, pack_latents
from cinetune.models.ltxvideo2 import audio_latents, configs, pipelines, tiny_configs
from cinetune.models.ltxvideo2 import text as text_module
from cinetune.models.ltxvideo2.checkpoint import (
    DEFAULT_CHECKPOINT,
    LTX2_3_CHECKPOINT,
    TINY_FLAVOURS,
    LTX2Loader,
)
from cinetune.models.ltxvideo2.convert import TRANSFORMER_RENAMES
from cinetune.models.ltxvideo2.flow import first_frame_mask, noisy_and_target, sample_sigmas
from cinetune.objectives import (
    FlowState,
    LossStream,
    ModelInputs,
    sample_latents,
    to_device,
    with_clean_tokens,
)

logger = logging.getLogger(__name__)

_FRAME_REASON = (
    "LTX-2's VAE compresses time 8x, so a clip has 8k+1 frames (49, 57, 97, 121); the "
    "'(frames - 1) % 4 == 0, use 61' advice fits 4x-temporal VAEs, not LTX-2"
)
_FLAVOURS = [
    Flavour(
        "2.0",
        "Lightricks/LTX-2",
        "LTX-2 19B dev (audio + video), from the combined checkpoint",
        extra={
            "checkpoint_filename": DEFAULT_CHECKPOINT,
            "transformer_config": configs.LTX2_0_TRANSFORMER,
            "connectors_config": configs.LTX2_0_CONNECTORS,
        },
    ),
    Flavour(
        "2.3",
        "Lightricks/LTX-2.3",
        "LTX-2.3 22B dev (audio + video: gated attention, prompt AdaLN, per-modality text projections, "
        "48 kHz vocoder), from the combined checkpoint",
        extra={
            "checkpoint_filename": LTX2_3_CHECKPOINT,
            "transformer_config": configs.LTX2_3_TRANSFORMER,
            "connectors_config": configs.LTX2_3_CONNECTORS,
        },
    ),
    Flavour(
        "tiny",
        None,
        "Tiny random LTX-2 built in memory (tests)",
        extra={
            "transformer_config": tiny_configs.TINY_TRANSFORMER_CONFIG,
            "connectors_config": tiny_configs.TINY_CONNECTORS_CONFIG,
        },
    ),
    Flavour(
        "tiny-2.3",
        None,
        "Tiny random LTX-2.3 built in memory (tests)",
        extra={
            "transformer_config": tiny_configs.TINY_2_3_TRANSFORMER_CONFIG,
            "connectors_config": tiny_configs.TINY_2_3_CONNECTORS_CONFIG,
        },
    ),
]
# Library classes, imported on first use (reading the flavours and options imports no diffusers model code).
_CONNECTORS = "diffusers.pipelines.ltx2.LTX2TextConnectors"
_AUDIO_VAE = "diffusers.AutoencoderKLLTX2Audio"
_VOCODER = "diffusers.pipelines.ltx2.vocoder.LTX2Vocoder"
_VIDEO_ONLY_TARGETS = tuple(
    f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_k", "to_q", "to_v", "to_out.0")
)


def ltx2_scheduler() -> Any:
    """LTX-2.0 inference schedule (diffusers' conversion): shift 0.95 -> 2.05 over 1024 -> 4096 tokens,
    terminal 0.1."""
    from cinetune.models.ltxvideo2 import tiny

    return tiny.tiny_scheduler()


@dataclass
class AudioInputs:
    """Clean audio tokens (B, T, C), their noise, sigmas (B,) and which tokens count in the loss (B, T)."""

    latents: torch.Tensor
    noise: torch.Tensor
    sigmas: torch.Tensor
    mask: torch.Tensor


class LTX2Family(ModelFamily):
    name: ClassVar[str] = "ltxvideo2"
    flavours: ClassVar[dict[str, Flavour]] = {f.name: f for f in _FLAVOURS}
    default_flavour: ClassVar[str] = "2.0"
    flavour_aliases: ClassVar[dict[str, str]] = {"dev": "2.0", "2.3-dev": "2.3"}
    unbuilt_flavours: ClassVar[dict[str, str]] = {
        "dev-fp4": "LTX-2 with fp4 weights",
        "dev-fp8": "LTX-2 with fp8 weights",
        "2.3-distilled": "the distilled LTX-2.3",
        "2.5-dev": "LTX-2.5",
        "2.5-distilled": "the distilled LTX-2.5",
    }
    frame_rule: ClassVar[FrameRule] = FrameRule(
        temporal_multiple=8, spatial_multiple=32, reason=_FRAME_REASON
    )
    # Every attention of the blocks: video and audio self / text cross attention and both A/V cross
    # attentions.
    default_lora_targets: ClassVar[tuple[str, ...]] = ("to_k", "to_q", "to_v", "to_out.0")
    default_max_sequence_length: ClassVar[int] = 1024
    default_frame_rate: ClassVar[float] = 25.0
    pipeline_class: ClassVar[type] = LibraryClass("diffusers.LTX2Pipeline")
    transformer_class: ClassVar[type] = LibraryClass("diffusers.LTX2VideoTransformer3DModel")
    latent_compression: ClassVar[tuple[int, int]] = (8, 32)
    vae_class_name: ClassVar[str] = "AutoencoderKLLTX2Video"
    text_encoders: ClassVar[dict[str, str]] = {"text_encoder_1": "gemma"}  # PromptEncoder.gemma
    comfyui_renames: ClassVar[dict[str, str]] = TRANSFORMER_RENAMES
    run_options: ClassVar[frozenset[str]] = frozenset(
        {"first_frame_conditioning_p", "ltx2_checkpoint_filename"}
    )
    supports_audio: ClassVar[bool] = True
    # LTX2VideoTransformerBlock: per-token AdaLN inputs (B, N | 1, D), RoPE (cos, sin) of shape (B, heads, N,
    # d), the A/V cross-attention masks (video queries in a2v, video keys in v2a) when given.
    token_aligned_inputs: ClassVar[tuple[tuple[str, int], ...]] = (
        ("hidden_states", 1),
        ("temb", 1),
        ("temb_ca_scale_shift", 1),
        ("temb_ca_gate", 1),
        ("video_rotary_emb", 2),
        ("ca_video_rotary_emb", 2),
        ("a2v_cross_attention_mask", 1),
        ("v2a_cross_attention_mask", 2),
    )
    image_validation_on_request: ClassVar[bool] = True
    default_vae_latent_sampling: ClassVar[str] = "mean"  # the LTX-2 trainer caches the posterior mean
    _ltx2_3: bool | None = None  # set from the transformer's config once loaded

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.max_sequence_length = self.default_max_sequence_length
        self.first_frame_p = 0.0
        self.audio_options: dict[str, Any] = {}  # dataset id -> its `audio` block
        self.eval_dataset: Any = None
        self.eval_links: Any = None
        self.eval_dataset_id: str | None = None
        self._modules: dict[str, torch.nn.Module] = {}
        self._eval_audio: dict[bytes, Any] = {}
        self.audio_in_channels: int | None = None

    @classmethod
    def make_loader(cls, source: str | None, flavour: Flavour) -> LTX2Loader:
        if "not_supported" in flavour.extra:
            raise NotSupportedYet(flavour.extra["not_supported"])
        return LTX2Loader(source or flavour.repo, flavour)

    @property
    def with_audio(self) -> bool:
        return bool(self.audio_options)

    def configure(self, cfg: Any) -> dict[str, Any]:
        """Options of this run: checkpoint file, text length, I2V probability, validation conditioning."""
        resolved = super().configure(cfg)  # image-to-video validation on request (and sound-to-video)
        self._use_checkpoint_filename(cfg.ltx2_checkpoint_filename)
        self.max_sequence_length = cfg.max_sequence_length or self.default_max_sequence_length
        connectors = self.flavours[self.loader.flavour].extra.get("connectors_config", {})
        self._check_text_length(connectors.get("video_connector_num_learnable_registers"))
        if self.max_sequence_length != self.default_max_sequence_length:
            logger.warning(
                "max_sequence_length=%d: LTX2Pipeline and ltx-core encode prompts at %d tokens and the "
                "connectors' registers and RoPE depend on that length, so this LoRA trains on a text "
                "context that inference elsewhere will not reproduce",
                self.max_sequence_length,
                self.default_max_sequence_length,
            )
        self.first_frame_p = cfg.first_frame_conditioning_p
        self.eval_dataset_id = getattr(cfg, "eval_dataset_id", None)
        return resolved

    def _use_checkpoint_filename(self, filename: str | None) -> None:
        """ltx2_checkpoint_filename picks the combined file in a hub repo or folder; where the weights come
        from elsewhere it would change nothing, so it is refused (or, for the built-in tiny model that tests
        and demos swap in, ignored with a warning)."""
        if self.loader.is_builtin_tiny:
            if filename:
                logger.warning(
                    "ltx2_checkpoint_filename '%s' is ignored: the built-in tiny model has no checkpoint",
                    filename,
                )
            return
        if filename:
            self.loader = LTX2Loader(self.loader.source, self.flavours[self.loader.flavour], filename)
        mode = self.loader.mode  # checks the path now, before any weight is read
        if filename and mode == "diffusers":
            raise ConfigError(
                f"ltx2_checkpoint_filename '{filename}' names a combined checkpoint file, but "
                f"pretrained_model_name_or_path '{self.loader.source}' is a diffusers-format folder, read "
                "component by component: remove ltx2_checkpoint_filename"
            )
        if (
            filename
            and self.loader.source.endswith(".safetensors")
            and Path(self.loader.source).name != filename
        ):
            raise ConfigError(
                f"ltx2_checkpoint_filename '{filename}' differs from the file pretrained_model_name_or_path "
                f"names ('{Path(self.loader.source).name}'): remove ltx2_checkpoint_filename, or point "
                "pretrained_model_name_or_path at the folder or repo that holds the file"
            )

    def configure_datasets(self, data: Any) -> None:
        """Audio blocks of the datasets (audio is trained when any has one) and the eval dataset."""
        super().configure_datasets(data)
        trained = [d for d in data.media if d.id != self.eval_dataset_id]  # the eval dataset only conditions
        self.audio_options = {d.id: d.audio for d in trained if d.audio is not None}
        for dataset_id, options in self.audio_options.items():
            audio_latents.check_audio_options(dataset_id, options)
        self.eval_dataset = next((d for d in data.media if d.id == self.eval_dataset_id), None)
        self.eval_links = None  # the eval clips' s2v audio files, when its audio comes from s2v_datasets
        if self.eval_dataset is not None and self.eval_dataset.s2v_datasets:
            from cinetune.data.s2v import AudioLinks

            self.eval_links = AudioLinks(data.audio_datasets(self.eval_dataset))

    def lora_targets(self) -> list[str]:
        """All attention with audio; without it, the video self and text attention (as the LTX-2 trainer)."""
        return list(self.default_lora_targets if self.with_audio else _VIDEO_ONLY_TARGETS)

    # ---- loading -------------------------------------------------------------------------------------------
    @property
    def ltx2_3(self) -> bool:
        """LTX-2.3 (prompt AdaLN, A/V cross-attention gates on the other stream's sigma): as the loaded
        transformer's config says (a 2.3 file works under any flavour), else the flavour's."""
        if self._ltx2_3 is not None:
            return self._ltx2_3
        return configs.is_ltx2_3(self.flavours[self.loader.flavour].extra.get("transformer_config", {}))

    def _load(self, cls: type, part: str, dtype: torch.dtype | None) -> Any:
        if self.loader.is_builtin_tiny:
            from cinetune.models.ltxvideo2 import tiny

            module = tiny.tiny_components(version=TINY_FLAVOURS[self.loader.flavour])[part]
            return module if dtype in (None, torch.float32) or not hasattr(module, "to") else module.to(dtype)
        kwargs = {"torch_dtype": dtype} if dtype is not None else {}
        return self.loader.load(cls, part, **kwargs)

    def load_text_encoder(self, dtype: torch.dtype) -> tuple[Any, torch.nn.Module]:
        from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

        tokenizer = self._load(AutoTokenizer, "tokenizer", None)
        gemma = self._load(Gemma3ForConditionalGeneration, "text_encoder", dtype)
        connectors = self._load(library_class(_CONNECTORS), "connectors", dtype)
        return tokenizer, text_module.make_prompt_encoder(gemma.eval(), connectors)

    def load_vae(self, dtype: torch.dtype) -> torch.nn.Module:
        return self._load(library_class(f"diffusers.{self.vae_class_name}"), "vae", dtype)

    def load_audio_vae(self, dtype: torch.dtype) -> torch.nn.Module:
        return self._load(library_class(_AUDIO_VAE), "audio_vae", dtype)

    def load_transformer(self, dtype: torch.dtype) -> torch.nn.Module:
        return self.prepare_transformer(self._load(self.transformer_class, "transformer", dtype))

    def prepare_transformer(self, model: torch.nn.Module) -> torch.nn.Module:
        """The release is read from the transformer's config; an LTX-2.3 one is hooked to ltx-core's A/V
        cross-attention timesteps (av_timesteps.py) before LoRA, checkpointing or DDP wrap it."""
        self.audio_in_channels = model.config.audio_in_channels
        self._ltx2_3 = configs.is_ltx2_3(model.config)
        if self._ltx2_3:
            from cinetune.models.ltxvideo2.av_timesteps import apply_av_cross_timesteps

            apply_av_cross_timesteps(model)
        return model

    def load_scheduler(self) -> Any:
        if getattr(self.loader, "mode", None) == "diffusers":
            return self.loader.load(library_class("diffusers.FlowMatchEulerDiscreteScheduler"), "scheduler")
        return ltx2_scheduler()

    def _module(self, part: str, cls: type, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        """A frozen helper (connectors, audio VAE, vocoder) loaded once, kept on `device`."""
        if part not in self._modules:
            self._modules[part] = self._load(cls, part, dtype).requires_grad_(False).eval()
        return self._modules[part].to(device)

    def validation_modules(self) -> list[torch.nn.Module]:
        """The audio VAE and vocoder `build_pipeline` moves to the VAE's device (the connectors stay: every
        training step runs them)."""
        return [self._modules[part] for part in ("audio_vae", "vocoder") if part in self._modules]

    def use_random_frozen_modules(self, device: torch.device, dtype: torch.dtype) -> None:
        """`cinetune bench`: text connectors of the flavour's config with random weights, built on `device`
        (what `connectors` then returns instead of loading them); `cinetune train` never calls this."""
        config = self.flavours[self.loader.flavour].extra["connectors_config"]
        module = random_module(library_class(_CONNECTORS), config, dtype, device)
        self._modules["connectors"] = module.requires_grad_(False).eval()

    def connectors(self, device: torch.device, dtype: torch.dtype) -> Any:
        module = self._module("connectors", library_class(_CONNECTORS), device, dtype)
        self._check_text_length(module.config.video_connector_num_learnable_registers)
        return module

    def _check_text_length(self, registers: int | None) -> None:
        """The connectors replace pads by their learnable registers, so the text length is a multiple of
        them (the flavour's config at resolve time, the loaded connectors' at load time)."""
        if registers and self.max_sequence_length % registers:
            raise ConfigError(
                f"max_sequence_length={self.max_sequence_length} must be a multiple of the connectors' "
                f"{registers} registers (LTX-2 encodes prompts at 1024 tokens)"
            )

    # ---- encoding (used by the caches) ---------------------------------------------------------------------
    def encode_text(
        self, tokenizer: Any, text_encoder: torch.nn.Module, captions: list[str], max_sequence_length: int
    ) -> list[dict[str, torch.Tensor]]:
        return text_module.encode_prompts(tokenizer, text_encoder, captions, max_sequence_length)

    @torch.no_grad()
    def encode_video(self, vae: torch.nn.Module, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """pixels (B, 3, F, H, W) in [-1, 1] -> per sample normalized posterior mean and std (C, F', H',
        W')."""
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

    def load_latent_encoders(self, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
        encoders = {"vae": self.load_vae(dtype)}
        if self.with_audio:
            encoders["audio_vae"] = self.load_audio_vae(dtype)
        return encoders

    def encode_sample(
        self, encoders: dict[str, torch.nn.Module], sample: Any, window: int, pixels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        tensors = super().encode_sample(encoders, sample, window, pixels)
        if self.with_audio:
            tensors.update(self._audio_entry(encoders["audio_vae"], sample, window))
        return tensors

    def _audio_entry(self, audio_vae: torch.nn.Module, sample: Any, window: int) -> dict[str, torch.Tensor]:
        """Audio tokens of the window (every step the audio VAE gives: ceil(mel_frames / 4), as the LTX-2
        trainer caches them) and their loss mask. A clip without audio (a dataset without an `audio` block, or
        allow_zero_audio and no track / no s2v file) gets the VAE's encoding of silence with the loss masked
        out."""
        from cinetune.data.audio import extract_audio

        frames, fps = sample.bucket.num_frames, sample.frame_rate
        rate = audio_vae.config.sample_rate
        options = self.audio_options.get(sample.dataset_id)
        span = None
        if options is not None and sample.audio is not None:  # its own track or its s2v dataset's file
            start = sample.window_starts[window] / fps
            span = extract_audio(sample.audio.path, start, frames / fps, rate, options.channels)
        samples = audio_latents.window_samples(frames, fps, rate)
        wave = span.samples if span is not None else np.zeros((2, samples), np.float32)
        tokens = audio_latents.encode_audio(audio_vae, wave)
        return {"audio_latents": tokens, "audio_mask": audio_latents.token_mask(span, tokens.shape[0])}

    def component_identity(self, kind: str) -> str:
        """The text cache also depends on the connectors' input projection, which ships with the
        transformer."""
        if kind == "text":
            return super().component_identity("text") + self.loader.identity("connectors")
        return super().component_identity(kind)

    def latent_key_fields(self, sample: Any) -> dict[str, Any]:
        if not self.with_audio:
            return {}
        options = self.audio_options.get(sample.dataset_id)
        fields = {
            "audio": options.model_dump() if options is not None else None,
            "audio_vae": self.loader.identity("audio_vae"),
            # entries hold every step the VAE gives (earlier ones were cut to the pipeline's length)
            "audio_steps": "vae",
        }
        source = sample.audio
        if source is not None and source.path != sample.path:  # an s2v file: its version counts too
            fields["audio_file"] = [str(source.path), source.size_bytes, source.mtime_ns]
        return fields

    # ---- training ------------------------------------------------------------------------------------------
    def synthetic_caption(self, config: dict[str, Any], num_tokens: int) -> dict[str, torch.Tensor]:
        """What `encode_text` caches for a caption of `num_tokens` real tokens: their projections (n, width):
        LTX-2.0's caption_channels, LTX-2.3's video and audio text widths side by side (text.cached_width)."""
        return {text_module.PROJ_KEY: torch.randn(num_tokens, text_module.cached_width(config))}

    def synthetic_latents(
        self, config: dict[str, Any], width: int, height: int, num_frames: int, frame_rate: float = 25.0
    ) -> dict[str, torch.Tensor]:
        """What `encode_sample` caches for one clip: latents and latents_std (C, F', H', W'), and with audio
        (a dataset with an `audio` block) audio_latents (the audio VAE's ceil(mel_frames / 4) steps,
        audio_in_channels) and a full audio_mask; without audio the audio stream runs as the 1-token isolated
        stub, as in training."""
        tensors = super().synthetic_latents(config, width, height, num_frames, frame_rate)
        if self.with_audio:
            steps = audio_latents.latent_steps(num_frames, frame_rate)
            tensors["audio_latents"] = torch.randn(steps, config["audio_in_channels"])
            tensors["audio_mask"] = torch.ones(steps)
        return tensors

    def collate_text(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return text_module.collate_prompts(items, self.max_sequence_length)

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
        audio: AudioInputs | None = None,
        audio_channels: int | None = None,
    ) -> ModelInputs:
        """Transformer kwargs and the loss streams (video, and audio when given): targets and token masks.

        latents / noise (B, C, F, H, W); first_frame (B, N) marks clean conditioning tokens; without `audio`
        the audio stream is a 1-token stub cut off from the video (isolate_modalities), which is exactly a
        video-only forward."""
        batch, _, frames, height, width = latents.shape
        device = latents.device
        x0, eps = pack_latents(latents), pack_latents(noise)
        # one timestep per sample when no token is clean: the same as per token, cheaper (on the meta device,
        # where the memory planner runs this, values are unknown: per token, the costlier case)
        if first_frame is not None and first_frame.device.type != "meta" and not bool(first_frame.any()):
            first_frame = None

        def inputs_at(noisy: torch.Tensor, s: torch.Tensor) -> dict[str, Any]:
            noisy, token_sigmas = with_clean_tokens(x0, noisy, s, first_frame)
            out = {"hidden_states": noisy.to(dtype), "timestep": token_sigmas * 1000.0, "sigma": s * 1000.0}
            if audio is None:  # the stub runs at the video's sigma
                out.update(audio_timestep=s * 1000.0, audio_sigma=s * 1000.0)
            return out

        s = sigmas.view(-1, 1, 1).to(x0.dtype)
        video = inputs_at((1 - s) * x0 + s * eps, sigmas)
        video_ctx, audio_ctx, ctx_mask = text_module.run_connectors(self.connectors(device, dtype), text)
        if audio is not None:
            audio_in, audio_target, _ = noisy_and_target(audio.latents, audio.noise, audio.sigmas)
            audio_t = audio.sigmas * 1000.0
        else:
            channels = audio_channels or self.audio_in_channels
            if channels is None:
                raise ValueError(
                    "prepare_inputs without audio needs audio_channels (or load_transformer first)"
                )
            audio_in, audio_target = torch.zeros(batch, 1, channels, device=device), None
            audio_t = sigmas * 1000.0
        kwargs = {
            "audio_hidden_states": audio_in.to(dtype),
            "encoder_hidden_states": video_ctx.to(dtype),
            "audio_encoder_hidden_states": audio_ctx.to(dtype),
            "encoder_attention_mask": ctx_mask,
            "audio_encoder_attention_mask": ctx_mask,
            "audio_timestep": audio_t,
            "audio_sigma": audio_t,
            **video,
            "num_frames": frames,
            "height": height,
            "width": width,
            "fps": frame_rate,
            "audio_num_frames": audio_in.shape[1],
            "isolate_modalities": audio is None,
            # 2.0: each stream's own timesteps. 2.3: the transformer's hook (load_transformer) replaces what
            # this selects by ltx-core's rule; True is diffusers' 2.3 default, kept for an unhooked model.
            "use_cross_timestep": self.ltx2_3,
            "return_dict": False,
        }
        # The LTX-2 trainer's loss: per sample masked video MSE + masked audio MSE (1:1), then the batch mean.
        video_mask = ~first_frame if first_frame is not None else None
        streams = [LossStream("video", eps - x0, output=0, mask=video_mask, per_sample=True)]
        if audio is not None:
            streams.append(LossStream("audio", audio_target, output=1, mask=audio.mask, per_sample=True))
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
        """One forward: video (first-frame conditioned with probability first_frame_conditioning_p) and, when
        the batch holds audio latents, audio with its own sigma. Draws come from `generator`."""
        x0 = sample_latents(batch.latents, batch.latents_std, generator)
        batch_size, _, frames, height, width = x0.shape
        num_video = frames * height * width
        noise = torch.randn(x0.shape, generator=generator)
        sigmas = sample_sigmas(batch_size, num_video, sigma_sampler, generator)
        first = first_frame_mask(batch_size, num_video, height * width, self.first_frame_p, generator)
        audio = None
        if "audio_latents" in batch.tensors:
            a0 = batch.tensors["audio_latents"]
            audio = AudioInputs(
                latents=to_device(a0, device),
                noise=to_device(torch.randn(a0.shape, generator=generator), device),
                sigmas=to_device(sample_sigmas(batch_size, a0.shape[1], sigma_sampler, generator), device),
                mask=to_device(batch.tensors["audio_mask"], device) > 0.5,
            )
        inputs = self.prepare_inputs(
            to_device(x0, device),
            to_device(noise, device),
            to_device(sigmas, device),
            batch.text,
            batch.frame_rate,
            dtype,
            first_frame=to_device(first, device) if bool(first.any()) else None,
            audio=audio,
            audio_channels=model_config.audio_in_channels,
        )
        return [inputs]

    # ---- validation ----------------------------------------------------------------------------------------
    def build_pipeline(self, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler: Any) -> Any:
        """T2V pipeline without Gemma; the audio VAE, vocoder and connectors join the VAE's device and
        dtype. An LTX-2.3 transformer samples with ltx-core's A/V cross-attention timesteps (hooked here if
        it was not loaded by `load_transformer`)."""
        param = next(vae.parameters())
        self._ltx2_3 = configs.is_ltx2_3(getattr(transformer, "module", transformer).config)
        if self._ltx2_3:
            from cinetune.models.ltxvideo2.av_timesteps import apply_av_cross_timesteps

            apply_av_cross_timesteps(transformer)
        self._parts = {
            "transformer": transformer,
            "vae": vae,
            "audio_vae": self._module("audio_vae", library_class(_AUDIO_VAE), param.device, param.dtype),
            "vocoder": self._module("vocoder", library_class(_VOCODER), param.device, param.dtype),
            "connectors": pipelines.CachedPromptConnectors(self.connectors(param.device, param.dtype)),
            "scheduler": scheduler,
        }
        return pipelines.build(self._parts, image=False)

    def pipeline_text_kwargs(
        self, positive: dict[str, torch.Tensor], negative: dict[str, torch.Tensor]
    ) -> dict:
        both = text_module.collate_prompts([positive, negative], self.max_sequence_length)
        embeds, mask = both[text_module.PROJ_KEY], both["prompt_attention_mask"]
        return {
            "prompt_embeds": embeds[:1],
            "prompt_attention_mask": mask[:1],
            "negative_prompt_embeds": embeds[1:],
            "negative_prompt_attention_mask": mask[1:],
        }

    def pipeline_call_kwargs(self, frame_rate: float) -> dict[str, Any]:
        return {"frame_rate": frame_rate, **(pipelines.LTX2_3_CALL if self.ltx2_3 else pipelines.LTX2_0_CALL)}

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
        """T2V; with `image` (validation_using_datasets) I2V, and S2V when that eval clip has audio to
        give."""
        call = {k: v.to(device) for k, v in self.pipeline_text_kwargs(positive, negative).items()}
        call.update(
            width=width,
            height=height,
            num_frames=num_frames,
            guidance_scale=guidance_scale,
            audio_guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type="np",
            **self.pipeline_call_kwargs(frame_rate),
        )
        condition = None
        if image is not None:
            pipe = pipelines.build(self._parts, image=True)
            call["image"] = Image.fromarray(image)
            condition = self._sound_condition(image, num_frames, frame_rate, pipe.audio_vae)
        hook = pipelines.audio_conditioned(pipe.transformer, condition[1]) if condition else nullcontext()
        with hook:
            output = pipe(**call)
        frames = np.asarray(output.frames[0], dtype=np.float32)
        if condition is not None:
            return GeneratedVideo(
                frames=frames, audio=condition[0], sample_rate=pipe.audio_vae.config.sample_rate
            )
        audio = output.audio[0]
        audio = (
            audio.float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
        )
        return GeneratedVideo(
            frames=frames, audio=audio, sample_rate=pipe.vocoder.config.output_sampling_rate
        )

    def _sound_condition(
        self, image: np.ndarray, num_frames: int, frame_rate: float, audio_vae: torch.nn.Module
    ) -> tuple[np.ndarray, torch.Tensor] | None:
        """(waveform, tokens) of the eval clip whose first frame is `image`, when the eval dataset has
        audio."""
        ds = self.eval_dataset
        if ds is None or ds.audio is None:
            return None
        key = image.tobytes()
        if key not in self._eval_audio:
            self._eval_audio[key] = audio_latents.eval_clip_audio(
                ds, self.eval_links, image, num_frames, frame_rate, audio_vae
            )
        return self._eval_audio[key]

    # ---- export --------------------------------------------------------------------------------------------
    @classmethod
    def export_comfyui(cls, output_dir: Any) -> Any:
        from cinetune.models.ltxvideo2.export import export_original

        return export_original(output_dir)
