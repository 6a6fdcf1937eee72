"""Config loading as a user meets it: quickstart-shaped files, overrides, errors that name the fix."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

from cinetune.cli import main
from cinetune.config import load_config, parse_overrides
from cinetune.errors import ConfigError, NotSupportedYet
from cinetune.plan import resolve


def test_quickstart_keys_load_from_json_and_toml(tmp_path: Path, clips_dir: Path, make_config) -> None:
    for fmt in ("json", "toml"):
        path = make_config(
            tmp_path / fmt,
            clips_dir,
            None,
            config_format=fmt,
            validation_resolution="512x768,768x512",
            gradient_accumulation_steps=2,
        )
        loaded = load_config(path)
        assert loaded.train.resolutions == [(512, 768), (768, 512)]
        assert loaded.train.gradient_accumulation_steps == 2
        assert loaded.data.media[0].video.num_frames == 9
        assert loaded.data.text_embeds.id == "text-embeds"


def test_dashed_keys_and_cli_overrides(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(tmp_path, clips_dir, None)
    raw = json.loads(path.read_text())
    raw = {f"--{k}": v for k, v in raw.items()}
    path.write_text(json.dumps(raw))
    overrides = parse_overrides(
        [
            "--learning_rate=2e-4",
            "--max_train_steps",
            "500",
            "--gradient_checkpointing",
            '--lora_target_modules=["to_q","to_k"]',
        ]
    )
    loaded = load_config(path, overrides)
    assert loaded.train.learning_rate == pytest.approx(2e-4)
    assert loaded.train.max_train_steps == 500
    assert loaded.train.gradient_checkpointing is True
    assert loaded.train.lora_target_modules == ["to_q", "to_k"]


def test_unknown_key_names_closest(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(tmp_path, clips_dir, None, learnig_rate=1e-4)
    with pytest.raises(ConfigError, match=r"unknown key 'learnig_rate'; did you mean 'learning_rate'"):
        load_config(path)


def test_unknown_dataset_key_names_closest(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(tmp_path, clips_dir, None, dataset={"repeat": 2})
    with pytest.raises(ConfigError, match=r"dataset 'clips'.*unknown key 'repeat'; did you mean 'repeats'"):
        load_config(path)


@pytest.mark.parametrize(
    "key,value",
    [
        ("ramtorch", True),
        ("fsdp_transformer_layer_cls_to_wrap", "LTXVideoTransformerBlock"),
        ("deepspeed_config", "ds.json"),
    ],
)
def test_unbuilt_features_are_rejected_not_ignored(
    tmp_path: Path, clips_dir: Path, make_config, key, value
) -> None:
    path = make_config(tmp_path, clips_dir, None, **{key: value})
    with pytest.raises(NotSupportedYet, match=f"'{key}'.*not supported yet"):
        load_config(path)


def test_audio_block_on_dataset_is_not_supported_yet(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(tmp_path, clips_dir, None, dataset={"audio": {"auto_split": True}})
    with pytest.raises(NotSupportedYet, match="'audio'"):
        resolve(load_config(path))


def test_bad_value_names_key(tmp_path: Path, clips_dir: Path, make_config) -> None:
    path = make_config(tmp_path, clips_dir, None, train_batch_size=0)
    with pytest.raises(ConfigError, match="train_batch_size"):
        load_config(path)


def test_cli_bad_config_exits_2_with_key(tmp_path: Path, clips_dir: Path, make_config, capsys) -> None:
    path = make_config(tmp_path, clips_dir, None, lr_scheduler="exponential")
    assert main(["check", "--config", str(path)]) == 2
    assert "lr_scheduler" in capsys.readouterr().err
    assert main(["check", "--config", str(path), "--lr_scheduler=cosine"]) == 0


def test_unknown_family_and_flavour(tmp_path: Path, clips_dir: Path, make_config, capsys) -> None:
    path = make_config(tmp_path, clips_dir, None, model_family="ltxvido")
    assert main(["check", "--config", str(path)]) == 2
    assert "did you mean 'ltxvideo'" in capsys.readouterr().err
    path = make_config(tmp_path, clips_dir, None, model_flavour="0.9.6")
    assert main(["check", "--config", str(path)]) == 2
    assert "not a ltxvideo flavour" in capsys.readouterr().err


def test_examples_pass_check(tmp_path: Path, capsys) -> None:
    """Each example pair, pointed at long-enough clips, passes `cinetune check` (no weights needed)."""
    from cinetune.demo import write_demo_dataset

    # 4 clips: the FSDP2 example trains on 4 ranks, each needs a batch
    clips = write_demo_dataset(tmp_path / "clips", num_clips=4, num_frames=100, size=(64, 48), fps=24)
    sounds = tmp_path / "sounds"  # audio datasets (s2v_datasets): a same-named track per clip
    sounds.mkdir()
    for clip in clips.glob("*.mp4"):
        with wave.open(str(sounds / f"{clip.stem}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(b"\x00\x00" * 16000 * 5)
    examples = Path(__file__).resolve().parents[1] / "examples"
    pairs = sorted(examples.glob("*/config.json"))
    assert len(pairs) >= 2, "examples/ should hold a config pair per flavour"
    for config in pairs:
        raw = json.loads((config.parent / "multidatabackend.json").read_text())
        for entry in raw:
            if entry.get("instance_data_dir"):
                entry["instance_data_dir"] = str(sounds if entry["dataset_type"] == "audio" else clips)
        backend = tmp_path / f"{config.parent.name}.json"
        backend.write_text(json.dumps(raw))
        code = main(["check", "--config", str(config), f"--data_backend_config={backend}"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "4 clip(s)" in out and "config OK" in out
        if "s2v" in config.parent.name:
            assert "audio: 4 of 4 clip(s) with sound, from s2v dataset(s) my-clips-audio" in out


def test_keys_lists_every_field_with_its_description(capsys) -> None:
    from cinetune.config import TrainConfig

    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    for name in ("validation_num_video_frames", "bucket_strategy", "caption_strategy", "lora_target_modules"):
        assert name in out
    assert all(field.description for field in TrainConfig.model_fields.values())


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        ({"cache_dir": "cache/x"}, "cache_dir has no effect on a video dataset"),
        ({"instance_prompt": "a dog"}, "instance_prompt"),
        ({"video": {"num_frames": 9, "frame_interval": 4}}, "frame_interval"),
    ],
)
def test_keys_without_effect_are_rejected(
    tmp_path: Path, clips_dir: Path, make_config, dataset, match
) -> None:
    path = make_config(tmp_path, clips_dir, None, dataset=dataset)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_pissa_and_a_second_text_embeds_dataset_are_rejected(
    tmp_path: Path, clips_dir: Path, make_config
) -> None:
    with pytest.raises(ConfigError, match="lora_init_type"):
        load_config(make_config(tmp_path, clips_dir, None, lora_init_type="pissa"))
    path = make_config(tmp_path, clips_dir, None)
    backend = json.loads((tmp_path / "config" / "multidatabackend.json").read_text())
    backend.append({"id": "more-embeds", "dataset_type": "text_embeds", "cache_dir": str(tmp_path / "t2")})
    (tmp_path / "config" / "multidatabackend.json").write_text(json.dumps(backend))
    with pytest.raises(ConfigError, match="only one text_embeds dataset is used"):
        load_config(path)
