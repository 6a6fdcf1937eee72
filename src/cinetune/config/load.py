"""Load config files (JSON or TOML), apply --key=value overrides, turn schema errors into user messages."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ValidationError

from cinetune.config.dataset import AudioOptions, DataBackendConfig, DatasetConfig, VideoOptions
from cinetune.config.memory import QUANTIZED_PRECISIONS
from cinetune.config.train import TrainConfig
from cinetune.errors import ConfigError, NotSupportedYet

# Keys the well-known quickstarts use for features not built yet: rejected, never ignored.
NOT_SUPPORTED_YET: dict[str, str] = {
    "enable_block_swap": "block swap under this name (use musubi_blocks_to_swap)",
    "blocks_to_swap": "block swap under this name (use musubi_blocks_to_swap)",
    "crepa_config": "a CREPA config block (cinetune reads the crepa_* keys)",
    "quantize_activations": "quantization",
    "fuse_qkv_projections": "fused QKV projections",
    "deepspeed_config": "DeepSpeed",
    "push_to_hub": "pushing to the hub",
    "hub_model_id": "pushing to the hub",
    "controlnet": "ControlNet",
    "conditioning_data": "conditioning datasets",
    "vae_batch_size": "batched VAE caching",
    "ramtorch": "RamTorch offload",
}
# Key families with keys not built yet, by prefix (crepa_cumulative_neighbors, scheduled_sampling_order...).
NOT_SUPPORTED_PREFIXES: dict[str, str] = {
    "crepa_": "this CREPA option",
    "scheduled_sampling_": "this scheduled-sampling option",
    "ema_": "this EMA option",
    "fsdp_": "this FSDP option (cinetune shards the family's declared transformer blocks)",
    "tread_": "TREAD token routing",
}
# Values the quickstarts use for features not built yet: key -> {value prefix/suffix test, what it is}. A
# value the schema accepts (int8-quanto...) is built; others with these markers (int8dq-torchao...) are not.
_QUANTIZED = (("-quanto", "-torchao", "-bnb", "-sdnq", "-native", "-transformerengine"), "this quantization")
_NOT_SUPPORTED_VALUES: dict[str, tuple[tuple[str, ...], str]] = {
    "base_model_precision": _QUANTIZED,
    "text_encoder_1_precision": _QUANTIZED,
    "text_encoder_2_precision": _QUANTIZED,
    "quantize_via": (("pipeline",), "quantizing through the diffusers pipeline"),
    "scheduled_sampling_sampler": (("unipc", "dpm"), "rollout solvers other than euler"),
}
# Older and newer spellings of the same key (SimpleTuner renamed these): alias -> key.
KEY_ALIASES: dict[str, str] = {
    "validation_step_interval": "validation_steps",
    "checkpoint_step_interval": "checkpointing_steps",
    "crepa_encoder": "crepa_model",  # SimpleTuner's CREPA guide spells it so
}


@dataclass(frozen=True)
class LoadedConfig:
    """The two files as read and validated, before any family rule is applied (`plan.resolve` does that).
    `data` is None for `cinetune bench`, which reads no dataset."""

    train: TrainConfig
    data: DataBackendConfig | None
    config_path: Path | None


def read_file(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from exc


def _strip_dashes(raw: dict[str, Any]) -> dict[str, Any]:
    # Many quickstart config.json files spell keys as CLI flags ("--learning_rate").
    return {k.lstrip("-").replace("-", "_") if k.startswith("--") else k: v for k, v in raw.items()}


def parse_override_value(text: str) -> Any:
    """'2e-4' -> 2e-4, 'true' -> True, '[\"a\"]' -> ['a'], 'no' -> 'no': JSON if it parses, else the string.

    pydantic then coerces strings such as 'yes'/'off' for boolean keys, while a string key keeps 'no'.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # 'None' unsets a key; lower-case 'none' stays a string (report_to=none is a value, not an unset key)
        return None if text.strip() == "None" else text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """['--learning_rate=2e-4', '--seed', '3'] -> {'learning_rate': 2e-4, 'seed': 3}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}': overrides look like --key=value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 1
        else:
            value = "true"
        out[key.replace("-", "_")] = parse_override_value(value)
        i += 1
    return out


def _apply_aliases(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(raw)
    for alias, key in KEY_ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if key in out and out[key] != value:
            raise ConfigError(
                f"{where}: '{alias}' and '{key}' are the same setting with different values "
                f"({value!r} and {out[key]!r}); keep one"
            )
        out[key] = value
    return out


def _not_supported(key: str, value: Any, valid: list[str]) -> str | None:
    """What a key (or its value) asks for when that feature is not built yet, else None. A schema key is
    judged by its value only: the tables name the keys of a feature that are not built (yet)."""
    if key in NOT_SUPPORTED_YET and key not in valid:
        return NOT_SUPPORTED_YET[key]
    prefix = next((p for p in NOT_SUPPORTED_PREFIXES if key.startswith(p)), None)
    if prefix is not None and key not in valid:
        return NOT_SUPPORTED_PREFIXES[prefix]
    if key in _NOT_SUPPORTED_VALUES and isinstance(value, str) and value not in QUANTIZED_PRECISIONS:
        markers, what = _NOT_SUPPORTED_VALUES[key]
        if any(value == m or value.endswith(m) for m in markers):
            return what
    return None


def _check_keys(raw: dict[str, Any], model: type[BaseModel], where: str) -> None:
    valid = list(model.model_fields)
    for key, value in raw.items():
        feature = _not_supported(key, value, valid)
        if feature is not None:
            shown = f"'{key}'" if key not in valid else f"{key}={value!r}"
            raise NotSupportedYet(
                f"{where}: {shown} ({feature}) is not supported yet; "
                + ("remove the key to train without it" if key not in valid else "use another value")
            )
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: unknown key '{key}'{hint}")


def _format_validation(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = f" (got {got!r})" if loc and not isinstance(got, dict | list) else ""
        lines.append(f"{where}: {loc + ': ' if loc else ''}{msg}{shown}")
    return "\n".join(lines)


def build_train_config(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    raw = _apply_aliases(_strip_dashes(raw), where)
    _check_keys(raw, TrainConfig, where)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, where)) from exc


def build_data_config(raw: Any, where: str = "multidatabackend") -> DataBackendConfig:
    if isinstance(raw, dict) and "datasets" in raw:
        raw = raw["datasets"]
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of dataset entries")
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: entry {n} is not an object")
        label = f"{where}: dataset '{entry.get('id', n)}'"
        _check_keys(entry, DatasetConfig, label)
        if isinstance(entry.get("video"), dict):
            _check_keys(entry["video"], VideoOptions, f"{label} video block")
        if isinstance(entry.get("audio"), dict):
            _check_keys(entry["audio"], AudioOptions, f"{label} audio block")
    try:
        return DataBackendConfig.model_validate({"datasets": raw})
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, where)) from exc


def load_config(
    config_path: Path | None = None, overrides: dict[str, Any] | None = None, base_dir: Path | None = None
) -> LoadedConfig:
    """Read config.json/.toml and the dataset file it names; apply overrides; resolve relative paths.

    Relative paths in the files are taken from the working directory, as the quickstarts assume.
    """
    raw: dict[str, Any] = {}
    if config_path is not None:
        data = read_file(config_path)
        if not isinstance(data, dict):
            raise ConfigError(f"{config_path}: expected an object of key: value")
        raw.update(_strip_dashes(data))
    raw.update(overrides or {})
    train = build_train_config(raw, where=str(config_path or "config"))
    base = base_dir or Path.cwd()
    backend_path = train.data_backend_config
    if not backend_path.is_absolute():
        backend_path = base / backend_path
    data_cfg = build_data_config(read_file(backend_path), where=str(train.data_backend_config))
    return LoadedConfig(train=train, data=data_cfg, config_path=config_path)
