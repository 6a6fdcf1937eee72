"""The memory planner: its meta-device profile against the real model on the CPU, its formulas against a
measured peak, each setting moving the term it should, `cinetune check` / `cinetune plan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.memory_helpers import FAMILIES, write_config

from cinetune.cli import main
from cinetune.config import load_config
from cinetune.memory.planner import GIB, TextEncoderSize, estimate, propose
from cinetune.memory.profile import Profile, VaeProfile, profile_transformer
from cinetune.plan import resolve

# An LTX-Video transformer wide enough for its activations to show in the process's resident memory.
MID_LTX = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 8,
    "attention_head_dim": 64,
    "cross_attention_dim": 512,
    "num_layers": 4,
    "caption_channels": 32,
}


def _saved_on_cpu(plan, config: dict | None = None, size: int = 64, frames: int = 9) -> int:
    """Bytes the real model keeps for backward in one training forward on the CPU (storages counted once)."""
    from cinetune.benchmark import synthetic_batch
    from cinetune.training.trainer import Trainer

    trainer = Trainer(plan)
    family = trainer.family
    model = family.transformer_class.from_config(config) if config else family.load_transformer(torch.float32)
    trainer.setup_model(model, total_steps=2)
    torch.manual_seed(1)
    batch = synthetic_batch(trainer, config or family.architecture_config(), (size, size), frames, 1)
    (inputs,) = family.training_inputs(
        batch,
        torch.Generator().manual_seed(0),
        "shifted_logit_normal",
        trainer.device,
        torch.float32,
        model.config,
    )
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.model(**inputs.kwargs)
    return sum(seen.values())


@pytest.mark.parametrize("family", ["ltxvideo", "ltxvideo2", "kandinsky5"])
def test_meta_profile_counts_what_the_real_model_keeps(tmp_path: Path, family: str) -> None:
    plan = resolve(load_config(write_config(tmp_path, **FAMILIES[family])))
    profile = profile_transformer(plan, 64, 64, 9)
    real = _saved_on_cpu(plan)
    predicted = sum(profile.saved_in_blocks) + profile.saved_outside
    assert abs(predicted - real) / real < 0.1, (predicted, real)
    model = plan.family.load_transformer(torch.float32)
    assert profile.frozen_params == sum(p.numel() for p in model.parameters())


_RSS_CHILD = r"""
import json, resource, sys, psutil, torch
from cinetune.config import load_config
from cinetune.plan import resolve
from cinetune.benchmark import synthetic_batch
from cinetune.training.trainer import Trainer
path, config, size, frames = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
from pathlib import Path
trainer = Trainer(resolve(load_config(Path(path))))
family = trainer.family
model = family.transformer_class.from_config(config)
trainer.setup_model(model, total_steps=2)
torch.manual_seed(1)
batch = synthetic_batch(trainer, config, (size, size), frames, 1)
trainer.optimizer_step([batch])  # optimizer state and one-time allocations exist before measuring
(inputs,) = family.training_inputs(batch, torch.Generator().manual_seed(0), "shifted_logit_normal",
                                   trainer.device, torch.float32, model.config)
process = psutil.Process()
before = process.memory_info().rss
loss = trainer.model(**inputs.kwargs)[0].float().pow(2).mean()
held = process.memory_info().rss - before
print(json.dumps({"held": held}))
"""


@pytest.mark.parametrize(("checkpointing", "size"), [(False, 384), (True, 768)], ids=["plain", "ckpt"])
def test_predicted_activations_match_the_measured_cpu_memory(
    tmp_path: Path, checkpointing: bool, size: int
) -> None:
    """The planner's activation term against what a real forward pass adds to the process's resident memory
    (a fresh process; an LTX-Video transformer 512 wide, 4 blocks, 3 x (size/32)^2 latent tokens)."""
    path = write_config(tmp_path, gradient_checkpointing=checkpointing)
    frames = 17
    # glibc keeps freed blocks for reuse; mapping every allocation above 64 KiB on its own makes the resident
    # memory follow the live tensors (Linux; other platforms ignore the variable)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(path), json.dumps(MID_LTX), str(size), str(frames)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    held = json.loads(out.stdout.strip().splitlines()[-1])["held"]
    plan = resolve(load_config(path))
    profile = profile_transformer(plan, size, size, frames, config=MID_LTX)
    vae = VaeProfile(params=0, largest_activation=0)
    parts = estimate(plan.train, plan.family.name, profile, vae, frames=frames, text_encoders={}).device_parts
    predicted = parts["activations"]
    if checkpointing:  # in forward only the block inputs are held; the recomputed block comes in backward
        predicted -= max(profile.saved_in_blocks)
    assert 0.75 < held / predicted < 1.33, (held, predicted)


# ---- the formulas, each setting on its own term -----------------------------------------------------------
PROFILE = Profile(
    block_params=(100_000_000,) * 10,
    other_params=50_000_000,
    lora_params=10_000_000,
    saved_in_blocks=(400 * 2**20,) * 10,
    saved_outside=10 * 2**20,
    block_inputs=(30 * 2**20,) + (10 * 2**20,) * 9,
    tokens=1000,
    compute_bytes=2,
)
VAE = VaeProfile(params=400_000_000, largest_activation=500 * 2**20)
TEXT = {"text_encoder_1": TextEncoderSize(4e9, 0.1e9, 0, 24)}


def _estimate(tmp_path: Path, **keys: object):
    cfg = resolve(load_config(write_config(tmp_path, **keys))).train.model_copy(
        update={"mixed_precision": "bf16"}
    )
    return estimate(cfg, "ltxvideo", PROFILE, VAE, frames=49, text_encoders=TEXT)


def test_each_setting_lowers_its_own_term(tmp_path: Path) -> None:
    plain = _estimate(tmp_path / "a")
    weights = plain.device_parts["frozen weights"]
    assert weights == pytest.approx(1.05e9 * 2)
    assert plain.device_parts["LoRA + AdamW"] == 16 * 10_000_000
    assert plain.device_parts["activations"] == pytest.approx(10 * 400 * 2**20 + 10 * 2**20)
    int8 = _estimate(tmp_path / "b", base_model_precision="int8-quanto")
    assert int8.device_parts["frozen weights"] == pytest.approx(1e9 + 0.05e9 * 2)
    ckpt = _estimate(tmp_path / "c", gradient_checkpointing=True)
    assert ckpt.device_parts["activations"] == pytest.approx((30 + 90 + 400 + 10) * 2**20)
    swap = _estimate(tmp_path / "d", musubi_blocks_to_swap=4)
    assert swap.device_parts["frozen weights"] == pytest.approx(weights - 4 * 2e8 + 2 * 2e8)
    assert swap.host_parts["weights waiting in host RAM"] == pytest.approx(4 * 2e8)
    offload = _estimate(tmp_path / "e", enable_group_offload=True)
    assert offload.device_parts["frozen weights"] == pytest.approx(0.05e9 * 2 + 2e8)
    quantized_text = _estimate(tmp_path / "f", text_encoder_1_precision="int8-quanto")
    assert quantized_text.cache_parts["text encoder"] == pytest.approx(plain.cache_parts["text encoder"] / 2)
    patch = _estimate(tmp_path / "g", vae_enable_patch_conv=True)
    assert patch.cache_parts["VAE"] < plain.cache_parts["VAE"]
    roll = _estimate(tmp_path / "h", vae_enable_temporal_roll=True)
    assert roll.cache_parts["VAE"] < patch.cache_parts["VAE"]


def test_propose_returns_the_cheapest_settings_that_fit(tmp_path: Path) -> None:
    cfg = resolve(load_config(write_config(tmp_path))).train.model_copy(update={"mixed_precision": "bf16"})
    plain = estimate(cfg, "ltxvideo", PROFILE, VAE, frames=49, text_encoders=TEXT)
    assert plain.device_train < plain.device_cache < 9 * GIB  # 6.9 GiB training, 8.2 GiB caching
    roomy = propose(cfg, "ltxvideo", PROFILE, VAE, 10 * GIB, text_encoders=TEXT)
    assert roomy is not None and roomy[0] == {}
    keys, result = propose(cfg, "ltxvideo", PROFILE, VAE, 6 * GIB, text_encoders=TEXT)
    assert keys["gradient_checkpointing"] and "base_model_precision" not in keys  # the cheapest step suffices
    assert keys["text_encoder_1_precision"] == "int8-quanto"  # the 8 GB text encoder is the caching peak
    assert result.device_peak <= 0.9 * 6 * GIB
    keys, result = propose(cfg, "ltxvideo", PROFILE, VAE, 3.5 * GIB, text_encoders=TEXT)
    assert keys["base_model_precision"] == "int8-quanto" and result.device_peak <= 0.9 * 3.5 * GIB
    assert propose(cfg, "ltxvideo", PROFILE, VAE, 0.5 * GIB, text_encoders=TEXT) is None  # nothing fits


# ---- the commands ----------------------------------------------------------------------------------------
def test_check_prints_the_predicted_peaks_and_the_target(
    tmp_path: Path, clips_dir: Path, make_config, capsys
) -> None:
    assert (
        main(["check", "--config", str(make_config(tmp_path / "a", clips_dir, None, target_vram_gb=64))]) == 0
    )
    out = capsys.readouterr().out
    assert "memory (predicted, largest bucket 96x64x9, batch 2)" in out and "host RAM" in out
    assert "target_vram_gb 64: the predicted peak" in out and "fits" in out
    assert (
        main(["check", "--config", str(make_config(tmp_path / "b", clips_dir, None, target_vram_gb=0.1))])
        == 0
    )
    assert "does not fit" in capsys.readouterr().out


def test_plan_command_proposes_config_keys(capsys) -> None:
    assert (
        main(["plan", "--family", "ltxvideo", "--flavour", "0.9.5", "--vram", "12", "--frames", "121"]) == 0
    )
    out = capsys.readouterr().out
    keys = json.loads(out[out.index("{") : out.index("}") + 1])
    assert keys.get("gradient_checkpointing") is True
    assert main(["plan", "--family", "ltxvideo", "--flavour", "0.9.5", "--vram", "0.5"]) == 2
    assert "nothing cinetune builds fits" in capsys.readouterr().out
