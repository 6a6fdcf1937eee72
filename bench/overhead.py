"""How much the trainer and the data path cost next to the bare minimum, measured side by side in one run.

(a) trainer overhead: `Trainer.optimizer_step` on cached data vs a bare PyTorch loop (same transformer
    architecture, LoRA config, batch shape, dtype and AdamW; inputs built once; forward, backward, step,
    zero_grad).
(b) data throughput: loading cached epochs (`load_batch` over `epoch_batches`), building the latent cache
    (`CacheBuilder.build_latents` into a fresh folder), and decoding the same clips with plain PyAV.

Everything runs on synthetic clips in a temporary folder that is removed afterwards:

    python bench/overhead.py [--steps N] [--clips N] [--frames N] [--size WxH] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import av
import torch
from peft import LoraConfig

from cinetune.cache.builder import CacheBuilder
from cinetune.config import load_config
from cinetune.demo import write_demo_configs, write_demo_dataset
from cinetune.plan import resolve
from cinetune.training.batches import load_batch
from cinetune.training.sampler import epoch_batches
from cinetune.training.trainer import Trainer

logger = logging.getLogger("bench.overhead")

FPS = 24
# Clips are longer than a sample by this many frames, so the two cached windows of a clip differ.
EXTRA_CLIP_FRAMES = 16
WINDOWS_PER_CLIP = 2


@dataclass(frozen=True)
class Settings:
    steps: int
    warmup: int
    block: int
    clips: int
    frames: int
    width: int
    height: int
    batch_size: int
    threads: int
    cache_repeats: int
    decode_passes: int
    min_epoch_seconds: float


@dataclass
class StepTimes:
    trainer: list[float]
    bare: list[float]


# ---- setup ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="measured optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps per side before timing")
    parser.add_argument("--block", type=int, default=2, help="steps per alternating block")
    parser.add_argument("--clips", type=int, default=8, help="synthetic clips (the demo's moving squares)")
    parser.add_argument("--frames", type=int, default=25, help="frames per training sample (8k+1)")
    parser.add_argument("--size", default="256x256", help="clip and bucket size WxH (multiples of 32)")
    parser.add_argument("--batch-size", type=int, default=2, help="train_batch_size")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every phase")
    parser.add_argument("--cache-repeats", type=int, default=3, help="latent-cache builds, each fresh")
    parser.add_argument("--decode-passes", type=int, default=5, help="full PyAV decodes of all clips")
    parser.add_argument(
        "--min-epoch-seconds",
        type=float,
        default=1.0,
        help="keep loading cached epochs (at least 3) until this much time has passed",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x", 1))
    except ValueError:
        parser.error(f"--size {args.size}: expected WxH, e.g. 256x256")
    # Shapes the LTX-Video frame rule accepts as they are: buckets equal the clips, nothing is cropped.
    if width % 32 or height % 32:
        parser.error(f"--size {args.size}: both sides must be multiples of 32")
    if (args.frames - 1) % 8:
        parser.error(f"--frames {args.frames}: must be 8k+1 (9, 17, 25, 33, ...)")
    if args.clips < args.batch_size:
        parser.error(f"--clips {args.clips}: needs at least --batch-size ({args.batch_size}) clips")
    if min(args.steps, args.block, args.cache_repeats, args.decode_passes) < 1 or args.steps < 2:
        parser.error("--steps needs at least 2; --block, --cache-repeats and --decode-passes at least 1")
    options = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    return Settings(width=width, height=height, **options), args.json


def write_workspace(root: Path, s: Settings) -> Path:
    """The demo dataset and config pair, resized to the benchmark's shapes; returns config.json."""
    data_dir = write_demo_dataset(
        root / "data",
        num_clips=s.clips,
        num_frames=s.frames + EXTRA_CLIP_FRAMES,
        size=(s.width, s.height),
        fps=FPS,
    )
    config_path = write_demo_configs(root, data_dir)
    config = json.loads(config_path.read_text())
    # No validation, checkpoints, trackers or resume: the benchmark calls the phases itself.
    config.update(
        train_batch_size=s.batch_size,
        max_train_steps=10_000,
        disable_validation=True,
        validation_steps=None,
        checkpointing_steps=None,
        resume_from_checkpoint=None,
        report_to="none",
        frame_rate=FPS,
    )
    config_path.write_text(json.dumps(config, indent=2))
    backend_path = Path(config["data_backend_config"])
    datasets = json.loads(backend_path.read_text())
    media = datasets[0]
    media["resolution"] = min(s.width, s.height)
    media["video"].update(num_frames=s.frames, min_frames=s.frames, windows_per_clip=WINDOWS_PER_CLIP)
    backend_path.write_text(json.dumps(datasets, indent=2))
    return config_path


def set_threads(n: int) -> None:
    # Re-applied before every timed phase: library set-up code may change the intra-op thread count.
    torch.set_num_threads(n)


# ---- (b) data throughput ----------------------------------------------------------------------------------
def time_cache_build(trainer: Trainer, scratch: Path, repeats: int) -> tuple[list[float], int]:
    """Seconds of each latent-cache build (VAE load, decode, encode, write) into a new folder, and frames.

    The first build goes to the trainer's own (still empty) cache folders, so the trainer reuses it later.
    """
    text_root, latent_roots = trainer.cache_roots()
    seconds, frames = [], 0
    for n in range(repeats):
        roots = latent_roots if n == 0 else {k: scratch / f"latents{n}" / k for k in latent_roots}
        builder = CacheBuilder(
            trainer.family,
            text_root=text_root,
            latent_roots=roots,
            device=trainer.device,
            dtype=trainer.weight_dtype,
            max_sequence_length=trainer.max_sequence_length,
        )
        start = time.perf_counter()
        builder.build_latents(trainer.samples)
        seconds.append(time.perf_counter() - start)
        frames = int(builder.index.stats["latent_frames"])
        if n:
            shutil.rmtree(scratch / f"latents{n}")
    return seconds, frames


def time_cached_epochs(trainer: Trainer, s: Settings) -> list[float]:
    """Samples/s of each epoch of `load_batch` calls from the cache (no model), one figure per epoch."""
    cfg = trainer.cfg
    generator = torch.Generator().manual_seed(cfg.seed)
    rates: list[float] = []
    began = time.perf_counter()
    epoch = 0
    while epoch < 3 or (time.perf_counter() - began < s.min_epoch_seconds and epoch < 1000):
        batches = epoch_batches(trainer.items, cfg.train_batch_size, cfg.seed, epoch)
        start = time.perf_counter()
        for indices in batches:
            load_batch(
                indices,
                trainer.samples,
                trainer.index,
                trainer.family,
                epoch,
                generator,
                cfg.caption_dropout_probability,
                cfg.vae_latent_sampling == "sample",
            )
        rates.append(sum(len(b) for b in batches) / (time.perf_counter() - start))
        epoch += 1
    return rates


def decode_all_frames(path: Path) -> int:
    """Every frame of a clip as an RGB uint8 ndarray, with plain PyAV; returns the frame count."""
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # the same decoder threading cinetune's reader asks for
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def time_raw_decode(paths: list[Path], passes: int) -> tuple[list[float], int]:
    rates, frames = [], 0
    for _ in range(passes):
        start = time.perf_counter()
        frames = sum(decode_all_frames(p) for p in paths)
        rates.append(frames / (time.perf_counter() - start))
    return rates, frames


# ---- (a) trainer overhead ---------------------------------------------------------------------------------
def trainer_groups(trainer: Trainer) -> Iterator[list[list[int]]]:
    """Optimizer-step groups in training order, epoch after epoch, keeping trainer.state.epoch in step."""
    cfg = trainer.cfg
    accum = cfg.gradient_accumulation_steps
    epoch = 0
    while True:
        batches = epoch_batches(trainer.items, cfg.train_batch_size, cfg.seed, epoch)
        trainer.state.epoch = epoch
        for start in range(0, len(batches) // accum * accum, accum):
            yield batches[start : start + accum]
        epoch += 1


def build_bare_step(trainer: Trainer) -> tuple[Callable[[], None], int]:
    """A plain forward/backward/step/zero_grad closure on a fresh copy of the trainer's architecture.

    Inputs come from one real batch of the cache, prepared once, so shapes (tokens, text length, batch) and
    dtypes match what the trainer feeds its model. Returns the closure and its trainable parameter count.
    """
    cfg, family = trainer.cfg, trainer.family
    base = trainer.acc.unwrap_model(trainer.model)
    model = type(base).from_config(base.config)
    if trainer.weight_dtype != torch.float32:  # built in fp32; diffusers warns on every .to(dtype)
        model = model.to(trainer.weight_dtype)
    model.requires_grad_(False)
    targets = cfg.lora_target_modules or list(family.default_lora_targets)
    model.add_adapter(
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.effective_lora_alpha,
            target_modules=targets,
            lora_dropout=cfg.lora_dropout,
        )
    )
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # as the trainer keeps them: LoRA weights (and so AdamW state) in fp32
        p.data = p.data.float()
    model.to(trainer.device).train()
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )

    generator = torch.Generator().manual_seed(cfg.seed)
    indices = next(trainer_groups(trainer))[0]
    batch = load_batch(indices, trainer.samples, trainer.index, family, 0, generator, 0.0, False)
    latents = batch.latents.to(trainer.device)
    noise = torch.randn(latents.shape, generator=generator).to(trainer.device)
    sigmas = torch.full((latents.shape[0],), 0.5, device=trainer.device)
    inputs = family.prepare_inputs(latents, noise, sigmas, batch.text, batch.frame_rate, trainer.weight_dtype)
    kwargs, target = inputs.kwargs, inputs.stream("video").target.float()

    def step() -> None:
        pred = model(**kwargs)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def time_steps(trainer: Trainer, bare_step: Callable[[], None], s: Settings) -> StepTimes:
    """Per-step seconds of both loops, in alternating blocks (ABBA order) so drift hits both alike."""
    groups = trainer_groups(trainer)

    def trainer_step() -> None:
        trainer.optimizer_step(trainer.load_group(next(groups)))

    for _ in range(s.warmup):
        trainer_step()
        bare_step()
    times = StepTimes([], [])
    rounds = -(-s.steps // s.block)
    for r in range(rounds):
        order = [(trainer_step, times.trainer), (bare_step, times.bare)]
        for step, out in order if r % 2 == 0 else order[::-1]:
            for _ in range(min(s.block, s.steps - r * s.block)):
                start = time.perf_counter()
                step()
                out.append(time.perf_counter() - start)
    return times


# ---- report -----------------------------------------------------------------------------------------------
def summarize(
    s: Settings,
    trainer: Trainer,
    *,
    times: StepTimes,
    cache: tuple[list[float], int],
    epochs: list[float],
    decode: tuple[list[float], int],
    bare_params: int,
) -> dict[str, Any]:
    build_seconds, build_frames = cache
    decode_rates, decode_frames = decode
    trainer_s, bare_s = statistics.median(times.trainer), statistics.median(times.bare)
    cached_sps = statistics.median(epochs)
    cached_fps = cached_sps * s.frames
    build_fps = build_frames / statistics.median(build_seconds)
    raw_fps = statistics.median(decode_rates)
    return {
        "settings": asdict(s),
        "setup": {
            "model": f"{trainer.cfg.model_family}/{trainer.cfg.model_flavour}",
            "dtype": str(trainer.weight_dtype),
            "device": str(trainer.device),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lora_rank": trainer.cfg.lora_rank,
            "lora_params_trainer": sum(p.numel() for p in trainer.params),
            "lora_params_bare": bare_params,
            "video_tokens_per_sample": trainer.family.num_tokens(_latent_shape(trainer)),
            "samples": len(trainer.samples),
            "items_per_epoch": len(trainer.items),
        },
        "trainer_s_per_step": trainer_s,
        "bare_s_per_step": bare_s,
        "trainer_s_per_step_min": min(times.trainer),
        "bare_s_per_step_min": min(times.bare),
        "trainer_s_per_step_iqr": _iqr(times.trainer),
        "bare_s_per_step_iqr": _iqr(times.bare),
        "trainer_overhead_ms_per_step": (trainer_s - bare_s) * 1e3,
        "ratio_trainer_over_bare": trainer_s / bare_s,
        "ratio_trainer_over_bare_min": min(times.trainer) / min(times.bare),
        "cached_samples_per_s": cached_sps,
        "cached_frames_per_s": cached_fps,
        "cached_epochs": len(epochs),
        "cache_build_frames_per_s": build_fps,
        "cache_build_frames": build_frames,
        "cache_build_seconds": build_seconds,
        "raw_decode_frames_per_s": raw_fps,
        "raw_decode_frames": decode_frames,
        "raw_decode_frames_per_s_passes": decode_rates,
        "ratio_cached_over_raw_decode": cached_fps / raw_fps,
        "ratio_cache_build_over_raw_decode": build_fps / raw_fps,
        "step_seconds": asdict(times),
    }


def _latent_shape(trainer: Trainer) -> torch.Size:
    sample_index, window = next(iter(trainer.index.latent_keys))
    entry = trainer.index.latent(sample_index, window, trainer.samples[sample_index].dataset_id)
    return torch.Size((1, *entry["latents"].shape))


def _iqr(values: list[float]) -> list[float]:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return [q1, q3]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def print_report(f: dict[str, Any]) -> None:
    s, setup = f["settings"], f["setup"]
    print(
        f"\nmodel {setup['model']} ({setup['dtype']}, {setup['device']}, {setup['torch_threads']} threads, "
        f"torch {setup['torch']}), LoRA rank {setup['lora_rank']}: {setup['lora_params_trainer']:,} "
        f"trainable params (bare loop: {setup['lora_params_bare']:,})"
    )
    print(
        f"batch {s['batch_size']} x {s['width']}x{s['height']}x{s['frames']} frames "
        f"= {setup['video_tokens_per_sample']} video tokens per sample; {setup['samples']} clips, "
        f"{setup['items_per_epoch']} samples per epoch"
    )
    print(
        f"{s['steps']} measured steps per side after {s['warmup']} warm-up, "
        f"alternating blocks of {s['block']}"
    )
    print(
        f"machine: {setup['cpu_count']} cores, 1-min load average {setup['load_average_start']:.2f} at "
        f"start, {setup['load_average_end']:.2f} at end (this run adds about {s['threads']})\n"
    )
    rows = [
        (
            "(a) trainer step (Trainer.optimizer_step)",
            _ms(f["trainer_s_per_step"]),
            "ms/step",
            f"min {_ms(f['trainer_s_per_step_min'])}, IQR {'-'.join(map(_ms, f['trainer_s_per_step_iqr']))}",
        ),
        (
            "(a) bare PyTorch step",
            _ms(f["bare_s_per_step"]),
            "ms/step",
            f"min {_ms(f['bare_s_per_step_min'])}, IQR {'-'.join(map(_ms, f['bare_s_per_step_iqr']))}",
        ),
        (
            "(b1) cached epoch (load_batch)",
            f"{f['cached_samples_per_s']:.1f}",
            "samples/s",
            f"= {f['cached_frames_per_s']:,.0f} frames/s, {f['cached_epochs']} epochs",
        ),
        (
            "(b2) latent cache build",
            f"{f['cache_build_frames_per_s']:.1f}",
            "frames/s",
            f"{f['cache_build_frames']} frames; runs: "
            + ", ".join(f"{t:.2f} s" for t in f["cache_build_seconds"]),
        ),
        (
            "(b3) raw PyAV decode (rgb24)",
            f"{f['raw_decode_frames_per_s']:.1f}",
            "frames/s",
            f"{f['raw_decode_frames']} frames per pass",
        ),
    ]
    print(f"{'figure':44} {'median':>9}  {'unit':10} notes")
    for name, value, unit, note in rows:
        print(f"{name:44} {value:>9}  {unit:10} {note}")
    print("\nratios")
    print(
        f"  trainer / bare step time    {f['ratio_trainer_over_bare']:8.3f}  medians "
        f"({f['trainer_overhead_ms_per_step']:+.1f} ms/step); "
        f"{f['ratio_trainer_over_bare_min']:.3f} on minima"
    )
    print(f"  cached epoch / raw decode   {f['ratio_cached_over_raw_decode']:8.3f}  frames/s over frames/s")
    print(
        f"  cache build / raw decode    {f['ratio_cache_build_over_raw_decode']:8.3f}  frames/s over frames/s"
    )


# ---- main -------------------------------------------------------------------------------------------------
def run(s: Settings, root: Path) -> dict[str, Any]:
    # Other processes on the machine skew every figure; the load average lets a reader judge a run.
    load_start = os.getloadavg()[0]
    set_threads(s.threads)
    trainer = Trainer(resolve(load_config(write_workspace(root, s))))
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(trainer.cfg.seed)
    trainer.scan()

    set_threads(s.threads)
    logger.info("building the latent cache %d time(s)", s.cache_repeats)
    cache = time_cache_build(trainer, root / "scratch", s.cache_repeats)
    trainer.cache()  # latents are on disk now: this only encodes the captions
    trainer.prepare()

    set_threads(s.threads)
    logger.info("loading cached epochs")
    epochs = time_cached_epochs(trainer, s)
    logger.info("decoding %d clips with PyAV, %d pass(es)", s.clips, s.decode_passes)
    clips = sorted({sample.path for sample in trainer.samples})
    decode = time_raw_decode(clips, s.decode_passes)

    bare_step, bare_params = build_bare_step(trainer)
    set_threads(s.threads)
    logger.info("timing %d trainer and %d bare steps", s.steps, s.steps)
    times = time_steps(trainer, bare_step, s)
    figures = summarize(
        s, trainer, times=times, cache=cache, epochs=epochs, decode=decode, bare_params=bare_params
    )
    figures["setup"].update(
        cpu_count=os.cpu_count(), load_average_start=load_start, load_average_end=os.getloadavg()[0]
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    settings, json_path = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("cinetune", "accelerate", "diffusers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with tempfile.TemporaryDirectory(prefix="cinetune-bench-") as tmp:
        figures = run(settings, Path(tmp))
    print_report(figures)
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2))
        logger.info("figures written to %s", json_path)


if __name__ == "__main__":
    main()
