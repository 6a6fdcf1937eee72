"""The memory planner's predicted peaks for the seed models, with and without each memory feature, in one run.

    python bench/planner.py                                   # LTX-2 19B, LTX-2.3 22B, Kandinsky 5 Pro
    python bench/planner.py --resolution 768x512 --frames 49 --vram 24 --json planner.json

These are PREDICTIONS (no weights, no GPU): each model's transformer is built on PyTorch's meta device at the
quickstart settings (bf16, LoRA rank 32, batch 1) exactly as `cinetune plan` builds it, profiled once, then
estimated under each variant. Printed per variant, GiB: the device peak while training, while caching (text
encoder, then VAE, one at a time: the larger of the two weights + activations, and the CUDA margin) and host
RAM; last, the settings `cinetune plan --vram N` proposes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MODELS = {
    "LTX-2 19B": ("ltxvideo2", "2.0"),
    "LTX-2.3 22B": ("ltxvideo2", "2.3"),
    "Kandinsky 5 Pro (5 s HD)": ("kandinsky5-video", "t2v-pro-sft-5s-hd"),
}
BASE = {"mixed_precision": "bf16", "lora_rank": 32, "train_batch_size": 1, "report_to": "none"}
_OFFLOAD = {
    "enable_group_offload": True,
    "group_offload_type": "block_level",
    "group_offload_use_stream": True,
}
# Each on top of the one named: "as is" is the quickstart without memory features and without checkpointing.
VARIANTS: dict[str, dict[str, Any]] = {
    "as is": {},
    "checkpointing": {"gradient_checkpointing": True},
    "ckpt + int8-quanto": {"gradient_checkpointing": True, "base_model_precision": "int8-quanto"},
    "ckpt + int4-quanto": {"gradient_checkpointing": True, "base_model_precision": "int4-quanto"},
    "ckpt + group offload": {"gradient_checkpointing": True, **_OFFLOAD},
    "ckpt + block swap 8": {"gradient_checkpointing": True, "musubi_blocks_to_swap": 8},
    "ckpt + text enc int8": {"gradient_checkpointing": True, "text_encoder_1_precision": "int8-quanto"},
    "ckpt + VAE patch conv": {"gradient_checkpointing": True, "vae_enable_patch_conv": True},
    "ckpt + VAE tiling": {"gradient_checkpointing": True, "vae_enable_tiling": True},
    # FSDP2: the training figure is per rank (each of N GPUs)
    "ckpt + FSDP2 x2": {"gradient_checkpointing": True, "fsdp_enable": True, "num_processes": 2},
    "ckpt + FSDP2 x4": {"gradient_checkpointing": True, "fsdp_enable": True, "num_processes": 4},
    "ckpt + FSDP2 x8": {"gradient_checkpointing": True, "fsdp_enable": True, "num_processes": 8},
}


def _memory(family: str, flavour: str, size: tuple[int, int], frames: int) -> Any:
    from cinetune.config import LoadedConfig
    from cinetune.config.load import build_train_config
    from cinetune.memory.report import RunMemory, Shape
    from cinetune.plan import resolve

    train = build_train_config({**BASE, "model_family": family, "model_flavour": flavour}, where="planner")
    plan = resolve(LoadedConfig(train=train, data=None, config_path=None))
    rule = plan.family.frame_rule
    shape = Shape(rule.side_down(size[0]), rule.side_down(size[1]), rule.adjust_frames(frames, "--frames"))
    return RunMemory(plan, shape)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", default="768x512")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument(
        "--vram", type=float, default=24.0, help="GiB for the proposal (cinetune plan --vram)"
    )
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.resolution.lower().split("x"))
    gib = 2**30
    out: dict[str, Any] = {}
    for name, (family, flavour) in MODELS.items():
        memory = _memory(family, flavour, size, args.frames)
        print(f"\n{name} ({family}/{flavour}) at {memory.shape}: PREDICTED peaks, GiB")
        print(
            f"  {'variant':24s} {'training':>9s} {'caching':>8s} {'(text':>6s} {'VAE)':>5s} {'host RAM':>9s}"
        )
        rows = out[name] = {}
        for label, variant in VARIANTS.items():
            keys = dict(variant)
            if "text_encoder_1_precision" in keys and family == "kandinsky5-video":
                keys["text_encoder_2_precision"] = "int8-quanto"  # its CLIP too
            result = memory.estimate(memory.plan.train.model_copy(update=keys))
            parts = result.cache_parts
            row = [result.device_train, result.device_cache, parts["text encoder"], parts["VAE"], result.host]
            row = [value / gib for value in row]
            rows[label] = dict(zip(("training", "caching", "text_encoder", "vae", "host"), row, strict=True))
            print(f"  {label:24s} {row[0]:9.1f} {row[1]:8.1f} {row[2]:6.1f} {row[3]:5.1f} {row[4]:9.1f}")
        proposal = memory.propose(args.vram)
        if proposal is None:
            print(f"  cinetune plan --vram {args.vram:g}: nothing fits")
            continue
        keys, result = proposal
        rows["proposal"] = {
            "keys": keys,
            "training": result.device_train / gib,
            "caching": result.device_cache / gib,
        }
        print(f"  cinetune plan --vram {args.vram:g} proposes {json.dumps(keys)}")
        print(
            f"    -> training {result.device_train / gib:.1f}, caching {result.device_cache / gib:.1f}, "
            f"host {result.host / gib:.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
