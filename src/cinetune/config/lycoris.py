"""The lycoris_config file (lora_type: lycoris): read and checked by `plan.resolve` and by the adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cinetune.errors import ConfigError, NotSupportedYet

LYCORIS_ALGOS = ("lokr", "loha")


def read_lycoris_config(path: Path) -> dict[str, Any]:
    """The lycoris_config JSON file (SimpleTuner's shape: algo, multiplier, linear_dim, linear_alpha, the
    algorithm's own options, an optional apply_preset); a ConfigError says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"lycoris_config: file not found: {path}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"lycoris_config: {path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"lycoris_config: {path} must hold a JSON object")
    algo = str(config.get("algo", "lora")).lower()
    if algo not in LYCORIS_ALGOS:
        raise NotSupportedYet(
            f"lycoris_config algo '{algo}' is not supported yet; use one of {', '.join(LYCORIS_ALGOS)}"
        )
    if float(config.get("multiplier", 1.0)) != 1.0:
        raise ConfigError("lycoris_config: multiplier must be 1.0 for training (it scales the adapter)")
    return config
