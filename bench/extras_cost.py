"""Time and memory of each training extra against the plain step, side by side in one run.

    python bench/extras_cost.py --family ltxvideo --flavour tiny --resolution 256x256 --frames 49
    python bench/extras_cost.py --family kandinsky5-video --flavour t2v-lite-sft-5s --resolution 512x512 \\
        --frames 25 --block 8 --route 2,-2

Each variant is one `cinetune bench` run (the flavour's transformer with random weights, synthetic cached
inputs, the trainer's own optimizer step) in a process of its own, so the peak host memory (ru_maxrss) and,
on a GPU, the peak device memory are the variant's own. Variants: plain; TREAD (0.5 of the tokens skip the
route's blocks, `--route`); scheduled sampling (every sample rolled out, up to `--rollout` steps: a step's
cost follows the longest rollout drawn); CREPA (block `--block` against dinov2_vits14 features at 224 px, the
quickstarts' small encoder, or `--crepa_model` / `--crepa_size`; the features come from the cache, random
here: the encoder's own cost is paid once per cached window and is not in these figures). Printed: s/step
(median), its ratio to plain, FLOPs per step counted by torch's FlopCounterMode and their ratio, peak host
RSS and (GPU) peak allocated memory with their differences to plain.
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


def variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    start, end = args.route.split(",")
    route = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": int(start), "end_layer_idx": int(end)}]}
    return [
        ("plain", []),
        (f"TREAD 0.5 {start}..{end}", [f"--tread_config={json.dumps(route)}"]),
        (
            f"rollout p1 <= {args.rollout}",
            [f"--scheduled_sampling_max_step_offset={args.rollout}", "--scheduled_sampling_probability=1.0"],
        ),
        (
            f"CREPA block {args.block}",
            [
                "--crepa_enabled=true",
                f"--crepa_block_index={args.block}",
                f"--crepa_model={args.crepa_model}",
                f"--crepa_encoder_image_size={args.crepa_size}",
            ],
        ),
    ]


def run(args: argparse.Namespace, extra: list[str], folder: Path, name: str) -> dict[str, Any]:
    out = folder / f"{name}.json"
    command = [
        sys.executable, "-m", "cinetune.cli", "bench",
        "--family", args.family, "--flavour", args.flavour,
        "--resolution", args.resolution, "--frames", str(args.frames), "--batch", str(args.batch),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--json", str(out),
        f"--lora_rank={args.lora_rank}", f"--mixed_precision={args.mixed_precision}", *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if done.returncode != 0 or not out.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"error": lines[-1][:200] if lines else f"exit {done.returncode}"}
    return json.loads(out.read_text())


def _line(name: str, row: dict[str, Any], base: dict[str, Any]) -> str:
    """One variant's figures and their ratios / differences to plain."""
    seconds, flops, rss = row["s_per_step_median"], row["flops_per_step"], row["host_peak_rss_gib"]
    text = f"  {name:20} {seconds:9.4f} {seconds / base['s_per_step_median']:6.3f}"
    text += f" {flops / 1e12:8.4f} {flops / base['flops_per_step']:6.3f}"
    text += f" {rss:8.2f} {rss - base['host_peak_rss_gib']:+6.2f}"
    dev, dev_base = row.get("memory_allocated_gib"), base.get("memory_allocated_gib")
    if dev is None or dev_base is None:
        return text + "      n/a"
    return text + f" {dev:8.2f} {dev - dev_base:+6.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="ltxvideo")
    parser.add_argument("--flavour", default="tiny")
    parser.add_argument("--resolution", default="256x256")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lora_rank", type=int, default=32)
    parser.add_argument("--mixed_precision", default="no")
    parser.add_argument("--route", default="0,-1", help="TREAD route start,end (the tiny models: 2 blocks)")
    parser.add_argument("--rollout", type=int, default=5)
    parser.add_argument("--block", type=int, default=1, help="CREPA block (quickstarts: 8)")
    parser.add_argument("--crepa_model", default="dinov2_vits14")
    parser.add_argument("--crepa_size", type=int, default=224)
    parser.add_argument("--json", help="write every variant's figures here")
    args = parser.parse_args(argv)
    setting = (
        f"{args.resolution}x{args.frames} batch {args.batch}, LoRA r{args.lora_rank}, {args.mixed_precision}"
    )
    print(
        f"{args.family}/{args.flavour} {setting}; median of {args.steps} steps after {args.warmup}; one "
        "process per variant",
        flush=True,
    )
    print(f"  {'variant':20} {'s/step':>9} {'ratio':>6} {'TFLOP':>8} {'ratio':>6} {'RSS GiB':>8} {'+GiB':>6} "
          f"{'dev GiB':>8} {'+GiB':>6}")  # fmt: skip
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in variants(args):
            row = {"variant": name, **run(args, extra, Path(tmp), str(len(rows)))}
            rows.append(row)
            if "error" in row:
                print(f"  {name:20} not run: {row['error']}", flush=True)
                continue
            base = base or row
            print(_line(name, row, base), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "variants": rows}, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
