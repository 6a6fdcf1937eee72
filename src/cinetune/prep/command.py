"""`cinetune prep split|caption|all`: the command line of dataset preparation (cli.py registers it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cinetune.prep.scenes import DETECTORS


def add_prep_parser(sub: Any) -> None:
    """Add `prep` and its three subcommands to the CLI's subparsers."""
    prep = sub.add_parser("prep", help="prepare raw footage: split into scenes, caption, configure, train")
    steps = prep.add_subparsers(dest="prep_command", required=True)
    split = steps.add_parser(
        "split",
        help="split videos into one clip per scene",
        description="Split videos into one clip per scene (PySceneDetect on PyAV frames).",
    )
    split.add_argument("raw", help="a video file or a folder of videos (searched recursively)")
    split.add_argument("out", help="folder the clips and manifest.jsonl go to")
    _split_args(split)
    caption = steps.add_parser("caption", help="caption every clip of a folder with a video language model")
    caption.add_argument("folder", help="folder of clips (captions are written beside them)")
    _caption_args(caption)
    both = steps.add_parser(
        "all",
        help="split -> caption -> config -> check -> cache (-> train)",
        description="Raw footage to a checked, cached project (and a trained LoRA with --train). Config keys "
        "can be given as --key=value; they go into the project's config/config.json.",
    )
    both.add_argument("raw", help="a video file or a folder of videos")
    both.add_argument(
        "--project", required=True, help="project folder (created): config/, datasets/, output/"
    )
    both.add_argument("--family", help="model_family (default ltxvideo)")
    both.add_argument("--flavour", help="model_flavour (default: the family's)")
    both.add_argument(
        "--resolution",
        help="WIDTHxHEIGHT, e.g. 768x512 (landscape), 512x768 (portrait), 512x512 "
        "(square); default the family's first choice",
    )
    both.add_argument(
        "--num_frames",
        type=int,
        help="frames per training sample: 8k+1 for LTX (49), 4k+1 for Kandinsky 5 (61)",
    )
    both.add_argument("--train", action="store_true", help="train after caching")
    _split_args(both)
    _caption_args(both)


def _split_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scene split")
    g.add_argument("--detector", choices=DETECTORS, default="content", help="PySceneDetect detector")
    g.add_argument("--threshold", type=float, help="detector threshold (content 27, adaptive 3.0)")
    g.add_argument(
        "--fade_threshold",
        type=float,
        default=12.0,
        help="fades to black: mean pixel level counted as black (0: off; default 12)",
    )
    g.add_argument("--min_cut_distance", type=int, default=15, help="frames between two cuts, at least (15)")
    g.add_argument("--min_scene_seconds", type=float, default=1.5, help="shorter scenes are skipped (1.5)")
    g.add_argument(
        "--max_scene_seconds",
        type=float,
        default=10.0,
        help="longer scenes are cut into pieces of this length (10; 0: no limit)",
    )
    g.add_argument("--min_scene_frames", type=int, help="the minimum in frames (wins over seconds)")
    g.add_argument("--max_scene_frames", type=int, help="the maximum in frames (wins over seconds)")
    g.add_argument("--trim_frames", type=int, default=0, help="frames dropped at both ends of a scene (0)")
    g.add_argument("--reencode", action="store_true", help="re-encode every clip (no stream copies)")
    g.add_argument("--crf", type=int, default=18, help="H.264 quality of re-encoded clips (18)")


def _caption_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("captions")
    g.add_argument(
        "--backend",
        choices=["local", "openai"],
        default="local",
        help="local: a transformers model; openai: any OpenAI-compatible chat API",
    )
    g.add_argument(
        "--model",
        help="local: folder or hub id (default llava-hf/LLaVA-NeXT-Video-7B-hf); "
        "openai: the API's model name (default gpt-4o-mini)",
    )
    g.add_argument("--base_url", help="API base URL (default https://api.openai.com/v1)")
    g.add_argument("--api_key_env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    g.add_argument("--trigger", help="word put in front of every caption, e.g. APT")
    g.add_argument("--prompt", help="instruction to the model; {name} {seconds} {frames} are filled in")
    g.add_argument(
        "--frames",
        dest="caption_frames",
        type=int,
        default=8,
        help="frames sampled evenly from each clip and shown to the model (8)",
    )
    g.add_argument("--frame_size", type=int, default=512, help="longest side of those frames, pixels (512)")
    g.add_argument(
        "--output",
        choices=["txt", "jsonl"],
        default="txt",
        help="txt: clip.txt beside each clip; jsonl: metadata.jsonl",
    )
    g.add_argument("--overwrite", action="store_true", help="caption clips that already have a caption")
    g.add_argument("--quantize", choices=["8bit", "4bit"], help="load the local model quantized (not yet)")
    g.add_argument("--device", help="local model device (default cuda when present, else cpu)")
    g.add_argument("--max_new_tokens", type=int, default=300, help="longest answer, tokens (300)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one API answer (120)")
    g.add_argument("--max_retries", type=int, default=5, help="retries of a busy or slow API (5)")
    g.add_argument("--requests_per_minute", type=float, default=0.0, help="API rate limit (0: none)")


def split_options(args: argparse.Namespace):
    from cinetune.prep.scenes import SplitOptions

    return SplitOptions(
        detector=args.detector,
        threshold=args.threshold,
        fade_threshold=args.fade_threshold,
        min_cut_distance=args.min_cut_distance,
        min_scene_seconds=args.min_scene_seconds,
        max_scene_seconds=args.max_scene_seconds,
        min_scene_frames=args.min_scene_frames,
        max_scene_frames=args.max_scene_frames,
        trim_frames=args.trim_frames,
        reencode=args.reencode,
        crf=args.crf,
    )


def caption_options(args: argparse.Namespace):
    from cinetune.prep.captioners import DEFAULT_PROMPT
    from cinetune.prep.captioning import CaptionOptions

    return CaptionOptions(
        backend=args.backend,
        model=args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        trigger=args.trigger,
        prompt=args.prompt or DEFAULT_PROMPT,
        frames=args.caption_frames,
        frame_size=args.frame_size,
        overwrite=args.overwrite,
        output=args.output,
        quantize=args.quantize,
        device=args.device,
        max_new_tokens=args.max_new_tokens,
        timeout=args.timeout,
        max_retries=args.max_retries,
        requests_per_minute=args.requests_per_minute,
    )


def run_prep(
    args: argparse.Namespace,
    extra: list[str],
    console: Any,
    check: Callable[..., None],
    after_plan: Callable[..., None] | None = None,
) -> int:
    """Run `cinetune prep ...`; `check` is cinetune.check.check_report (a layer above this package)."""
    from cinetune.config import parse_overrides
    from cinetune.errors import ConfigError
    from cinetune.prep.progress import RichStages

    if extra and args.prep_command != "all":
        raise ConfigError(f"prep {args.prep_command}: unexpected arguments {' '.join(extra)}")
    split_opts = split_options(args) if args.prep_command != "caption" else None
    caption_opts = caption_options(args) if args.prep_command != "split" else None
    with RichStages(console) as bars:
        if args.prep_command == "split":
            from cinetune.prep.split import split_footage

            reports = [split_footage(Path(args.raw), Path(args.out), split_opts, bars.stage())]
        elif args.prep_command == "caption":
            from cinetune.prep.captioning import caption_folder

            reports = [caption_folder(Path(args.folder), caption_opts, bars.stage())]
        else:
            from cinetune.prep.pipeline import AllOptions, Stages, run_all

            opts = AllOptions(
                args.family,
                args.flavour,
                args.resolution,
                args.num_frames,
                args.train,
                parse_overrides(extra),
            )
            stages = Stages(new_bar=bars.stage, emit=bars.progress.console.print)
            reports = run_all(
                Path(args.raw),
                Path(args.project),
                split_opts,
                caption_opts,
                opts,
                check,
                stages,
                after_plan=after_plan,
            )
    for report in reports:
        console.print(report.line(), highlight=False)
        for line in report.details():
            console.print(line, highlight=False, markup=False)
    if args.prep_command == "all":
        console.print(f"report: {Path(args.project) / 'prep_report.txt'}")
    return 0
