"""Where LTX-2 weights come from: the combined original file, a diffusers folder, or the built-in tiny model.

`pretrained_model_name_or_path` may be
- a hub repo holding the combined file (Lightricks/LTX-2 or Lightricks/LTX-2.3; the flavour's default file,
  `ltx-2-19b-dev.safetensors` / `ltx-2.3-22b-dev.safetensors`, or `ltx2_checkpoint_filename` picks the file),
- a local folder holding the combined file (same key),
- the path of the `.safetensors` file itself,
- a diffusers-format folder (model_index.json, transformer/, vae/, ...), read by `ComponentLoader`.

The combined file is read lazily, one component at a time: its keys are listed without reading tensors, the
component's keys are renamed to the diffusers class (convert.py), its config is built from the file's metadata
and the tensor shapes (configs.py), the model is created without weights and the tensors are read straight
into
it in the requested dtype. Gemma and its tokenizer are not in the file: they come from `text_encoder/` and
`tokenizer/` beside it, else from the flavour's hub repo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open

from cinetune.errors import ConfigError
from cinetune.models.base import Flavour
from cinetune.models.loading import ComponentLoader
from cinetune.models.ltxvideo2 import configs
from cinetune.models.ltxvideo2.convert import component_keys, diffusers_key_map

logger = logging.getLogger(__name__)
DEFAULT_CHECKPOINT = "ltx-2-19b-dev.safetensors"
LTX2_3_CHECKPOINT = "ltx-2.3-22b-dev.safetensors"
TINY_FLAVOURS = {"tiny": "2.0", "tiny-2.3": "2.3"}  # built-in tiny models (tiny.py) by the release they mimic
_FROM_FILE = {
    "transformer": configs.transformer_config,
    "connectors": configs.connectors_config,
    "vae": configs.video_vae_config,
    "audio_vae": configs.audio_vae_config,
    "vocoder": configs.vocoder_config,
}
_GEMMA_PARTS = ("text_encoder", "tokenizer")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class LTX2Loader:
    """Same surface as ComponentLoader (`load`, `identity`, `source`, `flavour`, `is_builtin_tiny`).

    Where the source points is worked out on first use (`mode`): the family learns ltx2_checkpoint_filename
    from the train config after the loader exists.
    """

    def __init__(self, source: str | None, flavour: Flavour, checkpoint_filename: str | None = None) -> None:
        self.source = source
        self.flavour = flavour.name
        self.revision = flavour.revision
        self.fallback_repo = flavour.repo
        self.filename = checkpoint_filename or flavour.extra.get("checkpoint_filename", DEFAULT_CHECKPOINT)
        self.is_builtin_tiny = source is None and flavour.name in TINY_FLAVOURS
        if source is None and not self.is_builtin_tiny:
            raise ConfigError(f"flavour '{flavour.name}' has no hub repo: set pretrained_model_name_or_path")
        self._mode: str | None = "tiny" if self.is_builtin_tiny else None
        self._diffusers: ComponentLoader | None = None
        self._file: Path | None = None

    @property
    def mode(self) -> str:
        """'tiny', 'file' (a local combined file), 'hub' (a repo holding it) or 'diffusers' (a folder)."""
        if self._mode is None:
            mode = _mode(self.source, self.filename)
            if mode == "diffusers":
                self._diffusers = ComponentLoader(self.source, self.flavour, self.revision)
            if mode == "file":
                path = Path(self.source)
                self._file = path if self.source.endswith(".safetensors") else path / self.filename
            self._mode = mode
        return self._mode

    @property
    def is_local(self) -> bool:
        return self.source is not None and Path(self.source).exists()

    # ---- paths ---------------------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        """The combined file, downloaded from the hub on first use."""
        if self.mode == "file":
            return self._file
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(self.source, self.filename, revision=self.revision))
        except Exception as exc:  # network, auth, missing file: all need the same advice
            raise ConfigError(
                f"could not get {self.filename} from '{self.source}': {str(exc).splitlines()[0]}. "
                "Check the hub id, ltx2_checkpoint_filename and your network / HF token, or point "
                "pretrained_model_name_or_path at the local .safetensors file."
            ) from exc

    def _gemma_loader(self) -> ComponentLoader:
        if self.mode == "hub":
            return ComponentLoader(self.source, self.flavour, self.revision)
        folder = self._file.parent if self._file is not None else Path(self.source)
        if all((folder / part).is_dir() for part in _GEMMA_PARTS):
            return ComponentLoader(str(folder), self.flavour, None)
        if self.fallback_repo is None:
            raise ConfigError(
                f"no Gemma text encoder beside {self._file}: put the text_encoder/ and tokenizer/ "
                "folders of the LTX-2 hub repo next to the checkpoint"
            )
        logger.info("text encoder: not beside %s, using %s", self._file, self.fallback_repo)
        return ComponentLoader(self.fallback_repo, self.flavour, self.revision)

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, cls: type, subfolder: str, **kwargs: Any) -> Any:
        if self.mode == "diffusers":
            if subfolder == "vocoder":
                cls = self._diffusers_vocoder_class()
            return self._diffusers.load(cls, subfolder, **kwargs)
        if subfolder in _GEMMA_PARTS:
            return self._gemma_loader().load(cls, subfolder, **kwargs)
        if subfolder not in _FROM_FILE:
            raise ConfigError(f"the LTX-2 combined checkpoint has no '{subfolder}' component")
        return load_component(self.checkpoint_path(), subfolder, cls, kwargs.get("torch_dtype"))

    def _diffusers_vocoder_class(self) -> type:
        """LTX2Vocoder (2.0) or LTX2VocoderWithBWE (2.3), as the folder's vocoder/config.json names it."""
        path = Path(self.source) / "vocoder" / "config.json"
        name = json.loads(path.read_text()).get("_class_name") if path.is_file() else None
        from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE

        return LTX2VocoderWithBWE if name == LTX2VocoderWithBWE.__name__ else LTX2Vocoder

    def identity(self, subfolder: str) -> str:
        """Fingerprint for cache keys: the source and the size / time of the file(s) the component comes
        from."""
        if self.mode == "diffusers":
            return self._diffusers.identity(subfolder)
        parts: dict[str, Any] = {"source": self.source, "file": self.filename, "revision": self.revision}
        if subfolder in _GEMMA_PARTS and self._file is not None:
            folder = self._file.parent / subfolder
            parts["files"] = [
                [p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.glob("*"))
            ]
        elif self._file is not None and self._file.exists():
            stat = self._file.stat()
            parts["stat"] = [stat.st_size, stat.st_mtime_ns]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _mode(source: str, filename: str) -> str:
    path = Path(source)
    if source.endswith(".safetensors"):
        if not path.is_file():
            raise ConfigError(f"pretrained_model_name_or_path: checkpoint file not found: {source}")
        return "file"
    if path.is_dir():
        if (path / "model_index.json").exists() or (path / "transformer").is_dir():
            return "diffusers"
        if (path / filename).is_file():
            return "file"
        raise ConfigError(
            f"pretrained_model_name_or_path '{source}' holds neither {filename} (set "
            "ltx2_checkpoint_filename to the combined .safetensors file it holds) nor a diffusers-format "
            "model (model_index.json, transformer/)"
        )
    # a hub id is owner/name, where the name may hold dots (Lightricks/LTX-2.3)
    if path.is_absolute() or source.startswith(".") or not _HUB_ID.fullmatch(source):
        raise ConfigError(f"pretrained_model_name_or_path: '{source}' does not exist")
    return "hub"


def read_metadata(path: Path) -> tuple[list[str], dict[str, Any] | None]:
    """Keys of the file and its original config (None when the file carries no `config` metadata)."""
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        meta = handle.metadata() or {}
    config = json.loads(meta["config"]) if "config" in meta else None
    return keys, config


def load_component(
    path: Path, component: str, cls: type, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """One component of the combined file as its diffusers class; only its tensors are read."""
    keys, meta = read_metadata(path)
    mapping = diffusers_key_map(component_keys(keys, component), component)
    if not mapping:
        raise ConfigError(
            f"{path} holds no {component} weights (no keys with its prefix): not an LTX-2 checkpoint?"
        )
    with safe_open(str(path), framework="pt") as handle:
        shapes = {new: tuple(handle.get_slice(old).get_shape()) for old, new in mapping.items()}
        config = _FROM_FILE[component](meta, shapes)
        if component == "vocoder":  # with or without LTX-2.3's bandwidth extension, as the file holds
            cls = configs.vocoder_class(config)
        with init_empty_weights():
            model = cls.from_config(config)
        state = {}
        for old, new in mapping.items():
            tensor = handle.get_tensor(old)
            state[new] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    missing, unexpected = _check_keys(model, state)
    if missing or unexpected:
        raise ConfigError(
            f"{path}: the {component} weights do not match {cls.__name__} built from the file's config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)
