"""LoRA files: diffusers file loads into LTXPipeline; ComfyUI file carries alpha (strength 1 = trained)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import LTXPipeline
from peft import LoraConfig
from safetensors.torch import load_file

from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE, export_comfyui, read_lora, save_diffusers_lora
from cinetune.models.registry import build_family

_ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def _trained_lora(rank: int, alpha: float, targets: list[str] = (*_ATTENTION, "proj_in")):
    family = build_family("ltxvideo", "tiny", None)
    model = family.load_transformer(torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights="gaussian")
    model.add_adapter(config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # as if trained: B is no longer zero
    return model, config


def _generate(pipe: LTXPipeline) -> torch.Tensor:
    return pipe(
        "a red square",
        num_frames=9,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).frames


def test_diffusers_file_loads_into_pipeline_with_its_alpha(tmp_path: Path, tiny_ltx_dir: Path) -> None:
    model, config = _trained_lora(rank=4, alpha=8)
    path = save_diffusers_lora(tmp_path, LTXPipeline, model, config.to_dict())
    assert path.name == DIFFUSERS_FILE
    tensors, meta = read_lora(path)
    assert all(k.startswith("transformer.") for k in tensors)
    assert meta["r"] == 4 and meta["lora_alpha"] == 8
    pipe = LTXPipeline.from_pretrained(tiny_ltx_dir)
    pipe.set_progress_bar_config(disable=True)
    base = _generate(pipe)
    pipe.load_lora_weights(path)
    with_lora = _generate(pipe)
    assert not torch.allclose(base, with_lora)
    # the loaded adapter has the trained scale alpha / r = 2
    layer = pipe.transformer.transformer_blocks[0].attn1.to_q
    assert layer.scaling[next(iter(layer.scaling))] == pytest.approx(2.0)


def test_comfyui_file_keys_alpha_and_renames(tmp_path: Path) -> None:
    model, config = _trained_lora(rank=4, alpha=8)
    save_diffusers_lora(tmp_path, LTXPipeline, model, config.to_dict())
    family = build_family("ltxvideo", "tiny", None)
    comfy = load_file(str(export_comfyui(tmp_path, family.comfyui_renames)))
    assert (tmp_path / COMFYUI_FILE).exists()
    assert all(k.startswith("diffusion_model.") for k in comfy)
    assert "diffusion_model.patchify_proj.lora_A.weight" in comfy  # proj_in -> original name
    assert not any(".proj_in." in k for k in comfy)
    a = comfy["diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"]
    b = comfy["diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight"]
    alpha = comfy["diffusion_model.transformer_blocks.0.attn1.to_q.alpha"]
    # ComfyUI: delta = (alpha / rank) * B @ A; it must equal the delta the trained adapter applies
    delta = float(alpha) / a.shape[0] * (b @ a)
    layer = model.transformer_blocks[0].attn1.to_q
    trained = layer.get_delta_weight("default")
    torch.testing.assert_close(delta, trained)


def test_comfyui_file_with_alpha_equal_rank_loads_in_diffusers(tmp_path: Path, tiny_ltx_dir: Path) -> None:
    model, config = _trained_lora(rank=4, alpha=4, targets=_ATTENTION)
    save_diffusers_lora(tmp_path, LTXPipeline, model, config.to_dict())
    comfy_path = export_comfyui(tmp_path, {})
    plain = {k: v for k, v in load_file(str(comfy_path)).items() if not k.endswith(".alpha")}
    from safetensors.torch import save_file

    save_file(plain, str(tmp_path / "plain.safetensors"))
    pipe = LTXPipeline.from_pretrained(tiny_ltx_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(tmp_path, weight_name=DIFFUSERS_FILE, adapter_name="d")
    from_diffusers = _generate(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(tmp_path / "plain.safetensors", adapter_name="c")
    torch.testing.assert_close(_generate(pipe), from_diffusers)


# ---- Kandinsky 5 -------------------------------------------------------------------------------------------


def test_kandinsky5_default_targets_export_and_load_back_with_feed_forward(tmp_path: Path) -> None:
    """The default targets (attention + feed-forward) round-trip: the diffusers file loads into
    Kandinsky5T2VPipeline with every trained delta, and the ComfyUI file's alpha / rank * B @ A equals it."""
    from diffusers import Kandinsky5T2VPipeline

    from cinetune.models.kandinsky5 import tiny

    family = build_family("kandinsky5-video", "tiny", None)
    model = family.load_transformer(torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=family.lora_targets(), init_lora_weights="gaussian")
    model.add_adapter(config)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    trained = {n: m.get_delta_weight("default") for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert sum("feed_forward" in n for n in trained) == 2 * 3  # in and out layer of 1 text + 2 visual blocks
    save_diffusers_lora(tmp_path, Kandinsky5T2VPipeline, model, config.to_dict())

    pipe = Kandinsky5T2VPipeline.from_pretrained(tiny.save_tiny_checkpoint(tmp_path / "model"))
    pipe.load_lora_weights(tmp_path / DIFFUSERS_FILE)
    loaded = {n: m for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A")}
    assert set(loaded) == set(trained)
    for name, delta in trained.items():
        adapter = next(iter(loaded[name].scaling))
        torch.testing.assert_close(loaded[name].get_delta_weight(adapter), delta, msg=name)

    comfy = load_file(str(export_comfyui(tmp_path, family.comfyui_renames)))
    for name, delta in trained.items():
        a, b = comfy[f"diffusion_model.{name}.lora_A.weight"], comfy[f"diffusion_model.{name}.lora_B.weight"]
        alpha = comfy[f"diffusion_model.{name}.alpha"]
        torch.testing.assert_close(float(alpha) / a.shape[0] * (b @ a), delta, msg=name)
    assert len(comfy) == 3 * len(trained)  # A, B and alpha per module, nothing else
