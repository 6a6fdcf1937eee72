"""What the Dataset and Results pages show: clips with probe facts and captions, poster frames, validation
videos per step, checkpoints and the exported LoRA files.

Probe facts are cached in `.cinetune/probe.json` keyed by each clip's size and modification time, and poster
frames in `.cinetune/posters/`, so a dataset page of hundreds of clips opens without decoding any video twice.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import av
from PIL import Image

from cinetune.data.video_io import VIDEO_EXTS, MediaError, list_files, probe
from cinetune.export.lora import COMFYUI_FILE, DIFFUSERS_FILE
from cinetune.server.paths import PathRefusedError, inside
from cinetune.server.projects import output_dir, read_pair

PROBE_CACHE = Path(".cinetune/probe.json")
POSTERS = Path(".cinetune/posters")
_STEP = re.compile(r"^step_(\d+)$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def dataset_dirs(project: Path) -> list[dict[str, Any]]:
    """The project's video datasets: id, folder (inside the project), caption strategy."""
    entries = read_pair(project)["datasets"]
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("dataset_type", "video") not in ("video", "image"):
            continue
        if entry.get("disabled") or not isinstance(entry.get("instance_data_dir"), str):
            continue
        try:
            folder = inside(project, entry["instance_data_dir"])
        except PathRefusedError:
            continue  # a dataset outside the project is not shown (nor served)
        strategy = entry.get("caption_strategy", "textfile")
        out.append({"id": entry.get("id", "?"), "folder": folder, "caption_strategy": strategy})
    return out


def list_clips(project: Path) -> list[dict[str, Any]]:
    cache_path = project / PROBE_CACHE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    clips, changed = [], False
    base = project.resolve()
    for ds in dataset_dirs(project):
        if not ds["folder"].is_dir():
            continue
        for path in list_files(ds["folder"], VIDEO_EXTS):
            if not path.resolve().is_relative_to(base):
                continue  # a link out of the project: neither probed nor listed
            rel = path.relative_to(base).as_posix()
            stat = path.stat()
            key = f"{stat.st_size}:{stat.st_mtime_ns}"
            facts = cache.get(rel)
            if facts is None or facts.get("key") != key:
                facts, changed = {"key": key, **_probe(path)}, True
                cache[rel] = facts
            caption = _read_caption(path) if ds["caption_strategy"] == "textfile" else None
            clips.append(
                {
                    "path": rel,
                    "dataset": ds["id"],
                    "caption": caption,
                    "caption_editable": ds["caption_strategy"] == "textfile",
                    **{k: v for k, v in facts.items() if k != "key"},
                }
            )
    if changed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps(cache), encoding="utf-8")
    return clips


def _probe(path: Path) -> dict[str, Any]:
    try:
        info = probe(path)
    except MediaError as exc:
        return {"error": str(exc)}
    return {
        "width": info.width,
        "height": info.height,
        "fps": round(info.fps, 3),
        "frames": info.num_frames,
        "seconds": round(info.num_frames / info.fps, 2) if info.fps else None,
        "audio": info.has_audio,
    }


def _read_caption(clip: Path) -> str | None:
    try:
        return clip.with_suffix(".txt").read_text(encoding="utf-8")
    except OSError:
        return None


def _clip_of(project: Path, rel: str) -> Path:
    """A clip of one of the project's datasets, or PathRefusedError."""
    path = inside(project, rel)
    for ds in dataset_dirs(project):
        if path.is_relative_to(ds["folder"]) and path.suffix.lower() in VIDEO_EXTS and path.is_file():
            return path
    raise PathRefusedError(f"not a clip of this project's datasets: {rel}")


def write_caption(project: Path, rel: str, text: str) -> Path:
    clip = _clip_of(project, rel)
    ds = next(d for d in dataset_dirs(project) if clip.is_relative_to(d["folder"]))
    if ds["caption_strategy"] != "textfile":
        raise PathRefusedError(
            f"captions of '{ds['id']}' ({ds['caption_strategy']}) are edited in their file"
        )
    target = clip.with_suffix(".txt")
    tmp = target.with_suffix(".txt.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return target


def poster(project: Path, rel: str) -> Path:
    """A JPEG of the clip's first frame (256 px on the long side), made once."""
    clip = _clip_of(project, rel)
    stat = clip.stat()
    digest = hashlib.sha1(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    target = project / POSTERS / f"{digest}.jpg"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0))
        image = frame.to_image()
    image.thumbnail((256, 256), Image.Resampling.BILINEAR)
    tmp = target.with_suffix(".tmp")
    image.save(tmp, format="JPEG", quality=80)
    tmp.replace(target)
    return target


def data_report(project: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output_dir(project) / "data_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def results(project: Path) -> dict[str, Any]:
    """Validation videos by step (with their prompts), checkpoints, and the final LoRA files."""
    out = output_dir(project)
    prompts = _prompts(out)
    steps = []
    for folder in sorted((out / "validation").glob("step_*"), key=_step_number):
        videos = [
            {"path": _rel(project, v), "name": v.stem, "prompt": prompts.get(v.stem.rsplit("_", 1)[0])}
            for v in sorted(folder.glob("*.mp4"))
        ]
        if videos:
            steps.append({"step": _step_number(folder), "videos": videos})
    checkpoints = [
        {
            "name": c.name,
            "step": int(_CHECKPOINT.match(c.name)[1]),
            "lora": _rel(project, c / "lora.safetensors"),
        }
        for c in sorted(
            out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]) if p.name[11:].isdigit() else -1
        )
        if _CHECKPOINT.match(c.name) and (c / "lora.safetensors").is_file()
    ]
    files = {
        label: _rel(project, out / name) if (out / name).is_file() else None
        for label, name in (("diffusers", DIFFUSERS_FILE), ("comfyui", COMFYUI_FILE))
    }
    return {"steps": steps, "checkpoints": checkpoints, "lora": files}


def _prompts(out: Path) -> dict[str, str]:
    try:
        config = json.loads((out / "cinetune_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    prompts = (
        dict(config.get("validation_prompt_library") or {})
        if isinstance(config.get("validation_prompt_library"), dict)
        else {}
    )
    if config.get("validation_prompt"):
        prompts["validation"] = config["validation_prompt"]
    return prompts


def _step_number(folder: Path) -> int:
    match = _STEP.match(folder.name)
    return int(match[1]) if match else -1


def _rel(project: Path, path: Path) -> str:
    return Path(path).resolve().relative_to(project.resolve()).as_posix()
