"""`cinetune prep split`: raw footage -> one clip per scene, a manifest line per clip, resumable.

Per source: a demux pass indexes packets and keyframes, PySceneDetect finds the cuts (cached in
`.cinetune-prep/scenes/`, keyed by the file and the detection options, so a re-run decodes nothing it already
decoded), the plan drops trimmed frames and too-short scenes and cuts long scenes into pieces, and each clip
is written unless the manifest already lists it with the same frames. A source that cannot be read is
reported and the others go on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cinetune.data.video_io import VIDEO_EXTS, MediaError, list_files, probe
from cinetune.errors import ConfigError, DataError
from cinetune.prep.cutter import SourceIndex, can_copy, index_source, write_clip
from cinetune.prep.progress import NullProgress, StageProgress
from cinetune.prep.report import StageReport
from cinetune.prep.scenes import PlannedClip, SplitOptions, detect_cuts, plan_clips

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
STATE_DIR = ".cinetune-prep"


def list_sources(raw: Path) -> list[Path]:
    raw = Path(raw)
    if raw.is_file():
        return [raw]
    if not raw.is_dir():
        raise DataError(f"{raw}: no such file or folder")
    return list_files(raw, VIDEO_EXTS)


def clip_bases(sources: list[Path], raw: Path) -> dict[Path, str]:
    """A file-name stem per source: its path under `raw` joined with '_' (the extension added where two
    sources would share a stem, e.g. a.mp4 and a.mov)."""
    root = raw if raw.is_dir() else raw.parent
    stems = {s: "_".join(s.relative_to(root).with_suffix("").parts) for s in sources}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {s: stem if counts[stem] == 1 else f"{stem}_{s.suffix.lstrip('.')}" for s, stem in stems.items()}


def clip_name(base: str, clip: PlannedClip) -> str:
    part = f"-part{clip.piece:02d}" if clip.pieces > 1 else ""
    return f"{base}-scene{clip.scene:03d}{part}.mp4"


def read_manifest(out: Path) -> dict[str, dict[str, Any]]:
    """Manifest rows by clip name; a line cut short by a kill is ignored (its clip is written again)."""
    rows: dict[str, dict[str, Any]] = {}
    path = out / MANIFEST
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "clip" in row:
            rows[row["clip"]] = row
    return rows


def split_footage(
    raw: Path, out: Path, opts: SplitOptions, progress: StageProgress | None = None
) -> StageReport:
    """Split every video under `raw` (a folder or one file) into clips in `out`."""
    progress = progress or NullProgress()
    report = StageReport("split", unit="clip")
    _need_scenedetect()
    sources = list_sources(raw)
    if not sources:
        raise DataError(f"{raw}: no video files ({', '.join(sorted(VIDEO_EXTS))})")
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    indexed: list[tuple[Path, SourceIndex]] = []
    for source in sources:
        try:
            probe(source)  # the trainer's own checks: zero bytes, truncated, no video stream, undecodable
            indexed.append((source, index_source(source)))
        except MediaError as exc:
            report.failed.append((str(source), exc.reason))
        except Exception as exc:
            report.failed.append((str(source), f"cannot be read: {exc}"))
    progress.start(sum(2 * idx.frames for _, idx in indexed), "split")
    bases = clip_bases([s for s, _ in indexed], Path(raw))
    for source, index in indexed:
        try:
            _split_one(source, index, bases[source], out, opts, manifest, report, progress)
        except Exception as exc:
            logger.debug("splitting %s failed", source, exc_info=True)
            report.failed.append((str(source), f"{type(exc).__name__}: {exc}"))
    return report


def _split_one(
    source: Path,
    index: SourceIndex,
    base: str,
    out: Path,
    opts: SplitOptions,
    manifest: dict[str, dict[str, Any]],
    report: StageReport,
    progress: StageProgress,
) -> None:
    fps = float(index.fps)
    cuts = _cached_cuts(source, out, base, opts)
    if cuts is None:
        cuts = detect_cuts(source, opts, fps, progress.advance)
        _store_cuts(source, out, base, opts, cuts)
    else:
        progress.advance(index.frames)
    clips, rejected = plan_clips(cuts, index.frames, fps, opts)
    for scene, start, end, reason in rejected:
        report.skipped.append((f"{source.name} scene {scene} (frames {start}-{end - 1})", reason))
    progress.advance(index.frames - sum(c.frames for c in clips))
    for clip in clips:
        name = clip_name(base, clip)
        row = manifest.get(name)
        if row and (out / name).exists() and (row["start_frame"], row["end_frame"]) == (clip.start, clip.end):
            report.kept.append(name)
            progress.advance(clip.frames)
            continue
        copy = not opts.reencode and can_copy(index, clip.start, clip.end)
        method = write_clip(source, index, clip.start, clip.end, out / name, copy, opts.crf)
        row = {
            "clip": name,
            "source": str(source.resolve()),
            "scene": clip.scene,
            "piece": clip.piece,
            "start_frame": clip.start,
            "end_frame": clip.end,
            "start_seconds": round(clip.start / fps, 6),
            "end_seconds": round(clip.end / fps, 6),
            "fps": fps,
            "frames": clip.frames,
            "method": method,
            "audio": bool(index.audio_channels),
        }
        with (out / MANIFEST).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        manifest[name] = row
        report.done.append(name)
        progress.advance(clip.frames)


def _need_scenedetect() -> None:
    try:
        import scenedetect  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"scene detection needs PySceneDetect ({exc}): pip install opencv-python-headless and then "
            "pip install --no-deps scenedetect==0.7.2 (its declared GUI OpenCV is not needed)"
        ) from None


def _cache_path(out: Path, base: str) -> Path:
    return out / STATE_DIR / "scenes" / f"{base}.json"


def _source_key(source: Path, opts: SplitOptions) -> dict[str, Any]:
    stat = source.stat()
    return {
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "options": opts.detection_key(),
    }


def _cached_cuts(source: Path, out: Path, base: str, opts: SplitOptions) -> list[int] | None:
    path = _cache_path(out, base)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return stored["cuts"] if stored.get("key") == _source_key(source, opts) else None


def _store_cuts(source: Path, out: Path, base: str, opts: SplitOptions, cuts: list[int]) -> None:
    path = _cache_path(out, base)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": _source_key(source, opts), "cuts": cuts}), encoding="utf-8")
    tmp.replace(path)


def options_dict(opts: SplitOptions) -> dict[str, Any]:
    return asdict(opts)
