"""`cinetune bench` on CPU with the tiny flavour (figures are printed, never asserted as timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cinetune.cli import main
from cinetune.models.registry import build_family


def _bench(tmp_path: Path, name: str, *extra: str) -> dict:
    path = tmp_path / f"{name}.json"
    args = [
        "bench",
        "--family",
        "ltxvideo",
        "--flavour",
        "tiny",
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
