"""`cinetune bench` on CPU with the tiny flavour (figures are printed, never asserted as timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cinetune.cli import main
from cinetune.models.registry import build_family


def _bench(tmp_path: Path, name: str, *extra: str, family: str = "ltxvideo", flavour: str = "tiny") -> dict:
    path = tmp_path / f"{name}.json"
    args = [
        "bench",
        "--family",
        family,
        "--flavour",
        flavour,
        "--resolution",
        "64x64",
        "--frames",
        "9",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        str(path),
        "--mixed_precision=no",
        "--lora_rank=4",
        *extra,
    ]
    assert main(args) == 0
    return json.loads(path.read_text())


def test_bench_reports_every_figure_from_the_real_step(tmp_path: Path, capsys) -> None:
    one = _bench(tmp_path, "b1")
    out = capsys.readouterr().out
    for label in ("s/step (median)", "tokens/s", "peak memory", "FLOPs/step", "MFU"):
        assert label in out
    assert one["tokens_per_sample"] == 2 * 2 * 2  # 9 frames -> 2 latent frames, 64 px -> 2 latent px
    assert len(one["s_per_step_all"]) == 2 and one["s_per_step_median"] > 0
    assert one["params_trainable"] > 0 and one["params_total"] > one["params_trainable"]
    assert one["mfu"] is None  # no known peak for a CPU unless --peak_tflops is given
    two = _bench(tmp_path, "b2", "--batch", "2", "--peak_tflops", "1")
    # counted FLOPs grow with the batch: the transformer work doubles, the optimizer's does not
    assert 1.6 < two["flops_per_step"] / one["flops_per_step"] < 2.1
    assert two["mfu"] == pytest.approx(two["achieved_tflops"] / 1.0)


def test_bench_adjusts_frames_and_sides_to_the_rule(tmp_path: Path) -> None:
    result = _bench(tmp_path, "adj", "--frames", "12", "--resolution", "70x64")
    assert result["num_frames"] == 9 and result["resolution"] == "64x64"


@pytest.mark.parametrize(("flavour", "billions"), [("0.9.5", 1.92), ("0.9.7-13b-dev", 13.0)])
def test_flavour_architectures_have_the_published_size(flavour: str, billions: float) -> None:
    family = build_family("ltxvideo", flavour, None)
    with torch.device("meta"):
        model = family.transformer_class.from_config(family.architecture_config())
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert params == pytest.approx(billions, rel=0.05)


def test_bench_ltxvideo2_tiny_reports_figures(tmp_path: Path, capsys) -> None:
    result = _bench(tmp_path, "ltx2", family="ltxvideo2")
    out = capsys.readouterr().out
    assert "ltxvideo2/tiny" in out
    for label in ("s/step (median)", "tokens/s", "peak memory", "FLOPs/step", "MFU"):
        assert label in out
    assert result["tokens_per_sample"] == 2 * 2 * 2  # 9 frames -> 2 latent frames (8x), 64 px -> 2 (32x)
    assert len(result["s_per_step_all"]) == 2 and result["s_per_step_median"] > 0
    assert result["params_trainable"] > 0 and result["params_total"] > result["params_trainable"]
    assert result["flops_per_step"] > 0


def test_ltxvideo2_bench_shapes_match_the_cache() -> None:
    from cinetune.models.ltxvideo2 import text as text_module

    family = build_family("ltxvideo2", "tiny", None)
    config = family.architecture_config()
    caption = family.synthetic_caption(config, 7)
    assert set(caption) == {text_module.PROJ_KEY} and caption[text_module.PROJ_KEY].shape == (7, 32)
    latents = family.synthetic_latents(config, 96, 64, 17)  # video only: bench has no audio dataset
    assert set(latents) == {"latents", "latents_std"}
    assert latents["latents"].shape == latents["latents_std"].shape == (16, 3, 2, 3)


def test_ltxvideo2_2_0_configs_match_the_installed_classes_and_header_inference() -> None:
    import inspect

    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    from cinetune.models.ltxvideo2 import configs

    family = build_family("ltxvideo2", "2.0", None)
    extra = family.flavours["2.0"].extra
    for cls, config, infer in (
        (family.transformer_class, extra["transformer_config"], configs.transformer_config),
        (LTX2TextConnectors, extra["connectors_config"], configs.connectors_config),
    ):
        assert set(config) <= set(inspect.signature(cls.__init__).parameters)
        with torch.device("meta"):
            model = cls.from_config(config)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        inferred = infer(None, shapes)  # what a released file without metadata gives
        assert {k: config[k] for k in inferred} == inferred


def test_ltxvideo2_2_0_bench_connectors_are_random_not_loaded() -> None:
    family = build_family("ltxvideo2", "2.0", None)
    meta = torch.device("meta")
    family.use_random_frozen_modules(meta, torch.bfloat16)
    module = family.connectors(meta, torch.bfloat16)  # no file, no hub: the random module
    assert module.config.caption_channels == 3840 and module.config.text_proj_in_factor == 49
    assert next(module.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in module.parameters())


def test_ltxvideo2_2_0_architecture_is_19b() -> None:
    # Measured with diffusers 0.42.1: 18,876,174,592 parameters. LTX-2 is published as a 19B model (a 14B
    # video stream and a 5B audio stream); the text connectors (1.43 B) are separate and not counted here.
    family = build_family("ltxvideo2", "2.0", None)
    with torch.device("meta"):
        model = family.transformer_class.from_config(family.architecture_config())
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert params == pytest.approx(19.0, rel=0.05)


def test_bench_ltxvideo2_trains_audio_with_an_audio_block(tmp_path: Path, capsys) -> None:
    video = _bench(tmp_path, "video", family="ltxvideo2")
    both = _bench(tmp_path, "av", "--audio", family="ltxvideo2")
    out = capsys.readouterr().out
    assert video["audio_tokens_per_sample"] == 0 and not video["settings"]["audio"]
    # 9 frames at 25 fps: 0.36 s = 5760 samples -> 1 + 5760 // 160 = 37 mel frames -> ceil(37 / 4) = 10 audio
    # tokens (every step the audio VAE gives, as the official trainer caches), trained with all attention LoRA
    assert both["audio_tokens_per_sample"] == 10 and both["settings"]["audio"] and "+ 10 audio tokens" in out
    assert both["params_trainable"] > video["params_trainable"]  # audio / cross-modal attention LoRA too
    assert both["flops_per_step"] > video["flops_per_step"]
    # a config whose dataset file has an audio block benches the same way
    (tmp_path / "data.json").write_text(
        json.dumps([{"id": "c", "instance_data_dir": "c", "audio": {"channels": 1}}])
    )
    config = {
        "model_family": "ltxvideo2",
        "model_flavour": "tiny",
        "data_backend_config": str(tmp_path / "data.json"),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ["bench", "--config", str(tmp_path / "config.json"), "--resolution", "64x64", "--frames", "9"]
    args += ["--steps", "1", "--warmup", "0", "--json", str(tmp_path / "cfg.json"), "--mixed_precision=no"]
    assert main(args) == 0
    assert json.loads((tmp_path / "cfg.json").read_text())["audio_tokens_per_sample"] == 10


def test_bench_audio_needs_a_family_with_audio(capsys) -> None:
    args = ["bench", "--family", "ltxvideo", "--flavour", "tiny", "--audio", "--resolution", "64x64"]
    assert main([*args, "--frames", "9", "--steps", "1"]) == 2
    assert "are not supported yet for the ltxvideo family" in capsys.readouterr().err


def test_speed_options_bench_runs_each_variant_and_survives_unusable_backends(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "bench" / "speed_options.py"
    spec = importlib.util.spec_from_file_location("speed_options", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--flavour", "tiny", "--resolution", "64x64", "--frames", "9", "--steps", "1", "--warmup", "0"]
    args += ["--lora_rank", "4", "--mixed_precision", "no", "--groups", "attention,checkpointing"]
    assert module.main([*args, "--json", str(tmp_path / "speed.json")]) == 0
    groups = json.loads((tmp_path / "speed.json").read_text())["groups"]
    attention = {row["variant"]: row for row in groups["attention"]}
    assert attention["native SDPA"]["s_per_step_median"] > 0
    assert "error" in attention["flash-attn 3"]  # not installed here: listed with the reason, not timed
    # a backend that failed (on the CPU, flash SDPA rejects the attention mask) leaves nothing behind
    rows = {row["variant"]: row for row in groups["checkpointing"]}
    assert all("error" not in row for row in rows.values())
    assert rows["1 block in 2"]["settings"]["gradient_checkpointing_interval"] == 2


@pytest.mark.parametrize("flavour", ["tiny", "tiny-i2v"])
def test_bench_kandinsky5_tiny_reports_figures(tmp_path: Path, flavour: str) -> None:
    result = _bench(
        tmp_path, flavour, "--gradient_checkpointing=true", family="kandinsky5-video", flavour=flavour
    )
    assert result["flavour"] == flavour and result["s_per_step_median"] > 0 and result["flops_per_step"] > 0
    assert result["num_frames"] == 9  # 4k+1


def test_mfu_counts_model_flops_not_the_checkpointing_recompute(tmp_path: Path) -> None:
    plain = _bench(tmp_path, "plain")
    every = _bench(tmp_path, "gc", "--gradient_checkpointing=true")
    half = _bench(tmp_path, "gc2", "--gradient_checkpointing=true", "--gradient_checkpointing_interval=2")
    assert plain["flops_recomputed_per_step"] == 0
    for run in (every, half):  # model FLOPs are the same with or without recomputation
        assert run["flops_per_step"] == pytest.approx(plain["flops_per_step"], rel=1e-6)
    # every block recomputed: the blocks' forward, about half a LoRA step (frozen weights get no weight
    # gradients, so backward costs about one forward)
    assert 0.3 < every["flops_recomputed_per_step"] / plain["flops_per_step"] < 0.7
    assert half["flops_recomputed_per_step"] == pytest.approx(
        every["flops_recomputed_per_step"] / 2, rel=0.05
    )
