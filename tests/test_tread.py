"""TREAD token routing on every family's tiny model: off (ratio 0) changes nothing, routed blocks see the kept
tokens only (their RoPE and per-token timesteps too), the dropped tokens skip the route unchanged, first-frame
tokens are never dropped, gradient checkpointing reruns the same routes, and the overfit loss still falls."""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from cinetune.benchmark import synthetic_batch
from cinetune.cli import main
from cinetune.config import load_config
from cinetune.errors import CinetuneError, NotSupportedYet
from cinetune.plan import resolve
from cinetune.training.step import step_loss
from cinetune.training.trainer import Trainer

CASES = {
    "ltxvideo": {"model_family": "ltxvideo", "model_flavour": "tiny"},
    "ltxvideo-i2v": {"model_family": "ltxvideo", "model_flavour": "tiny", "first_frame_conditioning_p": 1.0},
    "ltxvideo2-i2v": {
        "model_family": "ltxvideo2",
        "model_flavour": "tiny",
        "first_frame_conditioning_p": 1.0,
    },
    "ltxvideo2.3": {"model_family": "ltxvideo2", "model_flavour": "tiny-2.3"},
    "kandinsky5": {"model_family": "kandinsky5-video", "model_flavour": "tiny"},
    "kandinsky5-i2v": {"model_family": "kandinsky5-video", "model_flavour": "tiny-i2v"},
}
ALL = pytest.mark.parametrize("case", list(CASES))


def _routes(ratio: float, start: int = 1, end: int = -1) -> dict[str, Any]:
    return {"routes": [{"selection_ratio": ratio, "start_layer_idx": start, "end_layer_idx": end}]}


def _trainer(tmp_path: Path, clips_dir: Path, make_config, case: str, **kw: Any) -> Trainer:
    path = make_config(tmp_path, clips_dir, None, **CASES[case], **kw)
    trainer = Trainer(resolve(load_config(path)))
    torch.manual_seed(0)
    trainer.setup_model(trainer.family.load_transformer(torch.float32), total_steps=40)
    with torch.no_grad():  # LoRA B off zero: the adapter takes part, as after some training
        for name, param in trainer.acc.unwrap_model(trainer.model).named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return trainer


def _batch(trainer: Trainer, lengths: tuple[int, ...] = (5, 5), frames: int = 9) -> Any:
    torch.manual_seed(1)
    batch = synthetic_batch(trainer, trainer.family.architecture_config(), (64, 64), frames, len(lengths))
    config = dict(trainer.acc.unwrap_model(trainer.model).config)
    family = trainer.family
    batch.text = family.collate_text([family.synthetic_caption(config, n) for n in lengths])
    return batch


def _loss(trainer: Trainer, batch: Any, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return step_loss(
        trainer.family,
        trainer.model,
        batch,
        generator,
        "uniform",
        trainer.device,
        torch.float32,
        trainer.extras,
    ).total


@ALL
def test_ratio_zero_changes_nothing(case: str, tmp_path: Path, clips_dir: Path, make_config) -> None:
    plain = _trainer(tmp_path / "a", clips_dir, make_config, case)
    routed = _trainer(tmp_path / "b", clips_dir, make_config, case, tread_config=_routes(0.0, 0, -1))
    assert routed.extras.router is not None and plain.extras.router is None
    batch = _batch(plain)
    torch.testing.assert_close(_loss(routed, batch), _loss(plain, batch), rtol=1e-6, atol=1e-7)


def _record_blocks(trainer: Trainer) -> tuple[list[dict[str, Any]], list[Any]]:
    """Per call of each video block (in order): its token-aligned inputs as the block receives them, and the
    route's full input / restored output around it."""
    family = trainer.family
    model = trainer.acc.unwrap_model(trainer.model)
    names = dict(family.token_aligned_inputs)
    calls: list[dict[str, Any]] = []
    handles = []
    for index, block in enumerate(family.blocks(model, family.video_blocks)):
        signature = inspect.signature(block.forward)

        def seen(module, args, kwargs, index=index, signature=signature):
            bound = signature.bind(*args, **kwargs).arguments
            calls.append({"block": index, **{k: v for k, v in bound.items() if k in names}})

        def restored(module, args, kwargs, output, index=index):
            calls.append({"block": index, "output": output[0] if isinstance(output, tuple) else output})

        handles.append(block.register_forward_pre_hook(seen, with_kwargs=True))  # after the router's: cut
        handles.append(
            block.register_forward_hook(restored, with_kwargs=True)
        )  # after the router's: restored
    return calls, handles


def _tokens(value: Any, dim: int) -> int:
    first = value[0] if isinstance(value, tuple) else value
    return first.shape[dim]


@ALL
def test_routed_blocks_see_the_kept_tokens_and_the_dropped_ones_skip_the_route(
    case: str, tmp_path: Path, clips_dir: Path, make_config
) -> None:
    trainer = _trainer(tmp_path, clips_dir, make_config, case, tread_config=_routes(0.5, 1, 1))
    family = trainer.family
    calls, handles = _record_blocks(trainer)
    kept: list[torch.Tensor] = []
    real = trainer.extras.router.prepare

    def prepare(forward, generator):
        real(forward, generator)
        kept.append(trainer.extras.router.pending[0].kept)
        frames, height, width = forward.video_grid
        assert forward.kwargs["hidden_states"].shape[0] == kept[-1].shape[0]
        kept.append(frames * height * width)
        kept.append(forward.cond_tokens)

    trainer.extras.router.prepare = prepare
    _loss(trainer, _batch(trainer))
    for handle in handles:
        handle.remove()
    indices, num_tokens, cond = kept
    assert indices.shape[1] == num_tokens - round(0.5 * num_tokens)
    if cond is not None:  # every first-frame token is kept, in every sample
        assert all(
            set(row.nonzero().flatten().tolist()) <= set(k.tolist())
            for row, k in zip(cond, indices, strict=True)
        )
    video = next(iter(dict(family.token_aligned_inputs)))
    seen = [c for c in calls if "output" not in c]
    assert [c["block"] for c in seen] == [0, 1]
    for name, dim in family.token_aligned_inputs:
        value = seen[0].get(name)
        if value is None or _tokens(value, dim) not in (num_tokens, indices.shape[1]):
            continue  # absent, or per sample (B, 1, D)
        assert _tokens(value, dim) == num_tokens, name  # block 0 is outside the route
        assert _tokens(seen[1][name], dim) == indices.shape[1], name  # block 1 sees the kept tokens
    # the route's input, cut to the kept tokens, is what block 1 got; its restored output keeps the dropped
    # tokens as they entered
    before = next(c["output"] for c in calls if c.get("block") == 0 and "output" in c)
    after = next(c["output"] for c in calls if c.get("block") == 1 and "output" in c)
    assert after.shape == before.shape
    gathered = torch.gather(before, 1, indices[..., None].expand(-1, -1, before.shape[-1]))
    torch.testing.assert_close(seen[1][video], gathered)
    dropped = torch.ones(before.shape[:2], dtype=torch.bool)
    dropped.scatter_(1, indices, False)
    torch.testing.assert_close(after[dropped], before[dropped])
    assert not torch.allclose(after[~dropped], before[~dropped])


@ALL
def test_gradient_checkpointing_reruns_the_same_routes(
    case: str, tmp_path: Path, clips_dir: Path, make_config
) -> None:
    """Two routes over both blocks (the second route's start block follows the first's end); Kandinsky's
    batch of two caption lengths makes two forward passes before one backward."""
    routes = {
        "routes": [
            {"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 0},
            {"selection_ratio": 0.25, "start_layer_idx": 1, "end_layer_idx": 1},
        ]
    }

    def loss_and_grads(**kw: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        trainer = _trainer(tmp_path / str(len(kw)), clips_dir, make_config, case, tread_config=routes, **kw)
        loss = _loss(trainer, _batch(trainer, (5, 7)))
        loss.backward()
        model = trainer.acc.unwrap_model(trainer.model)
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    loss, grads = loss_and_grads()
    loss_ckpt, grads_ckpt = loss_and_grads(gradient_checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", ["ltxvideo-i2v", "ltxvideo2.3", "kandinsky5"])
def test_overfit_loss_still_falls_with_routing(
    case: str, tmp_path: Path, clips_dir: Path, make_config
) -> None:
    """One batch, the same draws every step: the loss falls. (At 9 frames LTX's 8 tokens are too few: with
    first-frame conditioning, routing would leave no loss token in the route; hence 17 frames.)"""
    routes = _routes(0.5, 0, -1)
    trainer = _trainer(tmp_path, clips_dir, make_config, case, tread_config=routes, learning_rate=1e-2)
    batch = _batch(trainer, frames=17 if case.startswith("ltxvideo-") else 9)
    losses = []
    for step in range(8 if case.startswith("ltxvideo2") else 12):
        trainer.state.generator = torch.Generator().manual_seed(7)  # one batch, the same noise: overfit
        trainer.state.step = step
        losses.append(trainer.optimizer_step([batch])[0])
    falls = sum(b < a for a, b in itertools.pairwise(losses))
    assert falls >= len(losses) - 2 and sum(losses[-3:]) < 0.98 * sum(losses[:3]), losses


def test_routes_are_checked_against_the_models_blocks(
    tmp_path: Path, clips_dir: Path, make_config, capsys
) -> None:
    for routes, message in (
        (_routes(0.5, 0, 5), "outside the model's 2 video blocks"),
        (
            {"routes": [_routes(0.5, 0, 1)["routes"][0], _routes(0.3, 1, 1)["routes"][0]]},
            "overlap",
        ),
        ({"routes": []}, "routes"),
        ({"routes": [{"selection_ratio": 1.0, "start_layer_idx": 0, "end_layer_idx": 0}]}, "selection_ratio"),
    ):
        path = make_config(tmp_path, clips_dir, None, tread_config=routes)
        assert main(["check", "--config", str(path)]) == 2
        assert message in capsys.readouterr().err
    nabla = {"model_family": "kandinsky5-video", "model_flavour": "t2v-lite-sft-10s"}
    path = make_config(tmp_path, clips_dir, None, **nabla, tread_config=_routes(0.5, 0, 1))
    with pytest.raises(NotSupportedYet, match="NABLA"):
        resolve(load_config(path))
    assert issubclass(NotSupportedYet, CinetuneError)
