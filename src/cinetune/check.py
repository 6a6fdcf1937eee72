"""`cinetune check`: validate the config and the dataset without loading any weights."""

from __future__ import annotations

from collections import Counter

from cinetune.config import LoadedConfig
from cinetune.data import SkipReport, scan_datasets
from cinetune.errors import DataError
from cinetune.models.registry import build_family, resolve_flavour


def check_report(loaded: LoadedConfig) -> tuple[str, bool]:
    """Human-readable report and whether training could start."""
    cfg = loaded.train
    family = build_family(cfg.model_family, cfg.model_flavour, cfg.pretrained_model_name_or_path)
    flavour = resolve_flavour(type(family), cfg.model_flavour)
    rule = family.frame_rule
    lines = [
        f"model: {family.name} / {flavour.name} ({flavour.description}) from "
        f"{family.loader.source or 'built-in tiny weights'}",
        f"frame rule: {rule.temporal_multiple}k+1 frames, sides multiple of {rule.spatial_multiple}",
    ]
    frames = rule.adjust_frames(cfg.validation_num_video_frames, "validation_num_video_frames")
    lines.append(
        f"validation: {frames} frames at {cfg.validation_resolution}, every {cfg.validation_steps} steps"
        if cfg.validation_steps
        else "validation: at the end only"
        if cfg.validation_prompt
        else "validation: none (no validation_prompt)"
    )
    report = SkipReport()
    ok = True
    try:
        samples = scan_datasets(
            loaded.data.media, rule, cfg.frame_rate, cfg.seed, report, audio_datasets=loaded.data.datasets
        )
    except DataError as exc:
        samples, ok = [], False
        lines.append(f"[red]dataset: {exc}[/]")
    for dataset in loaded.data.media:
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
    if len(report):
        lines.append(f"skipped {len(report)} file(s):")
        lines.append(report.summary())
    lines.append("[green]config OK[/]" if ok else "[red]nothing to train on[/]")
    return "\n".join(lines), ok
