"""The ModelFamily interface and the typed containers the generic trainer reads.

A family is a small spec: what it can do is declared as data (frame rule, latent layout, LoRA targets),
and the few computations that differ between architectures are methods. The trainer never
branches on a family name.
"""

from __future__ import annotations

import functools
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from cinetune.data.frames import FrameRule
from cinetune.objectives import ModelInputs, sample_latents, sample_sigmas, to_device

logger = logging.getLogger(__name__)


def library_class(path: str) -> type:
    """'diffusers.LTXPipeline' -> the class, imported now (family modules name their diffusers and
    transformers classes this way so that reading a family's spec imports no model code)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class LibraryClass:
    """A class attribute that names a library class ('diffusers.LTXPipeline') and imports it on first access.

    `cinetune check` reads a family's flavours, frame rule and options; diffusers' model packages take
    seconds to import, and only loading, training and validation need them.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __get__(self, obj: Any, owner: type | None = None) -> type:
        return library_class(self.path)


def random_module(cls: type, config: dict[str, Any], dtype: torch.dtype, device: torch.device) -> Any:
    """A diffusers model of `config` with random weights, allocated and initialised directly on `device` in
    `dtype` (what `cinetune bench` trains; speed and memory do not depend on the values)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
    try:
        with torch.device(device):
            return cls.from_config(config)
    finally:
        torch.set_default_dtype(previous)


def keeps_global_rng(build: Callable[..., Any]) -> Callable[..., Any]:
    """For tiny-model builders that seed torch: loading a model must not reseed the run's global RNG
    (LoRA init, dropout, a resumed run's restored states)."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng():
            return build(*args, **kwargs)

    return wrapper


@dataclass
class Flavour:
    """One release of a family: where its weights live and what it needs."""

    name: str
    repo: str | None
    description: str
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeneratedVideo:
    """What a validation generation returns: frames (F, H, W, 3) float in [0, 1], optional audio track."""

    frames: np.ndarray
    audio: np.ndarray | None = None  # (channels, samples) float in [-1, 1]
    sample_rate: int | None = None


@dataclass
class TextEmbeds:
    """Caption embeddings of the real tokens only (no padding): what the cache stores per caption."""

    tensors: dict[str, torch.Tensor]


class ModelFamily(ABC):
    """Interface every family implements: the ClassVars (data) and the abstract methods (computations)."""

    name: ClassVar[str]
    # Other names of flavours, as the quickstarts spell them (e.g. LTX-2 "dev" for "2.0").
    flavour_aliases: ClassVar[dict[str, str]] = {}
    # Flavours the quickstarts name that are not built yet: name -> what it is (rejected: not supported yet).
    unbuilt_flavours: ClassVar[dict[str, str]] = {}
    flavours: ClassVar[dict[str, Flavour]]
    default_flavour: ClassVar[str]
    frame_rule: ClassVar[FrameRule]
    default_lora_targets: ClassVar[tuple[str, ...]]
    default_max_sequence_length: ClassVar[int]
    default_frame_rate: ClassVar[float] = 25.0
    pipeline_class: ClassVar[type]
    transformer_class: ClassVar[type]
    latent_compression: ClassVar[tuple[int, int]]  # (temporal, spatial) of the video VAE
    # The transformer's repeated blocks, as the names of its nn.ModuleList attributes in forward order: what
    # offload, block swap, FSDP wrapping and gradient checkpointing act on. `video_blocks` names the list the
    # video tokens run through (token routing and representation alignment hook into it).
    transformer_blocks: ClassVar[tuple[str, ...]] = ("transformer_blocks",)
    video_blocks: ClassVar[str] = "transformer_blocks"
    # The transformer config field that holds the number of video blocks (plan-time checks of block ranges).
    video_blocks_config_key: ClassVar[str] = "num_layers"
    # The arguments of a video block aligned with the video tokens, and the axis of their tokens (tuples of
    # tensors: each one's); the first is the video hidden states. Token routing cuts all of them alike.
    token_aligned_inputs: ClassVar[tuple[tuple[str, int], ...]] = (
        ("hidden_states", 1),
        ("temb", 1),
        ("image_rotary_emb", 1),
    )
    comfyui_renames: ClassVar[dict[str, str]] = {}
    # The video VAE's diffusers class (what the VAE memory options act on: memory/vae.py).
    vae_class_name: ClassVar[str]
    # The text encoders the text cache runs, by config key (text_encoder_1_precision...) -> the submodule of
    # what `load_text_encoder` returns that is called ("": that module itself).
    text_encoders: ClassVar[dict[str, str]] = {"text_encoder_1": ""}
    # Train-config options the family acts on (`configure`); any other one set is rejected, never ignored.
    run_options: ClassVar[frozenset[str]] = frozenset()
    # Image-to-video: validation passes a conditioning image to `generate` (see training/validation.py).
    conditions_on_image: bool = False
    # A text-to-video family whose pipeline can also condition on a first frame (LTX-Video, LTX-2): validation
    # does so when the config asks (validation_using_datasets, with eval_dataset_id picking the clips).
    image_validation_on_request: ClassVar[bool] = False
    # Dataset `audio` blocks (audio extraction, audio latents, joint loss) are built for this family.
    supports_audio: ClassVar[bool] = False
    # The transformer passes an attention mask (LTX: the text mask): attention backends that reject masks
    # (flash, _native_flash, sage...) cannot run it, and the run plan says so before anything loads.
    passes_attention_mask: ClassVar[bool] = True
    # vae_latent_sampling when the config leaves it unset: "sample" (x0 from the posterior) or "mean".
    default_vae_latent_sampling: ClassVar[str] = "sample"

    @classmethod
    def make_loader(cls, source: str | None, flavour: Flavour) -> Any:
        """Where the weights come from; `registry.build_family` calls this (LTX-2 reads a combined file)."""
        from cinetune.models.loading import ComponentLoader

        return ComponentLoader(source or flavour.repo, flavour.name, flavour.revision)

    @classmethod
    def blocks(cls, model: torch.nn.Module, which: str | None = None) -> list[torch.nn.Module]:
        """The repeated blocks of a transformer (unwrapped or DDP-wrapped): all declared lists in order, or
        the list named `which`."""
        model = getattr(model, "module", model)
        names = cls.transformer_blocks if which is None else (which,)
        return [block for name in names for block in getattr(model, name)]

    def prepare_transformer(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the family does to every transformer it trains, loaded or built by `cinetune bench` (hooks
        that fix its inputs, facts read from its config); nothing by default. `load_transformer` calls it."""
        return model

    def video_hidden_size(self, config: Any) -> int:
        """Width of the video hidden states between the video blocks (CREPA's projector input)."""
        return int(config.num_attention_heads * config.attention_head_dim)

    def text_encoder_parts(self, encoder: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The text encoder modules of what `load_text_encoder` returned, by config key (quantization and
        offload act on each)."""
        return {key: encoder.get_submodule(name) for key, name in self.text_encoders.items()}

    def lora_targets(self) -> list[str]:
        """LoRA target modules when lora_target_modules is unset (may depend on `configure`)."""
        return list(self.default_lora_targets)

    def load_latent_encoders(self, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
        """The modules the latent cache encodes samples with (on the CPU); the video VAE by default."""
        return {"vae": self.load_vae(dtype)}

    def encode_sample(
        self, encoders: dict[str, torch.nn.Module], sample: Any, window: int, pixels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """One cache entry of a sample window; pixels (3, F, H, W) in [-1, 1]. Families with audio add
        theirs."""
        (tensors,) = self.encode_video(encoders["vae"], pixels.unsqueeze(0))
        return tensors

    def latent_key_fields(self, sample: Any) -> dict[str, Any]:
        """Extra fields of a sample's latent cache key (e.g. audio settings); none by default."""
        return {}

    @classmethod
    def export_comfyui(cls, output_dir: Any) -> Any:
        """The ComfyUI / original-format LoRA beside the diffusers file; the path written."""
        from cinetune.export.lora import export_comfyui

        return export_comfyui(output_dir, cls.comfyui_renames)

    def configure_datasets(self, data: Any) -> None:
        """Read the dataset config (after `configure`). The base rejects dataset features it does not
        build."""
        from cinetune.errors import NotSupportedYet

        with_audio = [d.id for d in data.media if d.audio is not None]
        if with_audio and not self.supports_audio:
            raise NotSupportedYet(
                f"dataset '{with_audio[0]}': 'audio' blocks and s2v_datasets (audio training) are not "
                f"supported yet for the {self.name} family; remove them to train on video only"
            )

    def configure(self, cfg: Any) -> dict[str, Any]:
        """Read the per-run options of the train config (once, from `plan.resolve`); reject those the family
        does not build. Returns the config values the family resolves (defaults it fills, e.g. an attention
        backend a flavour needs): the plan applies them; the config itself is never changed."""
        from cinetune.errors import ConfigError, NotSupportedYet

        options = (
            "first_frame_conditioning_p",
            "ltx2_checkpoint_filename",
        )
        for key in options:
            if getattr(cfg, key, False) and key not in self.run_options:
                raise NotSupportedYet(f"{key} is not supported yet for the {self.name} family")
        if self.image_validation_on_request:
            self.conditions_on_image = bool(getattr(cfg, "validation_using_datasets", False))
            if getattr(cfg, "eval_dataset_id", None) and not self.conditions_on_image:
                raise ConfigError(
                    "eval_dataset_id picks the clips image-to-video validation conditions on; "
                    f"{self.name} validates that way with validation_using_datasets: true: set it, or remove "
                    "eval_dataset_id"
                )
        if not self.conditions_on_image and (
            getattr(cfg, "validation_using_datasets", False) or getattr(cfg, "eval_dataset_id", None)
        ):
            raise ConfigError(
                "validation_using_datasets / eval_dataset_id pick conditioning images for image-to-video "
                f"validation; {self.name} flavour '{self.loader.flavour}' generates from text only"
            )
        return {}

    def architecture_config(self) -> dict[str, Any]:
        """The flavour's transformer config (full size, or tiny), for `cinetune bench` without weights."""
        flavour = self.flavours[self.loader.flavour]
        if "transformer_config" not in flavour.extra:
            from cinetune.errors import NotSupportedYet

            raise NotSupportedYet(
                f"{self.name} flavour '{flavour.name}' has no architecture config for bench"
            )
        return dict(flavour.extra["transformer_config"])

    def validation_modules(self) -> list[torch.nn.Module]:
        """Frozen modules besides the VAE that validation puts on the device (they go back to the CPU after it
        with offload_during_startup); none by default."""
        return []

    def use_random_frozen_modules(self, device: torch.device, dtype: torch.dtype) -> None:
        """For `cinetune bench` only: give the frozen helper modules the training step runs besides the
        transformer (none by default) random weights of the flavour's architecture, so nothing is loaded."""
        return None

    def synthetic_caption(self, config: dict[str, Any], num_tokens: int) -> dict[str, torch.Tensor]:
        """Random cached-caption tensors of the exact shape `encode_text` produces for `num_tokens` tokens."""
        return {"prompt_embeds": torch.randn(num_tokens, config["caption_channels"])}

    def synthetic_latents(
        self, config: dict[str, Any], width: int, height: int, num_frames: int, frame_rate: float = 25.0
    ) -> dict[str, torch.Tensor]:
        """Random cached-latent tensors of the exact shape `encode_sample` produces for one clip."""
        temporal, spatial = self.latent_compression
        shape = (config["in_channels"], (num_frames - 1) // temporal + 1, height // spatial, width // spatial)
        return {"latents": torch.randn(shape), "latents_std": torch.rand(shape) * 0.1}

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
    ) -> GeneratedVideo:
        """One validation video through the family's diffusers pipeline, from cached prompt embeddings."""
        text = {k: v.to(device) for k, v in self.pipeline_text_kwargs(positive, negative).items()}
        output = pipe(
            **text,
            width=width,
            height=height,
            num_frames=num_frames,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=generator,
            output_type="np",
            **self.pipeline_call_kwargs(frame_rate),
        )
        return GeneratedVideo(frames=np.asarray(output.frames[0], dtype=np.float32))

    def tiny_components(self) -> dict[str, Any]:
        """The built-in tiny model's components by pipeline key (built fp32, deterministic)."""
        from cinetune.errors import ConfigError

        raise ConfigError(
            f"the {self.name} family has no built-in tiny model: set pretrained_model_name_or_path"
        )

    def load_part(self, cls: type, subfolder: str, dtype: torch.dtype | None = None) -> Any:
        """One component: the built-in tiny model's, or `cls.from_pretrained(source, subfolder=...)`."""
        if self.loader.is_builtin_tiny:
            module = self.tiny_components()[subfolder]
            # Built in fp32; cast only when asked for another dtype (diffusers warns on every .to(dtype)).
            return module if dtype in (None, torch.float32) else module.to(dtype)
        return self.loader.load(cls, subfolder, **({} if dtype is None else {"torch_dtype": dtype}))

    def component_identity(self, kind: str) -> str:
        """Fingerprint of what produces a cache entry: kind 'text' (encoders + tokenizers) or 'vae'."""
        if kind == "text":
            return self.loader.identity("text_encoder") + self.loader.identity("tokenizer")
        return self.loader.identity("vae")

    def pipeline_call_kwargs(self, frame_rate: float) -> dict[str, Any]:
        """Extra pipeline arguments of this family/flavour (frame rate, decode timestep...)."""
        return {}

    def training_inputs(
        self,
        batch: Any,
        generator: torch.Generator,
        sigma_sampler: str,
        device: torch.device,
        dtype: torch.dtype,
        model_config: Any,
    ) -> list[ModelInputs]:
        """The forward passes of one micro-batch and their loss streams (training/step.py runs the model and
        `compute_loss`). Every random draw comes from `generator` (a CPU generator), so a run is reproducible
        across devices and resumable. The default: one video stream, x0 drawn from the cached posterior, noise
        and sigmas with mu from the token count; families with more modalities or conditioning override it."""
        x0 = sample_latents(batch.latents, batch.latents_std, generator)
        noise = torch.randn(x0.shape, generator=generator)
        mu = self.shift_mu(self.num_tokens(x0.shape))
        sigmas = sample_sigmas(x0.shape[0], mu, sigma_sampler, generator)
        inputs = self.prepare_inputs(
            to_device(x0, device),
            to_device(noise, device),
            to_device(sigmas, device),
            batch.text,
            batch.frame_rate,
            dtype,
        )
        return [inputs]

    # ---- what each family must provide ---------------------------------------------------------------------
    loader: Any  # cinetune.models.loading.ComponentLoader

    @abstractmethod
    def load_text_encoder(self, dtype: torch.dtype) -> tuple[Any, torch.nn.Module]:
        """(tokenizer, text encoder) in eval mode, on the CPU."""

    @abstractmethod
    def load_vae(self, dtype: torch.dtype) -> torch.nn.Module:
        """The video VAE, on the CPU."""

    @abstractmethod
    def load_transformer(self, dtype: torch.dtype) -> torch.nn.Module:
        """The denoiser that LoRA trains, on the CPU, weights in `dtype`."""

    @abstractmethod
    def load_scheduler(self) -> Any:
        """The flow-matching scheduler the validation pipeline samples with."""

    @abstractmethod
    def encode_text(
        self, tokenizer: Any, text_encoder: torch.nn.Module, captions: list[str], max_sequence_length: int
    ) -> list[dict[str, torch.Tensor]]:
        """Per caption, the tensors the cache stores (real tokens only, no padding)."""

    @abstractmethod
    def encode_video(self, vae: torch.nn.Module, pixels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """pixels (B, 3, F, H, W) in [-1, 1] -> per sample the cached tensors; `latents` is required."""

    @abstractmethod
    def collate_text(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Cached caption tensors -> one padded batch with its mask."""

    def num_tokens(self, latent_shape: torch.Size) -> int:
        """Video tokens of a latent batch (B, C, F, H, W) at patch size 1: what the shift depends on.

        Families that patchify (Kandinsky's 1x2x2) override this."""
        _, _, frames, height, width = latent_shape
        return frames * height * width

    @abstractmethod
    def shift_mu(self, num_tokens: int) -> float:
        """Centre of the training sigma distribution (logit space) for this many tokens."""

    @abstractmethod
    def prepare_inputs(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        sigmas: torch.Tensor,
        text: dict[str, torch.Tensor],
        frame_rate: float,
        dtype: torch.dtype,
    ) -> ModelInputs:
        """Noisy model inputs and the loss streams (flow-matching target, token mask) of one forward pass."""

    @abstractmethod
    def build_pipeline(self, transformer: torch.nn.Module, vae: torch.nn.Module, scheduler: Any) -> Any:
        """The diffusers pipeline validation generates with (no text encoder: embeddings are cached)."""

    @abstractmethod
    def pipeline_text_kwargs(
        self, positive: dict[str, torch.Tensor], negative: dict[str, torch.Tensor]
    ) -> dict:
        """Cached embeddings of a prompt and the negative prompt -> the pipeline's prompt_embeds arguments."""
