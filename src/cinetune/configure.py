"""`cinetune configure`: a terminal wizard that writes config/config.json + config/multidatabackend.json.

It asks what the quickstarts have users fill in (family, flavour, model path, dataset folder, resolution,
frames, steps, learning rate, memory options, validation prompt), checks every answer against the schema's
own field rules before going on (a bad answer is explained and asked again), and writes the pair in the shape
`cinetune prep all` writes it (prep/project.py), paths relative to the project folder. Run on a project that
has a pair already, it offers the current values as defaults and keeps every other key as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.prompt import Confirm, Prompt

from cinetune.config import TrainConfig
from cinetune.config.load import build_data_config, build_train_config
from cinetune.errors import ConfigError
from cinetune.models.registry import FAMILIES, family_class, family_entry
from cinetune.prep.project import BACKEND, CONFIG, RECIPES, area_resolution, build_pair, resolution_choices


def _field_error(values: dict[str, Any], key: str) -> str | None:
    """The schema's complaint about `key` in `values` (other keys' complaints are theirs to raise)."""
    try:
        TrainConfig.model_validate(values)
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"] and err["loc"][0] == key:
                return err["msg"].removeprefix("Value error, ")
    return None


class Wizard:
    def __init__(self, project: Path, console: Console) -> None:
        self.project = project
        self.console = console
        self.config: dict[str, Any] = _read(project / CONFIG) or {}
        self.datasets: list[Any] | None = _read(project / BACKEND)

    def ask_key(self, key: str, question: str, cast: type = str, default: Any = None, **kw: Any) -> Any:
        """Ask until the answer passes the schema's rule for `key`; store it in the config."""
        current = self.config.get(key, default)
        while True:
            text = Prompt.ask(
                question, default=None if current is None else str(current), console=self.console, **kw
            )
            text = (text or "").strip()
            if text == "" and current is None:
                self.config.pop(key, None)
                return None
            try:
                value = cast(text)
            except ValueError:
                self.console.print(f"[red]{key}: '{text}' is not a {cast.__name__}[/]")
                continue
            error = _field_error({**self.config, key: value}, key)
            if error is None:
                self.config[key] = value
                return value
            self.console.print(f"[red]{key}: {error}[/]")

    def run(self) -> None:
        c = self.console
        c.print(f"[bold]cinetune configure[/] — project {self.project.resolve()}")
        if self.datasets is not None:
            c.print("editing the existing config pair: Enter keeps a value")
        family = family_entry(
            self.ask_key("model_family", "model family", choices=list(FAMILIES), default="ltxvideo")
        ).name
        self.config["model_family"] = family
        cls = family_class(family)
        if self.config.get("model_flavour") not in cls.flavours:
            self.config.pop("model_flavour", None)
        self.ask_key("model_flavour", "flavour", choices=list(cls.flavours), default=cls.default_flavour)
        self.ask_key("pretrained_model_name_or_path", "model path or hub id (Enter: the flavour's own)")
        folder = Prompt.ask("dataset folder (relative to the project)", default=self._data_dir(), console=c)
        size = self._resolution(cls)
        frames = self._frames(family, cls)
        self.ask_key("max_train_steps", "training steps", int, default=2000)
        self.ask_key("learning_rate", "learning rate", float, default=1e-4)
        gc = Confirm.ask(
            "gradient checkpointing", default=self.config.get("gradient_checkpointing", True), console=c
        )
        self.config["gradient_checkpointing"] = gc
        self.ask_key("mixed_precision", "mixed precision", choices=["bf16", "fp16", "no"], default="bf16")
        self._memory(size, frames)
        self.ask_key("validation_prompt", "validation prompt (Enter: none)")
        self.config["validation_resolution"] = f"{size[0]}x{size[1]}"
        self.config["validation_num_video_frames"] = frames
        self._write(folder, size, frames, cls.frame_rule)

    def _memory(self, size: tuple[int, int], frames: int) -> None:
        """The memory planner's advice for a GPU size (no weights read); its keys added on request."""
        from cinetune.check import memory_advice
        from cinetune.config import LoadedConfig
        from cinetune.errors import CinetuneError
        from cinetune.plan import resolve

        c = self.console
        while True:
            answer = Prompt.ask(
                "GPU memory in GiB, for the memory planner (Enter: skip)", default="", console=c
            )
            if not answer.strip():
                return
            try:
                vram = float(answer)
                if vram <= 0:
                    raise ValueError
                break
            except ValueError:
                c.print(f"'{answer}': a number of GiB, e.g. 24")
        try:
            train = build_train_config({**self.config, "report_to": "none"}, where="configure")
            advice = memory_advice(resolve(LoadedConfig(train, None, None)), *size, frames, vram)
        except CinetuneError as exc:
            c.print(f"memory planner: cannot predict this config yet ({exc})")
            return
        c.print(f"memory (predicted at {advice['shape']}):", highlight=False)
        for line in advice["lines"]:
            c.print(f"  {line}", highlight=False)
        if advice["fits"]:
            c.print(f"fits {vram:g} GiB as it is")
        elif advice["proposal"] is None:
            c.print(f"nothing cinetune builds fits {vram:g} GiB here: lower the resolution or frames")
        else:
            keys = advice["proposal"]["keys"]
            c.print(f"does not fit {vram:g} GiB; the cheapest settings that do: {json.dumps(keys)}")
            if Confirm.ask("add these keys", default=True, console=c):
                self.config.update(keys)

    def _data_dir(self) -> str:
        for entry in self.datasets or []:
            if isinstance(entry, dict) and entry.get("dataset_type", "video") == "video":
                return str(entry.get("instance_data_dir", "datasets/clips"))
        return "datasets/clips"

    def _resolution(self, cls: Any) -> tuple[int, int]:
        choices = resolution_choices(cls.frame_rule)
        for n, label in enumerate(choices, 1):
            self.console.print(f"  {n}. {label}")
        current = self.config.get("validation_resolution")
        default = next((str(n) for n, lab in enumerate(choices, 1) if lab.split(" ")[0] == current), "1")
        pick = Prompt.ask(
            "resolution (number)",
            choices=[str(n) for n in range(1, len(choices) + 1)],
            default=default,
            console=self.console,
            show_choices=False,
        )
        width, height = (int(v) for v in choices[int(pick) - 1].split(" ")[0].split("x"))
        return width, height

    def _frames(self, family: str, cls: Any) -> int:
        offered = [str(f) for f in RECIPES[family].frames if cls.frame_rule.is_valid_frames(f)]
        current = str(self.config.get("validation_num_video_frames", RECIPES[family].default_frames))
        pick = Prompt.ask(
            "frames per sample",
            choices=offered,
            default=current if current in offered else offered[0],
            console=self.console,
        )
        return int(pick)

    def _write(self, folder: str, size: tuple[int, int], frames: int, rule: Any) -> None:
        if self.datasets is None:  # a new pair: the same shape `prep all` writes
            train, data = build_pair(
                self.project.resolve(),
                self.config["model_family"],
                self.config.get("model_flavour"),
                rule,
                size,
                frames,
                "txt",
                self.config,
            )
            config = train.model_dump(mode="json", exclude_unset=True)
            datasets = [d.model_dump(mode="json", exclude_unset=True) for d in data.datasets]
            datasets[0]["instance_data_dir"] = folder
        else:
            config, datasets = self.config, self.datasets
            for entry in datasets:
                if isinstance(entry, dict) and entry.get("dataset_type", "video") == "video":
                    entry.update(
                        instance_data_dir=folder,
                        resolution=area_resolution(*size, rule),
                        resolution_type="pixel_area",
                    )
                    entry["video"] = {**entry.get("video", {}), "num_frames": frames, "min_frames": frames}
                    break
        build_train_config(dict(config), where="config.json")  # the whole pair once more, as check reads it
        build_data_config(datasets, where="multidatabackend.json")
        (self.project / CONFIG).parent.mkdir(parents=True, exist_ok=True)
        (self.project / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (self.project / BACKEND).write_text(json.dumps(datasets, indent=2) + "\n", encoding="utf-8")
        self.console.print(f"[green]written[/]: {self.project / CONFIG} and {self.project / BACKEND}")
        self.console.print("next: cinetune check (in the project folder), then cinetune train")


def _read(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); fix or remove it first") from exc


def run_wizard(project: Path, console: Console) -> None:
    project.mkdir(parents=True, exist_ok=True)
    Wizard(project, console).run()
