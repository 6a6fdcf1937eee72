"""`cinetune check`: the run plan and the dataset scan `cinetune train` would start from, without weights.

It runs the same resolution (`plan.resolve`), scan and epoch planning as `train`, so a config that passes
here is one `train` accepts, and an error here is the error `train` would stop with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from cinetune.data import SkipReport, scan_datasets
from cinetune.memory.report import RunMemory, Shape, largest_shape
from cinetune.plan import RunPlan
from cinetune.training.sampler import plan_epoch


def check_report(plan: RunPlan, emit: Callable[[str], None]) -> None:
    """Write the report of a run through `emit`, line by line; raise the CinetuneError `cinetune train` would
    stop with (after the lines that explain it: datasets, buckets, skipped files)."""
    cfg, family, flavour = plan.train, plan.family, plan.flavour
    rule = family.frame_rule
    emit(
        f"model: {family.name} / {flavour.name} ({flavour.description}) from "
        f"{family.loader.source or 'built-in tiny weights'}"
    )
    emit(f"frame rule: {rule.temporal_multiple}k+1 frames, sides multiple of {rule.spatial_multiple}")
    emit(f"LoRA: rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g} on {', '.join(cfg.lora_target_modules)}")
    compiled = "transformer blocks compiled" if cfg.compile_transformer_blocks else "eager"
    emit(f"attention: {cfg.attention_backend} backend, {compiled}")
    report = SkipReport()
    samples = scan_datasets(
        plan.training_media, rule, cfg.frame_rate, cfg.seed, report, audio_datasets=plan.data.datasets
    )
    for line in _dataset_lines(plan, samples):
        emit(line)
    if len(report):
        emit(f"skipped {len(report)} file(s):")
        emit(report.summary())
    _, steps_per_epoch = plan_epoch(
        samples,
        {d.id: d.repeats for d in plan.media},
        cfg.train_batch_size,
        cfg.gradient_accumulation_steps,
        cfg.seed,
        0,
        cfg.num_processes,
    )
    total = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
    emit(f"schedule: {steps_per_epoch} step(s) per epoch, {total} step(s) in all")
    emit(_validation_line(plan, samples))
    for line in memory_lines(plan, largest_shape(plan, samples, cfg.train_batch_size)):
        emit(line)
    emit("[green]config OK[/]")


def _dataset_lines(plan: RunPlan, samples: list) -> list[str]:
    cfg = plan.train
    lines = []
    for dataset in plan.training_media:
        mine = [s for s in samples if s.dataset_id == dataset.id]
        buckets = Counter(s.bucket.key for s in mine)
        lines.append(
            f"dataset '{dataset.id}': {len(mine)} clip(s), repeats {dataset.repeats}, buckets "
            + (", ".join(f"{k} x{n}" for k, n in sorted(buckets.items())) or "none")
        )
        if dataset.audio is not None:
            source = (
                f"s2v dataset(s) {', '.join(dataset.s2v_datasets)}"
                if dataset.s2v_datasets
                else "their own audio tracks"
            )
            sound = sum(s.audio is not None for s in mine)
            lines.append(f"  audio: {sound} of {len(mine)} clip(s) with sound, from {source}")
        small = [k for k, n in buckets.items() if n * (dataset.repeats + 1) < cfg.train_batch_size]
        if small:
            lines.append(
                f"  [yellow]buckets smaller than train_batch_size={cfg.train_batch_size} will not "
                f"train: {', '.join(small)}[/]"
            )
    return lines


def _validation_line(plan: RunPlan, samples: list) -> str:
    cfg = plan.train
    if cfg.disable_validation:
        return "validation: disabled"
    first = samples[0].captions[0] if samples else None
    prompts = plan.prompts_for(first)
    if not prompts:
        return "validation: none (no validation_prompt)"
    frames = plan.family.frame_rule.frames_down(cfg.validation_num_video_frames)
    when = f"every {cfg.validation_steps} steps and at the end" if cfg.validation_steps else "at the end"
    source = " (the first training caption)" if plan.prompt_from_first_sample else ""
    size = cfg.validation_resolution
    return f"validation: {len(prompts)} prompt(s){source}, {frames} frames at {size}, {when}"


def memory_lines(plan: RunPlan, shape: Shape | None) -> list[str]:
    """The planner's predicted peaks for the largest training bucket, and whether they fit target_vram_gb."""
    if shape is None:
        return []
    estimate = RunMemory(plan, shape).estimate()
    lines = [f"memory (predicted, largest bucket {shape}):", *(f"  {line}" for line in estimate.lines())]
    target = plan.train.target_vram_gb
    if target is not None:
        peak = estimate.device_peak / 2**30
        verdict = (
            "fits"
            if peak <= target
            else "[yellow]does not fit[/] (`cinetune plan` proposes settings that do)"
        )
        lines.append(f"  target_vram_gb {target:g}: the predicted peak {peak:.2f} GiB {verdict}")
    return lines


def memory_advice(plan: RunPlan, width: int, height: int, frames: int, vram_gib: float | None) -> dict:
    """The planner for the web UI and the configure wizard: the predicted peaks of `plan` at one sample size
    (snapped to the family's frame rule) and, given a GPU size, the cheapest keys that fit it (what `cinetune
    plan --vram` prints). Predictions from the architecture config: no weights are read."""
    rule = plan.family.frame_rule
    shape = Shape(
        rule.side_down(width),
        rule.side_down(height),
        rule.adjust_frames(frames, "frames"),
        plan.train.train_batch_size,
    )
    memory = RunMemory(plan, shape)
    estimate = memory.estimate()
    advice: dict = {
        "shape": str(shape),
        "lines": estimate.lines(),
        "peak_gib": round(estimate.device_peak / 2**30, 2),
        "host_gib": round(estimate.host / 2**30, 2),
    }
    if vram_gib is None:
        return advice
    advice["vram_gib"] = vram_gib
    advice["fits"] = estimate.device_peak / 2**30 <= vram_gib
    proposal = None if advice["fits"] else memory.propose(vram_gib)
    if proposal is not None:
        keys, proposed = proposal
        advice["proposal"] = {"keys": keys, "lines": proposed.lines()}
    elif not advice["fits"]:
        advice["proposal"] = None  # nothing cinetune builds fits: lower resolution, frames or batch
    return advice
