"""Every schema key changes something a user or its consumer can see, or its other values are rejected.

Project rule: no key is accepted and ignored. The tables below map every field of TrainConfig, DatasetConfig,
VideoOptions and AudioOptions to a probe that sets the key (against its default, or the quickstart-shaped base
config) and asserts the difference where the key is consumed: the optimizer, the LoRA adapter on the tiny
transformer, `cinetune check`'s report, the dataset scan, the batches, the sigmas `training_inputs` draws, the
arguments that reach the family's `generate` (the real call, recorded), the files a real `cinetune train` run
writes, the warning that says a key changes nothing in this run (a documented outcome), or the ConfigError /
NotSupportedYet a rejected value gets. `test_every_key_has_a_probe` fails when a field is added without one.

Everything runs on the built-in tiny models (`model_flavour: tiny`, `tiny-i2v`) through the public API
(`plan.resolve(load_config(path))`, `Trainer(plan)`); caches are shared between probes (their keys cover
everything an entry depends on), and the real training runs are grouped: one run shows several keys at once.
"""

from __future__ import annotations

import json
import logging
import math
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tests.context_parallel_probes import CONTEXT_PARALLEL_KEYS
from tests.fsdp_probes import FSDP_KEYS
from tests.memory_probes import MEMORY_KEYS
from tests.multinode_probes import MULTINODE_KEYS

from cinetune import cli
from cinetune.benchmark import synthetic_batch
from cinetune.check import check_report
from cinetune.config import (
    AudioOptions,
    DatasetConfig,
    TrainConfig,
    TreadConfig,
    TreadRoute,
    VideoOptions,
    load_config,
)
from cinetune.data import SkipReport, load_pixels, scan_datasets, write_video
from cinetune.data.audio import tone
from cinetune.demo import synthetic_clip
from cinetune.errors import CinetuneError, DataError, NotSupportedYet, TrainingDiverged
from cinetune.plan import RunPlan, resolve
from cinetune.training.trainer import Trainer
from cinetune.training.validation import condition_images

UNSET: Any = object()  # a key left out of the written file: the schema default applies
CPU = torch.device("cpu")
NO_GPU = not torch.cuda.is_available()
VALIDATION = {
    "validation_prompt": "a red square",
    "validation_resolution": "64x64",
    "validation_num_video_frames": 9,
    "validation_num_inference_steps": 2,
}
CHANGED = {  # validation keys changed at once: each shows in its own argument of `generate`
    "validation_guidance": 1.5,
    "validation_num_inference_steps": 3,
    "validation_seed": 11,
    "validation_negative_prompt": "blurry",
    "validation_resolution": "64x64,96x64",
    "validation_num_video_frames": 17,
    "frame_rate": 12,
}
LTX2 = {"model_family": "ltxvideo2", "model_flavour": "tiny"}
K5 = {"model_family": "kandinsky5-video", "model_flavour": "tiny"}


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` over `base`: nested dicts merge, UNSET drops a key."""
    out = dict(base)
    for key, value in changes.items():
        if value is UNSET:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """(channels, n) float in [-1, 1] as a 16-bit PCM file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").T.copy().tobytes())
    return path


@contextmanager
def _logged() -> Iterator[list[str]]:
    """Messages cinetune logs (INFO and up) inside the block."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("cinetune")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _rejected(action: Callable[[], Any], *fragments: str, error: type[Exception] = CinetuneError) -> str:
    """The message of the error `action` raises; it names every fragment."""
    with pytest.raises(error) as info:
        action()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def _lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    model = getattr(model, "module", model)
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def _lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


class World:
    """Clips, tiny models and config files shared by the probes; results worth reusing are memoized."""

    def __init__(self, root: Path, clips: Path) -> None:
        self.root = root
        self.clips = clips  # 4 silent demo clips, 30 frames, 96x64, 24 fps, two captions each
        self.cache = root / "cache"
        self._count = 0
        self._memo: dict[Any, Any] = {}
        self.av_clips = self._av_clips(root / "av-clips")
        self.sounds = self._sounds(root / "sounds")
        self.images = self._images(root / "images")

    # ---- media ---------------------------------------------------------------------------------------------
    @staticmethod
    def _av_clips(folder: Path) -> Path:
        """Two clips with a stereo tone (right channel an octave up) and one without an audio track."""
        for i in range(2):
            audio = tone(int(1.25 * 16000) + 1600, 16000, 330.0 * (i + 1))
            frames = synthetic_clip((220, 40, 40), 30, 96, 64, speed=1 + i)
            write_video(folder / f"tone_{i}.mp4", frames, 24, audio=audio, sample_rate=16000)
            (folder / f"tone_{i}.txt").write_text(f"a red square with a tone {i}")
        write_video(folder / "silent.mp4", synthetic_clip((40, 80, 220), 30, 96, 64, speed=2), 24)
        (folder / "silent.txt").write_text("a blue square in silence")
        return folder

    @staticmethod
    def _sounds(folder: Path) -> Path:
        """Audio files named as two of the demo clips (an s2v dataset)."""
        for i in range(2):
            _wav(folder / f"clip_{i:02d}.wav", tone(24000, 16000, 440.0), 16000)
        return folder

    @staticmethod
    def _images(folder: Path) -> Path:
        folder.mkdir(parents=True)
        for i, color in enumerate(((200, 30, 30), (30, 30, 200))):
            Image.fromarray(synthetic_clip(color, 1, 96, 64, speed=1)[0]).save(folder / f"still_{i}.png")
            (folder / f"still_{i}.txt").write_text(f"a still square {i}")
        return folder

    # ---- configs -------------------------------------------------------------------------------------------
    def fresh(self, name: str = "run") -> Path:
        self._count += 1
        path = self.root / f"{name}-{self._count}"
        path.mkdir(parents=True)
        return path

    def video_entry(self, **changes: Any) -> dict[str, Any]:
        entry = {
            "id": "clips",
            "type": "local",
            "dataset_type": "video",
            "instance_data_dir": str(self.clips),
            "caption_strategy": "textfile",
            "resolution": 64,
            "resolution_type": "pixel",
            "cache_dir_vae": str(self.cache / "vae"),
            "video": {"num_frames": 9, "windows_per_clip": 1},
        }
        return _merge(entry, changes)

    def text_entry(self, **changes: Any) -> dict[str, Any]:
        entry = {
            "id": "text-embeds",
            "type": "local",
            "dataset_type": "text_embeds",
            "default": True,
            "cache_dir": str(self.cache / "text"),
        }
        return _merge(entry, changes)

    def write(
        self,
        dataset: dict[str, Any] | None = None,
        datasets: list[dict[str, Any]] | None = None,
        extra: list[dict[str, Any]] | None = None,
        **overrides: Any,
    ) -> Path:
        """config.json + multidatabackend.json in the quickstart's shape (the tests' make_config base):
        the tiny LTX-Video, the demo clips at 64 px / 9 frames, shared caches. `dataset` changes the video
        entry, `extra` adds entries, `datasets` replaces the list."""
        root = self.fresh("config")
        config = {
            "model_family": "ltxvideo",
            "model_flavour": "tiny",
            "output_dir": str(root / "output"),
            "data_backend_config": str(root / "multidatabackend.json"),
            "train_batch_size": 2,
            "learning_rate": 1e-3,
            "max_train_steps": 4,
            "mixed_precision": "no",
            "lora_rank": 4,
            "seed": 3,
            "frame_rate": 24,
            "report_to": "none",
            "vae_latent_sampling": "mean",
        }
        config = _merge(config, overrides)
        if datasets is None:
            datasets = [self.video_entry(**(dataset or {})), *(extra or []), self.text_entry()]
        (root / "multidatabackend.json").write_text(json.dumps(datasets, indent=2))
        (root / "config.json").write_text(json.dumps(config, indent=2))
        return root / "config.json"

    def plan(self, **kw: Any) -> RunPlan:
        return resolve(load_config(self.write(**kw)))

    def check(self, **kw: Any) -> str:
        """What `cinetune check` prints."""
        lines: list[str] = []
        check_report(self.plan(**kw), lines.append)
        return "\n".join(lines)

    def scan(self, **kw: Any) -> tuple[RunPlan, list, SkipReport]:
        """The samples `cinetune train` would train on, and the skip report."""
        plan = self.plan(**kw)
        report = SkipReport()
        samples = scan_datasets(
            plan.training_media,
            plan.family.frame_rule,
            plan.train.frame_rate,
            plan.train.seed,
            report,
            audio_datasets=plan.data.datasets,
        )
        return plan, samples, report

    def trainer(self, total_steps: int = 10, **kw: Any) -> Trainer:
        """A Trainer whose tiny transformer carries the LoRA, optimizer and schedule (`setup_model`)."""
        trainer = Trainer(self.plan(**kw))
        torch.manual_seed(0)  # the same LoRA init in every probe
        trainer.setup_model(trainer.family.load_transformer(trainer.weight_dtype), total_steps)
        return trainer

    def batch(self, trainer: Trainer, size: int = 2) -> Any:
        """A batch of the exact cached shapes (64x64, 9 frames), made as `cinetune bench` makes it."""
        torch.manual_seed(1)
        return synthetic_batch(trainer, trainer.family.architecture_config(), (64, 64), 9, size)

    def forward_inputs(self, trainer: Trainer, generator: torch.Generator, size: int = 2) -> Any:
        """The forward pass `training_inputs` makes of a synthetic batch, with the run's sigma sampler."""
        config = trainer.family.load_transformer(torch.float32).config
        sampler = trainer.cfg.flow_sigma_sampler
        (inputs,) = trainer.family.training_inputs(
            self.batch(trainer, size), generator, sampler, CPU, torch.float32, config
        )
        return inputs

    def cached(self, **kw: Any) -> Trainer:
        """A Trainer that has scanned the datasets and built (or found) the caches."""
        trainer = Trainer(self.plan(**kw))
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        trainer.scan()
        trainer.cache()
        return trainer

    def generate_calls(self, name: str) -> list[dict[str, Any]]:
        """The arguments of every `family.generate` call of one validation (the real call runs): "base"
        (VALIDATION) or "changed" (VALIDATION with CHANGED)."""
        key = ("validation", name)
        if key not in self._memo:
            trainer = self.cached(**{**VALIDATION, **(CHANGED if name == "changed" else {})})
            trainer.prepare()
            calls: list[dict[str, Any]] = []
            real = trainer.family.generate

            def record(pipe: Any, positive: dict, negative: dict, **kwargs: Any) -> Any:
                calls.append(
                    {
                        **kwargs,
                        "positive": positive,
                        "negative": negative,
                        "seed": kwargs["generator"].initial_seed(),
                    }
                )
                return real(pipe, positive, negative, **kwargs)

            trainer.family.generate = record  # type: ignore[method-assign]
            videos = trainer.validate(1)
            assert len(videos) == len(calls) > 0
            self._memo[key] = calls
        return self._memo[key]

    def run(self, name: str) -> Path:
        """The output folder of a real `cinetune train` run (4 steps), one per group of keys."""
        key = ("run", name)
        if key not in self._memo:
            config = self.write(**RUNS[name])
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(config.parent)  # the default output_dir is relative to the working directory
                assert cli.main(["train", "--config", str(config)]) == 0
            output = json.loads(config.read_text()).get("output_dir", "output")
            self._memo[key] = config.parent / output
        return self._memo[key]

    def dinov2(self) -> Path:
        """A tiny random transformers Dinov2Model folder (CREPA's crepa_model): width 24, 14 px patches."""
        if "dinov2" not in self._memo:
            from transformers import Dinov2Config, Dinov2Model

            config = Dinov2Config(
                hidden_size=24, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=28
            )
            with torch.random.fork_rng():
                torch.manual_seed(0)
                folder = self.fresh("dinov2") / "dinov2-tiny"
                Dinov2Model(config).save_pretrained(folder)
            self._memo["dinov2"] = folder
        return self._memo["dinov2"]

    def ltx2_plan(self, **kw: Any) -> RunPlan:
        return self.plan(**{**LTX2, **kw})


# Real `cinetune train` runs. Each shows several keys whose effects are told apart by the files.
RUNS: dict[str, dict[str, Any]] = {
    # output_dir and report_to left to their defaults: output/ in the working directory, tensorboard
    "defaults": {"output_dir": UNSET, "report_to": UNSET, **VALIDATION},
    "checkpoints": {
        "checkpointing_steps": 2,
        "checkpoints_total_limit": 1,
        "logging_steps": 2,
        "validation_steps": 2,
        "report_to": "tensorboard",
        "tracker_project_name": "proj",
        "tracker_run_name": "run1",
        **VALIDATION,
    },
    "quiet": {"checkpointing_steps": 2, "disable_validation": True, **VALIDATION},
    "ema": {"checkpointing_steps": 2, "disable_validation": True, "use_ema": True},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clips_dir: Path) -> World:
    return World(tmp_path_factory.mktemp("keys"), clips_dir)


def _metrics_steps(output: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def _events(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def _schedule(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("schedule:"))


# ---- TrainConfig: model ----------------------------------------------------------------------------------
def probe_model_family(w: World) -> None:
    assert w.plan().family.name == "ltxvideo"
    assert type(w.ltx2_plan().family).__name__ == "LTX2Family"
    _rejected(lambda: w.plan(model_family="wan"), "model_family 'wan'", "not supported yet")


def probe_model_flavour(w: World) -> None:
    assert w.plan().flavour.name == "tiny"
    default = w.plan(model_flavour=UNSET)
    assert default.flavour.name == "0.9.5" and default.family.loader.source == "Lightricks/LTX-Video-0.9.5"
    _rejected(lambda: w.plan(model_flavour="0.9.9"), "model_flavour", "not a ltxvideo flavour")


def probe_pretrained_model_name_or_path(w: World) -> None:
    from cinetune.models.ltxvideo.tiny import save_tiny_checkpoint

    folder = save_tiny_checkpoint(w.fresh("model") / "LTX-Video-tiny", seed=1)
    builtin, local = w.plan(), w.plan(pretrained_model_name_or_path=str(folder))
    assert f"from {folder}" in w.check(pretrained_model_name_or_path=str(folder))
    assert "built-in tiny weights" in w.check()
    a = builtin.family.load_transformer(torch.float32).state_dict()
    b = local.family.load_transformer(torch.float32).state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the folder's (seed 1) weights, not the built-in ones


def probe_ltx2_checkpoint_filename(w: World) -> None:
    from cinetune.models.ltxvideo2 import tiny

    folder = w.fresh("ltx2-model")
    tiny.save_tiny_combined_file(folder / "my-ltx2.safetensors")
    source = {"model_flavour": "2.0", "pretrained_model_name_or_path": str(folder)}
    _rejected(
        lambda: w.ltx2_plan(**source), "holds neither ltx-2-19b-dev.safetensors", "ltx2_checkpoint_filename"
    )
    plan = w.ltx2_plan(**source, ltx2_checkpoint_filename="my-ltx2.safetensors")
    assert plan.family.loader.checkpoint_path() == folder / "my-ltx2.safetensors"
    assert plan.family.load_transformer(torch.float32).config.num_layers >= 1  # read from that file
    with _logged() as messages:  # the built-in tiny model has no file: said, not silent
        w.ltx2_plan(ltx2_checkpoint_filename="my-ltx2.safetensors")
    assert any("ltx2_checkpoint_filename 'my-ltx2.safetensors' is ignored" in m for m in messages)
    for family in ({}, K5):
        _rejected(
            lambda f=family: w.plan(**f, ltx2_checkpoint_filename="x.safetensors"),
            "ltx2_checkpoint_filename is not supported yet",
            error=NotSupportedYet,
        )


def probe_model_type(w: World) -> None:
    assert w.plan(model_type="lora").train.model_type == "lora"
    _rejected(lambda: w.plan(model_type="full"), "model_type", "'lora'", "(got 'full')")


def _lycoris_config(w: World, algo: str = "lokr") -> str:
    path = w.fresh("lycoris") / "lycoris.json"
    path.write_text(json.dumps({"algo": algo, "linear_dim": 4, "linear_alpha": 2, "factor": 4}))
    return str(path)


def probe_lora_type(w: World) -> None:
    standard = w.trainer(lora_type="standard")
    assert type(standard.adapter).__name__ == "PeftAdapter" and _lora_modules(standard.model)
    lycoris = w.trainer(lora_type="lycoris", lycoris_config=_lycoris_config(w))
    assert type(lycoris.adapter).__name__ == "LycorisAdapter" and not _lora_modules(lycoris.model)
    assert len(lycoris.adapter.network.loras) == len(_lora_modules(standard.model))  # the same targets
    _rejected(lambda: w.plan(lora_type="dora"), "lora_type", "'standard'")
    _rejected(lambda: w.plan(lora_type="lycoris"), "needs lycoris_config")


def probe_lycoris_config(w: World) -> None:
    lokr = w.trainer(lora_type="lycoris", lycoris_config=_lycoris_config(w, "lokr"))
    loha = w.trainer(lora_type="lycoris", lycoris_config=_lycoris_config(w, "loha"))
    assert {type(m).__name__ for m in lokr.adapter.network.loras} == {"LokrModule"}
    assert {type(m).__name__ for m in loha.adapter.network.loras} == {"LohaModule"}
    assert any(
        "lycoris_config changes nothing" in m for m in w.plan(lycoris_config=_lycoris_config(w)).warnings
    )
    _rejected(
        lambda: w.plan(lora_type="lycoris", lycoris_config=_lycoris_config(w, "dylora")),
        "algo 'dylora' is not supported yet",
        error=NotSupportedYet,
    )


def probe_use_dora(w: World) -> None:
    plain, dora = w.trainer(), w.trainer(use_dora=True)
    assert not any("magnitude" in n for n in _lora_state(plain.model))
    magnitudes = [n for n in _lora_state(dora.model) if "lora_magnitude_vector" in n]
    assert len(magnitudes) == len(_lora_modules(dora.model))
    _rejected(
        lambda: w.plan(use_dora=True, lora_type="lycoris", lycoris_config=_lycoris_config(w)), "dora_wd"
    )


def probe_vae_dtype(w: World) -> None:
    default, bf16 = w.cached(), w.cached(vae_dtype="bf16")
    assert default.vae_dtype == torch.float32 and bf16.vae_dtype == torch.bfloat16  # CPU default: fp32
    key = next(iter(bf16.index.latent_keys.values()))
    assert bf16.index.latents["clips"].load(key)["latents"].dtype == torch.bfloat16
    assert set(bf16.index.latent_keys.values()).isdisjoint(default.index.latent_keys.values())
    assert bf16.index.caption_keys == default.index.caption_keys  # the text encoder is not the VAE
    _rejected(lambda: w.plan(vae_dtype="fp8"), "vae_dtype")


# ---- TrainConfig: files ----------------------------------------------------------------------------------
def probe_output_dir(w: World) -> None:
    default = w.run("defaults")
    assert default.name == "output" and (default / "pytorch_lora_weights.safetensors").is_file()
    chosen = w.run("checkpoints")
    assert chosen.name == "output" and chosen.parent != default.parent
    for name in ("pytorch_lora_weights.safetensors", "metrics.jsonl", "cinetune_config.json"):
        assert (chosen / name).is_file()


def probe_data_backend_config(w: World) -> None:
    other = w.fresh("datasets") / "other.json"
    other.write_text(json.dumps([w.video_entry(id="other-clips"), w.text_entry()]))
    assert [d.id for d in w.plan().media] == ["clips"]
    assert [d.id for d in w.plan(data_backend_config=str(other)).media] == ["other-clips"]
    _rejected(
        lambda: w.plan(data_backend_config=str(other.with_name("missing.json"))), "config file not found"
    )


# ---- TrainConfig: schedule -------------------------------------------------------------------------------
def probe_train_batch_size(w: World) -> None:
    assert "2 step(s) per epoch" in _schedule(w.check())  # 4 clips, batches of 2
    assert "4 step(s) per epoch" in _schedule(w.check(train_batch_size=UNSET))
    _rejected(lambda: w.check(train_batch_size=8), "not enough samples for one batch", error=DataError)


def probe_learning_rate(w: World) -> None:
    assert w.trainer(learning_rate=UNSET).optimizer.param_groups[0]["lr"] == 1e-4
    assert w.trainer(learning_rate=3e-4).optimizer.param_groups[0]["lr"] == 3e-4


def _lrs(trainer: Trainer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        trainer.optimizer.step()  # no gradients: nothing moves, the schedule advances as in training
        trainer.scheduler.step()
        out.append(trainer.scheduler.get_last_lr()[0])
    return out


def probe_lr_scheduler(w: World) -> None:
    assert _lrs(w.trainer(), 10) == pytest.approx([1e-3] * 10)  # constant
    cosine = _lrs(w.trainer(lr_scheduler="cosine"), 10)
    assert cosine[4] == pytest.approx(0.5e-3) and cosine[-1] == pytest.approx(0.0, abs=1e-12)
    linear = _lrs(w.trainer(lr_scheduler="linear"), 10)
    assert linear[4] == pytest.approx(0.5e-3) and linear != cosine


def probe_lr_warmup_steps(w: World) -> None:
    warm = _lrs(w.trainer(lr_warmup_steps=4), 6)
    assert warm[:4] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3]) and warm[5] == pytest.approx(1e-3)
    assert w.trainer(lr_warmup_steps=4).optimizer.param_groups[0]["lr"] == 0.0  # step 0 of the warmup
    assert w.trainer().optimizer.param_groups[0]["lr"] == 1e-3


def probe_max_train_steps(w: World) -> None:
    assert "4 step(s) in all" in _schedule(w.check())
    assert "2 step(s) in all" in _schedule(w.check(max_train_steps=UNSET))  # one epoch of 2 steps
    assert _metrics_steps(w.run("defaults")) == [1, 2, 3, 4]


def probe_num_train_epochs(w: World) -> None:
    assert "2 step(s) in all" in _schedule(w.check(max_train_steps=UNSET))
    assert "6 step(s) in all" in _schedule(w.check(max_train_steps=UNSET, num_train_epochs=3))


def probe_gradient_accumulation_steps(w: World) -> None:
    assert "2 step(s) per epoch" in _schedule(w.check())
    assert "1 step(s) per epoch" in _schedule(w.check(gradient_accumulation_steps=2))
    _rejected(
        lambda: w.check(gradient_accumulation_steps=3), "gradient_accumulation_steps is 3", error=DataError
    )


def probe_max_grad_norm(w: World) -> None:
    def one_step(**kw: Any) -> tuple[float, float]:
        trainer = w.trainer(**kw)
        before = _lora_state(trainer.model)
        _, grad_norm = trainer.optimizer_step([w.batch(trainer)])
        after = _lora_state(trainer.model)
        return grad_norm, max(float((after[k] - before[k]).abs().max()) for k in before)

    norm, moved = one_step(adam_weight_decay=0)
    off_norm, off_moved = one_step(adam_weight_decay=0, max_grad_norm=0)
    _, clipped_moved = one_step(adam_weight_decay=0, max_grad_norm=1e-12)
    assert norm > 0 and off_norm == 0.0  # 0 disables clipping: no norm is computed or logged
    assert off_moved == pytest.approx(moved, rel=1e-3)
    assert clipped_moved < 0.01 * moved  # gradients clipped to 1e-12 hardly move AdamW (eps 1e-8)


def probe_max_nonfinite_steps(w: World) -> None:
    def stops_after(**kw: Any) -> int:
        """Steps fed a NaN batch until the run would stop (TrainingDiverged, exit code 3)."""
        trainer = w.trainer(**kw)
        batch = w.batch(trainer)
        batch.tensors["latents"][0, 0, 0, 0, 0] = float("nan")
        for step in range(1, 10):
            trainer.optimizer_step([batch])
            try:
                trainer.guard.raise_if_diverged(step)
            except TrainingDiverged as exc:
                assert (
                    exc.exit_code == 3
                    and f"max_nonfinite_steps: {trainer.cfg.max_nonfinite_steps}" in str(exc)
                )
                return step
        return 0

    assert stops_after() == 5
    assert stops_after(max_nonfinite_steps=2) == 2
    _rejected(lambda: w.plan(max_nonfinite_steps=0), "max_nonfinite_steps")


def probe_mixed_precision(w: World) -> None:
    bf16 = Trainer(w.plan(mixed_precision=UNSET))
    assert (bf16.dtype, bf16.acc.mixed_precision) == (torch.bfloat16, "bf16")
    fp32 = Trainer(w.plan())  # (after reading bf16's: accelerate keeps one state per process)
    assert (fp32.dtype, fp32.acc.mixed_precision) == (torch.float32, "no")
    assert {p.dtype for p in w.trainer(mixed_precision=UNSET).model.parameters() if not p.requires_grad} == {
        torch.bfloat16
    }
    if NO_GPU:
        with _logged() as messages:
            fp16 = Trainer(w.plan(mixed_precision="fp16"))
        assert fp16.dtype == torch.float32 and any("fp16 mixed precision needs a GPU" in m for m in messages)


def _checkpoint_calls(w: World, **kw: Any) -> int:
    """torch.utils.checkpoint calls in one training step of the tiny transformer (2 blocks)."""
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.utils.checkpoint, "checkpoint", counting)
        trainer = w.trainer(**kw)
        trainer.optimizer_step([w.batch(trainer)])
    return len(calls)


def probe_gradient_checkpointing(w: World) -> None:
    assert not w.trainer().model.is_gradient_checkpointing
    assert w.trainer(gradient_checkpointing=True).model.is_gradient_checkpointing
    assert _checkpoint_calls(w) == 0
    assert _checkpoint_calls(w, gradient_checkpointing=True) == 2  # every block


def probe_gradient_checkpointing_interval(w: World) -> None:
    assert _checkpoint_calls(w, gradient_checkpointing=True, gradient_checkpointing_interval=2) == 1
    _rejected(
        lambda: w.plan(gradient_checkpointing_interval=2), "has no effect without gradient_checkpointing"
    )


def probe_seed(w: World) -> None:
    def starts(seed: int) -> list[tuple[int, ...]]:
        _, samples, _ = w.scan(seed=seed, dataset={"video": {"windows_per_clip": 4}})
        return [s.window_starts for s in samples]

    assert starts(3) != starts(4)  # the cached frame windows

    def timesteps(seed: int) -> torch.Tensor:
        trainer = Trainer(w.plan(seed=seed))
        return w.forward_inputs(trainer, trainer.state.generator).kwargs["timestep"]

    assert not torch.equal(timesteps(3), timesteps(4))  # noise and sigmas come from the run's seed
    assert torch.equal(timesteps(3), timesteps(3))


def _optimizer_defaults(w: World, **kw: Any) -> dict[str, Any]:
    return w.trainer(**kw).optimizer.param_groups[0]


def probe_optimizer(w: World) -> None:
    assert not _optimizer_defaults(w).get("fused")
    assert _optimizer_defaults(w, optimizer="adamw_fused")["fused"] is True  # torch fuses AdamW on CPU too


def probe_adam_beta1(w: World) -> None:
    assert _optimizer_defaults(w)["betas"] == (0.9, 0.999)
    assert _optimizer_defaults(w, adam_beta1=0.8)["betas"] == (0.8, 0.999)


def probe_adam_beta2(w: World) -> None:
    assert _optimizer_defaults(w, adam_beta2=0.99)["betas"] == (0.9, 0.99)


def probe_adam_weight_decay(w: World) -> None:
    assert _optimizer_defaults(w)["weight_decay"] == 1e-2
    assert _optimizer_defaults(w, adam_weight_decay=0.0)["weight_decay"] == 0.0


def probe_adam_epsilon(w: World) -> None:
    assert _optimizer_defaults(w)["eps"] == 1e-8
    assert _optimizer_defaults(w, adam_epsilon=1e-6)["eps"] == 1e-6


def probe_caption_dropout_probability(w: World) -> None:
    def token_counts(p: float) -> list[int]:
        trainer = w.cached(caption_dropout_probability=p)
        empty = trainer.index.text_embeds("")["prompt_embeds"].shape[0]
        counts = [
            int(n)
            for batch in trainer.load_group([[0, 1], [2, 3]])
            for n in batch.text["prompt_attention_mask"].sum(1)
        ]
        return [n - empty for n in counts]  # 0: the empty caption

    assert all(n > 0 for n in token_counts(0.0))
    assert token_counts(1.0) == [0, 0, 0, 0]


def probe_flow_sigma_sampler(w: World) -> None:
    def sigmas(**kw: Any) -> torch.Tensor:
        inputs = w.forward_inputs(Trainer(w.plan(**kw)), torch.Generator().manual_seed(0), size=256)
        return inputs.kwargs["timestep"] / 1000

    logit_normal, uniform = sigmas(), sigmas(flow_sigma_sampler="uniform")
    assert not torch.equal(logit_normal, uniform)
    # uniform spreads over (0, 1); the logit-normal gathers around sigmoid(mu)
    assert float(uniform.std()) > 1.2 * float(logit_normal.std())
    assert float((uniform < 0.1).float().mean()) > 2 * float((logit_normal < 0.1).float().mean())


def probe_vae_latent_sampling(w: World) -> None:
    assert w.plan(vae_latent_sampling=UNSET).train.vae_latent_sampling == "sample"  # the family's default
    assert w.ltx2_plan(vae_latent_sampling=UNSET).train.vae_latent_sampling == "mean"
    mean = w.cached().load_group([[0, 1]])[0]
    sample = w.cached(vae_latent_sampling="sample").load_group([[0, 1]])[0]
    assert mean.latents_std is None and sample.latents_std is not None
    assert torch.equal(mean.latents, sample.latents)  # same cache entries; only the draw differs


def probe_first_frame_conditioning_p(w: World) -> None:
    for family in (LTX2, {**LTX2, "model_flavour": "tiny-2.3"}, {}):  # LTX-2, LTX-2.3, LTX-Video

        def first_inputs(p: float, family: dict = family) -> Any:
            trainer = Trainer(w.plan(**family, first_frame_conditioning_p=p))
            return w.forward_inputs(trainer, torch.Generator().manual_seed(0))

        t2v, i2v = first_inputs(0.0), first_inputs(1.0)
        assert t2v.kwargs["timestep"].ndim == 1 and t2v.streams[0].mask is None
        timestep, mask = i2v.kwargs["timestep"], i2v.streams[0].mask
        first = ~mask  # the clean first-frame tokens: timestep 0, no loss
        assert timestep.ndim == 2 and bool(first.any()) and bool((timestep[first] == 0).all())
        assert bool((timestep[mask] > 0).all())
    _rejected(
        lambda: w.plan(**K5, first_frame_conditioning_p=0.5),
        "first_frame_conditioning_p is not supported yet",
        error=NotSupportedYet,
    )


# ---- TrainConfig: LoRA -----------------------------------------------------------------------------------
def probe_lora_rank(w: World) -> None:
    small, default = w.trainer(), w.trainer(lora_rank=UNSET)
    assert {m.lora_A["default"].weight.shape[0] for m in _lora_modules(small.model).values()} == {4}
    assert {m.lora_A["default"].weight.shape[0] for m in _lora_modules(default.model).values()} == {64}
    assert "LoRA: rank 4, alpha 4" in w.check()


def probe_lora_alpha(w: World) -> None:
    assert {m.scaling["default"] for m in _lora_modules(w.trainer().model).values()} == {1.0}  # alpha = rank
    assert {m.scaling["default"] for m in _lora_modules(w.trainer(lora_alpha=8).model).values()} == {2.0}


def probe_lora_dropout(w: World) -> None:
    plain = {type(m.lora_dropout["default"]) for m in _lora_modules(w.trainer().model).values()}
    dropped = [m.lora_dropout["default"] for m in _lora_modules(w.trainer(lora_dropout=0.25).model).values()]
    assert plain == {torch.nn.Identity}
    assert {type(d) for d in dropped} == {torch.nn.Dropout} and {d.p for d in dropped} == {0.25}


def probe_lora_target_modules(w: World) -> None:
    def suffixes(trainer: Trainer) -> set[str]:
        names = [name.split(".") for name in _lora_modules(trainer.model)]
        return {".".join(parts[-2:]) if parts[-1] == "0" else parts[-1] for parts in names}

    assert suffixes(w.trainer()) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert suffixes(w.trainer(lora_target_modules=["to_q"])) == {"to_q"}
    _rejected(
        lambda: w.trainer(lora_target_modules=["no_such_layer"]), "lora_target_modules ['no_such_layer']"
    )


def probe_init_lora(w: World) -> None:
    trained = w.run("defaults") / "pytorch_lora_weights.safetensors"
    weights = {k.removeprefix("transformer."): v for k, v in load_file(str(trained)).items()}
    fresh, started = _lora_state(w.trainer().model), _lora_state(w.trainer(init_lora=str(trained)).model)
    b_keys = [k for k in started if "lora_B" in k]
    assert all(not fresh[k].any() for k in b_keys)  # a fresh LoRA starts with B = 0
    for key, value in started.items():
        stored = key.replace(".default.weight", ".weight")
        assert torch.equal(value, weights[stored].float()), key
    _rejected(
        lambda: w.plan(init_lora=str(trained.with_name("nope.safetensors"))), "init_lora: file not found"
    )


def probe_lora_init_type(w: World) -> None:
    default, gaussian = w.trainer(), w.trainer(lora_init_type="gaussian")
    assert (
        default.lora_config.init_lora_weights is True and gaussian.lora_config.init_lora_weights == "gaussian"
    )
    a = [m.lora_A["default"].weight for m in _lora_modules(default.model).values()]
    g = [m.lora_A["default"].weight for m in _lora_modules(gaussian.model).values()]
    assert not any(torch.equal(x, y) for x, y in zip(a, g, strict=True))
    bound = max(float(x.detach().abs().max()) for x in a)  # kaiming-uniform is bounded; a gaussian is not
    assert max(float(y.detach().abs().max()) for y in g) > bound
    _rejected(lambda: w.plan(lora_init_type="pissa"), "lora_init_type")


# ---- TrainConfig: EMA -----------------------------------------------------------------------------------
def _ema_after(w: World, steps: int, **kw: Any) -> tuple[Trainer, list[dict[str, torch.Tensor]]]:
    """A trainer with use_ema after `steps` optimizer steps, and the trainable weights after each."""
    trainer = w.trainer(use_ema=True, **kw)
    weights = []
    for step in range(steps):
        trainer.state.step = step  # the loop's count: optimizer_step takes step + 1
        trainer.optimizer_step([w.batch(trainer)])
        weights.append(_lora_state(trainer.model))
    return trainer, weights


def _shadow(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n.replace(".default.weight", ""): t for n, t in trainer.extras.ema.shadow().items()}


def _same(shadow: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(shadow[n.replace(".default.weight", "")], v) for n, v in weights.items())


def probe_use_ema(w: World) -> None:
    assert w.trainer().extras.ema is None
    trainer, weights = _ema_after(w, 1)
    assert _same(_shadow(trainer), weights[0])  # the first update copies the weights
    assert _checkpoints(w.run("ema")) == ["checkpoint-2", "checkpoint-4"]
    assert (w.run("ema") / "checkpoint-2" / "ema.safetensors").is_file()
    assert (w.run("ema") / "ema" / "pytorch_lora_weights.safetensors").is_file()
    assert not (w.run("quiet") / "ema").exists()


def probe_ema_decay(w: World) -> None:
    half, weights = _ema_after(w, 2, ema_decay=0.5, ema_warmup_steps=1)
    slow, _ = _ema_after(w, 2, ema_decay=0.9, ema_warmup_steps=1)
    for name, value in weights[1].items():
        key = name.replace(".default.weight", "")
        torch.testing.assert_close(_shadow(half)[key], 0.5 * weights[0][name] + 0.5 * value)
    assert not _same(_shadow(slow), {k: _shadow(half)[k.replace(".default.weight", "")] for k in weights[1]})
    assert any("ema_decay changes nothing" in m for m in w.plan(ema_decay=0.9).warnings)


def probe_ema_update_interval(w: World) -> None:
    every, _ = _ema_after(w, 2)
    second, weights = _ema_after(w, 2, ema_update_interval=2)
    assert every.extras.ema.updates == 2 and second.extras.ema.updates == 1
    assert _same(_shadow(second), weights[1])  # its first update (step 2) copied step 2's weights


def probe_ema_device(w: World) -> None:
    assert w.trainer(use_ema=True).extras.ema.device == CPU
    with _logged() as messages:
        trainer = w.trainer(use_ema=True, ema_device="accelerator")
    assert trainer.extras.ema.device == trainer.device
    if NO_GPU:
        assert any("ema_device: accelerator changes nothing here" in m for m in messages)
    _rejected(lambda: w.plan(use_ema=True, ema_device="gpu"), "ema_device")


def probe_ema_warmup_steps(w: World) -> None:
    ramp, weights = _ema_after(w, 2, ema_decay=0.9)
    warm, _ = _ema_after(w, 2, ema_decay=0.9, ema_warmup_steps=2)
    assert _same(_shadow(warm), weights[1])  # up to step 2 the EMA copies the weights
    assert not _same(_shadow(ramp), weights[1])  # the ramp's second update averages (d = 2 / 11)


def _validation_files(w: World, **kw: Any) -> list[str]:
    trainer = w.cached(**VALIDATION, use_ema=True, **kw)
    trainer.prepare()
    return sorted(p.name for p in trainer.validate(1))


def probe_ema_validation(w: World) -> None:
    assert _validation_files(w) == ["validation_64x64.mp4", "validation_ema_64x64.mp4"]  # comparison
    assert _validation_files(w, ema_validation="ema_only") == ["validation_ema_64x64.mp4"]
    assert _validation_files(w, ema_validation="none") == ["validation_64x64.mp4"]
    assert any("ema_validation" in m for m in w.plan(ema_validation="none").warnings)


# ---- TrainConfig: TREAD ---------------------------------------------------------------------------------
def _tread(ratio: float = 0.5, start: int = 1, end: int = -1) -> dict[str, Any]:
    return {"routes": [{"selection_ratio": ratio, "start_layer_idx": start, "end_layer_idx": end}]}


def _block_tokens(w: World, **kw: Any) -> list[int]:
    """Video tokens each video block of the tiny LTX-Video sees in one training step."""
    trainer = w.trainer(**kw)
    seen: list[int] = []
    for block in trainer.family.blocks(trainer.model, "transformer_blocks"):
        block.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append((args or [kwargs["hidden_states"]])[0].shape[1]),
            with_kwargs=True,
        )
    trainer.optimizer_step([w.batch(trainer)])
    return seen


def probe_tread_config(w: World) -> None:
    assert _block_tokens(w) == [8, 8]  # 64x64, 9 frames: 2 x 2 x 2 tokens
    assert _block_tokens(w, tread_config=_tread()) == [8, 4]  # block 1 is routed: half the tokens skip it
    assert w.trainer().extras.router is None
    _rejected(lambda: w.check(tread_config=_tread(0.5, 0, 2)), "outside the model's 2 video blocks")


def probe_routes(w: World) -> None:
    two = {"routes": [_tread(0.5, 0, 0)["routes"][0], _tread(0.25, 1, 1)["routes"][0]]}
    assert _block_tokens(w, tread_config=two) == [4, 6]
    _rejected(lambda: w.check(tread_config={"routes": []}), "routes")


def probe_selection_ratio(w: World) -> None:
    assert _block_tokens(w, tread_config=_tread(0.25)) == [8, 6]
    assert _block_tokens(w, tread_config=_tread(0.0)) == [8, 8]
    _rejected(lambda: w.check(tread_config=_tread(1.0)), "selection_ratio")


def probe_start_layer_idx(w: World) -> None:
    assert _block_tokens(w, tread_config=_tread(0.5, 0, 1)) == [4, 4]
    assert _block_tokens(w, tread_config=_tread(0.5, -2, 1)) == [4, 4]  # negative: from the end


def probe_end_layer_idx(w: World) -> None:
    assert _block_tokens(w, tread_config=_tread(0.5, 0, 0)) == [4, 8]
    assert _block_tokens(w, tread_config=_tread(0.5, 0, -2)) == [4, 8]
    _rejected(lambda: w.check(tread_config=_tread(0.5, 1, 0)), "start after end")


# ---- TrainConfig: scheduled sampling ----------------------------------------------------------------------
SS = "scheduled_sampling_"


def _rollout(w: World, **kw: Any) -> Any:
    """The Rollout of a trainer with scheduled sampling on (max offset 8 unless given)."""
    settings = {f"{SS}max_step_offset": 8, **{f"{SS}{k}": v for k, v in kw.items()}}
    return w.trainer(**settings).extras.rollout


def _no_grad_forwards(w: World, **kw: Any) -> int:
    """Forward passes without gradient (rollout steps) in one training step of the tiny LTX-Video."""
    trainer = w.trainer(**{f"{SS}{k}": v for k, v in kw.items()})
    calls: list[bool] = []
    block = trainer.family.blocks(trainer.model, "transformer_blocks")[0]
    block.register_forward_pre_hook(lambda m, a, k: calls.append(torch.is_grad_enabled()), with_kwargs=True)
    trainer.optimizer_step([w.batch(trainer)])
    return calls.count(False)


def probe_scheduled_sampling_max_step_offset(w: World) -> None:
    assert w.trainer().extras.rollout is None and _no_grad_forwards(w) == 0
    assert _no_grad_forwards(w, max_step_offset=6, probability=1.0) > 0
    warned = w.plan(**{f"{SS}max_step_offset": 4}).warnings
    assert any("scheduled_sampling_max_step_offset changes nothing" in m for m in warned)  # probability 0


def probe_scheduled_sampling_probability(w: World) -> None:
    generator = torch.Generator().manual_seed(0)
    assert int(_rollout(w).offsets(200, 0, generator).max()) == 0  # default 0
    share = float((_rollout(w, probability=0.5).offsets(2000, 0, generator) > 0).float().mean())
    assert 0.4 < share < 0.5  # (a drawn length of 0 is no rollout either: 1/9 of draws)
    warned = w.plan(**{f"{SS}max_step_offset": 4, f"{SS}probability": 0.5, f"{SS}ramp_steps": 10}).warnings
    assert any("scheduled_sampling_probability changes nothing" in m for m in warned)


def probe_scheduled_sampling_prob_start(w: World) -> None:
    assert _rollout(w, ramp_steps=10, prob_start=0.2).probability(0) == pytest.approx(0.2)
    assert _rollout(w, ramp_steps=10).probability(0) == 0.0
    warned = w.plan(**{f"{SS}max_step_offset": 4, f"{SS}prob_start": 0.2}).warnings
    assert any("scheduled_sampling_prob_start changes nothing" in m for m in warned)  # no ramp


def probe_scheduled_sampling_prob_end(w: World) -> None:
    assert _rollout(w, ramp_steps=10).probability(10) == pytest.approx(0.5)  # default end
    assert _rollout(w, ramp_steps=10, prob_end=0.9).probability(10) == pytest.approx(0.9)


def probe_scheduled_sampling_ramp_steps(w: World) -> None:
    assert _rollout(w, probability=0.3).probability(5) == pytest.approx(0.3)
    assert _rollout(w, ramp_steps=10).probability(5) == pytest.approx(0.25)  # halfway from 0 to 0.5


def probe_scheduled_sampling_start_step(w: World) -> None:
    late = _rollout(w, ramp_steps=10, start_step=100)
    assert late.probability(50) == 0.0 and late.probability(105) == pytest.approx(0.25)


def probe_scheduled_sampling_ramp_shape(w: World) -> None:
    assert _rollout(w, ramp_steps=10).probability(2) == pytest.approx(0.1)
    cosine = _rollout(w, ramp_steps=10, ramp_shape="cosine").probability(2)
    assert cosine == pytest.approx(0.5 * (0.5 - 0.5 * math.cos(math.pi * 0.2)))
    _rejected(lambda: w.plan(**{f"{SS}ramp_shape": "step"}), "ramp_shape")


def probe_scheduled_sampling_strategy(w: World) -> None:
    def mean(strategy: str) -> float:
        rollout = _rollout(w, probability=1.0, strategy=strategy)
        return float(rollout.offsets(4000, 0, torch.Generator().manual_seed(1)).float().mean())

    assert mean("biased_early") < mean("uniform") < mean("biased_late")


def probe_scheduled_sampling_sampler(w: World) -> None:
    assert w.plan(**{f"{SS}sampler": "euler"}).train.scheduled_sampling_sampler == "euler"
    _rejected(lambda: w.plan(**{f"{SS}sampler": "unipc"}), "not supported yet", error=NotSupportedYet)


def probe_scheduled_sampling_reflexflow(w: World) -> None:
    assert not w.plan(**{f"{SS}reflexflow": False}).train.scheduled_sampling_reflexflow
    _rejected(lambda: w.plan(**{f"{SS}reflexflow": True}), "ReflexFlow", error=NotSupportedYet)


# ---- TrainConfig: CREPA ---------------------------------------------------------------------------------
def _crepa(w: World, **kw: Any) -> dict[str, Any]:
    settings = {"crepa_enabled": True, "crepa_block_index": 1, "crepa_model": str(w.dinov2())}
    return {**settings, "crepa_encoder_image_size": 28, **kw}


def _crepa_term(w: World, **kw: Any) -> float:
    """The CREPA term of one training forward of the tiny LTX-Video (synthetic features, fixed draws)."""
    from cinetune.training.step import step_loss

    trainer = w.trainer(**_crepa(w, **kw))
    out = step_loss(
        trainer.family,
        trainer.model,
        w.batch(trainer),
        torch.Generator().manual_seed(0),
        "uniform",
        CPU,
        torch.float32,
        trainer.extras,
    )
    return float(out.streams["crepa"])


def probe_crepa_enabled(w: World) -> None:
    assert w.trainer().extras.crepa is None
    trainer = w.trainer(**_crepa(w))
    assert trainer.extras.crepa is not None and any("crepa" in n for n, _ in trainer.model.named_parameters())
    entry = w.cached(**_crepa(w)).load_group([[0, 1]])[0]
    assert entry.tensors["crepa_features"].shape == (2, 2, 4, 24)  # 2 latent frames, 2 x 2 patches, width 24
    assert "crepa_features" not in w.cached().load_group([[0, 1]])[0].tensors
    assert any("crepa_lambda changes nothing" in m for m in w.plan(crepa_lambda=1.0).warnings)


def probe_crepa_block_index(w: World) -> None:
    assert _crepa_term(w, crepa_block_index=0) != _crepa_term(w, crepa_block_index=1)
    _rejected(lambda: w.check(**_crepa(w, crepa_block_index=2)), "crepa_block_index 2")


def probe_crepa_lambda(w: World) -> None:
    assert _crepa_term(w, crepa_lambda=1.0) == pytest.approx(2 * _crepa_term(w), rel=1e-5)  # default 0.5


def probe_crepa_adjacent_distance(w: World) -> None:
    assert _crepa_term(w, crepa_adjacent_distance=0) != pytest.approx(_crepa_term(w))


def probe_crepa_adjacent_tau(w: World) -> None:
    assert _crepa_term(w, crepa_adjacent_tau=0.5) != pytest.approx(_crepa_term(w))
    assert _crepa_term(w, crepa_adjacent_distance=0, crepa_adjacent_tau=0.5) == pytest.approx(
        _crepa_term(w, crepa_adjacent_distance=0)
    )


def probe_crepa_model(w: World) -> None:
    def width(**kw: Any) -> int:
        return w.trainer(**_crepa(w, **kw)).extras.crepa.projector[1].out_features

    assert width() == 24  # the tiny DINOv2 folder's hidden size
    assert width(crepa_model="dinov2_vits14") == 384  # facebook/dinov2-small's, without the hub
    assert width(crepa_model=UNSET) == 1536  # default dinov2_vitg14
    _rejected(lambda: w.trainer(**_crepa(w, crepa_model=str(w.root / "no-such-model"))), "crepa_model")


def probe_crepa_encoder_image_size(w: World) -> None:
    entry = w.cached(**_crepa(w, crepa_encoder_image_size=56)).load_group([[0, 1]])[0]
    assert entry.tensors["crepa_features"].shape[2] == 16  # 4 x 4 patches of 14 px


def probe_crepa_drop_vae_encoder(w: World) -> None:
    warned = w.plan(**_crepa(w, crepa_drop_vae_encoder=True)).warnings
    assert any("crepa_drop_vae_encoder changes nothing" in m for m in warned)


# ---- TrainConfig: checkpoints ----------------------------------------------------------------------------
def _checkpoints(output: Path) -> list[str]:
    return sorted(p.name for p in output.glob("checkpoint-*"))


def probe_checkpointing_steps(w: World) -> None:
    assert _checkpoints(w.run("defaults")) == []
    assert _checkpoints(w.run("quiet")) == ["checkpoint-2", "checkpoint-4"]


def probe_checkpoints_total_limit(w: World) -> None:
    assert _checkpoints(w.run("checkpoints")) == ["checkpoint-4"]  # checkpoint-2 was pruned


def probe_resume_from_checkpoint(w: World) -> None:
    checkpoint = w.run("quiet") / "checkpoint-2"

    def prepared(**kw: Any) -> Trainer:
        trainer = Trainer(w.plan(**kw))
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        trainer.scan()
        trainer.prepare()
        return trainer

    assert prepared().state.step == 0
    resumed = prepared(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.step == 2
    stored = load_file(str(checkpoint / "lora.safetensors"))
    model = _lora_state(resumed.model)
    assert all(torch.equal(model[k.replace(".weight", ".default.weight")], v) for k, v in stored.items())
    _rejected(lambda: w.plan(resume_from_checkpoint=str(w.root)), "is not a checkpoint folder")


# ---- TrainConfig: validation -----------------------------------------------------------------------------
def _validation_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("validation:"))


def probe_validation_steps(w: World) -> None:
    assert sorted(p.name for p in (w.run("defaults") / "validation").iterdir()) == ["step_4"]
    assert sorted(p.name for p in (w.run("checkpoints") / "validation").iterdir()) == ["step_2", "step_4"]


def probe_validation_prompt(w: World) -> None:
    assert _validation_line(w.check()) == "validation: none (no validation_prompt)"
    assert "(the first training caption)" in _validation_line(w.check(validation_steps=2))
    assert "1 prompt(s), 9 frames at 64x64, at the end" in _validation_line(w.check(**VALIDATION))
    (call,) = w.generate_calls("base")
    trainer = w.cached(**VALIDATION)
    assert torch.equal(
        call["positive"]["prompt_embeds"], trainer.index.text_embeds("a red square")["prompt_embeds"]
    )


def probe_validation_negative_prompt(w: World) -> None:
    trainer = w.cached(**{**VALIDATION, **CHANGED})
    (base,) = w.generate_calls("base")
    assert torch.equal(base["negative"]["prompt_embeds"], trainer.index.text_embeds("")["prompt_embeds"])
    blurry = trainer.index.text_embeds("blurry")["prompt_embeds"]
    assert all(torch.equal(c["negative"]["prompt_embeds"], blurry) for c in w.generate_calls("changed"))


def probe_validation_prompt_library(w: World) -> None:
    library = w.fresh("library") / "prompts.json"
    library.write_text(json.dumps({"cat": "a cat", "dog walk": "a dog walks"}))
    assert "3 prompt(s)" in _validation_line(w.check(**VALIDATION, validation_prompt_library=str(library)))
    plan = w.plan(validation_prompt_library={"cat": "a cat"})
    assert dict(plan.validation_prompts) == {"cat": "a cat"}
    _rejected(lambda: w.plan(validation_prompt_library=str(library.with_name("no.json"))), "file not found")


def probe_validation_resolution(w: World) -> None:
    assert [(c["width"], c["height"]) for c in w.generate_calls("base")] == [(64, 64)]
    assert [(c["width"], c["height"]) for c in w.generate_calls("changed")] == [(64, 64), (96, 64)]
    _rejected(lambda: w.plan(validation_resolution="64xbig"), "validation_resolution")


def probe_validation_num_video_frames(w: World) -> None:
    assert {c["num_frames"] for c in w.generate_calls("base")} == {9}
    assert {c["num_frames"] for c in w.generate_calls("changed")} == {17}


def probe_validation_guidance(w: World) -> None:
    assert {c["guidance_scale"] for c in w.generate_calls("base")} == {3.0}
    assert {c["guidance_scale"] for c in w.generate_calls("changed")} == {1.5}


def probe_validation_num_inference_steps(w: World) -> None:
    assert {c["num_inference_steps"] for c in w.generate_calls("base")} == {2}
    assert {c["num_inference_steps"] for c in w.generate_calls("changed")} == {3}


def probe_validation_seed(w: World) -> None:
    assert {c["seed"] for c in w.generate_calls("base")} == {3}  # default: seed
    assert {c["seed"] for c in w.generate_calls("changed")} == {11}


def probe_frame_rate(w: World) -> None:
    assert {c["frame_rate"] for c in w.generate_calls("base")} == {24}
    assert {c["frame_rate"] for c in w.generate_calls("changed")} == {12}
    _, samples, _ = w.scan(frame_rate=12)
    assert {s.frame_rate for s in samples} == {12}  # clips are resampled to it for training too


def probe_disable_validation(w: World) -> None:
    assert (w.run("defaults") / "validation").is_dir()
    assert not (w.run("quiet") / "validation").exists()
    assert _validation_line(w.check(**VALIDATION, disable_validation=True)) == "validation: disabled"


def probe_validation_using_datasets(w: World) -> None:
    plan, samples, _ = w.scan(**LTX2)
    assert condition_images(plan.family, plan.train, plan.media, samples) is None  # text to video
    plan, samples, _ = w.scan(**LTX2, validation_using_datasets=True)
    images = condition_images(plan.family, plan.train, plan.media, samples)
    assert images is not None and len(images) == len(samples) and images[0].shape == (64, 96, 3)
    i2v = {**K5, "model_flavour": "tiny-i2v"}
    plan, samples, _ = w.scan(**i2v)
    assert condition_images(plan.family, plan.train, plan.media, samples) is None  # a T2V first frame
    plan, samples, _ = w.scan(**i2v, validation_using_datasets=True)
    assert len(condition_images(plan.family, plan.train, plan.media, samples)) == len(samples)
    plan, samples, _ = w.scan(validation_using_datasets=True)  # LTX-Video: image-to-video validation
    assert len(condition_images(plan.family, plan.train, plan.media, samples)) == len(samples)
    _rejected(lambda: w.plan(**K5, validation_using_datasets=True), "generates from text only")


def probe_eval_dataset_id(w: World) -> None:
    extra = [w.video_entry(id="eval", instance_data_dir=str(w.images), dataset_type="image", video=UNSET)]
    plan, samples, _ = w.scan(**LTX2, validation_using_datasets=True, eval_dataset_id="eval", extra=extra)
    assert [d.id for d in plan.training_media] == ["clips"] and {s.dataset_id for s in samples} == {"clips"}
    images = condition_images(plan.family, plan.train, plan.media, samples)
    assert len(images) == 2 and images[0].shape == (64, 96, 3)
    firsts = condition_images(
        plan.family, plan.train.model_copy(update={"eval_dataset_id": None}), plan.media, samples
    )
    assert not np.array_equal(images[0], firsts[0])  # the eval images, not the training clips' first frames
    _rejected(
        lambda: w.plan(**LTX2, validation_using_datasets=True, eval_dataset_id="nope"),
        "eval_dataset_id 'nope'",
    )
    _rejected(lambda: w.plan(eval_dataset_id="eval", extra=extra), "validation_using_datasets: true")
    _rejected(lambda: w.plan(**K5, eval_dataset_id="eval", extra=extra), "generates from text only")


# ---- TrainConfig: logging --------------------------------------------------------------------------------
def probe_report_to(w: World) -> None:
    assert _events(w.run("defaults"))  # tensorboard by default
    assert not _events(w.run("quiet"))
    try:
        import wandb  # noqa: F401
    except ImportError:
        _rejected(lambda: w.plan(report_to="wandb"), "wandb package")


def probe_tracker_project_name(w: World) -> None:
    assert {p.relative_to(w.run("defaults")).parts[0] for p in _events(w.run("defaults"))} == {"cinetune"}
    assert {p.relative_to(w.run("checkpoints")).parts[0] for p in _events(w.run("checkpoints"))} == {"proj"}


def probe_tracker_run_name(w: World) -> None:
    def folders(output: Path) -> set[tuple[str, ...]]:  # (add_hparams writes a timestamped subfolder)
        return {p.relative_to(output).parts[:2] for p in _events(output)}

    assert folders(w.run("checkpoints")) == {("proj", "run1")}
    assert not any(parts[1:] == ("run1",) for parts in folders(w.run("defaults")))


def probe_logging_steps(w: World) -> None:
    assert _metrics_steps(w.run("defaults")) == [1, 2, 3, 4]
    assert _metrics_steps(w.run("checkpoints")) == [2, 4]


# ---- TrainConfig: memory and devices ---------------------------------------------------------------------
def probe_offload_during_startup(w: World) -> None:
    def vae_device(**kw: Any) -> tuple[torch.device, list[str]]:
        trainer = w.cached(**VALIDATION, **kw)
        with _logged() as messages:
            trainer.prepare()
        return next(trainer.validator.vae.parameters()).device, messages

    resident, _ = vae_device()
    offloaded, messages = vae_device(offload_during_startup=True)
    said = any("offload_during_startup" in m for m in messages)
    assert offloaded != resident or said, f"the VAE sits on {offloaded} either way, and nothing says so"


def probe_attention_backend(w: World) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    def backends(trainer: Trainer) -> set[Any]:
        return {
            getattr(m.processor, "_attention_backend", None)
            for m in trainer.model.modules()
            if hasattr(m, "processor")
        }

    previous = _AttentionBackendRegistry.get_active_backend()[0]
    try:
        assert AttentionBackendName._NATIVE_MATH not in backends(w.trainer())
        assert backends(w.trainer(attention_backend="_native_math")) == {AttentionBackendName._NATIVE_MATH}
    finally:
        _AttentionBackendRegistry.set_active_backend(previous)  # diffusers keeps one per process
    _rejected(
        lambda: w.plan(attention_backend="flashy"), "attention_backend 'flashy' is not a diffusers backend"
    )


def probe_compile_transformer_blocks(w: World) -> None:
    def compiled(trainer: Trainer) -> list[bool]:
        return [block._compiled_call_impl is not None for block in trainer.model.transformer_blocks]

    assert compiled(w.trainer()) == [False, False]
    assert compiled(w.trainer(compile_transformer_blocks=True)) == [True, True]
    _rejected(
        lambda: w.plan(compile_transformer_blocks=True, tread_config=_tread()),
        "not supported yet",
        error=NotSupportedYet,
    )


def probe_num_processes(w: World) -> None:
    assert "2 step(s) per epoch" in _schedule(w.check())
    assert "1 step(s) per epoch" in _schedule(w.check(num_processes=2))  # batches are dealt to 2 ranks
    launched: list[tuple[list[str], dict[str, str]]] = []

    class Launched:  # what `cinetune train` would run, not run
        def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
            launched.append((cmd, env))

        def wait(self) -> int:
            return 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.subprocess, "Popen", Launched)
        assert cli.main(["train", "--config", str(w.write(num_processes=2))]) == 0
    ((cmd, env),) = launched
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=2" in cmd
    assert "CINETUNE_RUN_LOCK" in env  # the ranks share the launcher's lock of the output folder


def probe_cpu(w: World) -> None:
    with _logged() as messages:
        on_cpu = Trainer(w.plan(cpu=True))
    with _logged() as plain:
        default = Trainer(w.plan())
    assert on_cpu.device.type == "cpu"
    if NO_GPU:  # both train on the CPU: cpu=true is said to change nothing
        assert any("cpu: true changes nothing" in m for m in messages)
        assert not any("cpu: true" in m for m in plain)
    else:
        assert default.device != on_cpu.device


def probe_max_sequence_length(w: World) -> None:
    caption = "a red square moves across the screen"
    full = w.cached().index.text_embeds(caption)["prompt_embeds"].shape[0]
    short = w.plan(max_sequence_length=4)
    assert full > 4 and w.plan().train.max_sequence_length == 128  # the flavour's default
    assert any("max_sequence_length=4" in m for m in short.warnings)
    assert w.cached(max_sequence_length=4).index.text_embeds(caption)["prompt_embeds"].shape[0] == 4
    _rejected(lambda: w.plan(**K5, max_sequence_length=2048), "Kandinsky 5 takes at most 1024")


# ---- DatasetConfig ---------------------------------------------------------------------------------------
def _text_encoder_batches(w: World, family: dict[str, Any], **kw: Any) -> list[int]:
    """Captions per text-encoder forward while `cinetune cache` builds a fresh text cache."""
    cache_dir = w.fresh("text-cache")
    datasets = [w.video_entry(), w.text_entry(cache_dir=str(cache_dir), **kw)]
    trainer = Trainer(w.plan(**family, datasets=datasets))
    sizes: list[int] = []
    real = trainer.family.load_text_encoder

    def hooked(dtype: torch.dtype) -> Any:
        tokenizer, encoder = real(dtype)
        module = getattr(encoder, "qwen", encoder)  # Kandinsky 5: Qwen + CLIP; the Qwen pass counts

        def count(_module: Any, args: tuple, kwargs: dict) -> None:
            ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
            sizes.append(int(ids.shape[0]))

        module.register_forward_pre_hook(count, with_kwargs=True)
        return tokenizer, encoder

    trainer.family.load_text_encoder = hooked  # type: ignore[method-assign]
    trainer.output_dir.mkdir(parents=True)
    trainer.scan()
    trainer.cache()
    assert any(cache_dir.iterdir())
    return sizes


def probe_write_batch_size(w: World) -> None:
    assert _text_encoder_batches(w, {}) == [9]  # 8 captions + the empty one, one call
    assert _text_encoder_batches(w, {}, write_batch_size=4) == [4, 4, 1]


def probe_write_batch_size_kandinsky5(w: World) -> None:
    """Kandinsky 5 encodes one caption per forward (no text mask): the batch size cannot change that, and the
    plan says so."""
    one, many = _text_encoder_batches(w, K5, write_batch_size=1), _text_encoder_batches(w, K5)
    assert one == many and set(many) == {1}
    datasets = [w.video_entry(), w.text_entry(write_batch_size=1)]
    assert any("write_batch_size changes nothing" in m for m in w.plan(**K5, datasets=datasets).warnings)


def probe_id(w: World) -> None:
    _, samples, _ = w.scan(dataset={"id": "my-clips"})
    assert {s.dataset_id for s in samples} == {"my-clips"}
    assert "dataset 'my-clips': 4 clip(s)" in w.check(dataset={"id": "my-clips"})
    extra = [w.video_entry()]
    _rejected(lambda: w.plan(extra=extra), "dataset ids must be unique", "clips")


def probe_type(w: World) -> None:
    assert w.plan().media[0].type == "local"
    _rejected(lambda: w.plan(dataset={"type": "s3"}), "type", "'local'", "(got 's3')")


def probe_dataset_type(w: World) -> None:
    _, samples, _ = w.scan(
        dataset={"dataset_type": "image", "instance_data_dir": str(w.images), "video": UNSET}
    )
    assert {s.bucket.num_frames for s in samples} == {1} and len(samples) == 2
    _, samples, _ = w.scan()
    assert {s.bucket.num_frames for s in samples} == {9}
    _rejected(lambda: w.plan(dataset={"dataset_type": "text_embeds", "video": UNSET}), "has no effect")


def probe_instance_data_dir(w: World) -> None:
    _, samples, _ = w.scan(dataset={"instance_data_dir": str(w.av_clips)})
    assert {s.path.parent for s in samples} == {w.av_clips} and len(samples) == 3
    _rejected(lambda: w.scan(dataset={"instance_data_dir": str(w.root / "nowhere")}), "is not a folder")


def _captions(w: World, **dataset: Any) -> dict[str, tuple[str, ...]]:
    _, samples, _ = w.scan(dataset=dataset)
    return {s.path.name: s.captions for s in samples}


def probe_caption_strategy(w: World) -> None:
    assert _captions(w)["clip_00.mp4"] == (
        "a red square moves across the screen",
        "red square, dark background",
    )
    assert _captions(w, caption_strategy="filename")["clip_00.mp4"] == ("clip 00",)
    folder = w.fresh("csv")
    table = folder / "metadata.csv"
    table.write_text("file_name,caption\n" + "".join(f"clip_{i:02d}.mp4,csv caption {i}\n" for i in range(4)))
    assert _captions(w, caption_strategy="csv", metadata_file=str(table))["clip_01.mp4"] == ("csv caption 1",)


def probe_instance_prompt(w: World) -> None:
    found = _captions(w, caption_strategy="instanceprompt", instance_prompt="sks square")
    assert set(found.values()) == {("sks square",)}
    _rejected(lambda: w.plan(dataset={"instance_prompt": "x"}), "instance_prompt (only with caption_strategy")


def probe_metadata_file(w: World) -> None:
    folder = w.fresh("meta")
    rows = [{"file_name": f"clip_{i:02d}.mp4", "caption": f"from jsonl {i}"} for i in range(4)]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    found = _captions(w, caption_strategy="jsonl", metadata_file=str(folder / "captions.jsonl"))
    assert found["clip_02.mp4"] == ("from jsonl 2",)
    # default: metadata.jsonl in instance_data_dir, which the demo folder lacks
    _rejected(
        lambda: w.scan(dataset={"caption_strategy": "jsonl"}), "metadata.jsonl not found", error=DataError
    )
    _rejected(lambda: w.plan(dataset={"metadata_file": "x.jsonl"}), "metadata_file (only with")


def _buckets(w: World, **dataset: Any) -> set[str]:
    _, samples, _ = w.scan(dataset=dataset)
    return {s.bucket.key for s in samples}


def probe_resolution(w: World) -> None:
    assert _buckets(w) == {"96x64@9"}
    assert _buckets(w, resolution=96) == {"128x96@9"}


def probe_resolution_type(w: World) -> None:
    assert _buckets(w, resolution_type="pixel_area") == {"64x32@9"}  # area about 64^2
    assert "buckets 96x64@9 x4" in w.check()


def probe_repeats(w: World) -> None:
    assert "repeats 0" in w.check() and "2 step(s) per epoch" in _schedule(w.check())
    twice = w.check(dataset={"repeats": 1})
    assert "repeats 1" in twice and "4 step(s) per epoch" in _schedule(twice)


def probe_cache_dir(w: World) -> None:
    default = Trainer(w.plan(datasets=[w.video_entry(), w.text_entry(cache_dir=UNSET)]))
    assert default.cache_roots()[0] == default.output_dir / "cache" / "text"
    folder = w.fresh("my-text-cache")
    chosen = Trainer(w.plan(datasets=[w.video_entry(), w.text_entry(cache_dir=str(folder))]))
    chosen.output_dir.mkdir(parents=True)
    chosen.scan()
    chosen.cache()
    assert chosen.cache_roots()[0] == folder and any(folder.rglob("*.safetensors"))
    assert not (chosen.output_dir / "cache").exists()


def probe_cache_dir_vae(w: World) -> None:
    default = Trainer(w.plan(dataset={"cache_dir_vae": UNSET}))
    assert default.cache_roots()[1] == {"clips": default.output_dir / "cache" / "vae" / "clips"}
    folder = w.fresh("my-latents")
    chosen = w.cached(dataset={"cache_dir_vae": str(folder)})
    assert chosen.cache_roots()[1] == {"clips": folder} and len(list(folder.rglob("*.safetensors"))) == 4
    _rejected(lambda: w.plan(dataset={"cache_dir": str(folder)}), "cache_dir has no effect", "cache_dir_vae")


def probe_default(w: World) -> None:
    """With one text_embeds dataset (the only setup cinetune builds) `default: false` cannot move the
    embeddings elsewhere: the plan says so, and `default: true` (the quickstarts' value) is silent."""

    def plan(**entry: Any):
        return w.plan(datasets=[w.video_entry(), w.text_entry(**entry)])

    assert any("says default: false" in m for m in plan(default=False).warnings)
    assert not any("default" in m for m in plan(default=True).warnings)


def probe_disabled(w: World) -> None:
    extra = w.video_entry(id="more", instance_data_dir=str(w.av_clips))
    _, samples, _ = w.scan(extra=[extra])
    assert {s.dataset_id for s in samples} == {"clips", "more"}
    _, samples, _ = w.scan(extra=[{**extra, "disabled": True}])
    assert {s.dataset_id for s in samples} == {"clips"}
    _rejected(lambda: w.plan(dataset={"disabled": True}), "no enabled video or image dataset")


def probe_crop(w: World) -> None:
    assert w.plan(dataset={"crop": True}).media[0].crop
    _rejected(lambda: w.plan(dataset={"crop": False}), "crop=false is not supported yet")


def probe_crop_style(w: World) -> None:
    assert w.plan(dataset={"crop_style": "center"}).media[0].crop_style == "center"
    _rejected(lambda: w.plan(dataset={"crop_style": "random"}), "crop_style", "'center'")


def probe_video(w: World) -> None:
    # without a block a video dataset takes the block's defaults: 49 frames, longer than the 30-frame clips
    _rejected(
        lambda: w.scan(dataset={"video": UNSET}), "too short: 30 frames at 24 fps, need 49", error=DataError
    )
    assert _buckets(w) == {"96x64@9"}
    image = {"dataset_type": "image", "instance_data_dir": str(w.images), "video": {"num_frames": 9}}
    _rejected(lambda: w.plan(dataset=image), "an image dataset takes no `video` block")


def probe_audio(w: World) -> None:
    block = {"instance_data_dir": str(w.av_clips), "audio": {"allow_zero_audio": True}}
    plan, samples, _ = w.scan(**LTX2, dataset=block)
    with_sound = {s.path.name: s.audio.path.name for s in samples if s.audio is not None}
    assert with_sound == {"tone_0.mp4": "tone_0.mp4", "tone_1.mp4": "tone_1.mp4"}
    assert "audio: 2 of 3 clip(s) with sound" in w.check(**LTX2, dataset=block)
    plan_silent, samples, _ = w.scan(**LTX2, dataset={"instance_data_dir": str(w.av_clips)})
    assert all(s.audio is None for s in samples)
    # with audio the LoRA goes on every attention (audio and A/V too); without, on the video attention only
    assert plan.train.lora_target_modules == ["to_k", "to_q", "to_v", "to_out.0"]
    assert all(t.startswith(("attn1.", "attn2.")) for t in plan_silent.train.lora_target_modules)
    _rejected(
        lambda: w.plan(dataset=block),
        "'audio' blocks",
        "not supported yet",
        "ltxvideo",
        error=NotSupportedYet,
    )


def probe_s2v_datasets(w: World) -> None:
    sounds = {"id": "sounds", "dataset_type": "audio", "instance_data_dir": str(w.sounds)}
    _, samples, report = w.scan(**LTX2, dataset={"s2v_datasets": ["sounds"]}, extra=[sounds])
    assert {s.path.name: s.audio.path for s in samples} == {
        "clip_00.mp4": w.sounds / "clip_00.wav",
        "clip_01.mp4": w.sounds / "clip_01.wav",
    }
    assert "no audio file" in report.summary()  # clip_02 and clip_03 have none
    _rejected(lambda: w.plan(**LTX2, extra=[sounds]), "not linked by any video dataset")
    _rejected(
        lambda: w.plan(dataset={"s2v_datasets": ["sounds"]}, extra=[sounds]),
        "not supported yet",
        error=NotSupportedYet,
    )


# ---- VideoOptions ----------------------------------------------------------------------------------------
def probe_num_frames(w: World) -> None:
    assert _buckets(w, video={"num_frames": 17}) == {"96x64@17"}
    assert _buckets(w) == {"96x64@9"}


def probe_min_frames(w: World) -> None:
    every_frame = {"bucket_strategy": "resolution_frames", "num_frames": 49}
    _rejected(lambda: w.scan(dataset={"video": every_frame}), "too short", error=DataError)
    assert _buckets(w, video={**every_frame, "min_frames": 17}) == {"96x64@25"}
    _rejected(lambda: w.plan(dataset={"video": {"min_frames": 17}}), "video.min_frames (17) is above")


def probe_max_frames(w: World) -> None:
    assert len(w.scan()[1]) == 4
    _rejected(lambda: w.scan(dataset={"video": {"max_frames": 25}}), "too long: 30 frames at 24 fps, max 25")


def probe_video_frame_rate(w: World) -> None:
    _, samples, _ = w.scan(dataset={"video": {"frame_rate": 12}})
    assert {s.frame_rate for s in samples} == {12}
    assert {s.frame_rate for s in w.scan()[1]} == {24}  # the top-level frame_rate


def probe_bucket_strategy(w: World) -> None:
    assert _buckets(w, video={"bucket_strategy": "resolution_frames"}) == {"96x64@25"}  # all 30 frames, 8k+1


def probe_frame_interval(w: World) -> None:
    every = {"bucket_strategy": "resolution_frames"}
    assert _buckets(w, video={**every, "frame_interval": 16}) == {"96x64@17"}  # counts 1 + 16k
    _rejected(lambda: w.plan(dataset={"video": {"frame_interval": 16}}), "video.frame_interval (only with")


def probe_windows_per_clip(w: World) -> None:
    def windows(**video: Any) -> set[int]:
        return {len(s.window_starts) for s in w.scan(dataset={"video": video})[1]}

    assert windows() == {1} and windows(windows_per_clip=UNSET) == {4}


# ---- AudioOptions (ltxvideo2) ----------------------------------------------------------------------------
def _av(w: World, **audio: Any) -> dict[str, Any]:
    return {"instance_data_dir": str(w.av_clips), "audio": {"allow_zero_audio": True, **audio}}


def probe_auto_split(w: World) -> None:
    _, samples, _ = w.scan(**LTX2, dataset=_av(w, auto_split=True))
    assert all(s.audio.path == s.path for s in samples if s.audio is not None)  # the clip's own track
    _rejected(lambda: w.plan(**LTX2, dataset=_av(w, auto_split=False)), "set s2v_datasets to its id")
    sounds = {"id": "sounds", "dataset_type": "audio", "instance_data_dir": str(w.sounds)}
    linked = {"s2v_datasets": ["sounds"], "audio": {"auto_split": False, "allow_zero_audio": True}}
    _, samples, _ = w.scan(**LTX2, dataset=linked, extra=[sounds])
    assert {s.audio.path.parent for s in samples if s.audio is not None} == {w.sounds}


def probe_sample_rate(w: World) -> None:
    assert w.ltx2_plan(dataset=_av(w, sample_rate=16000)).data.media[0].audio.sample_rate == 16000
    _rejected(lambda: w.ltx2_plan(dataset=_av(w, sample_rate=22050)), "audio.sample_rate=22050", "16000 Hz")


def probe_channels(w: World) -> None:
    def audio_tokens(channels: int) -> torch.Tensor:
        plan, samples, _ = w.scan(**LTX2, dataset=_av(w, channels=channels))
        sample = next(s for s in samples if s.audio is not None)
        encoders = plan.family.load_latent_encoders(torch.float32)
        entry = plan.family.encode_sample(encoders, sample, 0, load_pixels(sample, 0))
        assert plan.family.latent_key_fields(sample)["audio"]["channels"] == channels  # own cache entries
        return entry["audio_latents"]

    stereo, mono = audio_tokens(2), audio_tokens(1)
    assert stereo.shape == mono.shape and not torch.allclose(stereo, mono)  # left and right differ


def probe_duration_interval(w: World) -> None:
    assert not any("duration_interval" in m for m in w.ltx2_plan(dataset=_av(w)).warnings)
    warned = w.ltx2_plan(dataset=_av(w, duration_interval=3.0)).warnings
    assert any("audio.duration_interval" in m and "changes nothing" in m for m in warned)


def probe_allow_zero_audio(w: World) -> None:
    _, samples, report = w.scan(**LTX2, dataset=_av(w, allow_zero_audio=False))
    assert {s.path.name for s in samples} == {"tone_0.mp4", "tone_1.mp4"}
    assert "silent.mp4: no audio track" in report.summary()
    _, samples, _ = w.scan(**LTX2, dataset=_av(w, allow_zero_audio=True))
    silent = next(s for s in samples if s.path.name == "silent.mp4")
    assert silent.audio is None


# ---- the tables ------------------------------------------------------------------------------------------
TRAIN_KEYS: dict[str, Any] = {
    "model_family": probe_model_family,
    "model_flavour": probe_model_flavour,
    "pretrained_model_name_or_path": probe_pretrained_model_name_or_path,
    "ltx2_checkpoint_filename": probe_ltx2_checkpoint_filename,
    "model_type": probe_model_type,
    "lora_type": probe_lora_type,
    "lycoris_config": probe_lycoris_config,
    "use_dora": probe_use_dora,
    "vae_dtype": probe_vae_dtype,
    "output_dir": probe_output_dir,
    "data_backend_config": probe_data_backend_config,
    "train_batch_size": probe_train_batch_size,
    "learning_rate": probe_learning_rate,
    "lr_scheduler": probe_lr_scheduler,
    "lr_warmup_steps": probe_lr_warmup_steps,
    "max_train_steps": probe_max_train_steps,
    "num_train_epochs": probe_num_train_epochs,
    "gradient_accumulation_steps": probe_gradient_accumulation_steps,
    "max_grad_norm": probe_max_grad_norm,
    "max_nonfinite_steps": probe_max_nonfinite_steps,
    "mixed_precision": probe_mixed_precision,
    "gradient_checkpointing": probe_gradient_checkpointing,
    "gradient_checkpointing_interval": probe_gradient_checkpointing_interval,
    "seed": probe_seed,
    "optimizer": probe_optimizer,
    "adam_beta1": probe_adam_beta1,
    "adam_beta2": probe_adam_beta2,
    "adam_weight_decay": probe_adam_weight_decay,
    "adam_epsilon": probe_adam_epsilon,
    "caption_dropout_probability": probe_caption_dropout_probability,
    "flow_sigma_sampler": probe_flow_sigma_sampler,
    "vae_latent_sampling": probe_vae_latent_sampling,
    "first_frame_conditioning_p": probe_first_frame_conditioning_p,
    "tread_config": probe_tread_config,
    **{key: globals()[f"probe_{key}"] for key in TrainConfig.model_fields if key.startswith("crepa_")},
    **{
        key: globals()[f"probe_{key}"]
        for key in TrainConfig.model_fields
        if key.startswith("scheduled_sampling_")
    },
    "lora_rank": probe_lora_rank,
    "lora_alpha": probe_lora_alpha,
    "lora_dropout": probe_lora_dropout,
    "lora_target_modules": probe_lora_target_modules,
    "init_lora": probe_init_lora,
    "lora_init_type": probe_lora_init_type,
    "use_ema": probe_use_ema,
    "ema_decay": probe_ema_decay,
    "ema_update_interval": probe_ema_update_interval,
    "ema_device": probe_ema_device,
    "ema_warmup_steps": probe_ema_warmup_steps,
    "ema_validation": probe_ema_validation,
    "checkpointing_steps": probe_checkpointing_steps,
    "checkpoints_total_limit": probe_checkpoints_total_limit,
    "resume_from_checkpoint": probe_resume_from_checkpoint,
    "validation_steps": probe_validation_steps,
    "validation_prompt": probe_validation_prompt,
    "validation_negative_prompt": probe_validation_negative_prompt,
    "validation_prompt_library": probe_validation_prompt_library,
    "validation_resolution": probe_validation_resolution,
    "validation_num_video_frames": probe_validation_num_video_frames,
    "validation_guidance": probe_validation_guidance,
    "validation_num_inference_steps": probe_validation_num_inference_steps,
    "validation_seed": probe_validation_seed,
    "disable_validation": probe_disable_validation,
    "validation_using_datasets": probe_validation_using_datasets,
    "eval_dataset_id": probe_eval_dataset_id,
    "frame_rate": probe_frame_rate,
    "report_to": probe_report_to,
    "tracker_project_name": probe_tracker_project_name,
    "tracker_run_name": probe_tracker_run_name,
    "logging_steps": probe_logging_steps,
    "offload_during_startup": probe_offload_during_startup,
    "attention_backend": probe_attention_backend,
    "compile_transformer_blocks": probe_compile_transformer_blocks,
    "num_processes": probe_num_processes,
    "cpu": probe_cpu,
    "max_sequence_length": probe_max_sequence_length,
}
DATASET_KEYS: dict[str, Any] = {
    "id": probe_id,
    "type": probe_type,
    "dataset_type": probe_dataset_type,
    "instance_data_dir": probe_instance_data_dir,
    "caption_strategy": probe_caption_strategy,
    "instance_prompt": probe_instance_prompt,
    "metadata_file": probe_metadata_file,
    "resolution": probe_resolution,
    "resolution_type": probe_resolution_type,
    "repeats": probe_repeats,
    "cache_dir": probe_cache_dir,
    "cache_dir_vae": probe_cache_dir_vae,
    "default": probe_default,
    "disabled": probe_disabled,
    "write_batch_size": [
        pytest.param(probe_write_batch_size, id="ltxvideo"),
        pytest.param(probe_write_batch_size_kandinsky5, id="kandinsky5"),
    ],
    "crop": probe_crop,
    "crop_style": probe_crop_style,
    "video": probe_video,
    "audio": probe_audio,
    "s2v_datasets": probe_s2v_datasets,
}
VIDEO_KEYS: dict[str, Any] = {
    "num_frames": probe_num_frames,
    "min_frames": probe_min_frames,
    "max_frames": probe_max_frames,
    "frame_rate": probe_video_frame_rate,
    "bucket_strategy": probe_bucket_strategy,
    "frame_interval": probe_frame_interval,
    "windows_per_clip": probe_windows_per_clip,
}
AUDIO_KEYS: dict[str, Any] = {
    "auto_split": probe_auto_split,
    "sample_rate": probe_sample_rate,
    "channels": probe_channels,
    "duration_interval": probe_duration_interval,
    "allow_zero_audio": probe_allow_zero_audio,
}
TREAD_KEYS: dict[str, Any] = {"routes": probe_routes}
ROUTE_KEYS: dict[str, Any] = {
    "selection_ratio": probe_selection_ratio,
    "start_layer_idx": probe_start_layer_idx,
    "end_layer_idx": probe_end_layer_idx,
}
TRAIN_KEYS.update(MEMORY_KEYS)
TRAIN_KEYS.update(FSDP_KEYS)
TRAIN_KEYS.update(MULTINODE_KEYS)
TRAIN_KEYS.update(CONTEXT_PARALLEL_KEYS)
TABLES: dict[type, dict[str, Any]] = {
    TrainConfig: TRAIN_KEYS,
    TreadConfig: TREAD_KEYS,
    TreadRoute: ROUTE_KEYS,
    DatasetConfig: DATASET_KEYS,
    VideoOptions: VIDEO_KEYS,
    AudioOptions: AUDIO_KEYS,
}


def _cases() -> Iterator[Any]:
    for model, table in TABLES.items():
        for key, entry in table.items():
            for variant in entry if isinstance(entry, list) else [entry]:
                probe, marks, suffix = variant, (), ""
                if hasattr(variant, "marks"):  # a pytest.param
                    probe, marks = variant.values[0], variant.marks
                    suffix = f"[{variant.id}]" if variant.id else ""
                yield pytest.param(probe, id=f"{model.__name__}.{key}{suffix}", marks=marks)


@pytest.mark.parametrize("probe", list(_cases()))
def test_key_changes_something_or_is_rejected(probe: Callable[[World], None], world: World) -> None:
    probe(world)


@pytest.mark.parametrize("model", list(TABLES), ids=lambda m: m.__name__)
def test_every_key_has_a_probe(model: type) -> None:
    assert sorted(TABLES[model]) == sorted(model.model_fields)
