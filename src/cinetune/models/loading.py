"""Where a family's weights come from: a hub repo, a local diffusers folder, or the built-in tiny model."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from cinetune.errors import ConfigError, NotSupportedYet

logger = logging.getLogger(__name__)


class ComponentLoader:
    """Loads components by subfolder (`transformer`, `vae`, ...) with errors that say what to fix."""

    def __init__(self, source: str | None, flavour: str, revision: str | None = None) -> None:
        self.source = source
        self.flavour = flavour
        self.revision = revision
        self.is_builtin_tiny = source is None and flavour == "tiny"
        if source is None and not self.is_builtin_tiny:
            raise ConfigError(f"flavour '{flavour}' has no hub repo: set pretrained_model_name_or_path")
        if source is not None and source.endswith((".safetensors", ".ckpt", ".pt")):
            raise NotSupportedYet(
                f"pretrained_model_name_or_path '{source}' is a single-file checkpoint: not supported "
                "yet for this family; use a diffusers-format folder or hub repo"
            )

    @property
    def is_local(self) -> bool:
        return self.source is not None and Path(self.source).exists()

    def load(self, cls: type, subfolder: str, **kwargs: Any) -> Any:
        """cls.from_pretrained(source, subfolder=...) with a clear error when it cannot be had."""
        if self.is_local and not (Path(self.source) / subfolder).is_dir():
            raise ConfigError(
                f"pretrained_model_name_or_path '{self.source}' has no '{subfolder}' folder: expected a "
                "diffusers-format model folder (model_index.json, transformer/, vae/, text_encoder/, "
                "tokenizer/, scheduler/)"
            )
        try:
            return cls.from_pretrained(self.source, subfolder=subfolder, revision=self.revision, **kwargs)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"could not load {subfolder} from '{self.source}': {str(exc).splitlines()[0]}. "
                "Check the hub id and your network / HF token, "
                "or point pretrained_model_name_or_path at a local diffusers folder."
            ) from exc

    def identity(self, subfolder: str) -> str:
        """Short fingerprint of a component for cache keys: its source and its files' sizes and times."""
        parts: dict[str, Any] = {
            "source": self.source or f"builtin:{self.flavour}",
            "revision": self.revision,
        }
        if self.is_local:
            folder = Path(self.source) / subfolder
            for path in sorted(folder.glob("*")):
                if path.is_file():
                    stat = path.stat()
                    parts[path.name] = [stat.st_size, stat.st_mtime_ns]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
