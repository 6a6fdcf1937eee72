"""Weight-only quantization of frozen weights: the transformer's blocks (`base_model_precision`) before LoRA
is added on top, and the text encoders while caching (`text_encoder_1_precision`, `text_encoder_2_precision`).

Backends are the field's own: optimum-quanto (`quantize` + `freeze`: int8, int4, int2, float8 weights),
torchao (`quantize_` with `Int8WeightOnlyConfig` / `Float8WeightOnlyConfig`) and bitsandbytes (NF4
`Linear4bit`, CUDA only). Only `nn.Linear` layers are quantized: in the transformer, those of the declared
repeated blocks (`ModelFamily.blocks`: nearly all of its weights), so the input/output projections,
embeddings and modulation tables keep the compute dtype; in a text encoder every linear layer but the
language-model head.
The quantized layers stay `nn.Linear` subclasses (or hold torchao tensor subclasses), so peft wraps them with
LoRA as usual; the LoRA weights and their optimizer state stay fp32 and never see the quantized storage.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
from collections.abc import Iterable

import torch

from cinetune.errors import ConfigError

logger = logging.getLogger(__name__)

QUANTO_WEIGHTS = {
    "int8-quanto": "qint8",
    "int4-quanto": "qint4",
    "int2-quanto": "qint2",
    "fp8-quanto": "qfloat8",
}
TORCHAO_CONFIGS = {"int8-torchao": "Int8WeightOnlyConfig", "fp8-torchao": "Float8WeightOnlyConfig"}
# Storage bytes per quantized weight (the planner's figures; scales add ~1 value per output row or group).
BYTES_PER_WEIGHT = {
    "int8-quanto": 1.0,
    "int4-quanto": 0.5,
    "int2-quanto": 0.25,
    "fp8-quanto": 1.0,
    "int8-torchao": 1.0,
    "fp8-torchao": 1.0,
    "nf4-bnb": 0.5,
}
_PACKAGES = {"quanto": ("optimum.quanto", "optimum-quanto"), "torchao": ("torchao", "torchao")}


def is_quantized(precision: str) -> bool:
    return precision in BYTES_PER_WEIGHT


def check_quantization(precision: str, key: str) -> None:
    """Fail at `cinetune check` when the backend of `precision` cannot run here."""
    if not is_quantized(precision):
        return
    backend = precision.rsplit("-", 1)[1]
    if backend == "bnb":
        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                f"{key} {precision} needs bitsandbytes and a CUDA GPU (here: "
                f"{'no CUDA device' if not torch.cuda.is_available() else 'bitsandbytes not installed'}); "
                "int4-quanto stores weights in the same 4 bits on any device"
            )
        return
    module, package = _PACKAGES[backend]
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key} {precision} needs the {package} package (pip install {package})")


def apply_quantization(
    targets: Iterable[torch.nn.Module],
    precision: str,
    *,
    device: torch.device,
    via: str = "cpu",
    compute_dtype: torch.dtype = torch.bfloat16,
    exclude: tuple[str, ...] = (),
) -> int:
    """Quantize the linear layers of each target in place; returns how many layers were quantized.

    via='accelerator' moves one target at a time to `device`, quantizes it there and moves it back, so the
    peak device memory is one target's; via='cpu' quantizes where the weights are. Names matching an
    `exclude` pattern (fnmatch, relative to the target) are left as they are.
    """
    if not is_quantized(precision):
        return 0
    count = 0
    for target in list(targets):
        home = _device_of(target)
        here = device if via == "accelerator" and device.type != "cpu" else home
        target.to(here)
        names = [n for n, m in target.named_modules() if _wanted(n, m, exclude)]
        if not names:
            continue
        backend = precision.rsplit("-", 1)[1]
        if backend == "quanto":
            _quanto(target, precision, names)
        elif backend == "torchao":
            _torchao(target, precision, set(names))
        else:
            _bnb_nf4(target, names, compute_dtype, device)
            here = device  # bitsandbytes quantizes when the weights reach the GPU
        if here != home and backend != "bnb":
            target.to(home)
        target.requires_grad_(False)  # quanto's new modules create parameters that require grad
        count += len(names)
    return count


def _device_of(module: torch.nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _wanted(name: str, module: torch.nn.Module, exclude: tuple[str, ...]) -> bool:
    if not isinstance(module, torch.nn.Linear) or not name:
        return False
    if type(module) is not torch.nn.Linear and hasattr(module, "weight_qtype"):
        return False  # already quantized
    return not any(fnmatch.fnmatch(name, pattern) for pattern in exclude)


def _quanto(target: torch.nn.Module, precision: str, names: list[str]) -> None:
    from optimum import quanto

    quanto.quantize(target, weights=getattr(quanto, QUANTO_WEIGHTS[precision]), include=names)
    quanto.freeze(target)


def _torchao(target: torch.nn.Module, precision: str, names: set[str]) -> None:
    import torchao.quantization as ao

    config = getattr(ao, TORCHAO_CONFIGS[precision])()
    ao.quantize_(target, config, filter_fn=lambda _module, name: name in names)


def _bnb_nf4(
    target: torch.nn.Module, names: list[str], compute_dtype: torch.dtype, device: torch.device
) -> None:
    """Swap each linear layer for bitsandbytes' NF4 Linear4bit; weights quantize as they move to the GPU."""
    import bitsandbytes as bnb

    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        old = getattr(parent, child_name)
        new = bnb.nn.Linear4bit(
            old.in_features,
            old.out_features,
            bias=old.bias is not None,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            device="cpu",
        )
        new.weight = bnb.nn.Params4bit(old.weight.data.cpu(), requires_grad=False, quant_type="nf4")
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data.cpu(), requires_grad=False)
        setattr(parent, child_name, new.to(device))
