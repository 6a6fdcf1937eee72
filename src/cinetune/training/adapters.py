"""The trained adapter of a run: peft LoRA (optionally DoRA, `use_dora`) or a LyCORIS network (`lora_type:
lycoris`, LoKr / LoHa from the lycoris-lora package).

An adapter injects itself into the frozen transformer, gives its state to checkpoints (and takes it back),
says what a checkpoint must match (`shape`), and writes the exported file that `ModelFamily.export_comfyui`
turns into the ComfyUI one:

- LoRA / DoRA: the diffusers file (`transformer.<module>.lora_A/B.weight`, DoRA's
  `lora_magnitude_vector`), which the family's pipeline loads with `load_lora_weights`.
- LyCORIS: LyCORIS's own file (`lycoris_<module path with _>.lokr_w1`... and `.alpha`), which
  `lycoris.create_lycoris_from_weights` applies to a diffusers transformer; the file's metadata maps its
  names to the transformer's module paths, from which the ComfyUI file (`diffusion_model.<module>.lokr_w1`...)
  is written. LoKr also gets `pytorch_lokr_weights_diffusers.safetensors` (peft's LoKr layout, alpha baked),
  which diffusers' `transformer.load_lora_adapter(path, prefix="transformer")` loads; the pipelines'
  `load_lora_weights` take LoRA keys only, and diffusers has no LoHa loader.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from cinetune.config.lycoris import read_lycoris_config
from cinetune.errors import ConfigError
from cinetune.export.lora import (
    DIFFUSERS_FILE,
    DIFFUSERS_LOKR_FILE,
    LYCORIS_MODULES_KEY,
    save_diffusers_lora,
)
from cinetune.memory.fsdp import full

logger = logging.getLogger(__name__)
_PEFT_LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_NETWORK = "cinetune_lycoris"  # the attribute the LyCORIS network is registered under (DDP and .to() see it)


class PeftAdapter:
    """peft LoRA on the family's (or the config's) target modules; DoRA with use_dora."""

    kind = "lora"

    def __init__(self, cfg: Any) -> None:
        self.targets = cfg.lora_target_modules
        self.config = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            target_modules=cfg.lora_target_modules,
            lora_dropout=cfg.lora_dropout,
            init_lora_weights={"default": True, "gaussian": "gaussian"}[cfg.lora_init_type],
            use_dora=cfg.use_dora,
        )

    def inject(self, model: torch.nn.Module) -> None:
        try:
            model.add_adapter(self.config)
        except ValueError as exc:
            raise ConfigError(f"lora_target_modules {self.targets}: {exc}") from exc

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The adapter's tensors on the CPU; under FSDP2 gathered from every rank's shard (a collective that
        every rank joins)."""
        state = get_peft_model_state_dict(model)
        return {k: full(v.detach()).cpu().contiguous() for k, v in state.items()}

    def load_state_dict(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
        """Load; the unexpected keys (a state of another setup)."""
        result = set_peft_model_state_dict(model, state)
        return list(getattr(result, "unexpected_keys", None) or [])

    def shape(self, model: torch.nn.Module) -> dict[str, Any]:
        config = model.peft_config["default"]
        shape = {
            "r": config.r,
            "lora_alpha": config.lora_alpha,
            "target_modules": sorted(config.target_modules),
        }
        if config.use_dora:  # (absent without DoRA: checkpoints written before DoRA existed still match)
            shape["use_dora"] = True
        return shape

    def save(
        self, folder: Path, family: Any, model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """The diffusers file of the model's LoRA (`state`: its tensors, already gathered under FSDP2)."""
        config = self.config.to_dict()
        config["target_modules"] = sorted(config["target_modules"])
        return save_diffusers_lora(folder, family.pipeline_class, model, config, state=state)

    def load_init(self, model: torch.nn.Module, path: Path) -> None:
        """init_lora: start from the weights of a diffusers LoRA file."""
        if not Path(path).exists():
            raise ConfigError(f"init_lora: file not found: {path}")
        try:
            state = {k.removeprefix("transformer."): v for k, v in load_file(str(path)).items()}
            unexpected = self.load_state_dict(model, state)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"init_lora: cannot use {path}: {str(exc).splitlines()[0]}") from exc
        if unexpected:
            raise ConfigError(
                f"init_lora: {path} does not match this model / lora_target_modules "
                f"(unexpected keys such as {unexpected[0]})"
            )


class LycorisAdapter:
    """A LyCORIS network (LoKr / LoHa) on the transformer, configured by lycoris_config."""

    kind = "lycoris"

    def __init__(self, cfg: Any) -> None:
        self.settings = read_lycoris_config(cfg.lycoris_config)
        self.targets = list(cfg.lora_target_modules or [])
        self.network: Any = None

    def _preset(self) -> dict[str, Any]:
        """apply_preset of the config, or the LoRA targets as module-name patterns. Every key is set: LyCORIS
        keeps its preset on the class, so nothing from an earlier network in this process carries over."""
        preset = {"target_module": [], "target_name": [], "module_algo_map": {}, "name_algo_map": {}}
        preset.update({"exclude_name": [], "use_fnmatch": False})
        given = self.settings.get("apply_preset")
        if given:
            preset.update(given)
        else:
            preset["target_name"] = [rf"^(.*\.)?{re.escape(t)}$" for t in self.targets]
        return preset

    def inject(self, model: torch.nn.Module) -> None:
        from lycoris import LycorisNetwork, create_lycoris
        from lycoris import logger as lycoris_logger

        lycoris_logger.setLevel(logging.WARNING)
        options = {k: v for k, v in self.settings.items() if k not in ("apply_preset", "multiplier")}
        LycorisNetwork.apply_preset(self._preset())
        network = create_lycoris(
            model,
            1.0,
            linear_dim=int(options.pop("linear_dim", 4)),
            linear_alpha=float(options.pop("linear_alpha", 1)),
            warn_on_unmatched=False,
            **options,
        )
        if not network.loras:
            classes = sorted({type(m).__name__ for m in model.modules() if "Attention" in type(m).__name__})
            raise ConfigError(
                "lycoris_config adapts no module of this transformer: its apply_preset target_module names "
                f"classes this model does not have (its attention classes: {', '.join(classes)}), or its "
                "target names match nothing"
            )
        network.apply_to()
        network.requires_grad_(True)
        model.add_module(_NETWORK, network)  # a submodule: DDP syncs it, .to() moves it
        self.network = network
        self.modules = {lora.lora_name: _module_path(model, lora) for lora in network.loras}
        logger.info("LyCORIS %s on %d modules", self.settings.get("algo"), len(network.loras))

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}

    def load_state_dict(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
        result = self.network.load_state_dict(state, strict=False)
        return list(result.unexpected_keys) + list(result.missing_keys)

    def shape(self, model: torch.nn.Module) -> dict[str, Any]:
        shapes = {k: list(v.shape) for k, v in self.network.state_dict().items()}
        return {"lycoris": self.settings.get("algo"), "tensors": len(shapes), "numel": _numel(shapes)}

    def save(
        self, folder: Path, family: Any, model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None
    ) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {
            LYCORIS_MODULES_KEY: json.dumps(self.modules),
            "lycoris_config": json.dumps(self.settings),
            "format": "lycoris",
        }
        path = folder / DIFFUSERS_FILE
        state = self.state_dict(model) if state is None else state
        save_file(state, str(path), metadata=metadata)
        if self.settings.get("algo") == "lokr":
            lokr = lokr_to_peft(state, self.modules)
            if lokr is not None:
                save_file(lokr, str(folder / DIFFUSERS_LOKR_FILE), metadata={"format": "pt"})
        return path

    def load_init(self, model: torch.nn.Module, path: Path) -> None:
        from cinetune.errors import NotSupportedYet

        raise NotSupportedYet("init_lora with lora_type lycoris is not supported yet")


def lokr_to_peft(state: dict[str, torch.Tensor], modules: dict[str, str]) -> dict[str, torch.Tensor] | None:
    """A LyCORIS LoKr state -> the peft LoKr layout diffusers' `load_lora_adapter` reads
    (`transformer.<module>.lokr_w1`...), LyCORIS's scale alpha / rank baked into the left factor (it applies
    only where a factor is rank-decomposed); None when the network uses parts peft's LoKr has not (Tucker)."""
    out: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key, value in state.items():
        name, _, part = key.partition(".")
        if part == "alpha":
            alphas[modules[name]] = float(value)
        elif part in _PEFT_LOKR_PARTS:
            out[f"transformer.{modules[name]}.{part}"] = value.float().clone()
        else:
            return None
    for module, alpha in alphas.items():
        decomposed = [out.get(f"transformer.{module}.lokr_w{i}_b") for i in (2, 1)]
        factor = next((b for b in decomposed if b is not None), None)
        if factor is None:
            continue
        left = f"transformer.{module}.lokr_w1"
        left = left if left in out else left + "_a"
        out[left] = out[left] * (alpha / factor.shape[0])
    return out


def _module_path(model: torch.nn.Module, lora: Any) -> str:
    target = lora.org_module[0]
    return next(name for name, module in model.named_modules() if module is target)


def _numel(shapes: dict[str, list[int]]) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def build_adapter(cfg: Any) -> PeftAdapter | LycorisAdapter:
    return LycorisAdapter(cfg) if cfg.lora_type == "lycoris" else PeftAdapter(cfg)
