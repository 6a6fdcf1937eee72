"""Memory and speed of the training step with each memory feature off and on, side by side in one run.

    python bench/memory.py --family ltxvideo2 --flavour 2.0 --resolution 768x512 --frames 49   # a GPU
    python bench/memory.py --family ltxvideo --flavour tiny --resolution 64x64 --frames 9 --steps 3

Every variant is one `cinetune bench` run (the flavour's full-size transformer with random weights, the
trainer's own `setup_model` and optimizer step, so quantization, group offload and block swap are applied as
`cinetune train` applies them) in a fresh process, so each variant's peak host memory is its own. Printed per
variant: s/step (median), its ratio to the first variant, peak device memory (allocated; GPU only), the
process's peak host memory, and the memory planner's predicted training peak. `--json` stores everything.

Variants (each alone on top of `--base` keys, default gradient checkpointing on, bf16, LoRA rank 32):
none, group offload (block level, 1 block per group, streams), block swap N (`--swap`, default 8),
int8-quanto; with `--processes N` also DDP and FSDP2 over N ranks (`cinetune bench` launches them with
torchrun; device and host figures are per rank, the largest, and host RAM summed over the ranks). "host
after steps" is the resident memory right after the timed steps (the peak includes loading).

    python bench/memory.py --family ltxvideo --flavour 0.9.5 --resolution 128x128 --frames 9 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "group offload": {
        "enable_group_offload": True,
        "group_offload_type": "block_level",
        "group_offload_blocks_per_group": 1,
        "group_offload_use_stream": True,
    },
    "block swap": {"musubi_blocks_to_swap": 8},
    "int8-quanto": {"base_model_precision": "int8-quanto"},
}
BASE = {"gradient_checkpointing": True, "mixed_precision": "bf16", "lora_rank": 32}


def run_variant(args: argparse.Namespace, keys: dict[str, Any], out: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "cinetune.cli",
        "bench",
        "--family",
        args.family,
        "--flavour",
        args.flavour,
        "--resolution",
        args.resolution,
        "--frames",
        str(args.frames),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--json",
        str(out),
        *(f"--{key}={json.dumps(value)}" for key, value in keys.items()),
    ]
    # glibc's malloc keeps freed blocks of up to 32 MiB in its heap (its mmap threshold grows with use), so
    # on the CPU the gathered-and-freed weights of FSDP2 (and offload's copies) stayed in the RSS: measured on
    # LTX-Video 0.9.5, an FSDP2 rank at 4.5-5.0 GiB during steps, 2.6-2.7 GiB with a fixed 1 MiB threshold.
    # Every variant runs with it, so host figures compare what is allocated, not what malloc kept.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1]}
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="ltxvideo")
    parser.add_argument("--flavour", default="tiny")
    parser.add_argument("--resolution", default="64x64")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--swap", type=int, default=8, help="blocks to swap in the block swap variant")
    parser.add_argument("--base", default=json.dumps(BASE), help="JSON of keys every variant shares")
    parser.add_argument("--json", help="write every variant's figures to this file")
    parser.add_argument("--processes", type=int, default=1, help="also DDP and FSDP2 over this many ranks")
    parser.add_argument("--only", help="comma-separated variant names to run (default: all)")
    args = parser.parse_args()
    base = json.loads(args.base)
    VARIANTS["block swap"] = {"musubi_blocks_to_swap": args.swap}
    if args.processes > 1:
        VARIANTS[f"DDP x{args.processes}"] = {"num_processes": args.processes}
        VARIANTS[f"FSDP2 x{args.processes}"] = {"num_processes": args.processes, "fsdp_enable": True}
    if args.only:
        wanted = [name.strip() for name in args.only.split(",")]
        for name in list(VARIANTS):
            if name not in wanted:
                del VARIANTS[name]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, keys in VARIANTS.items():
            results[name] = run_variant(args, {**base, **keys}, Path(folder) / f"{len(results)}.json")
    first = next((r for r in results.values() if "error" not in r), None)
    print(f"{args.family}/{args.flavour} at {args.resolution}x{args.frames}, base {json.dumps(base)}")
    print(
        f"{'variant':16s} {'s/step':>9s} {'ratio':>6s} {'device GiB':>11s} {'host GiB':>9s} "
        f"{'predicted':>10s} {'host total':>11s} {'host after steps':>17s}"
    )
    for name, result in results.items():
        if "error" in result:
            print(f"{name:16s} failed: {result['error']}")
            continue
        step = result["s_per_step_median"]
        ratio = step / first["s_per_step_median"] if first else float("nan")
        ranks = result.get("host_peak_rss_gib_per_rank") or [result["host_peak_rss_gib"]]
        device = max(
            result.get("memory_allocated_gib_per_rank") or [result["memory_allocated_gib"]] or [None]
        )
        predicted = result["predicted_device_gib"]
        print(
            f"{name:16s} {step:9.4f} {ratio:6.2f} "
            f"{(f'{device:.2f}' if device is not None else 'n/a'):>11s} {max(ranks):9.2f} "
            f"{(f'{predicted:.2f}' if predicted is not None else 'n/a'):>10s} {sum(ranks):11.2f} "
            f"{max(result.get('host_rss_after_steps_gib_per_rank') or [float('nan')]):17.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
