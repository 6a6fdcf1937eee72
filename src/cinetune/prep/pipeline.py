"""`cinetune prep all`: raw footage -> split -> caption -> config pair -> check -> cache (-> train).

Every stage skips what an earlier run finished (written clips, existing captions, cached latents, a trained
checkpoint resumes), so running the same command again continues where it stopped. `check`, `cache` and
`train` are the commands' own code on the project's resolved plan (`plan.resolve`, the check report, the
Trainer). The check report lives a layer above this package, so the command line hands it in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cinetune.errors import ConfigError
from cinetune.models.registry import build_family, family_entry
from cinetune.plan import RunPlan, resolve
from cinetune.prep.captioning import CaptionOptions, caption_folder, make_captioner
from cinetune.prep.progress import NullProgress, StageProgress
from cinetune.prep.project import (
    BACKEND,
    CLIPS_DIR,
    CONFIG,
    RECIPES,
    build_pair,
    check_frames,
    load_project,
    parse_resolution,
    resolution_choices,
    write_pair,
)
from cinetune.prep.report import StageReport
from cinetune.prep.scenes import SplitOptions
from cinetune.prep.split import split_footage

logger = logging.getLogger(__name__)

REPORT = "prep_report.txt"
CheckReport = Callable[[RunPlan, Callable[[str], None]], None]


@dataclass(frozen=True)
class AllOptions:
    """What `prep all` adds to split and caption. None: not given (the recipe's value, or the existing
    config's)."""

    family: str | None = None
    flavour: str | None = None
    resolution: str | None = None
    frames: int | None = None
    train: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # --key=value config keys

    @property
    def shapes_config(self) -> bool:
        return any(v is not None for v in (self.family, self.flavour, self.resolution, self.frames)) or bool(
            self.overrides
        )


@dataclass
class Stages:
    """A progress bar per stage (the CLI's rich bars; none for library callers) and where report lines go."""

    new_bar: Callable[[], StageProgress] = NullProgress
    emit: Callable[[str], None] = logger.info


def run_all(
    raw: Path,
    project: Path,
    split_opts: SplitOptions,
    caption_opts: CaptionOptions,
    opts: AllOptions,
    check: CheckReport,
    stages: Stages | None = None,
    captioner_factory: Callable[[CaptionOptions], Any] = make_captioner,
    after_plan: Callable[[RunPlan], None] | None = None,
) -> list[StageReport]:
    """Run every stage; the report goes to `project/prep_report.txt` even when a stage stops the run."""
    stages = stages or Stages()
    project = Path(project)
    reports: list[StageReport] = []
    try:
        pair = _planned_pair(project, opts, caption_opts.output)
        video = pair[1].media[0].video
        frames, frame_rate = video.num_frames, video.frame_rate or pair[0].frame_rate
        raised = split_opts.min_scene_frames is None and split_opts.min_scene_seconds * frame_rate < frames
        if raised:  # a clip shorter than one training sample would only be skipped by the scan
            split_opts = replace(split_opts, min_scene_seconds=frames / frame_rate)
        reports.append(split_footage(raw, project / CLIPS_DIR, split_opts, stages.new_bar()))
        if raised:
            reports[-1].notes.append(
                f"minimum scene length {frames / frame_rate:.2f} s: the {frames} frames a sample needs at "
                f"{frame_rate:g} fps"
            )
        stages.emit(reports[-1].line())
        reports.append(caption_folder(project / CLIPS_DIR, caption_opts, stages.new_bar(), captioner_factory))
        stages.emit(reports[-1].line())
        reports.append(_config_stage(project, opts, pair))
        stages.emit(reports[-1].line())
        plan = resolve(load_project(project))
        reports.append(_check_stage(plan, check, stages))
        reports.append(_cache_stage(plan, stages))
        if opts.train:
            reports.append(_train_stage(plan, stages, after_plan))
    finally:
        _write_report(project, reports)
    return reports


def _planned_pair(project: Path, opts: AllOptions, caption_output: str):
    """The config pair these options describe (validated before any long stage runs)."""
    existing = project / CONFIG
    if existing.exists() and not opts.shapes_config:
        loaded = load_project(project)
        return loaded.train, loaded.data
    family_name = family_entry(opts.family or "ltxvideo").name
    family = build_family(family_name, opts.flavour, None)
    recipe = RECIPES[family_name]
    rule = family.frame_rule
    size = parse_resolution(opts.resolution or resolution_choices(rule)[0], rule)
    frames = check_frames(opts.frames or recipe.default_frames, rule, recipe)
    train, data = build_pair(
        project, family_name, opts.flavour, rule, size, frames, caption_output, opts.overrides
    )
    if existing.exists() and not _same_pair(project, train, data):
        raise ConfigError(
            f"{existing} already holds another config than these options give: edit it, or remove "
            f"{project / 'config'} to write a new one"
        )
    return train, data


def _config_stage(project: Path, opts: AllOptions, pair: tuple[Any, Any]) -> StageReport:
    report = StageReport("config", unit="file")
    train, data = pair
    if (project / CONFIG).exists():  # the same pair these options give, or the user's own (no options)
        report.kept += [str(CONFIG), str(BACKEND)]
        return report
    write_pair(project, train, data)
    report.done += [str(CONFIG), str(BACKEND)]
    report.notes.append(
        f"{train.model_family} / {train.model_flavour or 'default flavour'}, "
        f"{train.validation_resolution}, {train.validation_num_video_frames} frames"
    )
    return report


def _same_pair(project: Path, train: Any, data: Any) -> bool:
    on_disk = json.loads((project / CONFIG).read_text(encoding="utf-8"))
    datasets = json.loads((project / BACKEND).read_text(encoding="utf-8"))
    return on_disk == train.model_dump(mode="json", exclude_unset=True) and datasets == [
        d.model_dump(mode="json", exclude_unset=True) for d in data.datasets
    ]


def _check_stage(plan: RunPlan, check: CheckReport, stages: Stages) -> StageReport:
    report = StageReport("check", unit="report")
    bar = stages.new_bar()
    bar.start(1, "check")
    check(plan, report.notes.append)  # raises the error `cinetune train` would stop with
    bar.advance(1)
    report.done.append("config OK")
    stages.emit(report.line())
    return report


def _cache_stage(plan: RunPlan, stages: Stages) -> StageReport:
    from cinetune.training.trainer import Trainer

    report = StageReport("cache", unit="entry")
    bar = stages.new_bar()
    bar.start(1, "cache")
    trainer = Trainer(plan)
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.scan()
    index = trainer.cache()
    report.done += [*index.caption_keys, *index.latent_keys]
    report.notes.append(f"{len(index.caption_keys)} caption(s), {len(index.latent_keys)} latent(s) cached")
    bar.advance(1)
    stages.emit(report.line())
    return report


def _train_stage(plan: RunPlan, stages: Stages, after_plan: Callable[[RunPlan], None] | None) -> StageReport:
    from cinetune.training.trainer import Trainer

    if plan.train.num_processes > 1:
        raise ConfigError(
            f"num_processes={plan.train.num_processes}: prep all trains in one process; the project is "
            "cached and ready, so run `cinetune train` inside it for a multi-process run"
        )
    report = StageReport("train", unit="LoRA")
    bar = stages.new_bar()
    bar.start(1, "train")
    trainer = Trainer(plan)
    if after_plan is not None:
        after_plan(plan)
    result = trainer.run()
    losses = result.get("losses") or []
    report.done += [str(result[k]) for k in ("lora", "comfyui") if result.get(k)]
    report.notes.append(
        f"{result['steps']} step(s)" + (f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "")
    )
    bar.advance(1)
    stages.emit(report.line())
    return report


def _write_report(project: Path, reports: list[StageReport]) -> None:
    if not reports:
        return
    project.mkdir(parents=True, exist_ok=True)
    lines = []
    for report in reports:
        lines.append(report.line())
        lines.extend(report.details())
    (project / REPORT).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (project / "prep_report.json").write_text(
        json.dumps([r.to_dict() for r in reports], indent=2) + "\n", encoding="utf-8"
    )
