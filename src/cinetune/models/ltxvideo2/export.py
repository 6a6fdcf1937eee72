"""The LTX-2 LoRA in the original / ComfyUI format: `diffusion_model.` + original module names, alpha baked
in.

ComfyUI scales a LoRA by alpha / rank when it finds `<module>.alpha` (and by 1 without it); ltx-core's loader
ignores alpha and fuses strength * B @ A. The only file both read the same way holds lora_B * (alpha / rank)
and
no alpha keys, so that is what is written (with alpha == rank the values are the trained ones). diffusers'
`LTX2Pipeline.load_lora_weights` reads it too: it maps the original names back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE, dora_to_comfyui, read_lora
from cinetune.models.ltxvideo2.convert import TRANSFORMER_RENAMES, rename_segments


def to_original_lora(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """diffusers LoRA keys (transformer.<module>.lora_A/B.weight) -> original keys, lora_B * `scale`."""
    out = {}
    for stored, tensor in tensors.items():
        key, value = dora_to_comfyui(stored, tensor)
        name = rename_segments(key.removeprefix("transformer."), TRANSFORMER_RENAMES)
        scaled = (value.float() * scale).to(value.dtype) if name.endswith("lora_B.weight") else value
        out[f"diffusion_model.{name}"] = scaled.contiguous()
    return out


def export_original(output_dir: Path) -> Path:
    """OUTPUT_DIR/pytorch_lora_weights.safetensors -> the ComfyUI / original file beside it."""
    tensors, config = read_lora(Path(output_dir) / DIFFUSERS_FILE)
    if "lycoris" in config:  # LoKr / LoHa: ComfyUI's own names, alpha kept (ltx-core loads LoRA only)
        target = Path(output_dir) / COMFYUI_FILE
        save_file(
            to_original_lora(tensors, 1.0), str(target), metadata={"format": "comfyui", "model": "ltx-2"}
        )
        return target
    rank = config.get("r") or next(v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight"))
    alpha = config.get("lora_alpha", rank)
    target = Path(output_dir) / COMFYUI_FILE
    metadata = {"format": "comfyui", "model": "ltx-2", "rank": str(rank), "alpha_baked": str(alpha)}
    save_file(to_original_lora(tensors, float(alpha) / float(rank)), str(target), metadata=metadata)
    return target
