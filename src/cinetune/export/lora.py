"""LoRA files: the diffusers format (`pytorch_lora_weights.safetensors`) and the ComfyUI / original format.

diffusers keys: `transformer.<module>.lora_A.weight`, alpha and rank in the safetensors metadata
(`lora_adapter_metadata`). ComfyUI keys: `diffusion_model.<original module name>.lora_A.weight` plus a
`<module>.alpha` tensor, which ComfyUI reads as scale alpha / rank, so strength 1.0 gives the trained scale.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cinetune.errors import ConfigError
from cinetune.faults import fault_point

logger = logging.getLogger(__name__)
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
COMFYUI_FILE = "pytorch_lora_weights_comfyui.safetensors"
_METADATA_KEY = "lora_adapter_metadata"


def save_diffusers_lora(
    output_dir: Path,
    pipeline_class: type,
    model: torch.nn.Module,
    adapter_config: dict[str, Any],
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the LoRA of `model` in the layout `pipeline_class.load_lora_weights` reads."""
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    pipeline_class.save_lora_weights(
        output_dir,
        transformer_lora_layers=state,
        transformer_lora_adapter_metadata=adapter_config,
        weight_name=DIFFUSERS_FILE,
    )
    return Path(output_dir) / DIFFUSERS_FILE


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the adapter config (rank, alpha) stored in a diffusers LoRA file."""
    check_lora_file(path)
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata() or {}
    config: dict[str, Any] = {}
    if _METADATA_KEY in metadata:
        config = json.loads(metadata[_METADATA_KEY]).get("transformer", {}) or {}
        if not config:
            config = {
                k.split(".", 1)[1]: v
                for k, v in json.loads(metadata[_METADATA_KEY]).items()
                if k.startswith("transformer.")
            }
    return tensors, config


def check_lora_file(path: Path) -> int:
    """The number of LoRA tensors in a diffusers LoRA file; a ConfigError when it is missing, not a
    safetensors file (truncated, damaged), holds no LoRA weights, or holds non-finite values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"no LoRA file at {path}: train first, or pass the folder that holds {DIFFUSERS_FILE}"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = [k for k in handle.keys() if ".lora_A." in k or ".lora_B." in k]
            bad = [k for k in keys if not torch.isfinite(handle.get_tensor(k)).all()]
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file ({exc}): damaged or truncated") from exc
    if not keys:
        raise ConfigError(f"{path} holds no LoRA weights (no lora_A / lora_B tensors)")
    if bad:
        raise ConfigError(f"{path} holds non-finite LoRA weights (e.g. {bad[0]})")
    return len(keys)


def to_comfyui(tensors: dict[str, torch.Tensor], alpha: float | None, renames: dict[str, str]) -> dict:
    """diffusers keys -> `diffusion_model.` keys with the original module names, plus one alpha per module."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        # Rename whole dotted segments only: `proj_in` must not touch a longer name that contains it.
        name = ".".join(renames.get(part, part) for part in key.removeprefix("transformer.").split("."))
        out[f"diffusion_model.{name}"] = value
        if alpha is not None and name.endswith("lora_A.weight"):
            module = name.removesuffix(".lora_A.weight")
            out[f"diffusion_model.{module}.alpha"] = torch.tensor(float(alpha))
    return out


def export_comfyui(output_dir: Path, renames: dict[str, str]) -> Path:
    """Turn OUTPUT_DIR/pytorch_lora_weights.safetensors into the ComfyUI file beside it."""
    tensors, config = read_lora(Path(output_dir) / DIFFUSERS_FILE)
    rank = config.get("r")
    alpha = config.get("lora_alpha", rank)
    target = Path(output_dir) / COMFYUI_FILE
    save_file(
        to_comfyui(tensors, alpha, renames),
        str(target),
        metadata={"format": "comfyui", "rank": str(rank), "alpha": str(alpha)},
    )
    return target


@contextmanager
def staged_files(output_dir: Path, names: tuple[str, ...]) -> Iterator[Path]:
    """A staging folder for files that replace `names` in `output_dir` only once all are written: a run that
    dies while exporting leaves the previous files (or none), never a truncated one."""
    staging = Path(output_dir) / ".tmp-export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        for name in names:
            (staging / name).replace(Path(output_dir) / name)
            fault_point("export.file")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
