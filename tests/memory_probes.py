"""Probes of the memory keys for tests/test_keys.py (its World builds the configs, caches and trainers).

Each probe sets a key and asserts its effect where it is consumed: the transformer `setup_model` returns
(quantized layers, offload groups, swapped-out blocks), the encoders the cache builder runs (recorded as it
calls the family's encode methods), the cache keys, or the warning / error the plan gives.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cinetune.errors import CinetuneError, ConfigError, NotSupportedYet
from cinetune.training.trainer import Trainer

K5 = {"model_family": "kandinsky5-video", "model_flavour": "tiny"}
LTX2 = {"model_family": "ltxvideo2", "model_flavour": "tiny"}


def _rejected(action: Any, *fragments: str, error: type[Exception] = CinetuneError) -> None:
    with pytest.raises(error) as info:
        action()
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def _warned(w: Any, key: str, why: str, **kw: Any) -> None:
    warnings = w.plan(**kw).warnings
    assert any(key in m and why in m for m in warnings), warnings


def _quantized(module: torch.nn.Module) -> int:
    """Linear layers whose weights are quantized (quanto swaps the class, torchao the weight's type)."""
    return sum(
        isinstance(m, torch.nn.Linear)
        and (type(m) is not torch.nn.Linear or type(m.weight.data) is not torch.Tensor)
        for m in module.modules()
    )


def encoding(w: Any, **kw: Any) -> dict[str, Any]:
    """A cache build in a fresh cache: the text encoder and VAE the builder ran, the index, the trainer."""
    key = ("encoding", tuple(sorted((k, repr(v)) for k, v in kw.items())))
    if key in w._memo:
        return w._memo[key]
    root = w.fresh("enc-cache")
    datasets = [w.video_entry(cache_dir_vae=str(root / "vae")), w.text_entry(cache_dir=str(root / "text"))]
    trainer = Trainer(w.plan(datasets=datasets, **kw))
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.scan()
    seen: dict[str, Any] = {"trainer": trainer}
    family = trainer.family
    encode_text, encode_sample = family.encode_text, family.encode_sample

    def text(tokenizer: Any, encoder: Any, *args: Any) -> Any:
        seen["text"] = encoder
        return encode_text(tokenizer, encoder, *args)

    def sample(encoders: dict, *args: Any) -> Any:
        seen["vae"] = encoders["vae"]
        return encode_sample(encoders, *args)

    family.encode_text, family.encode_sample = text, sample  # type: ignore[method-assign]
    seen["index"] = trainer.cache()
    w._memo[key] = seen
    return seen


def _embedding(seen: dict[str, Any]) -> torch.Tensor:
    index = seen["index"]
    caption = sorted(c for c in index.caption_keys if c)[0]
    return next(iter(index.text_embeds(caption).values())).float()


def _latent(seen: dict[str, Any]) -> torch.Tensor:
    return seen["index"].latent(0, 0, "clips")["latents"].float()


def _groups(trainer: Trainer) -> int:
    return len(trainer.model._cinetune_residency.groups)


# ---- quantization ----------------------------------------------------------------------------------------
def probe_base_model_precision(w: Any) -> None:
    default, bf16 = w.trainer(), w.trainer(base_model_precision="bf16")
    frozen = [p for p in bf16.model.parameters() if not p.requires_grad]
    assert bf16.weight_dtype == torch.bfloat16 and {p.dtype for p in frozen} == {torch.bfloat16}
    assert {p.dtype for p in default.model.parameters()} == {torch.float32}  # no_change: mixed_precision no
    assert {p.dtype for p in bf16.model.parameters() if p.requires_grad} == {torch.float32}
    assert _quantized(default.model) == 0
    assert _quantized(w.trainer(base_model_precision="int8-quanto").model) == 20  # 10 per tiny block
    assert _quantized(w.trainer(base_model_precision="fp8-torchao").model) == 20
    _rejected(
        lambda: w.plan(base_model_precision="int8dq-torchao"), "not supported yet", error=NotSupportedYet
    )
    if not torch.cuda.is_available():
        _rejected(lambda: w.plan(base_model_precision="nf4-bnb"), "nf4-bnb needs bitsandbytes and a CUDA GPU")


def probe_text_encoder_1_precision(w: Any) -> None:
    plain, quantized = encoding(w), encoding(w, text_encoder_1_precision="int8-quanto")
    assert _quantized(plain["text"]) == 0 and _quantized(quantized["text"]) > 0
    a, b = _embedding(plain), _embedding(quantized)
    assert not torch.equal(a, b) and float((a - b).norm() / a.norm()) < 0.05  # int8: close, not equal
    assert plain["index"].caption_keys != quantized["index"].caption_keys  # cached apart


def probe_text_encoder_2_precision(w: Any) -> None:
    seen = encoding(w, **K5, text_encoder_2_precision="int8-quanto")
    assert _quantized(seen["text"].clip) > 0 and _quantized(seen["text"].qwen) == 0
    _rejected(
        lambda: w.plan(text_encoder_2_precision="int8-quanto"), "has one text encoder", error=ConfigError
    )


def probe_quantize_via(w: Any) -> None:
    _warned(w, "quantize_via", "nothing is quantized", quantize_via="cpu")
    if not torch.cuda.is_available():
        _warned(w, "quantize_via", "the CPU", quantize_via="accelerator", base_model_precision="int8-quanto")
    _rejected(lambda: w.plan(quantize_via="pipeline"), "not supported yet", error=NotSupportedYet)


# ---- group offload ---------------------------------------------------------------------------------------
def probe_enable_group_offload(w: Any) -> None:
    assert not hasattr(w.trainer().model, "_cinetune_residency")
    assert _groups(w.trainer(enable_group_offload=True)) == 3  # 2 blocks + everything else
    plain, offloaded = encoding(w), encoding(w, enable_group_offload=True)
    assert hasattr(offloaded["text"], "_diffusers_hook") and not hasattr(plain["text"], "_diffusers_hook")
    assert hasattr(offloaded["vae"].encoder, "_diffusers_hook")
    assert torch.equal(_latent(plain), _latent(offloaded))  # caching under offload: the same entries
    assert torch.equal(_embedding(plain), _embedding(offloaded))


def probe_group_offload_type(w: Any) -> None:
    assert _groups(w.trainer(enable_group_offload=True, group_offload_type="leaf_level")) > 20


def probe_group_offload_blocks_per_group(w: Any) -> None:
    assert _groups(w.trainer(enable_group_offload=True, group_offload_blocks_per_group=2)) == 2
    _warned(
        w,
        "group_offload_blocks_per_group",
        "leaf_level",
        enable_group_offload=True,
        group_offload_type="leaf_level",
        group_offload_blocks_per_group=2,
    )
    _warned(
        w, "group_offload_blocks_per_group", "enable_group_offload is false", group_offload_blocks_per_group=2
    )


def probe_group_offload_use_stream(w: Any) -> None:
    if not torch.cuda.is_available():
        _warned(
            w,
            "group_offload_use_stream",
            "no streams",
            enable_group_offload=True,
            group_offload_use_stream=True,
        )
    _warned(w, "group_offload_use_stream", "enable_group_offload is false", group_offload_use_stream=True)


def probe_group_offload_to_disk_path(w: Any) -> None:
    folder = w.fresh("offload-disk")
    trainer = w.trainer(enable_group_offload=True, group_offload_to_disk_path=str(folder))
    assert len(list(folder.glob("group_*.safetensors"))) == 3
    assert trainer.model._cinetune_residency.groups[0].group.offload_to_disk_path == str(folder)


# ---- block swap ------------------------------------------------------------------------------------------
def probe_musubi_blocks_to_swap(w: Any) -> None:
    def emptied(trainer: Trainer) -> list[bool]:
        return [
            all(p.numel() == 0 for p in block.parameters() if not p.requires_grad)
            for block in trainer.model.transformer_blocks
        ]

    assert emptied(w.trainer()) == [False, False]
    assert emptied(w.trainer(musubi_blocks_to_swap=1)) == [False, True]


def probe_musubi_block_swap_device(w: Any) -> None:
    trainer = w.trainer(musubi_blocks_to_swap=1, musubi_block_swap_device="cpu")
    group = trainer.model._cinetune_residency.groups[0]
    assert {t.device.type for t in group.store.values()} == {"cpu"}
    _rejected(
        lambda: w.plan(musubi_blocks_to_swap=1, musubi_block_swap_device="meta"), "cpu or on another cuda"
    )
    _rejected(
        lambda: w.plan(musubi_blocks_to_swap=1, musubi_block_swap_device="gpu9"), "musubi_block_swap_device"
    )
    _warned(w, "musubi_block_swap_device", "musubi_blocks_to_swap is 0", musubi_block_swap_device="cpu")


# ---- VAE -------------------------------------------------------------------------------------------------
def probe_vae_enable_patch_conv(w: Any) -> None:
    def patched(**kw: Any) -> int:
        return sum(getattr(m, "_cinetune_patch", False) for m in encoding(w, **kw)["vae"].modules())

    assert patched() == 0 and patched(vae_enable_patch_conv=True) > 10
    assert patched(**LTX2, vae_enable_patch_conv=True) > 10
    assert torch.allclose(_latent(encoding(w)), _latent(encoding(w, vae_enable_patch_conv=True)), atol=1e-5)


def probe_vae_enable_temporal_roll(w: Any) -> None:
    rolled = encoding(w, vae_enable_temporal_roll=True)["vae"]
    assert (
        rolled.encoder.forward.__name__ == "rolled"
        and encoding(w)["vae"].encoder.forward.__name__ != "rolled"
    )
    _rejected(
        lambda: w.plan(**K5, vae_enable_temporal_roll=True), "normalizes over all frames", error=ConfigError
    )


def probe_vae_enable_tiling(w: Any) -> None:
    plain, tiled = encoding(w), encoding(w, vae_enable_tiling=True)
    assert tiled["vae"].use_tiling and not plain["vae"].use_tiling
    assert plain["index"].latent_keys != tiled["index"].latent_keys  # tiled latents are cached apart


def probe_vae_enable_slicing(w: Any) -> None:
    _warned(w, "vae_enable_slicing", "one video at a time", vae_enable_slicing=True)


# ---- the planner -----------------------------------------------------------------------------------------
def probe_target_vram_gb(w: Any) -> None:
    assert "target_vram_gb" not in w.check()
    assert "target_vram_gb 64: the predicted peak" in w.check(target_vram_gb=64)
    assert "does not fit" in w.check(target_vram_gb=0.01)


MEMORY_KEYS: dict[str, Any] = {
    "base_model_precision": probe_base_model_precision,
    "text_encoder_1_precision": probe_text_encoder_1_precision,
    "text_encoder_2_precision": probe_text_encoder_2_precision,
    "quantize_via": probe_quantize_via,
    "enable_group_offload": probe_enable_group_offload,
    "group_offload_type": probe_group_offload_type,
    "group_offload_blocks_per_group": probe_group_offload_blocks_per_group,
    "group_offload_use_stream": probe_group_offload_use_stream,
    "group_offload_to_disk_path": probe_group_offload_to_disk_path,
    "musubi_blocks_to_swap": probe_musubi_blocks_to_swap,
    "musubi_block_swap_device": probe_musubi_block_swap_device,
    "vae_enable_patch_conv": probe_vae_enable_patch_conv,
    "vae_enable_temporal_roll": probe_vae_enable_temporal_roll,
    "vae_enable_tiling": probe_vae_enable_tiling,
    "vae_enable_slicing": probe_vae_enable_slicing,
    "target_vram_gb": probe_target_vram_gb,
}
