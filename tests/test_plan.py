"""One resolution step: `cinetune check` and `cinetune train` accept and reject the same configs, with the
same exit code and the same message, and the resolved config carries the family's defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cinetune.check import check_report
from cinetune.cli import main
from cinetune.config import load_config
from cinetune.errors import NotSupportedYet
from cinetune.plan import resolve

_LTX2 = {"model_family": "ltxvideo2", "model_flavour": "tiny"}
_K5 = {"model_family": "kandinsky5-video", "model_flavour": "tiny"}

# (name, config.json changes, video dataset changes, a fragment of the one message both commands print)
BAD_CONFIGS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("family not built", {"model_family": "wan"}, {}, "model_family 'wan' (Wan) is not supported yet"),
    ("family typo", {"model_family": "ltxvidoe"}, {}, "did you mean 'ltxvideo'"),
    ("flavour typo", {"model_flavour": "0.9.9"}, {}, "'0.9.9' is not a ltxvideo flavour"),
    ("flavour not built", {**_LTX2, "model_flavour": "dev-fp8"}, {}, "'dev-fp8' (LTX-2 with fp8 weights)"),
    (
        "VAE temporal roll on Kandinsky",
        {**_K5, "vae_enable_temporal_roll": True},
        {},
        "vae_enable_temporal_roll: the kandinsky5-video VAE",
    ),
    (
        "I2V training on Kandinsky 5",
        {**_K5, "first_frame_conditioning_p": 0.5},
        {},
        "first_frame_conditioning_p is",
    ),
    (
        "TREAD on an int8 base",
        {
            "base_model_precision": "int8-quanto",
            "tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": -1}]},
        },
        {},
        "tread_config with base_model_precision int8-quanto is not supported yet",
    ),
    (
        "LTX-2 file name on Kandinsky",
        {**_K5, "ltx2_checkpoint_filename": "x.safetensors"},
        {},
        "ltx2_checkpo",
    ),
    ("I2V validation on T2V", {**_K5, "validation_using_datasets": True}, {}, "generates from text only"),
    (
        "eval dataset missing",
        {**_K5, "model_flavour": "tiny-i2v", "eval_dataset_id": "nope"},
        {},
        "eval_dataset_id 'nope' is not an enabled video or image dataset",
    ),
    (
        "audio on LTX-Video",
        {},
        {"audio": {"auto_split": True}},
        "'audio' blocks and s2v_datasets (audio training) are not",
    ),
    ("audio rate LTX-2", _LTX2, {"audio": {"sample_rate": 22050}}, "audio.sample_rate=22050"),
    (
        "I2V one frame",
        {**_K5, "model_flavour": "tiny-i2v"},
        {"video": {"num_frames": 1}},
        "at least 5 frames",
    ),
    ("interval without ckpt", {"gradient_checkpointing_interval": 2}, {}, "has no effect without gradient_c"),
    (
        "attention backend",
        {"attention_backend": "flashy"},
        {},
        "attention_backend 'flashy' is not a diffusers",
    ),
    ("init_lora missing", {"init_lora": "missing.safetensors"}, {}, "init_lora: file not found"),
    (
        "prompt library missing",
        {"validation_prompt_library": "nope.json"},
        {},
        "validation_prompt_library: file",
    ),
    ("resume path missing", {"resume_from_checkpoint": "checkpoint-99"}, {}, "is not a checkpoint folder"),
    ("unknown key", {"learning_rat": 1e-4}, {}, "unknown key 'learning_rat'; did you mean 'learning_rate'"),
    ("unbuilt key", {"ramtorch": True}, {}, "'ramtorch' (RamTorch offload) is not supp"),
    (
        "unbuilt value",
        {"base_model_precision": "int8dq-torchao"},
        {},
        "(this quantization) is not su",
    ),
    (
        "offload and swap",
        {"enable_group_offload": True, "musubi_blocks_to_swap": 1},
        {},
        "both move transformer blocks off the device: pick one",
    ),
    (
        "quantized on disk",
        {
            "base_model_precision": "int8-quanto",
            "enable_group_offload": True,
            "group_offload_to_disk_path": "x",
        },
        {},
        "cannot store quantized tensors",
    ),
    ("single file", {"pretrained_model_name_or_path": "m.safetensors"}, {}, "is a single-file checkpoint"),
    ("precision", {"mixed_precision": "fp8"}, {}, "mixed_precision"),
    ("rank", {"lora_rank": 0}, {}, "lora_rank"),
    ("K5 text length", {**_K5, "max_sequence_length": 2048}, {}, "Kandinsky 5 takes at most 1024"),
    ("LTX-2 text length", {**_LTX2, "max_sequence_length": 1000}, {}, "multiple of the connectors' 128"),
    (
        "LTX-2 missing folder",
        {**_LTX2, "model_flavour": "2.0", "pretrained_model_name_or_path": "./nope"},
        {},
        "does not",
    ),
    ("batch too big", {"train_batch_size": 64}, {}, "not enough samples for one batch per process"),
    ("accumulation too big", {"gradient_accumulation_steps": 50}, {}, "gradient_accumulation_steps is 50"),
    ("clips too short", {}, {"video": {"num_frames": 193}}, "no usable sample"),
    (
        "frames inconsistent",
        {},
        {"video": {"num_frames": 9, "max_frames": 5}},
        "video.max_frames (5) is below",
    ),
    ("lycoris without its file", {"lora_type": "lycoris"}, {}, "lora_type lycoris needs lycoris_config"),
    ("alias conflict", {"validation_steps": 2, "validation_step_interval": 3}, {}, "are the same setting"),
    ("flash on LTX-Video", {"attention_backend": "flash"}, {}, "'flash' cannot run ltxvideo: it rejects"),
    ("sage on LTX-2", {**_LTX2, "attention_backend": "sage"}, {}, "'sage' cannot run ltxvideo2: it rejects"),
    ("native flash on LTX", {"attention_backend": "_native_flash"}, {}, "attention masks"),
]


def _error(text: str) -> str:
    assert "error: " in text, text
    return " ".join(text[text.index("error: ") :].split())


@pytest.mark.parametrize(
    ("name", "config", "dataset", "message"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS]
)
def test_check_and_train_reject_a_bad_config_alike(
    tmp_path: Path, clips_dir: Path, make_config, capsys, name: str, config: dict, dataset: dict, message: str
) -> None:
    path = make_config(tmp_path, clips_dir, None, dataset=dataset, **config)
    assert main(["check", "--config", str(path)]) == 2
    from_check = _error(capsys.readouterr().err)
    assert main(["train", "--config", str(path)]) == 2
    from_train = _error(capsys.readouterr().err)
    assert from_check == from_train
    assert " ".join(message.split()) in from_check
    assert not (tmp_path / "output" / "checkpoint-1").exists()


def test_table_covers_at_least_25_configs() -> None:
    assert len(BAD_CONFIGS) >= 25


def test_mask_free_backends_are_read_from_diffusers() -> None:
    from cinetune.plan import mask_free_backends

    free = mask_free_backends()
    assert {"flash", "_flash_3", "_native_flash", "sage"} <= free
    assert not free & {"native", "_native_efficient", "_native_cudnn", "_native_math", "flex"}


def test_resolved_config_carries_the_family_defaults(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(tmp_path, clips_dir, None, vae_latent_sampling=None, lora_rank=8, seed=11)
    plan = resolve(load_config(path))
    cfg = plan.train
    assert cfg.max_sequence_length == 128 and cfg.vae_latent_sampling == "sample"
    assert cfg.lora_alpha == 8 and cfg.validation_seed == 11
    assert sorted(cfg.lora_target_modules) == ["to_k", "to_out.0", "to_q", "to_v"]
    assert cfg.model_flavour == "tiny"
    with pytest.raises(Exception, match="frozen"):
        cfg.learning_rate = 1.0  # nothing changes a resolved config

    nabla = resolve(
        load_config(
            make_config(
                tmp_path / "k5",
                clips_dir,
                None,
                model_family="kandinsky5-video",
                model_flavour="t2v-lite-sft-10s",
            )
        )
    )
    assert nabla.train.attention_backend == "flex"  # the NABLA flavours run on flex attention ...
    assert nabla.train.compile_transformer_blocks is True  # ... compiled, and say so
    lines: list[str] = []
    check_report(nabla, lines.append)
    assert "attention: flex backend, transformer blocks compiled" in lines
    assert plan.train.compile_transformer_blocks is False  # other models: off unless asked
    with pytest.raises(NotSupportedYet, match=r"compile_transformer_blocks \(this flavour's default\) with"):
        resolve(  # CREPA's block hook would be compiled by the flavour's default: said, not trained wrong
            load_config(
                make_config(
                    tmp_path / "k5-tread",
                    clips_dir,
                    None,
                    model_family="kandinsky5-video",
                    model_flavour="t2v-lite-sft-10s",
                    crepa_enabled=True,
                )
            )
        )


def test_train_snapshots_the_resolved_config(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(tmp_path, clips_dir, None, max_train_steps=1, disable_validation=True)
    assert main(["train", "--config", str(path)]) == 0
    saved = json.loads((tmp_path / "output" / "cinetune_config.json").read_text())
    assert saved["max_sequence_length"] == 128 and saved["lora_target_modules"]


def test_warnings_of_resolution_are_collected(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(
        tmp_path,
        clips_dir,
        None,
        **_LTX2,
        dataset={"audio": {"duration_interval": 3.0, "allow_zero_audio": True}},
    )
    plan = resolve(load_config(path))
    assert any("duration_interval" in w and "changes nothing here" in w for w in plan.warnings)


def test_keys_other_keys_make_moot_are_said_once(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(
        tmp_path,
        clips_dir,
        None,
        num_train_epochs=3,  # max_train_steps (4) decides
        tracker_run_name="x",  # report_to none
        checkpoints_total_limit=2,  # no checkpointing_steps
        disable_validation=True,
        validation_guidance=4.0,
    )
    warnings = resolve(load_config(path)).warnings
    assert any("num_train_epochs changes nothing" in w for w in warnings)
    assert any("tracker_run_name changes nothing" in w and "report_to is none" in w for w in warnings)
    assert any("checkpoints_total_limit changes nothing" in w for w in warnings)
    assert any("validation_guidance" in w and "disable_validation is true" in w for w in warnings)
    quiet = resolve(load_config(make_config(tmp_path / "q", clips_dir, None, num_train_epochs=0))).warnings
    assert (
        not quiet
    )  # num_train_epochs 0 (as the quickstarts write it) beside max_train_steps: nothing to say


def test_num_train_epochs_zero_needs_max_train_steps(
    tmp_path: Path, clips_dir: Path, make_config, capsys
) -> None:
    path = make_config(tmp_path, clips_dir, None, num_train_epochs=0, max_train_steps=None)
    assert main(["check", "--config", str(path)]) == 2
    assert "num_train_epochs is 0 and max_train_steps is unset" in capsys.readouterr().err


def test_ltx2_eval_dataset_needs_validation_using_datasets(
    tmp_path: Path, clips_dir: Path, make_config
) -> None:
    from cinetune.errors import ConfigError

    path = make_config(tmp_path, clips_dir, None, **_LTX2, eval_dataset_id="clips")
    with pytest.raises(ConfigError, match="validation_using_datasets: true"):
        resolve(load_config(path))
