"""`resolve(loaded) -> RunPlan`: the one place a config meets its model family.

`cinetune check`, `cache`, `train`, `bench` (and the web UI) all go through `resolve`, so they accept and
reject exactly the same configs with the same messages. Resolution builds the family and lets it read the
run's options (`configure`, `configure_datasets`), applies every rule that involves more than one key or a
family, checks the files a config names, and fills the defaults a family decides (text length, LoRA targets,
latent sampling, attention backend...) into a frozen copy of the config. Nothing changes the config after
this; `cinetune_config.json` in the output folder is that resolved copy.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cinetune.config import DataBackendConfig, DatasetConfig, LoadedConfig, TrainConfig
from cinetune.config.lycoris import read_lycoris_config
from cinetune.config.tread import resolve_routes
from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.export.manifest import verify_manifest
from cinetune.memory.rules import check_memory
from cinetune.models.base import Flavour, ModelFamily
from cinetune.models.registry import build_family

logger = logging.getLogger(__name__)
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class RunPlan:
    """A resolved run: the config with every default filled in, its datasets, and the configured family."""

    train: TrainConfig
    data: DataBackendConfig | None  # None for `cinetune bench`, which reads no dataset
    family: ModelFamily
    flavour: Flavour
    config_path: Path | None
    validation_prompts: Mapping[str, str]  # name -> prompt, from validation_prompt and the prompt library
    prompt_from_first_sample: bool  # validation_steps without a prompt: the first sample's caption
    warnings: tuple[str, ...]  # what resolution warned about (also logged)

    @property
    def media(self) -> list[DatasetConfig]:
        """Every enabled video and image dataset (the eval dataset too)."""
        return self.data.media if self.data is not None else []

    @property
    def training_media(self) -> list[DatasetConfig]:
        """The datasets trained on: all enabled media datasets but the eval dataset."""
        return [d for d in self.media if d.id != self.train.eval_dataset_id]

    def prompts_for(self, first_caption: str | None) -> dict[str, str]:
        """The run's validation prompts; `first_caption` (the first training sample's first caption) stands in
        for validation_prompt when the config sets validation_steps without one."""
        prompts = dict(self.validation_prompts)
        if self.prompt_from_first_sample and first_caption is not None:
            prompts["validation"] = first_caption
        return prompts


def resolve(loaded: LoadedConfig) -> RunPlan:
    """Build, configure and check everything a run needs short of weights and clips; fill the defaults."""
    with _collected_warnings() as warnings:
        train, data = loaded.train, loaded.data
        _check_attention_backend(train.attention_backend)
        family = build_family(train.model_family, train.model_flavour, train.pretrained_model_name_or_path)
        _check_backend_takes_masks(train.attention_backend, family)
        flavour = family.flavours[family.loader.flavour]
        resolved: dict[str, Any] = dict(family.configure(train))
        check_memory(train, family)
        if data is not None:
            _check_datasets(train, data, family)
            family.configure_datasets(data)
        _check_files(train)
        _check_video_blocks(train, family, resolved.get("compile_transformer_blocks"))
        _check_scheduled_sampling(train)
        _warn_moot_keys(train, data)
        prompts = _validation_prompts(train)
        from_first = bool(train.validation_steps) and not prompts and not train.disable_validation
        if from_first:
            logger.info(
                "validation_steps is set without validation_prompt: validating with the first caption of the "
                "first training sample"
            )
        resolved.update(_defaults(train, family, resolved))
        train = train.model_copy(update=resolved)
    return RunPlan(
        train=train,
        data=data,
        family=family,
        flavour=flavour,
        config_path=loaded.config_path,
        validation_prompts=MappingProxyType(prompts),
        prompt_from_first_sample=from_first,
        warnings=tuple(warnings),
    )


def _defaults(train: TrainConfig, family: ModelFamily, resolved: dict[str, Any]) -> dict[str, Any]:
    """Defaults the family decides, written into the resolved config (an explicit value is kept)."""
    return {
        "model_flavour": family.loader.flavour,
        "vae_latent_sampling": train.vae_latent_sampling or family.default_vae_latent_sampling,
        "max_sequence_length": train.max_sequence_length or family.default_max_sequence_length,
        "lora_alpha": train.effective_lora_alpha,
        "lora_target_modules": train.lora_target_modules or family.lora_targets(),
        "validation_seed": train.seed if train.validation_seed is None else train.validation_seed,
        "attention_backend": resolved.get("attention_backend", train.attention_backend),
        "compile_transformer_blocks": resolved.get(
            "compile_transformer_blocks", bool(train.compile_transformer_blocks)
        ),
    }


def _check_attention_backend(name: str) -> None:
    if name == "native":  # the default: no need to import diffusers to know it
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    names = [b.value for b in AttentionBackendName]
    if name not in names:
        raise ConfigError(f"attention_backend '{name}' is not a diffusers backend; one of {', '.join(names)}")


def mask_free_backends() -> frozenset[str]:
    """diffusers attention backends that raise on an attention mask (flash, _flash_3, _native_flash, sage...):
    read from each registered backend, so a diffusers release that adds or fixes one is followed."""
    import inspect

    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return frozenset(
        name.value
        for name, func in _AttentionBackendRegistry._backends.items()
        if "`attn_mask` is not supported" in inspect.getsource(func)
    )


def _check_backend_takes_masks(name: str, family: ModelFamily) -> None:
    if name == "native" or not family.passes_attention_mask or name not in mask_free_backends():
        return
    raise ConfigError(
        f"attention_backend '{name}' cannot run {family.name}: it rejects attention masks, and this model "
        "passes one (its text mask) at every step. Use native (PyTorch SDPA), _native_efficient or "
        "_native_cudnn"
    )


def _check_datasets(train: TrainConfig, data: DataBackendConfig, family: ModelFamily) -> None:
    """Rules between the train config, the datasets and the family."""
    if train.eval_dataset_id is not None and train.eval_dataset_id not in {d.id for d in data.media}:
        raise ConfigError(
            f"eval_dataset_id '{train.eval_dataset_id}' is not an enabled video or image dataset "
            f"(have: {', '.join(d.id for d in data.media)})"
        )
    if not [d for d in data.media if d.id != train.eval_dataset_id]:
        raise ConfigError(
            f"every enabled video or image dataset is the eval dataset ('{train.eval_dataset_id}'): add one "
            "to train on"
        )
    for ds in data.media:
        if ds.audio is not None and ds.audio.duration_interval is not None:
            logger.warning(
                "dataset '%s': audio.duration_interval (bucket rounding of audio-only datasets) changes "
                "nothing here: the sound of a video dataset spans exactly its sampled frames",
                ds.id,
            )


_SCHEDULED_SAMPLING = (
    "probability",
    "prob_start",
    "prob_end",
    "ramp_steps",
    "start_step",
    "ramp_shape",
    "strategy",
    "sampler",
)
# key -> (the key whose value makes it moot, a test of that value, why): a key set in the file that another
# key's value leaves without effect is accepted (quickstarts carry such pairs) and said so once.
_MOOT: dict[str, tuple[str, Any, str]] = {
    "num_train_epochs": ("max_train_steps", lambda v: v is not None, "max_train_steps decides the length"),
    "tracker_project_name": ("report_to", lambda v: v == "none", "report_to is none"),
    "tracker_run_name": ("report_to", lambda v: v == "none", "report_to is none"),
    "checkpoints_total_limit": ("checkpointing_steps", lambda v: v is None, "no checkpoint is written"),
    "lycoris_config": ("lora_type", lambda v: v != "lycoris", "lora_type is not lycoris"),
    **{
        f"crepa_{key}": ("crepa_enabled", lambda v: not v, "crepa_enabled is false")
        for key in (
            "block_index",
            "lambda",
            "adjacent_distance",
            "adjacent_tau",
            "model",
            "encoder_image_size",
        )
    },
    "crepa_drop_vae_encoder": (
        "crepa_enabled",
        lambda v: True,
        "cinetune's CREPA reads the vision features from the latent cache and holds no VAE while training",
    ),
    **{
        f"scheduled_sampling_{key}": (
            "scheduled_sampling_max_step_offset",
            lambda v: v == 0,
            "no rollout is made",
        )
        for key in _SCHEDULED_SAMPLING
    },
    "scheduled_sampling_probability": (
        "scheduled_sampling_ramp_steps",
        lambda v: v > 0,
        "scheduled_sampling_ramp_steps sets the probability",
    ),
    **{
        f"scheduled_sampling_{key}": (
            "scheduled_sampling_ramp_steps",
            lambda v: v == 0,
            "scheduled_sampling_ramp_steps is 0 (no ramp)",
        )
        for key in ("prob_start", "prob_end", "start_step", "ramp_shape")
    },
    **{
        key: (
            "lora_type",
            lambda v: v == "lycoris",
            "lora_type lycoris takes its settings from lycoris_config",
        )
        for key in ("lora_rank", "lora_alpha", "lora_dropout", "lora_init_type")
    },
    **{
        key: ("use_ema", lambda v: not v, "use_ema is false")
        for key in ("ema_decay", "ema_update_interval", "ema_device", "ema_warmup_steps", "ema_validation")
    },
}
_VALIDATION_KEYS = (
    "validation_steps",
    "validation_prompt",
    "validation_negative_prompt",
    "validation_prompt_library",
    "validation_resolution",
    "validation_num_video_frames",
    "validation_guidance",
    "validation_num_inference_steps",
    "validation_seed",
    "validation_using_datasets",
    "ema_validation",
)


def _warn_moot_keys(train: TrainConfig, data: DataBackendConfig | None) -> None:
    """Keys the config sets that other keys' values leave without effect: one warning each."""
    given = train.model_fields_set
    for key, (other, moots, why) in _MOOT.items():
        if (
            key in given
            and moots(getattr(train, other))
            and not (key == "num_train_epochs" and train.num_train_epochs == 0)
        ):
            logger.warning("%s changes nothing in this run: %s", key, why)
    if train.disable_validation:
        moot = [k for k in _VALIDATION_KEYS if k in given]
        if moot:
            logger.warning("%s change(s) nothing in this run: disable_validation is true", ", ".join(moot))
    embeds = data.text_embeds if data is not None else None
    if embeds is not None and "default" in embeds.model_fields_set and not embeds.default:
        logger.warning(
            "text_embeds dataset '%s' says default: false, but it is the only one: every caption and "
            "validation prompt embedding is cached in it anyway",
            embeds.id,
        )


def _check_files(train: TrainConfig) -> None:
    """Files the config names exist before anything heavy starts."""
    if train.init_lora is not None and not Path(train.init_lora).is_file():
        raise ConfigError(f"init_lora: file not found: {train.init_lora}")
    _check_adapter(train)
    if train.report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError as exc:
            raise ConfigError("report_to: 'wandb' needs the wandb package (pip install wandb)") from exc
    resolve_checkpoint(train.output_dir, train.resume_from_checkpoint)


def _check_scheduled_sampling(train: TrainConfig) -> None:
    if train.scheduled_sampling_reflexflow:
        raise NotSupportedYet(
            "scheduled_sampling_reflexflow: ReflexFlow's anti-drift and frequency-compensated loss terms are "
            "not supported yet; set it to false (scheduled sampling itself is built)"
        )
    rolls = train.scheduled_sampling_probability > 0 or (
        train.scheduled_sampling_ramp_steps > 0
        and max(train.scheduled_sampling_prob_start, train.scheduled_sampling_prob_end) > 0
    )
    if train.scheduled_sampling_max_step_offset > 0 and not rolls:
        logger.warning(
            "scheduled_sampling_max_step_offset changes nothing in this run: its probability is 0 (set "
            "scheduled_sampling_probability, or a ramp with scheduled_sampling_ramp_steps)"
        )


def _check_video_blocks(train: TrainConfig, family: ModelFamily, compiled: bool | None = None) -> None:
    """Block indices (TREAD routes, CREPA's block) against the flavour's number of video blocks, where its
    architecture is known (the loaded model's own count is checked again when training starts). `compiled`:
    the family's resolved compile_transformer_blocks (the NABLA flavours compile by default)."""
    if train.tread_config is None and not train.crepa_enabled:
        return
    if train.compile_transformer_blocks or (compiled and train.compile_transformer_blocks is None):
        # torch.compile of a block compiles its hooks too, and these keep Python state across blocks
        default = "" if train.compile_transformer_blocks else " (this flavour's default)"
        raise NotSupportedYet(
            f"compile_transformer_blocks{default} with tread_config or crepa_enabled is not supported yet: "
            "their hooks on the video blocks would be compiled with them; train one of them without it"
        )
    try:
        count = int(family.architecture_config().get(family.video_blocks_config_key) or 0)
    except NotSupportedYet:
        return
    if count and train.tread_config is not None:
        resolve_routes(list(train.tread_config.routes), count)
    if count and train.crepa_enabled and train.crepa_block_index >= count:
        raise ConfigError(
            f"crepa_block_index {train.crepa_block_index}: the {family.name} flavour has {count} video "
            "blocks (0-based)"
        )


def _check_adapter(train: TrainConfig) -> None:
    """LyCORIS and DoRA rules (the adapter itself is built in training/adapters.py)."""
    if train.lora_type != "lycoris":
        return
    if train.lycoris_config is None:
        raise ConfigError(
            "lora_type lycoris needs lycoris_config (a JSON file: algo, linear_dim, linear_alpha...)"
        )
    if train.use_dora:
        raise ConfigError(
            "use_dora is peft's DoRA for lora_type standard; LyCORIS sets it as dora_wd in lycoris_config"
        )
    if train.init_lora is not None:
        raise NotSupportedYet("init_lora with lora_type lycoris is not supported yet")
    read_lycoris_config(train.lycoris_config)


def _validation_prompts(cfg: TrainConfig) -> dict[str, str]:
    """name -> prompt, from validation_prompt and validation_prompt_library (a JSON file or an object)."""
    prompts: dict[str, str] = {}
    if cfg.validation_prompt:
        prompts["validation"] = cfg.validation_prompt
    library = cfg.validation_prompt_library
    if isinstance(library, Path):
        if not library.exists():
            raise ConfigError(f"validation_prompt_library: file not found: {library}")
        try:
            library = json.loads(library.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"validation_prompt_library: {library} is not valid JSON: {exc}") from exc
        if not isinstance(library, dict):
            raise ConfigError("validation_prompt_library: expected a JSON object of name: prompt")
    for name, prompt in (library or {}).items():
        prompts[re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))] = str(prompt)
    return prompts


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The run's checkpoint-N folders, oldest first."""
    folders = Path(output_dir).glob("checkpoint-*")
    found = [p for p in folders if _CHECKPOINT_NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_checkpoint(output_dir: Path, spec: str | None) -> Path | None:
    """'latest' -> the newest checkpoint whose manifest verifies (None if there is none yet); a path -> that
    folder, which must be an intact checkpoint. A damaged one is a ConfigError that says why."""
    if not spec:
        return None
    if spec == "latest":
        return _latest_intact(Path(output_dir))
    path = Path(spec)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / spec
    if not (path / "state.json").exists():
        raise ConfigError(
            f"resume_from_checkpoint: '{spec}' is not a checkpoint folder (no state.json in {path})"
        )
    reason = verify_manifest(path)
    if reason is not None:
        raise ConfigError(
            f"resume_from_checkpoint: {path} is damaged: {reason}. Resume from another checkpoint "
            "('latest' picks the newest intact one)"
        )
    return path


_told: set[tuple[str, str]] = set()


def _latest_intact(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    skipped = []
    for path in reversed(found):
        reason = verify_manifest(path)
        if reason is None:
            return path
        skipped.append(f"{path.name}: {reason}")
        if (str(path), reason) not in _told:  # resolve runs at check time and again when training starts
            _told.add((str(path), reason))
            logger.warning("resume_from_checkpoint latest: skipping %s: %s", path, reason)
    if found:
        raise ConfigError(
            f"resume_from_checkpoint: latest: no intact checkpoint in {output_dir} ({'; '.join(skipped)}). "
            "Move the damaged folders away to start from step 0"
        )
    return None


class _WarningList(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collected_warnings() -> Iterator[list[str]]:
    """The warnings logged by cinetune while resolving (they are still logged as usual)."""
    handler = _WarningList()
    root = logging.getLogger("cinetune")
    root.addHandler(handler)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)
