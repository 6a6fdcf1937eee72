"""Scene split accuracy and throughput, side by side with raw PyAV decode of the same file, in one run.

    python bench/prep_split.py                    # 640x360, 25 fps, 12 scenes (hard cuts and fades)
    python bench/prep_split.py --size 1280x720 --repeats 3 --json split.json

Writes synthetic footage with known cuts (`cinetune.prep.synthetic`: textured panning scenes, hard cuts and
fades through black) to a temporary folder, then, alternating, for `--repeats` rounds:
  raw decode   every frame decoded with PyAV and converted to an ndarray (thread_type AUTO);
  detection    `detect_cuts` for each detector (PySceneDetect on its PyAV backend, fade detector on);
  full split   `split_footage` into an empty folder (detection, packet index, clips written with sound).
Prints detected vs true cuts per detector (exact, within one frame, missed, extra) and median frames/s of
each, with the ratio to raw decode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import av

from cinetune.prep.scenes import DETECTORS, SplitOptions, detect_cuts
from cinetune.prep.split import split_footage
from cinetune.prep.synthetic import Scene, write_footage

SCENES = [
    Scene(75), Scene(50), Scene(100, fade_out=12), Scene(90, fade_in=12), Scene(60), Scene(125),
    Scene(80, fade_out=8), Scene(70, fade_in=8), Scene(55), Scene(110), Scene(65), Scene(95),
]  # fmt: skip


def raw_decode(path: Path) -> int:
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="bgr24")  # what PySceneDetect's PyAV backend hands its detectors
            frames += 1
    return frames


def score(found: list[int], truth: list[int]) -> dict[str, object]:
    exact = sum(c in found for c in truth)
    near = sum(any(abs(c - f) <= 1 for f in found) for c in truth)
    extra = [f for f in found if all(abs(c - f) > 1 for c in truth)]
    return {"found": found, "exact": exact, "within_1": near, "missed": len(truth) - near, "extra": extra}


def main() -> None:
    raw_text = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw_text)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="cinetune-bench-split-"))
    try:
        source = folder / "footage.mp4"
        truth = write_footage(source, SCENES, width=width, height=height, audio_rate=48000)
        total = sum(s.frames for s in SCENES)
        timings: dict[str, list[float]] = {"raw decode": [], "full split (content)": []}
        timings.update({f"detection ({d})": [] for d in DETECTORS})
        found: dict[str, list[int]] = {}
        for round_ in range(args.repeats):
            start = time.perf_counter()
            assert raw_decode(source) == total
            timings["raw decode"].append(time.perf_counter() - start)
            for detector in DETECTORS:
                start = time.perf_counter()
                found[detector] = detect_cuts(source, SplitOptions(detector=detector), 25.0)
                timings[f"detection ({detector})"].append(time.perf_counter() - start)
            out = folder / f"clips-{round_}"
            start = time.perf_counter()
            report = split_footage(source, out, SplitOptions())
            timings["full split (content)"].append(time.perf_counter() - start)
            shutil.rmtree(out)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"footage: {total} frames, {width}x{height} at 25 fps, {len(truth)} cuts ({truth})")
        print(f"{args.repeats} alternating rounds, load average {load:.2f}, {os.cpu_count()} cores\n")
        results: dict[str, object] = {"truth": truth, "frames": total, "size": args.size}
        for detector in DETECTORS:
            results[detector] = score(found[detector], truth)
            print(f"{detector:9s} cuts {json.dumps(results[detector])}")
        raw = total / statistics.median(timings["raw decode"])
        print(f"\n{'what':24s} {'frames/s':>9s} {'/ raw decode':>13s}")
        for name, values in timings.items():
            fps = total / statistics.median(values)
            results[name] = round(fps, 1)
            print(f"{name:24s} {fps:9.1f} {fps / raw:13.2f}")
        print(f"\nfull split wrote {len(report.done)} clips ({report.line()})")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
