"""Scheduled sampling (rollout) on every family's tiny model: the probability schedule, the rollout lengths,
and the rolled-out input, checked against diffusers' FlowMatchEulerDiscreteScheduler stepping the same
model."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from cinetune.benchmark import synthetic_batch
from cinetune.cli import main
from cinetune.config import load_config
from cinetune.errors import NotSupportedYet
from cinetune.objectives.loss import model_outputs
from cinetune.plan import resolve
from cinetune.training.rollout import Rollout
from cinetune.training.trainer import Trainer

FAMILIES = {
    "ltxvideo-i2v": {"model_family": "ltxvideo", "model_flavour": "tiny", "first_frame_conditioning_p": 1.0},
    "ltxvideo2": {"model_family": "ltxvideo2", "model_flavour": "tiny"},
    "kandinsky5-i2v": {"model_family": "kandinsky5-video", "model_flavour": "tiny-i2v"},
}


def _settings(**kw: Any) -> SimpleNamespace:
    base = {
        "scheduled_sampling_max_step_offset": 10,
        "scheduled_sampling_probability": 0.0,
        "scheduled_sampling_prob_start": 0.0,
        "scheduled_sampling_prob_end": 0.5,
        "scheduled_sampling_ramp_steps": 0,
        "scheduled_sampling_start_step": 0,
        "scheduled_sampling_ramp_shape": "linear",
        "scheduled_sampling_strategy": "uniform",
    }
    return SimpleNamespace(**{**base, **{f"scheduled_sampling_{k}": v for k, v in kw.items()}})


def test_probability_follows_the_ramp() -> None:
    assert Rollout(_settings(probability=0.3)).probability(500) == 0.3
    linear = Rollout(_settings(ramp_steps=100, start_step=50, prob_start=0.1, prob_end=0.5))
    assert [linear.probability(s) for s in (0, 50, 100, 150, 400)] == pytest.approx([0.1, 0.1, 0.3, 0.5, 0.5])
    cosine = Rollout(_settings(ramp_steps=100, prob_start=0.0, prob_end=1.0, ramp_shape="cosine"))
    assert cosine.probability(25) == pytest.approx(0.5 - 0.5 * math.cos(math.pi * 0.25))
    assert cosine.probability(50) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("strategy", "mean"), [("uniform", 5.0), ("biased_early", 10 / 3), ("biased_late", 20 / 3)]
)
def test_rollout_lengths_follow_the_strategy_and_probability(strategy: str, mean: float) -> None:
    generator = torch.Generator().manual_seed(0)
    every = Rollout(_settings(probability=1.0, strategy=strategy)).offsets(20000, 0, generator)
    assert int(every.min()) >= 0 and int(every.max()) == 10
    assert float(every.float().mean()) == pytest.approx(mean, abs=0.1)
    some = Rollout(_settings(probability=0.25, strategy="biased_late")).offsets(20000, 0, generator)
    assert float((some > 0).float().mean()) == pytest.approx(0.25 * 0.99, abs=0.02)  # (k = 0: 1 % of draws)
    assert int(Rollout(_settings(probability=0.0)).offsets(1000, 0, generator).max()) == 0


def _trainer(tmp_path: Path, clips_dir: Path, make_config, family: str, **kw: Any) -> Trainer:
    plan = resolve(load_config(make_config(tmp_path, clips_dir, None, **FAMILIES[family], **kw)))
    trainer = Trainer(plan)
    torch.manual_seed(0)
    trainer.setup_model(plan.family.load_transformer(torch.float32), total_steps=4)
    with torch.no_grad():
        for name, param in trainer.acc.unwrap_model(trainer.model).named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return trainer


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_rolled_out_input_is_the_models_own_euler_steps(
    family: str, tmp_path: Path, clips_dir: Path, make_config
) -> None:
    trainer = _trainer(
        tmp_path,
        clips_dir,
        make_config,
        family,
        scheduled_sampling_max_step_offset=3,
        scheduled_sampling_probability=1.0,
    )
    model = trainer.acc.unwrap_model(trainer.model)
    torch.manual_seed(1)
    batch = synthetic_batch(trainer, trainer.family.architecture_config(), (64, 64), 9, 2)
    (forward, *_) = trainer.family.training_inputs(
        batch, torch.Generator().manual_seed(2), "uniform", trainer.device, torch.float32, model.config
    )
    flow, plain = forward.flow, dict(forward.kwargs)
    targets = [s.target.clone() for s in forward.streams]
    generator = torch.Generator().manual_seed(3)
    offsets = trainer.extras.rollout.offsets(2, 0, torch.Generator().manual_seed(3))
    assert offsets.tolist() != [0, 0]
    trainer.extras.rollout.apply(model, forward, 0, generator)
    # diffusers' Euler scheduler, one per sample, over sigma + k/1000 ... sigma in steps of 1/1000
    video = forward.streams[0]
    expected = []
    for i, k in enumerate(offsets.tolist()):
        sigma = float(flow.sigmas[i])
        start = min(sigma + k / 1000, 1.0)
        x = (1 - start) * flow.x0[i : i + 1] + start * flow.noise[i : i + 1]
        if k:
            scheduler = FlowMatchEulerDiscreteScheduler()
            scheduler.set_timesteps(sigmas=[max(start - j / 1000, sigma) for j in range(k + 1)])
            for j in range(k):
                current = torch.tensor([float(scheduler.sigmas[j])] * 2, dtype=flow.sigmas.dtype)
                full = flow.x0.clone()  # the other rows do not matter: samples do not mix in the model
                full[i : i + 1] = x
                with torch.no_grad():
                    out = model_outputs(model(**{**plain, **flow.inputs_at(full, current)}))[video.output]
                velocity = out.reshape(flow.x0.shape)[i : i + 1]
                x = scheduler.step(velocity, scheduler.timesteps[j], x).prev_sample
        expected.append(x)
    rolled = flow.inputs_at(torch.cat(expected), flow.sigmas)
    torch.testing.assert_close(forward.kwargs["hidden_states"], rolled["hidden_states"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(forward.kwargs["timestep"], plain["timestep"])  # at the training sigma
    assert not torch.allclose(forward.kwargs["hidden_states"], plain["hidden_states"])
    for stream, target in zip(forward.streams, targets, strict=True):
        assert torch.equal(stream.target, target)  # the target stays eps - x0


def test_a_rollout_step_trains_and_its_offsets_come_from_the_run_seed(
    tmp_path: Path, clips_dir: Path, make_config
) -> None:
    trainer = _trainer(
        tmp_path,
        clips_dir,
        make_config,
        "ltxvideo-i2v",
        scheduled_sampling_max_step_offset=4,
        scheduled_sampling_probability=1.0,
        tread_config={"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": -1}]},
    )
    calls: list[bool] = []
    model = trainer.acc.unwrap_model(trainer.model)
    block = model.transformer_blocks[0]
    block.register_forward_pre_hook(lambda m, a, k: calls.append(torch.is_grad_enabled()), with_kwargs=True)
    torch.manual_seed(1)
    batch = synthetic_batch(trainer, trainer.family.architecture_config(), (64, 64), 9, 2)
    loss, _ = trainer.optimizer_step([batch])
    offsets = trainer.extras.rollout.last_offsets
    assert math.isfinite(loss) and int(offsets.max()) > 0
    assert calls.count(False) == int(offsets.max()) and calls[-1]  # the rollout, then the training forward


def test_unbuilt_rollout_options_are_rejected(tmp_path: Path, clips_dir: Path, make_config, capsys) -> None:
    for settings, message in (
        ({"scheduled_sampling_sampler": "unipc"}, "not supported yet"),
        ({"scheduled_sampling_reflexflow": True}, "ReflexFlow"),
        ({"scheduled_sampling_order": 2}, "not supported yet"),
    ):
        path = make_config(tmp_path, clips_dir, None, scheduled_sampling_max_step_offset=4, **settings)
        assert main(["check", "--config", str(path)]) == 2
        assert message in capsys.readouterr().err
    path = make_config(tmp_path, clips_dir, None, scheduled_sampling_reflexflow=True)
    with pytest.raises(NotSupportedYet):
        resolve(load_config(path))
