"""`cinetune doctor`: the JSON shape tools read, the exit code, and honest figures (nothing assumed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from cinetune import doctor
from cinetune.cli import main

SECTIONS = {"usable", "verdict", "environment", "gpus", "attention", "precision", "codecs", "disk"}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory, clips_dir: Path):
    from cinetune.config import load_config
    from cinetune.plan import resolve
    from conftest import write_configs

    return resolve(load_config(write_configs(tmp_path_factory.mktemp("doctor"), clips_dir, None)))


@pytest.fixture(scope="module")
def report(plan) -> dict:
    """One doctor run with a config (the probes try real kernels: run them once for every test here)."""
    return doctor.diagnose(plan)


def test_json_report_has_every_section(report: dict) -> None:
    assert SECTIONS | {"hugging_face", "config"} <= set(report)
    json.dumps(report)  # JSON-ready as it is
    assert report["environment"]["torch"] == torch.__version__
    assert {"sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flash_attn", "sageattention"} <= set(
        report["attention"]
    )
    assert report["attention"]["sdpa_math"] == {"ok": True}  # runs everywhere
    assert set(report["hugging_face"]) == {"token_present", "offline", "hf_home"}
    assert {"output_dir", "text cache", "latent cache 'clips'"} <= set(report["disk"])
    assert all(d["free_gib"] >= 0 for d in report["disk"].values())
    assert report["codecs"]["decode"]["h264"]  # the demo clips are H.264: PyAV must read them


def test_the_config_fit_is_the_planners_prediction(report: dict, plan) -> None:
    """The doctor's figure is the peak `cinetune check` prints (training or caching, whichever is higher);
    no GPU here, so the run fits none."""
    from cinetune.check import check_report

    lines: list[str] = []
    check_report(plan, lines.append)
    printed = [
        float(re.search(r"(training|caching): ([0-9.]+) GiB", line).group(2))
        for line in lines
        if re.search(r"^\s*(training|caching): [0-9.]+ GiB on the device", line)
    ]
    config = report["config"]
    assert len(printed) == 2 and config["model"] == "ltxvideo/tiny" and config["fits"] is False
    assert abs(config["predicted_peak_gib"] - max(printed)) <= 0.01


def test_a_predicted_peak_is_compared_with_each_gpu(monkeypatch, plan) -> None:
    monkeypatch.setattr(doctor, "predicted_peak_bytes", lambda plan: 20 * doctor.GIB)
    gpus = [{"free_gib": 79.0}, {"free_gib": 12.0}]
    assert doctor.config_fit(plan, gpus)["fits"] is False  # every rank needs its own GPU to fit
    assert doctor.config_fit(plan, gpus[:1]) == {
        "model": "ltxvideo/tiny",
        "predicted_peak_gib": 20.0,
        "fits": True,
    }
    assert doctor.config_fit(plan, [])["fits"] is False  # no GPU: a full-size model does not fit


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only verdict")
def test_cli_on_a_cpu_machine_is_usable_for_cpu_training(capsys) -> None:
    assert main(["doctor", "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["usable"] is True and parsed["gpus"] == [] and parsed["config"] is None
    assert "usable for CPU training only" in parsed["verdict"]
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "GPU: none found" in text and "attention kernels on cpu:" in text


def test_unusable_gpu_exits_1(monkeypatch, capsys) -> None:
    usable, why = doctor.verdict([{"index": 0}], {"ok": False, "error": "CUDA error: no kernel image"})
    assert not usable and "no kernel image" in why
    monkeypatch.setattr(doctor, "diagnose", lambda plan=None: {"usable": False, "verdict": why})
    assert main(["doctor", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["usable"] is False
