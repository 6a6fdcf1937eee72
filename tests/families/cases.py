"""The conformance cases: one per family and per variant that changes what the family trains (image
conditioning, audio, release). Adding a family means adding its case here; tests/families/ runs every check
on every case.

A case says where the tiny weights are written in the family's real on-disk layout (a diffusers folder, or
LTX-2's combined checkpoint file), what clips its data needs, and the config keys of the variant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cinetune.data import write_video
from cinetune.data.audio import tone
from cinetune.demo import synthetic_clip


def _ltx_folder(root: Path) -> str:
    from cinetune.models.ltxvideo.tiny import save_tiny_checkpoint

    return str(save_tiny_checkpoint(root / "LTX-Video-tiny"))


def _ltx_condition_folder(root: Path) -> str:
    from diffusers import LTXConditionPipeline

    from cinetune.models.ltxvideo.tiny import save_tiny_checkpoint

    return str(save_tiny_checkpoint(root / "LTX-Video-0.9.7-tiny", pipeline_class=LTXConditionPipeline))


def _k5_folder(i2v: bool) -> Callable[[Path], str]:
    def write(root: Path) -> str:
        from cinetune.models.kandinsky5.tiny import save_tiny_checkpoint

        return str(save_tiny_checkpoint(root / "Kandinsky-5-tiny", i2v=i2v))

    return write


def _ltx2_file(version: str) -> Callable[[Path], str]:
    def write(root: Path) -> str:
        from cinetune.models.ltxvideo2.tiny import save_tiny_combined_file

        path = save_tiny_combined_file(root / "LTX-2-tiny" / "ltx-2-tiny.safetensors", version=version)
        return str(path)  # the release's layout: one combined file, Gemma beside it

    return write


@dataclass(frozen=True)
class FamilyCase:
    id: str
    family: str
    flavour: str  # the flavour whose real layout `write` produces
    builtin: str  # the built-in tiny flavour with the same weights
    write: Callable[[Path], str]  # writes the tiny weights in the real layout; returns the model path
    config: dict[str, Any] = field(default_factory=dict)  # the variant's train keys
    dataset: dict[str, Any] = field(default_factory=dict)  # the variant's video dataset keys
    frames: int = 9  # frames per sample (each family's frame rule allows 9)
    sound: bool = False  # clips carry an audio track
    pipeline: str = ""  # diffusers pipeline class the exported LoRA must load into


CASES = [
    FamilyCase("ltxvideo", "ltxvideo", "tiny", "tiny", _ltx_folder, pipeline="LTXPipeline"),
    FamilyCase(
        "ltxvideo-i2v",
        "ltxvideo",
        "tiny",
        "tiny",
        _ltx_folder,
        config={"first_frame_conditioning_p": 0.5},
        pipeline="LTXPipeline",
    ),
    FamilyCase(
        "ltxvideo-0.9.7",
        "ltxvideo",
        "0.9.7-13b-dev",
        "tiny",
        _ltx_condition_folder,
        pipeline="LTXConditionPipeline",
    ),
    FamilyCase(
        "kandinsky5-t2v",
        "kandinsky5-video",
        "tiny",
        "tiny",
        _k5_folder(False),
        pipeline="Kandinsky5T2VPipeline",
    ),
    FamilyCase(
        "kandinsky5-i2v",
        "kandinsky5-video",
        "tiny-i2v",
        "tiny-i2v",
        _k5_folder(True),
        pipeline="Kandinsky5I2VPipeline",
    ),
    FamilyCase("ltxvideo2", "ltxvideo2", "2.0", "tiny", _ltx2_file("2.0"), pipeline="LTX2Pipeline"),
    FamilyCase(
        "ltxvideo2-av-i2v",
        "ltxvideo2",
        "2.0",
        "tiny",
        _ltx2_file("2.0"),
        config={"first_frame_conditioning_p": 0.5},
        dataset={"audio": {"auto_split": True}},
        sound=True,
        pipeline="LTX2Pipeline",
    ),
    FamilyCase(
        "ltxvideo2.3-av",
        "ltxvideo2",
        "2.3",
        "tiny-2.3",
        _ltx2_file("2.3"),
        dataset={"audio": {"auto_split": True}},
        sound=True,
        pipeline="LTX2Pipeline",
    ),
]


def write_clips(folder: Path, case: FamilyCase, count: int = 4, fps: int = 24) -> Path:
    """`count` clips of 12 frames at 64x64 (a sample window of 9 frames has 4 starts), captions beside them;
    with `case.sound` each carries a tone of its own pitch."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 80, 220), (40, 200, 80), (200, 200, 40)]
    for i in range(count):
        frames = synthetic_clip(colours[i % 4], 12, 64, 64, speed=2 + i)
        audio = tone(int(12 / fps * 48000) + 2400, 48000, 300.0 + 150 * i) if case.sound else None
        write_video(
            folder / f"clip_{i}.mp4", frames, fps, audio=audio, sample_rate=48000 if case.sound else None
        )
        (folder / f"clip_{i}.txt").write_text(f"a coloured square {i} moves across a dark screen")
    return folder


def config_pair(root: Path, case: FamilyCase, model: str | None, clips: Path, **overrides: Any) -> Path:
    """config/config.json + config/multidatabackend.json for `case` (the built-in tiny model when `model` is
    None); caches under root/cache, outputs under root/output."""
    import json

    config = {
        "model_family": case.family,
        "model_flavour": case.flavour if model else case.builtin,
        "output_dir": str(root / "output"),
        "data_backend_config": str(root / "config" / "multidatabackend.json"),
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "max_train_steps": 4,
        "mixed_precision": "no",
        "lora_rank": 4,
        "lora_init_type": "gaussian",
        "seed": 5,
        "frame_rate": 24,
        "report_to": "none",
        "disable_validation": True,
        **case.config,
        **overrides,
    }
    if model:
        config["pretrained_model_name_or_path"] = model
    video = {
        "id": "clips",
        "dataset_type": "video",
        "instance_data_dir": str(clips),
        "resolution": 64,
        "resolution_type": "pixel",
        "cache_dir_vae": str(root / "cache" / "vae"),
        "video": {"num_frames": case.frames, "min_frames": case.frames, "windows_per_clip": 2},
        **case.dataset,
    }
    embeds = {
        "id": "text",
        "dataset_type": "text_embeds",
        "default": True,
        "cache_dir": str(root / "cache" / "text"),
    }
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / "multidatabackend.json").write_text(json.dumps([video, embeds]))
    path = root / "config" / "config.json"
    path.write_text(json.dumps(config))
    return path
