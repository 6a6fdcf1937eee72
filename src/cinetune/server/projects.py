"""Project folders, their templates, and config validation with an error per field.

A project is a folder under the server's root holding `config/config.json` and `config/multidatabackend.json`
in the quickstarts' shape (paths in them relative to the project folder). Templates are the quickstart pairs
shipped in this package (the same files tests/quickstarts/ runs through `check` and `train`) and a tiny
LTX-Video pair (the demo's built-in tiny model on synthetic clips). Validation goes through the schema's own
checks (unknown keys, "not supported yet", pydantic field rules) and then `plan.resolve`, so the web page
accepts and rejects exactly what `cinetune check` does, with the same messages.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cinetune.config import DatasetConfig, TrainConfig
from cinetune.config.load import _apply_aliases, _check_keys, _strip_dashes, build_data_config
from cinetune.errors import CinetuneError, ConfigError
from cinetune.models.registry import FAMILIES, family_class
from cinetune.prep.project import BACKEND, CONFIG, RECIPES, RESOLUTIONS, area_resolution, load_project

DEMO_TEMPLATE = "ltxvideo-tiny-demo"


def templates_dir() -> Path:
    return Path(str(resources.files("cinetune.server") / "templates"))


def list_templates() -> list[dict[str, str]]:
    out = []
    for folder in sorted(p for p in templates_dir().iterdir() if (p / "config.json").is_file()):
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        flavour = config.get("model_flavour", "default")
        out.append({"name": folder.name, "family": config["model_family"], "flavour": flavour})
    return out


def create_project(folder: Path, template: str) -> None:
    """A new project folder from a template: its config pair (and, for the demo template, synthetic clips)."""
    source = templates_dir() / template
    if template not in {t["name"] for t in list_templates()}:
        raise ConfigError(f"unknown template '{template}'")
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder.name} exists already; open it instead")
    (folder / CONFIG).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "config.json", folder / CONFIG)
    shutil.copyfile(source / "multidatabackend.json", folder / BACKEND)
    (folder / "datasets" / "clips").mkdir(parents=True, exist_ok=True)
    if template == DEMO_TEMPLATE:
        from cinetune.demo import write_demo_dataset

        write_demo_dataset(folder / "datasets" / "clips")


def list_projects(root: Path) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "configured": (p / CONFIG).is_file()}
        for p in sorted(Path(root).iterdir())
        if p.is_dir() and not p.name.startswith(".")
    ]


def families() -> dict[str, Any]:
    """Per family: flavours, and the resolutions / frame counts its frame rule allows, labelled."""
    out = {}
    for name in FAMILIES:
        cls = family_class(name)
        rule, recipe = cls.frame_rule, RECIPES[name]
        m = rule.spatial_multiple
        sizes = [
            {
                "value": f"{w}x{h}",
                "label": f"{w}x{h} ({_orientation(w, h)})",
                "width": w,
                "height": h,
                "area": area_resolution(w, h, rule),
            }
            for w, h in RESOLUTIONS
            if w % m == 0 and h % m == 0
        ]
        frames = [f for f in recipe.frames if rule.is_valid_frames(f)]
        out[name] = {"flavours": list(cls.flavours), "resolutions": sizes, "frames": frames}
    return out


def _orientation(w: int, h: int) -> str:
    return "landscape" if w > h else "portrait" if w < h else "square"


def read_pair(project: Path) -> dict[str, Any]:
    def load(path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    return {"config": load(project / CONFIG), "datasets": load(project / BACKEND)}


def field_errors(config: Any, datasets: Any) -> dict[str, Any]:
    """Schema errors: {'config': {field: message}, 'datasets': [message per entry], 'general': [...]}."""
    errors: dict[str, Any] = {"config": {}, "datasets": [], "general": []}
    if not isinstance(config, dict):
        errors["general"].append("config.json: expected an object of key: value")
        return errors
    raw = _strip_dashes(config)
    try:
        raw = _apply_aliases(raw, "config.json")
        for key in list(raw):
            try:
                _check_keys({key: raw[key]}, TrainConfig, "config.json")
            except CinetuneError as exc:
                errors["config"][key] = str(exc).removeprefix("config.json: ")
                raw.pop(key)
        TrainConfig.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "_"
            errors["config"][key] = err["msg"].removeprefix("Value error, ")
    except CinetuneError as exc:
        errors["general"].append(str(exc))
    try:
        build_data_config(datasets, where="multidatabackend.json")
    except CinetuneError as exc:
        errors["datasets"] = str(exc).splitlines()
    return errors


def plan_messages(project: Path) -> dict[str, Any]:
    """The run plan's verdict on the saved pair: its error (cross-key rules, files) or its warnings."""
    from cinetune.plan import resolve

    try:
        plan = resolve(load_project(project))
    except CinetuneError as exc:
        return {"ok": False, "error": str(exc), "warnings": []}
    return {"ok": True, "error": None, "warnings": list(plan.warnings)}


def memory_advice(project: Path, size: str | None, frames: int | None, vram: float | None) -> dict[str, Any]:
    """The memory planner on the saved pair: predicted peaks at WIDTHxHEIGHT x frames (default: the
    validation size, which `configure` and the templates set to the training size) and, with `vram`, the
    cheapest keys that fit that GPU."""
    from cinetune.check import memory_advice as advise
    from cinetune.plan import resolve

    try:
        plan = resolve(load_project(project))
    except CinetuneError as exc:
        return {"ok": False, "error": f"the saved config does not resolve: {exc}"}
    cfg = plan.train
    text = size or cfg.validation_resolution.split(",")[0]
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        return {"ok": False, "error": f"size '{text}': expected WIDTHxHEIGHT"}
    try:
        advice = advise(plan, width, height, frames or cfg.validation_num_video_frames, vram)
    except CinetuneError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, **advice}


def write_pair_raw(project: Path, config: dict[str, Any], datasets: list[Any]) -> None:
    (project / CONFIG).parent.mkdir(parents=True, exist_ok=True)
    for path, value in ((project / CONFIG, config), (project / BACKEND, datasets)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)


def schemas() -> dict[str, Any]:
    return {"train": TrainConfig.model_json_schema(), "dataset": DatasetConfig.model_json_schema()}


def output_dir(project: Path) -> Path:
    """The project's run folder, from its config (relative to the project); `output` without a config."""
    pair = read_pair(project)
    value = (
        (pair["config"] or {}).get("output_dir", "output") if isinstance(pair["config"], dict) else "output"
    )
    path = Path(value)
    return path if path.is_absolute() else project / path


def total_steps(project: Path) -> int | None:
    config = read_pair(project)["config"]
    steps = config.get("max_train_steps") if isinstance(config, dict) else None
    return steps if isinstance(steps, int) and steps > 0 else None
