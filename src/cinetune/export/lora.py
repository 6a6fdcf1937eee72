"""LoRA files: the diffusers format (`pytorch_lora_weights.safetensors`) and the ComfyUI / original format.

diffusers keys: `transformer.<module>.lora_A.weight`, alpha and rank in the safetensors metadata
(`lora_adapter_metadata`); DoRA adds `transformer.<module>.lora_magnitude_vector`. ComfyUI keys:
`diffusion_model.<original module name>.lora_A.weight` plus a `<module>.alpha` tensor, which ComfyUI reads as
scale alpha / rank, so strength 1.0 gives the trained scale; DoRA's magnitude becomes `<module>.dora_scale`
(out, 1), the output-axis weight decomposition peft trains: W' = m (W + dW) / ||W + dW|| per output row.

A LyCORIS run writes LyCORIS's own file under the same name (`lycoris_<module path with _>.lokr_w1`...,
`.alpha`), with the module paths in its metadata; `read_lora` gives it back keyed
`transformer.<module>.<part>` so the ComfyUI file is made the same way (`diffusion_model.<module>.lokr_w1`,
ComfyUI's LoKr / LoHa names).
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
# A LyCORIS LoKr run also writes this: peft's LoKr layout, for `pipe.transformer.load_lora_adapter(path,
# prefix="transformer")` (the pipelines' load_lora_weights take LoRA keys only).
DIFFUSERS_LOKR_FILE = "pytorch_lokr_weights_diffusers.safetensors"
_METADATA_KEY = "lora_adapter_metadata"
LYCORIS_MODULES_KEY = "cinetune_lycoris_modules"  # metadata of a LyCORIS file: its names -> module paths
_ADAPTER_PARTS = (".lora_A.", ".lora_B.", ".lokr_", ".hada_")


def save_diffusers_lora(
    output_dir: Path,
    pipeline_class: type,
    model: torch.nn.Module,
    adapter_config: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the LoRA of `model` (or its `state` given, peft's key names) in the layout
    `pipeline_class.load_lora_weights` reads."""
    if state is None:
        state = get_peft_model_state_dict(model)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
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
    if LYCORIS_MODULES_KEY in metadata:  # LyCORIS names -> the diffusers key layout
        modules = json.loads(metadata[LYCORIS_MODULES_KEY])
        renamed = {}
        for key, value in tensors.items():
            name, _, part = key.partition(".")
            renamed[f"transformer.{modules[name]}.{part}"] = value
        return renamed, {"lycoris": json.loads(metadata.get("lycoris_config", "{}"))}
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
            keys = [k for k in handle.keys() if any(part in k for part in _ADAPTER_PARTS)]
            bad = [k for k in keys if not torch.isfinite(handle.get_tensor(k)).all()]
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file ({exc}): damaged or truncated") from exc
    if not keys:
        raise ConfigError(f"{path} holds no LoRA weights (no lora_A / lora_B, LoKr or LoHa tensors)")
    if bad:
        raise ConfigError(f"{path} holds non-finite LoRA weights (e.g. {bad[0]})")
    return len(keys)


def to_comfyui(tensors: dict[str, torch.Tensor], alpha: float | None, renames: dict[str, str]) -> dict:
    """diffusers keys -> `diffusion_model.` keys with the original module names, plus one alpha per module."""
    out: dict[str, torch.Tensor] = {}
    for stored, tensor in tensors.items():
        key, value = dora_to_comfyui(stored, tensor)
        # Rename whole dotted segments only: `proj_in` must not touch a longer name that contains it.
        name = ".".join(renames.get(part, part) for part in key.removeprefix("transformer.").split("."))
        out[f"diffusion_model.{name}"] = value
        if alpha is not None and name.endswith("lora_A.weight"):
            module = name.removesuffix(".lora_A.weight")
            out[f"diffusion_model.{module}.alpha"] = torch.tensor(float(alpha))
    return out


def dora_to_comfyui(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """peft's DoRA magnitude (out,) -> ComfyUI's `dora_scale` (out, 1); any other tensor unchanged."""
    if key.endswith(".lora_magnitude_vector"):
        return key.removesuffix(".lora_magnitude_vector") + ".dora_scale", value.reshape(-1, 1)
    return key, value


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
def staged_files(output_dir: Path, names: tuple[str, ...] | None = None) -> Iterator[Path]:
    """A staging folder for files that replace `names` (default: every file written there) in `output_dir`
    only once all are written: a run that dies while exporting leaves the previous files (or none), never a
    truncated one."""
    staging = Path(output_dir) / ".tmp-export"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        for name in names if names is not None else sorted(p.name for p in staging.iterdir() if p.is_file()):
            (staging / name).replace(Path(output_dir) / name)
            fault_point("export.file")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
