"""`cinetune` command line: train, cache, check, export, demo, bench, prep, doctor, server, configure.

Exit codes: 0 done; 1 `doctor` found no device that can train; 2 an error the user can fix (config, data, a
locked or full output folder, a damaged checkpoint); 3 training diverged (non-finite steps); 130 / 143
stopped by SIGINT / SIGTERM, resumable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from cinetune.errors import CinetuneError, ConfigError, NotSupportedYet, RunStopped

console = Console(stderr=False)
_DEFAULT_CONFIGS = (Path("config/config.json"), Path("config/config.toml"))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    for noisy in ("httpx", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # torchao (quantization) logs its CUDA-only kernels that a CPU build cannot load, and torch's pytree a
    # deprecation, each time diffusers imports it: nothing a user can act on.
    for noisy in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _config_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    return next((p for p in _DEFAULT_CONFIGS if p.exists()), None)


def _plan(args: argparse.Namespace, extra: list[str]):
    """The config files and overrides, resolved into the run plan every command works from."""
    from cinetune.config import load_config, parse_overrides
    from cinetune.plan import resolve

    overrides = parse_overrides(extra)
    path = _config_path(args.config)
    if path is None and "model_family" not in overrides:
        raise ConfigError("no config: write config/config.json (see examples/) or pass --config PATH")
    return resolve(load_config(path, overrides))


def launch_command(args: argparse.Namespace, extra: list[str], train: Any) -> list[str]:
    """torchrun re-running this command (`_torchrun`), with its config and overrides."""
    cmd = [*_torchrun(train), "-m", "cinetune.cli", args.command]
    if args.config:
        cmd += ["--config", args.config]
    return [*cmd, *extra, f"--num_processes={train.num_processes}"]


def _torchrun(train: Any) -> list[str]:
    """torchrun for this machine's ranks: `--standalone` on one machine; with num_machines > 1 this
    machine's share of the `num_processes` ranks, which meet machine 0's at
    main_process_ip:main_process_port."""
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if train.num_machines > 1:
        cmd += [
            f"--nnodes={train.num_machines}",
            f"--node_rank={train.machine_rank}",
            f"--nproc_per_node={train.num_processes // train.num_machines}",
            f"--master_addr={train.main_process_ip}",
            f"--master_port={train.main_process_port}",
        ]
    else:
        cmd += ["--standalone", f"--nproc_per_node={train.num_processes}"]
    return cmd


def _launch_distributed(cmd: list[str], env: dict[str, str], what: str) -> int:
    """Run torchrun (`cmd`, from `launch_command`): DDP through accelerate in the processes it starts, which
    share this process's run lock (`env`; machine 0's launcher alone holds one)."""
    console.print(f"launching {what}: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the ranks got Ctrl-C too (same process group): wait for their clean stop
            continue


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.training.lock import launched_env, run_lock

    plan = _plan(args, extra)  # a bad config stops here, before N processes start
    train = plan.train
    out = train.output_dir
    # under a launcher (torchrun, accelerate launch) WORLD_SIZE is set: this process is a rank already
    launch = (train.num_processes > 1 or train.num_machines > 1) and "WORLD_SIZE" not in os.environ
    # machine 0's launcher holds the lock of the shared output folder; the other machines join its run
    with run_lock(out, machine_rank=train.machine_rank if launch else 0):
        if launch:
            what = f"{train.num_processes} processes"
            if train.num_machines > 1:
                what = (
                    f"{train.num_processes // train.num_machines} of {train.num_processes} processes "
                    f"(machine {train.machine_rank} of {train.num_machines})"
                )
            env = launched_env(out) if train.machine_rank == 0 else dict(os.environ)
            return _launch_distributed(launch_command(args, extra, train), env, what)
        from cinetune.training.trainer import Trainer

        trainer = Trainer(plan)
        _snapshot_config(plan, trainer.acc.is_main_process)
        result = trainer.run()
        if trainer.acc.is_main_process:
            _print_outputs(result, out)
    return 0


def _snapshot_config(plan: Any, is_main: bool) -> None:
    """The resolved config (every default filled in) and the datasets, beside the run's outputs."""
    if not is_main:
        return
    out = Path(plan.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cinetune_config.json").write_text(plan.train.model_dump_json(indent=2))
    (out / "cinetune_datasets.json").write_text(
        json.dumps(plan.data.model_dump(mode="json")["datasets"], indent=2)
    )


def _print_outputs(result: dict[str, Any], output_dir: Path) -> None:
    losses = result.get("losses") or [float("nan")]
    console.print(f"[bold green]done[/]: {result['steps']} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    for label in ("lora", "comfyui"):
        if result.get(label):
            console.print(f"  {label:8s} {result[label]}")
    for video in result.get("videos", []):
        console.print(f"  video    {video}")
    console.print(f"  metrics  {Path(output_dir) / 'metrics.jsonl'}")


def cmd_cache(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.errors import disk_errors
    from cinetune.training.lock import run_lock
    from cinetune.training.trainer import Trainer

    plan = _plan(args, extra)
    out = plan.train.output_dir
    with run_lock(out), disk_errors(out, "the cache"):
        trainer = Trainer(plan)
        with trainer.stop.handling_signals():
            trainer.scan()
            index = trainer.cache()
    console.print(
        f"cache ready: {len(index.caption_keys)} captions, {len(index.latent_keys)} latents "
        f"({json.dumps({k: round(v, 3) for k, v in index.stats.items()})})"
    )
    return 0


def cmd_check(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.check import check_report

    check_report(_plan(args, extra), console.print)
    return 0


def cmd_doctor(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.doctor import diagnose, report_lines

    plan = _plan(args, extra) if args.config or extra else None
    report = diagnose(plan)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for line in report_lines(report):
            console.print(escape(line), highlight=False)
    return 0 if report["usable"] else 1


def cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.export.lora import DIFFUSERS_FILE, check_lora_file
    from cinetune.models.registry import family_class

    if extra:
        raise ConfigError(f"export: unexpected arguments {' '.join(extra)}")
    output_dir = Path(args.output_dir)
    family_name = args.model_family
    snapshot = output_dir / "cinetune_config.json"
    if family_name is None and snapshot.exists():
        try:
            family_name = json.loads(snapshot.read_text())["model_family"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ConfigError(f"export: {snapshot} is damaged ({exc}); pass --model_family") from exc
    if family_name is None:
        raise ConfigError(f"export: {snapshot} not found; pass --model_family")
    if args.format == "diffusers":
        path = output_dir / DIFFUSERS_FILE
        count = check_lora_file(path)
        console.print(f"diffusers LoRA: {path} ({count} LoRA tensors)")
        return 0
    path = family_class(family_name).export_comfyui(output_dir)
    console.print(f"ComfyUI LoRA written: {path}")
    return 0


def cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.demo import run_demo
    from cinetune.training.lock import run_lock

    with run_lock(Path(args.output_dir) / "output"):
        result = run_demo(Path(args.output_dir), extra)
    _print_outputs(result, Path(args.output_dir) / "output")
    return 0


def _bench_plan(args: argparse.Namespace, extra: list[str], command: str):
    """The run plan of `cinetune bench` / `cinetune plan`: a config file or --family/--flavour, overrides, and
    the config's dataset file only to know whether audio trains (no dataset is read)."""
    from cinetune.benchmark import bench_audio_datasets
    from cinetune.config import LoadedConfig, parse_overrides
    from cinetune.config.load import build_data_config, build_train_config, read_file
    from cinetune.plan import resolve

    raw: dict[str, Any] = {}
    path = _config_path(args.config)
    from_file = path is not None and bool(args.config or not args.family)
    if from_file:
        raw.update(read_file(path))
    raw.update(parse_overrides(extra))
    if args.family:
        raw["model_family"] = args.family
    if args.flavour:
        raw["model_flavour"] = args.flavour
    if "model_family" not in raw and "--model_family" not in raw:
        raise ConfigError(f"{command}: pass --family and --flavour, or --config PATH")
    raw.setdefault("report_to", "none")
    train = build_train_config(raw, where=command)
    data = None  # the config's dataset file says whether audio trains (an `audio` block); none is read
    if args.audio:
        data = bench_audio_datasets()
    elif from_file:
        backend = Path(train.data_backend_config)
        if backend.is_file():
            data = build_data_config(read_file(backend), where=str(backend))
    return resolve(LoadedConfig(train=train, data=data, config_path=path if from_file else None))


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.benchmark import format_result, run_bench, write_json

    plan = _bench_plan(args, extra, "bench")
    train = plan.train
    if train.num_processes > 1 and "WORLD_SIZE" not in os.environ:  # DDP / FSDP2: one process per device
        if train.num_machines > 1:
            raise NotSupportedYet("cinetune bench over several machines is not supported yet: bench one")
        return _launch_distributed(_bench_command(args, extra, train), dict(os.environ), "bench")
    width, height = _parse_size(args.resolution)
    result = run_bench(
        plan, (width, height), args.frames, args.batch, args.steps, args.warmup, args.peak_tflops
    )
    if int(os.environ.get("RANK", "0")) != 0:  # every rank timed its steps; rank 0 reports them all
        return 0
    console.print(format_result(result), highlight=False)
    if args.json:
        write_json(result, Path(args.json))
        console.print(f"figures written to {args.json}")
    return 0


def _bench_command(args: argparse.Namespace, extra: list[str], train: Any) -> list[str]:
    """torchrun re-running this `cinetune bench` with its own arguments (`_torchrun`, one machine)."""
    cmd = [*_torchrun(train), "-m", "cinetune.cli", "bench"]
    names = ("config", "family", "flavour", "resolution", "frames", "batch", "steps", "warmup", "peak_tflops")
    cmd += [f"--{name}={getattr(args, name)}" for name in (*names, "json") if getattr(args, name) is not None]
    if args.audio:
        cmd.append("--audio")
    return [*cmd, *extra, f"--num_processes={train.num_processes}"]


def cmd_plan(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.memory.report import RunMemory, Shape

    plan = _bench_plan(args, extra, "plan")
    width, height = _parse_size(args.resolution)
    rule = plan.family.frame_rule
    shape = Shape(
        rule.side_down(width), rule.side_down(height), rule.adjust_frames(args.frames, "--frames"), args.batch
    )
    memory = RunMemory(plan, shape)
    console.print(f"{plan.family.name}/{plan.family.loader.flavour} at {shape}, as configured (predicted):")
    for line in memory.estimate().lines():
        console.print(f"  {line}", highlight=False)
    target = args.vram or plan.train.target_vram_gb
    if target is None:
        console.print("pass --vram GiB (or set target_vram_gb) for the cheapest settings that fit")
        return 0
    proposal = memory.propose(target)
    if proposal is None:
        console.print(
            f"[red]nothing cinetune builds fits {target:g} GiB at {shape}[/]: lower the resolution, "
            "frames or batch"
        )
        return 2
    keys, estimate = proposal
    console.print(f"the cheapest settings that fit {target:g} GiB (add these keys to config.json):")
    console.print(json.dumps(keys or {"note": "the config fits as it is"}, indent=2), highlight=False)
    for line in estimate.lines():
        console.print(f"  {line}", highlight=False)
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ConfigError(f"--resolution '{text}': expected WIDTHxHEIGHT, e.g. 768x512") from exc
    return width, height


def cmd_keys(args: argparse.Namespace, extra: list[str]) -> int:
    from rich.table import Table

    from cinetune.config import AudioOptions, DatasetConfig, TrainConfig, VideoOptions

    for title, model in (
        ("config.json", TrainConfig),
        ("multidatabackend.json entry", DatasetConfig),
        ("dataset video block", VideoOptions),
        ("dataset audio block", AudioOptions),
    ):
        table = Table(title=title, show_lines=False)
        table.add_column("key", no_wrap=True)
        table.add_column("default", overflow="fold", max_width=24)
        table.add_column("description", overflow="fold")
        for name, field in model.model_fields.items():
            default = "required" if field.is_required() else repr(field.default)
            table.add_row(name, default, field.description or "")
        console.print(table)
    return 0


def cmd_prep(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.check import check_report
    from cinetune.prep.command import run_prep

    def snapshot(plan: Any) -> None:
        _snapshot_config(plan, True)

    return run_prep(args, extra, console, check=check_report, after_plan=snapshot)


def cmd_server(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.server.serve import serve

    if extra:
        raise ConfigError(f"server: unexpected arguments {' '.join(extra)}")
    serve(args.host, args.port, Path(args.root), args.token, console.print)
    return 0


def cmd_configure(args: argparse.Namespace, extra: list[str]) -> int:
    from cinetune.configure import run_wizard

    if extra:
        raise ConfigError(f"configure: unexpected arguments {' '.join(extra)}")
    run_wizard(Path(args.project), console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cinetune", description="Fine-tune video diffusion models on your clips."
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("train", "train a LoRA"),
        ("cache", "build latent and text-embedding caches only"),
        ("check", "validate config and dataset, print a report, train nothing"),
    ):
        p = sub.add_parser(name, help=helptext, description=f"{helptext}. Any config key: --key=value.")
        p.add_argument("--config", help="config.json or config.toml (default: config/config.json)")
    p = sub.add_parser("export", help="write the LoRA of OUTPUT_DIR in another format")
    p.add_argument("output_dir")
    p.add_argument("--format", choices=["comfyui", "diffusers"], default="comfyui")
    p.add_argument("--model_family", default=None)
    sub.add_parser("keys", help="list every config key with its default and description")
    p = sub.add_parser(
        "doctor",
        help="check this machine: GPUs, drivers, attention kernels, codecs, disk, Hugging Face access",
        description="Exit code 0 when some device can train. With --config: free disk at the run's folders "
        "and whether the predicted memory peak fits the GPU found.",
    )
    p.add_argument("--config", help="config.json / .toml to check against this machine")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = sub.add_parser(
        "bench",
        help="time the real training step on the full-size architecture with random weights",
        description="Speed and memory of a config before downloading weights. Config keys: --key=value.",
    )
    p.add_argument("--config", help="config.json / .toml whose training settings to use")
    p.add_argument("--family", help="model_family (overrides the config's)")
    p.add_argument("--flavour", help="model_flavour (overrides the config's)")
    p.add_argument("--resolution", default="768x512", help="WIDTHxHEIGHT (default 768x512)")
    p.add_argument("--frames", type=int, default=49, help="frames per sample (default 49)")
    p.add_argument("--batch", type=int, default=1, help="samples per micro-batch (default 1)")
    p.add_argument("--steps", type=int, default=10, help="timed steps; the median is reported (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--peak_tflops", type=float, default=None, help="device dense bf16 peak for MFU")
    p.add_argument(
        "--audio",
        action="store_true",
        help="train audio too, as with a dataset `audio` block (LTX-2; default: as the config's datasets)",
    )
    p.add_argument("--json", help="write the figures to this file")
    p = sub.add_parser("server", help="the web UI (http://127.0.0.1:8001 by default)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default loopback; others need a token)"
    )
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--root", default=".", help="folder holding the projects (default: the current folder)")
    p.add_argument("--token", help="access token (default CINETUNE_TOKEN; generated off loopback)")
    p = sub.add_parser("configure", help="write config/config.json + multidatabackend.json step by step")
    p.add_argument("--project", default=".", help="project folder (default: the current folder)")
    p = sub.add_parser(
        "plan",
        help="predict peak device memory and host RAM; propose the cheapest settings that fit --vram",
        description="The memory planner: no weights, no network. Config keys: --key=value.",
    )
    p.add_argument("--config", help="config.json / .toml (default: config/config.json)")
    p.add_argument("--family", help="model_family (overrides the config's)")
    p.add_argument("--flavour", help="model_flavour (overrides the config's)")
    p.add_argument(
        "--vram", type=float, default=None, help="device memory to fit in, GiB (or target_vram_gb)"
    )
    p.add_argument("--resolution", default="768x512", help="WIDTHxHEIGHT (default 768x512)")
    p.add_argument("--frames", type=int, default=49, help="frames per sample (default 49)")
    p.add_argument("--batch", type=int, default=1, help="samples per micro-batch (default 1)")
    p.add_argument("--audio", action="store_true", help="LTX-2: train audio too")
    p = sub.add_parser("demo", help="train a tiny model on built-in synthetic clips")
    p.add_argument("--output_dir", default="demo_output")
    from cinetune.prep.command import add_prep_parser  # argparse only: no heavy import

    add_prep_parser(sub)
    return parser


COMMANDS = {
    "train": cmd_train,
    "cache": cmd_cache,
    "check": cmd_check,
    "export": cmd_export,
    "demo": cmd_demo,
    "keys": cmd_keys,
    "bench": cmd_bench,
    "doctor": cmd_doctor,
    "plan": cmd_plan,
    "prep": cmd_prep,
    "server": cmd_server,
    "configure": cmd_configure,
}


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
        _leave_as_rank(code)
    return code


def _leave_as_rank(code: int) -> None:
    """A rank of a torchrun launch ends here, its outputs written and its process group closed, without the
    interpreter's teardown: in two clean-clone CI runs a finished FSDP2 resume's rank 1 aborted there
    ("terminate called without an active exception", SIGABRT; a native thread torn down at exit), which made
    the whole launch fail after everything was saved. Not reproduced outside CI (22 tries)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    _setup_logging(args.verbose)
    err = Console(stderr=True, soft_wrap=True)
    try:
        return COMMANDS[args.command](args, extra)
    except RunStopped as exc:
        err.print(f"[bold yellow]stopped[/]: {escape(str(exc))}", highlight=False)
        return exc.exit_code
    except CinetuneError as exc:
        err.print(f"[bold red]error[/]: {escape(str(exc))}", highlight=False)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # a second Ctrl-C / SIGTERM (training/signals.py), or one outside a run
        err.print(
            "[bold yellow]stopped at once[/]: checkpoints and cache entries already written are intact "
            "(resume_from_checkpoint: latest continues from the last checkpoint)",
            highlight=False,
        )
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
