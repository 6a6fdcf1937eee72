"""`cinetune bench`: speed and memory of the real training step on the full-size architecture, random weights.

Speed and memory do not depend on weight values, so the flavour's transformer is built from its architecture
config with random weights created directly on the device, fed synthetic latents and caption embeddings of
the exact cached shapes, and trained by the trainer's own `setup_model` / `optimizer_step` (the code path of
`cinetune train`). FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` over one step (forward
and backward as executed, frozen weights included); MFU uses them without the forward work that gradient
checkpointing repeats in backward (model FLOPs), which is counted and reported apart.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from cinetune.config import AudioOptions, DataBackendConfig, DatasetConfig
from cinetune.models.base import random_module
from cinetune.plan import RunPlan
from cinetune.training.batches import Batch
from cinetune.training.extras import frame_features
from cinetune.training.speed import apply_gradient_checkpointing
from cinetune.training.trainer import Trainer

logger = logging.getLogger(__name__)

# The memory keys a bench run reports when the config sets them.
MEMORY_KEYS = (
    "base_model_precision",
    "quantize_via",
    "enable_group_offload",
    "group_offload_type",
    "group_offload_blocks_per_group",
    "group_offload_use_stream",
    "group_offload_to_disk_path",
    "musubi_blocks_to_swap",
    "musubi_block_swap_device",
    "fsdp_enable",
    "fsdp_reshard_after_forward",
)
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
DEVICE_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.2}


@dataclass
class BenchResult:
    family: str
    flavour: str
    device: str
    resolution: str
    num_frames: int
    batch_size: int
    tokens_per_sample: int
    audio_tokens_per_sample: int
    params_total: int
    params_trainable: int
    build_seconds: float
    s_per_step_median: float
    s_per_step_all: list[float]
    tokens_per_s: float
    flops_per_step: float
    flops_recomputed_per_step: float
    flops_method: str
    achieved_tflops: float
    peak_tflops: float | None
    mfu: float | None
    memory_allocated_gib: float | None
    memory_reserved_gib: float | None
    host_peak_rss_gib: float
    predicted_device_gib: float | None  # the memory planner's training peak for these settings
    settings: dict[str, Any]
    # several processes (DDP, FSDP2): every rank's figure; the ones above are rank 0's
    host_peak_rss_gib_per_rank: list[float] = field(default_factory=list)
    # resident host memory right after the timed steps (the peak above includes loading): on the CPU this is
    # what training keeps, weights included
    host_rss_after_steps_gib_per_rank: list[float] = field(default_factory=list)
    memory_allocated_gib_per_rank: list[float] = field(default_factory=list)


def synthetic_batch(trainer: Trainer, config: dict[str, Any], size: tuple[int, int], frames: int, batch: int):
    family = trainer.family
    tokens = trainer.max_sequence_length
    fps = trainer.cfg.frame_rate
    latents = [family.synthetic_latents(config, size[0], size[1], frames, fps) for _ in range(batch)]
    tensors = {key: torch.stack([item[key] for item in latents]) for key in latents[0]}
    if trainer.cfg.crepa_enabled:  # the vision features the cache holds: one map per latent frame
        vision = frame_features(trainer.cfg)
        shape = (batch, tensors["latents"].shape[2], vision.patches(), vision.width())
        tensors["crepa_features"] = torch.randn(shape)
    text = family.collate_text([family.synthetic_caption(config, tokens) for _ in range(batch)])
    return Batch(
        tensors=tensors,
        text=text,
        frame_rate=trainer.cfg.frame_rate,
        use_std=trainer.cfg.vae_latent_sampling == "sample",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DEVICE_PEAK_TFLOPS.items() if key in name), None)


def bench_audio_datasets() -> DataBackendConfig:
    """A dataset file whose one video dataset has an `audio` block: `--audio` trains as such a run would."""
    return DataBackendConfig(
        datasets=[DatasetConfig(id="bench", instance_data_dir=Path(), audio=AudioOptions())]
    )


def run_bench(
    plan: RunPlan,
    size: tuple[int, int],
    frames: int,
    batch: int,
    steps: int,
    warmup: int,
    peak_tflops: float | None = None,
) -> BenchResult:
    """Time the plan's training step. The plan's datasets (the config's dataset file, or
    `bench_audio_datasets()`) only configure the family: with an `audio` block LTX-2 trains audio too. No
    dataset is read."""
    train = plan.train
    trainer = Trainer(plan)
    audio = bool(getattr(trainer.family, "with_audio", False))
    family, device = trainer.family, trainer.device
    rule = family.frame_rule
    frames = rule.adjust_frames(frames, "--frames")
    size = (rule.side_down(size[0]), rule.side_down(size[1]))
    config = family.architecture_config()
    start = time.perf_counter()
    build_on = device
    if trainer.fsdp:
        # FSDP2: rank 0 builds the random weights on the CPU, the other ranks on the meta device; sharding
        # sends each rank its shard (as fsdp_cpu_ram_efficient_loading does), so host RAM holds one copy
        build_on = torch.device("cpu" if trainer.acc.is_main_process else "meta")
        trainer.weights_from_rank0 = True
    transformer = family.prepare_transformer(
        random_module(family.transformer_class, config, trainer.weight_dtype, build_on)
    )
    family.use_random_frozen_modules(device, trainer.weight_dtype)  # e.g. LTX-2's text connectors
    _sync(device)
    build_seconds = time.perf_counter() - start
    trainer.setup_model(transformer, total_steps=warmup + steps + 1)
    params_total = sum(p.numel() for p in transformer.parameters())  # frozen + LoRA
    params_trainable = sum(p.numel() for p in trainer.params)
    micro = [synthetic_batch(trainer, config, size, frames, batch)] * train.gradient_accumulation_steps
    for _ in range(warmup):
        trainer.optimizer_step(micro)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.optimizer_step(micro)
        _sync(device)
        times.append(time.perf_counter() - t0)
    after_steps = _per_rank(trainer, _rss_gib())
    memory = (None, None)
    if device.type == "cuda":
        memory = (
            torch.cuda.max_memory_allocated(device) / 2**30,
            torch.cuda.max_memory_reserved(device) / 2**30,
        )
    flops, recomputed = count_step_flops(trainer, micro)
    model_flops = flops - recomputed
    median = statistics.median(times)
    tokens = family.num_tokens(micro[0].latents.shape) // batch
    audio_latents = micro[0].tensors.get("audio_latents")
    audio_tokens = int(audio_latents.shape[1]) if audio_latents is not None else 0
    peak = device_peak_tflops(device, peak_tflops)
    achieved = model_flops / median / 1e12
    return BenchResult(
        family=family.name,
        flavour=family.loader.flavour,
        device=_device_name(device),
        resolution=f"{size[0]}x{size[1]}",
        num_frames=frames,
        batch_size=batch,
        tokens_per_sample=tokens,
        audio_tokens_per_sample=audio_tokens,
        params_total=params_total,
        params_trainable=params_trainable,
        build_seconds=build_seconds,
        s_per_step_median=median,
        s_per_step_all=times,
        tokens_per_s=tokens * batch * train.gradient_accumulation_steps / median,  # video tokens
        flops_per_step=model_flops,
        flops_recomputed_per_step=recomputed,
        flops_method="counted (torch.utils.flop_counter over one step: forward + backward, without the "
        "forward work gradient checkpointing repeats in backward)",
        achieved_tflops=achieved,
        peak_tflops=peak,
        mfu=achieved / peak if peak else None,
        memory_allocated_gib=memory[0],
        memory_reserved_gib=memory[1],
        host_peak_rss_gib=_peak_rss_gib(),
        host_peak_rss_gib_per_rank=_per_rank(trainer, _peak_rss_gib()),
        host_rss_after_steps_gib_per_rank=after_steps,
        memory_allocated_gib_per_rank=_per_rank(trainer, memory[0]) if memory[0] is not None else [],
        predicted_device_gib=_predicted(plan, size, frames, batch),
        settings={
            "mixed_precision": trainer.acc.mixed_precision,
            "weights": str(trainer.weight_dtype),
            "gradient_checkpointing": train.gradient_checkpointing,
            "gradient_checkpointing_interval": train.gradient_checkpointing_interval,
            "attention_backend": train.attention_backend,
            "compile_transformer_blocks": train.compile_transformer_blocks,
            "lora_rank": train.lora_rank,
            "audio": audio,
            "gradient_accumulation_steps": train.gradient_accumulation_steps,
            "optimizer": train.optimizer,
            "processes": trainer.acc.num_processes,
            "engine": "FSDP2" if trainer.fsdp else ("DDP" if trainer.acc.num_processes > 1 else "single"),
            **{key: getattr(train, key) for key in MEMORY_KEYS if key in train.model_fields_set},
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    )


class _FlopSum:
    """A context manager that counts FLOPs each time it is entered and sums them (FlopCounterMode itself
    clears its counts on every entry)."""

    def __init__(self) -> None:
        self.total = 0
        self._open: list[FlopCounterMode] = []

    def __enter__(self) -> _FlopSum:
        counter = FlopCounterMode(display=False)
        counter.__enter__()
        self._open.append(counter)
        return self

    def __exit__(self, *exc: object) -> None:
        counter = self._open.pop()
        counter.__exit__(*exc)
        self.total += counter.get_total_flops()


def count_step_flops(trainer: Trainer, micro: list[Batch]) -> tuple[float, float]:
    """(FLOPs executed by one optimizer step, of which recomputed by gradient checkpointing in backward).

    MFU counts model FLOPs: the step's forward and backward once. Checkpointing runs the checkpointed
    blocks' forward a second time inside backward; those FLOPs are counted apart, while they run, by a
    second counter the checkpointing function enters during the recomputation.
    """
    recompute = _FlopSum()
    model = trainer.acc.unwrap_model(trainer.model)
    checkpointing = trainer.cfg.gradient_checkpointing
    if checkpointing:
        apply_gradient_checkpointing(model, trainer.cfg.gradient_checkpointing_interval, recompute)
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.optimizer_step(micro)
    finally:
        if checkpointing:
            apply_gradient_checkpointing(model, trainer.cfg.gradient_checkpointing_interval)
    return float(counter.get_total_flops()), float(recompute.total)


def _predicted(plan: RunPlan, size: tuple[int, int], frames: int, batch: int) -> float | None:
    """The planner's predicted training peak (GiB) for the benched settings: what `cinetune plan` says."""
    from cinetune.memory.report import RunMemory, Shape

    try:
        memory = RunMemory(plan, Shape(size[0], size[1], frames, batch))
    except (RuntimeError, NotImplementedError) as exc:  # an architecture the meta device cannot run
        logger.warning("no memory prediction: %s", exc)
        return None
    return memory.estimate().device_train / 2**30


def _per_rank(trainer: Trainer, value: float) -> list[float]:
    """`value` of every rank, in rank order (a collective when there are several)."""
    if trainer.acc.num_processes == 1:
        return [value]
    gathered = trainer.acc.gather(torch.tensor([value], device=trainer.device))
    return [float(v) for v in gathered.cpu()]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _peak_rss_gib() -> float:
    """This process's peak resident memory: getrusage where it exists (KiB on Linux, bytes on macOS), the
    peak working set on Windows."""
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def _per_rank_lines(result: BenchResult) -> list[str]:
    ranks = result.host_peak_rss_gib_per_rank
    if len(ranks) < 2:
        return []
    line = f"  per rank         {result.settings.get('engine')} over {len(ranks)} processes: host peak RSS "
    line += ", ".join(f"{v:.2f}" for v in ranks) + " GiB"
    if result.host_rss_after_steps_gib_per_rank:
        line += "; after the steps " + ", ".join(f"{v:.2f}" for v in result.host_rss_after_steps_gib_per_rank)
        line += " GiB"
    if result.memory_allocated_gib_per_rank:
        line += "; allocated " + ", ".join(f"{v:.2f}" for v in result.memory_allocated_gib_per_rank) + " GiB"
    return [line]


def format_result(result: BenchResult) -> str:
    mem = (
        f"{result.memory_allocated_gib:.2f} GiB allocated, {result.memory_reserved_gib:.2f} GiB reserved"
        if result.memory_allocated_gib is not None
        else f"n/a on {result.device} (host peak RSS {result.host_peak_rss_gib:.2f} GiB)"
    )
    mfu = (
        f"{result.mfu:.1%} of {result.peak_tflops:.0f} TFLOP/s"
        if result.mfu is not None
        else "n/a (no known peak)"
    )
    return "\n".join(
        [
            f"{result.family}/{result.flavour} on {result.device}: "
            f"{result.resolution}x{result.num_frames} frames, "
            f"batch {result.batch_size}, {result.tokens_per_sample} video tokens per sample"
            + (f" + {result.audio_tokens_per_sample} audio tokens" if result.audio_tokens_per_sample else ""),
            f"  params           {result.params_total / 1e9:.3f} B total, "
            f"{result.params_trainable / 1e6:.2f} M trainable "
            f"(built in {result.build_seconds:.1f} s)",
            f"  s/step (median)  {result.s_per_step_median:.4f}  over {len(result.s_per_step_all)} steps",
            f"  tokens/s         {result.tokens_per_s:,.0f} (video)",
            f"  peak memory      {mem}",
            *_per_rank_lines(result),
            "  predicted peak   "
            + (
                f"{result.predicted_device_gib:.2f} GiB (memory planner, training)"
                if result.predicted_device_gib is not None
                else "n/a"
            ),
            f"  FLOPs/step       {result.flops_per_step:.4g} ({result.flops_method})"
            + (
                f"; {result.flops_recomputed_per_step:.4g} more recomputed by checkpointing"
                if result.flops_recomputed_per_step
                else ""
            ),
            f"  achieved         {result.achieved_tflops:.3f} TFLOP/s; MFU {mfu}",
            f"  settings         {json.dumps(result.settings)}",
        ]
    )


def write_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(result), indent=2))
