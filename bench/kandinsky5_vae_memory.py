"""Peak CPU memory of a full-size HunyuanVideo VAE encode: plain, patch convolution, tiling, both.

    python bench/kandinsky5_vae_memory.py --frames 9 --size 288

Random weights (speed and memory do not depend on the values). Each mode runs in a fresh process, so the
process's peak resident memory (ru_maxrss) belongs to that encode alone; the figure printed is that peak
minus the resident memory just before encoding (model and input already built), with the max abs
difference of its latents from the plain path's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

MODES = {"plain": (False, False), "patch_conv": (True, False), "tiling": (False, True), "both": (True, True)}


def _encode(mode: str, frames: int, size: int, out: Path) -> dict:
    from diffusers import AutoencoderKLHunyuanVideo

    from cinetune.memory.vae import enable_patch_conv

    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo().eval().requires_grad_(False)
    patch_conv, tiling = MODES[mode]
    if patch_conv:
        enable_patch_conv(vae)
    if tiling:
        vae.enable_tiling()
    generator = torch.Generator().manual_seed(1)
    coarse = torch.rand(1, 3, frames, size // 16, size // 16, generator=generator)
    pixels = torch.nn.functional.interpolate(coarse, size=(frames, size, size), mode="trilinear") * 2 - 1
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(latents, out)
    return {"mode": mode, "encode_peak_mib": (peak - before) / 2**20, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--child", choices=list(MODES))
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_encode(args.child, args.frames, args.size, Path(args.out))))
        return
    with tempfile.TemporaryDirectory() as folder:
        results, latents = [], {}
        for mode in MODES:
            out = Path(folder) / f"{mode}.pt"
            cmd = [sys.executable, __file__, "--child", mode, "--frames", str(args.frames)]
            cmd += ["--size", str(args.size), "--out", str(out)]
            done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
            line = done.stdout.strip().splitlines()[-1]
            results.append(json.loads(line))
            latents[mode] = torch.load(out, map_location="cpu")
        for row in results:
            diff = (latents[row["mode"]] - latents["plain"]).abs()
            row.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
            row["latent_std"] = float(latents["plain"].std())
            print(json.dumps(row))


if __name__ == "__main__":
    main()
