"""Each speed option of the training step, measured with and without, side by side in one run.

    python bench/speed_options.py --family ltxvideo --flavour 0.9.5 --resolution 768x512 --frames 49
    python bench/speed_options.py --family ltxvideo --flavour tiny --resolution 64x64 --frames 9 --steps 3

Every variant is `cinetune bench` (cinetune.benchmark.run_bench: the flavour's full-size transformer with
random weights, synthetic cached-shape inputs, the trainer's own optimizer step) with one option changed
from the baseline config. Groups:

- attention backend (diffusers' dispatcher): native SDPA, cuDNN, flash (torch's), flash-attn 2/3 where
  installed; a backend that cannot run on this device is listed with the reason, not timed;
- torch.compile of the repeated transformer blocks (compile_transformer_blocks);
- fused AdamW (optimizer adamw_fused, CUDA only);
- frozen weights in bf16 (base_model_precision no_change under mixed_precision bf16) against fp32;
- TREAD token routing: off, the quickstarts' route (0.5 of the tokens skip blocks 2..-2), 0.25 there, 0.5
  over every block (what the 2-block tiny models can take);
- scheduled sampling: off, every sample rolled out up to 5 steps, half of them up to 10 (a step's cost
  follows the longest rollout its draw gives);
- CREPA: off, block 8 against dinov2_vitg14 features at 518 px (37 x 37 patches, width 1536), block 1
  against dinov2_vits14 at 224 (16 x 16, width 384): the training-step cost (projector and alignment; the
  features come from the cache, random here, so the DINOv2 encoder's cost, paid once per cached window, is
  not in it);
- gradient checkpointing: off, every block, 1 block in 2, 1 block in 4.

Printed per variant: s/step (median), its ratio to the baseline (below 1 = faster), peak memory allocated
and reserved (GPU), MFU. `--json` stores everything. Variants run one after another in the same process,
each on a freshly built model, so the ratios compare like with like on one machine at one time.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cinetune.benchmark import run_bench
from cinetune.config import LoadedConfig
from cinetune.config.load import build_train_config
from cinetune.errors import CinetuneError
from cinetune.plan import resolve


def _tread(ratio: float, start: int, end: int) -> dict[str, Any]:
    return {"routes": [{"selection_ratio": ratio, "start_layer_idx": start, "end_layer_idx": end}]}


def _crepa(block: int, model: str, size: int) -> dict[str, Any]:
    return {
        "crepa_enabled": True,
        "crepa_block_index": block,
        "crepa_model": model,
        "crepa_encoder_image_size": size,
    }


GROUPS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "attention": [
        ("native SDPA", {"attention_backend": "native"}),
        ("cuDNN SDPA", {"attention_backend": "_native_cudnn"}),
        ("flash SDPA", {"attention_backend": "_native_flash"}),
        ("flash-attn 2", {"attention_backend": "flash"}),
        ("flash-attn 3", {"attention_backend": "_flash_3"}),
    ],
    "compile": [
        ("eager", {"compile_transformer_blocks": False}),
        ("compiled blocks", {"compile_transformer_blocks": True}),
    ],
    "optimizer": [
        ("AdamW (foreach)", {"optimizer": "adamw"}),
        ("AdamW fused", {"optimizer": "adamw_fused"}),
    ],
    "frozen weights": [
        ("frozen bf16", {"base_model_precision": "no_change"}),
        ("frozen fp32", {"base_model_precision": "fp32"}),
    ],
    "tread": [
        ("off", {"tread_config": None}),
        ("0.5 blocks 2..-2", {"tread_config": _tread(0.5, 2, -2)}),  # the quickstarts' route
        ("0.25 blocks 2..-2", {"tread_config": _tread(0.25, 2, -2)}),
        ("0.5 all blocks", {"tread_config": _tread(0.5, 0, -1)}),  # the tiny models have 2 blocks
    ],
    "scheduled sampling": [
        ("off", {"scheduled_sampling_max_step_offset": 0}),
        (
            "p 1, up to 5 steps",
            {"scheduled_sampling_max_step_offset": 5, "scheduled_sampling_probability": 1.0},
        ),
        (
            "p 0.5, up to 10",
            {"scheduled_sampling_max_step_offset": 10, "scheduled_sampling_probability": 0.5},
        ),
    ],
    "crepa": [
        ("off", {"crepa_enabled": False}),
        ("block 8, vitg14 518", {"crepa_enabled": True}),  # the quickstarts' values
        ("block 1, vits14 224", _crepa(1, "dinov2_vits14", 224)),  # what the 2-block tiny models take
    ],
    "checkpointing": [
        ("off", {"gradient_checkpointing": False, "gradient_checkpointing_interval": 1}),
        ("every block", {"gradient_checkpointing": True, "gradient_checkpointing_interval": 1}),
        ("1 block in 2", {"gradient_checkpointing": True, "gradient_checkpointing_interval": 2}),
        ("1 block in 4", {"gradient_checkpointing": True, "gradient_checkpointing_interval": 4}),
    ],
}


def _run(base: dict[str, Any], change: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    size = tuple(int(v) for v in args.resolution.lower().split("x"))
    try:
        train = build_train_config({**base, **change}, where="speed_options")
        plan = resolve(LoadedConfig(train=train, data=None, config_path=None))
        result = run_bench(plan, size, args.frames, args.batch, args.steps, args.warmup, args.peak_tflops)
        return asdict(result)
    except (CinetuneError, RuntimeError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"error": f"{type(exc).__name__}: {first[:160]}"}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _gib(value: float | None) -> str:
    return f"{value:7.2f}" if value is not None else "    n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="ltxvideo")
    parser.add_argument("--flavour", default="0.9.5")
    parser.add_argument("--resolution", default="768x512")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lora_rank", type=int, default=128)
    parser.add_argument("--mixed_precision", default="bf16")
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma list of {', '.join(GROUPS)}")
    parser.add_argument("--checkpointing", action="store_true", help="baseline with gradient checkpointing")
    parser.add_argument("--json", help="write every variant's figures here")
    args = parser.parse_args(argv)
    base = {
        "model_family": args.family,
        "model_flavour": args.flavour,
        "mixed_precision": args.mixed_precision,
        "lora_rank": args.lora_rank,
        "gradient_checkpointing": args.checkpointing,
        "report_to": "none",
    }
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"{args.family}/{args.flavour} {args.resolution}x{args.frames} batch {args.batch}, "
        f"LoRA r{args.lora_rank}, "
        f"{args.mixed_precision}, checkpointing {'on' if args.checkpointing else 'off'} unless varied; "
        f"{device}; torch {torch.__version__}; median of {args.steps} steps after {args.warmup}",
        flush=True,
    )
    figures: dict[str, list[dict[str, Any]]] = {}
    for group in [g.strip() for g in args.groups.split(",") if g.strip()]:
        if group not in GROUPS:
            parser.error(f"unknown group '{group}'; one of {', '.join(GROUPS)}")
        columns = f"{'s/step':>9} {'ratio':>6} {'alloc GiB':>9} {'resv GiB':>9} {'MFU':>6}"
        print(f"\n[{group}]\n  {'variant':18} {columns}")
        rows, baseline = [], None
        for label, change in GROUPS[group]:
            row = {"variant": label, "change": change, **_run(base, change, args)}
            rows.append(row)
            if "error" in row:
                print(f"  {label:18} not run: {row['error']}", flush=True)
                continue
            baseline = baseline or row["s_per_step_median"]
            mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "n/a"
            print(
                f"  {label:18} {row['s_per_step_median']:9.4f} {row['s_per_step_median'] / baseline:6.3f} "
                f"{_gib(row['memory_allocated_gib'])}   {_gib(row['memory_reserved_gib'])}   {mfu:>6}",
                flush=True,
            )
        figures[group] = rows
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "groups": figures}, indent=2))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
