"""Every family case (cases.py) against the same checks, on tiny real models written in the real layouts:

- the weights written in the family's real on-disk layout load as the built-in tiny model;
- LoRA gets a gradient on every module it targets;
- gradient checkpointing gives the same loss and gradients;
- the latent and text caches give back what the encoders produce;
- a run resumed from a checkpoint ends on the same LoRA as an uninterrupted one;
- the exported LoRA loads into the family's diffusers pipeline and moves its transformer as in training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.families.cases import CASES, FamilyCase, config_pair, write_clips

from cinetune.cache.builder import CacheBuilder
from cinetune.cli import main
from cinetune.config import load_config
from cinetune.data import SkipReport, load_pixels, scan_datasets
from cinetune.export.lora import DIFFUSERS_FILE, save_diffusers_lora
from cinetune.objectives.loss import model_outputs
from cinetune.plan import resolve
from cinetune.training.batches import Batch
from cinetune.training.step import training_loss
from cinetune.training.trainer import Trainer

ALL_CASES = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    """Per case: the model path (real layout) and its clips, written once for the module."""
    out = {}
    for case in CASES:
        root = tmp_path_factory.mktemp(case.id)
        out[case.id] = (case.write(root / "model"), write_clips(root / "clips", case))
    return out


def _plan(root: Path, case: FamilyCase, model: str | None, clips: Path, **overrides):
    return resolve(load_config(config_pair(root, case, model, clips, **overrides)))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if v.is_floating_point()}


@ALL_CASES
def test_real_layout_loads_as_the_builtin_tiny_model(case: FamilyCase, workspace, tmp_path: Path) -> None:
    model, clips = workspace[case.id]
    written = _plan(tmp_path / "a", case, model, clips).family
    builtin = _plan(tmp_path / "b", case, None, clips).family
    pairs = [(written.load_transformer(torch.float32), builtin.load_transformer(torch.float32))]
    pairs += [(written.load_text_encoder(torch.float32)[1], builtin.load_text_encoder(torch.float32)[1])]
    ours, theirs = written.load_latent_encoders(torch.float32), builtin.load_latent_encoders(torch.float32)
    assert ours.keys() == theirs.keys()
    pairs += [(ours[k], theirs[k]) for k in ours]
    for a, b in pairs:
        sa, sb = _state(a), _state(b)
        assert sa.keys() == sb.keys(), type(a).__name__
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f"{type(a).__name__}.{name}"


def _synthetic_batch(trainer: Trainer, lengths=(5, 7)) -> Batch:
    """Cached-shape latents and captions for the transformer the trainer holds (its own config)."""
    family = trainer.family
    arch = dict(trainer.acc.unwrap_model(trainer.model).config)
    latents = [family.synthetic_latents(arch, 64, 64, 9, 24.0) for _ in lengths]
    tensors = {k: torch.stack([item[k] for item in latents]) for k in latents[0]}
    text = family.collate_text([family.synthetic_caption(arch, n) for n in lengths])
    return Batch(tensors=tensors, text=text, frame_rate=24.0, use_std=True)


def _move_lora_b(trainer: Trainer) -> None:
    """B off zero, as after some training: the adapter changes outputs and every weight gets a gradient."""
    with torch.no_grad():
        for name, param in trainer.acc.unwrap_model(trainer.model).named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)


def _loss_and_grads(plan) -> tuple[float, dict[str, torch.Tensor]]:
    trainer = Trainer(plan)
    torch.manual_seed(0)  # the same gaussian LoRA init for every variant
    trainer.setup_model(plan.family.load_transformer(torch.float32), total_steps=1)
    _move_lora_b(trainer)  # LoRA starts with B = 0, which leaves A without a gradient
    batch = _synthetic_batch(trainer)
    generator = torch.Generator().manual_seed(3)
    loss = training_loss(
        plan.family, trainer.model, batch, generator, "shifted_logit_normal", trainer.device, torch.float32
    )
    loss.backward()
    model = trainer.acc.unwrap_model(trainer.model)
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@ALL_CASES
def test_lora_gets_a_gradient_on_every_target(case: FamilyCase, workspace, tmp_path: Path) -> None:
    _, clips = workspace[case.id]
    plan = _plan(tmp_path, case, None, clips)
    _, grads = _loss_and_grads(plan)
    targets = plan.train.lora_target_modules
    assert grads and all("lora_" in n for n in grads)
    for target in targets:  # every target matched some module...
        assert any(f".{target}.lora_" in f".{n}" for n in grads), target
    dead = [n for n, g in grads.items() if not bool(g.abs().sum() > 0)]
    assert not dead, dead  # ...and every adapted module gets a gradient


@ALL_CASES
def test_gradient_checkpointing_keeps_the_loss_and_gradients(
    case: FamilyCase, workspace, tmp_path: Path
) -> None:
    _, clips = workspace[case.id]
    loss, grads = _loss_and_grads(_plan(tmp_path / "plain", case, None, clips))
    loss_ckpt, grads_ckpt = _loss_and_grads(
        _plan(tmp_path / "ckpt", case, None, clips, gradient_checkpointing=True)
    )
    assert loss_ckpt == pytest.approx(loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6)


@ALL_CASES
def test_cache_round_trip(case: FamilyCase, workspace, tmp_path: Path) -> None:
    _, clips = workspace[case.id]
    plan = _plan(tmp_path, case, None, clips)
    cfg, family = plan.train, plan.family
    samples = scan_datasets(plan.training_media, family.frame_rule, cfg.frame_rate, cfg.seed, SkipReport())

    def build():
        return CacheBuilder(
            family,
            text_root=tmp_path / "cache" / "text",
            latent_roots={"clips": tmp_path / "cache" / "vae"},
            device=torch.device("cpu"),
            dtype=torch.float32,
            max_sequence_length=cfg.max_sequence_length,
        ).build(samples)

    index = build()
    encoders = family.load_latent_encoders(torch.float32)
    for encoder in encoders.values():
        encoder.eval()
    sample = samples[1]
    direct = family.encode_sample(encoders, sample, 1, load_pixels(sample, 1))
    cached = index.latent(1, 1, "clips")
    assert cached.keys() == direct.keys()
    for key in direct:
        torch.testing.assert_close(cached[key], direct[key], rtol=1e-5, atol=1e-5)
    tokenizer, text_encoder = family.load_text_encoder(torch.float32)
    caption = sample.captions[0]
    (expected,) = family.encode_text(tokenizer, text_encoder.eval(), [caption], cfg.max_sequence_length)
    got = index.text_embeds(caption)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)
    # a second build finds every entry on disk and encodes nothing
    again = build()
    assert again.stats["latent_encoded"] == 0 and again.stats["text_encoded"] == 0


def _lora(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / DIFFUSERS_FILE))


@ALL_CASES
def test_resume_equals_uninterrupted(case: FamilyCase, workspace, tmp_path: Path) -> None:
    model, clips = workspace[case.id]
    whole = config_pair(tmp_path / "whole", case, model, clips, checkpointing_steps=2)
    assert main(["train", "--config", str(whole)]) == 0
    parts = config_pair(tmp_path / "parts", case, model, clips, checkpointing_steps=2, max_train_steps=2)
    assert main(["train", "--config", str(parts)]) == 0
    assert (
        main(["train", "--config", str(parts), "--max_train_steps=4", "--resume_from_checkpoint=latest"]) == 0
    )
    expected, resumed = _lora(tmp_path / "whole" / "output"), _lora(tmp_path / "parts" / "output")
    assert expected.keys() == resumed.keys() and expected
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    start = load_file(str(tmp_path / "parts" / "output" / "checkpoint-2" / "lora.safetensors"))
    assert any(not torch.equal(start[k], v) for k, v in _peft_state(expected).items())  # it trained


def _peft_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("transformer."): v for k, v in tensors.items()}


@ALL_CASES
def test_exported_lora_loads_into_the_pipeline_and_moves_it_as_in_training(
    case: FamilyCase, workspace, tmp_path: Path
) -> None:
    """The diffusers file the trainer writes, loaded by the family's pipeline class with load_lora_weights,
    gives the transformer the outputs of the model it was saved from."""
    model, clips = workspace[case.id]
    plan = _plan(tmp_path, case, model, clips)
    family = plan.family
    trainer = Trainer(plan)
    torch.manual_seed(0)
    trainer.setup_model(family.load_transformer(torch.float32), total_steps=1)
    _move_lora_b(trainer)
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trained = trainer.acc.unwrap_model(trainer.model).eval()
    config = trainer.lora_config.to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    path = save_diffusers_lora(trainer.output_dir, family.pipeline_class, trained, config)

    vae = family.load_vae(torch.float32)
    scheduler = family.load_scheduler()
    pipe = family.build_pipeline(family.load_transformer(torch.float32).eval(), vae, scheduler)
    assert type(pipe).__name__ == case.pipeline
    reference = family.build_pipeline(trained, vae, scheduler).transformer
    batch = _synthetic_batch(trainer)
    (inputs, *_) = family.training_inputs(
        batch,
        torch.Generator().manual_seed(1),
        "shifted_logit_normal",
        trainer.device,
        torch.float32,
        trained.config,
    )
    with torch.no_grad():
        before = model_outputs(pipe.transformer(**inputs.kwargs))
        pipe.load_lora_weights(str(path))
        after = model_outputs(pipe.transformer(**inputs.kwargs))
        expected = model_outputs(reference(**inputs.kwargs))
    for stream in inputs.streams:  # the predictions training scores (LTX-2 video-only: not the audio stub)
        got, want, base = after[stream.output], expected[stream.output], before[stream.output]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got, base, atol=1e-4), stream.name  # the LoRA really moved it


@ALL_CASES
def test_declared_blocks_are_the_transformers_repeated_blocks(
    case: FamilyCase, workspace, tmp_path: Path
) -> None:
    """The block lists a family declares (what offload, swap, FSDP, routing and alignment hook into) are the
    transformer's ModuleLists of its repeated block classes, in forward order, and the video list is one."""
    _, clips = workspace[case.id]
    family = _plan(tmp_path, case, None, clips).family
    model = family.load_transformer(torch.float32)
    repeated = set(type(model)._repeated_blocks)
    for name in family.transformer_blocks:
        blocks = getattr(model, name)
        assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0, name
        assert {type(b).__name__ for b in blocks} <= repeated, name
    assert family.video_blocks in family.transformer_blocks
    assert family.blocks(model) == [b for name in family.transformer_blocks for b in getattr(model, name)]
    every = [m for m in model.modules() if type(m).__name__ in repeated]
    assert len(every) == len(family.blocks(model))  # no repeated block is left out of the lists


EXTRAS_CASES = [c for c in CASES if c.id in ("ltxvideo-i2v", "ltxvideo2-av-i2v", "kandinsky5-i2v")]


@pytest.mark.parametrize("case", EXTRAS_CASES, ids=[c.id for c in EXTRAS_CASES])
def test_resume_with_every_extra_on_equals_uninterrupted(
    case: FamilyCase, workspace, tmp_path: Path, tiny_dinov2_dir: Path
) -> None:
    """TREAD, scheduled sampling, CREPA and EMA together (each draws from the run's generator or keeps
    state in the checkpoint): a run resumed at step 2 ends on the same LoRA, EMA and projector."""
    model, clips = workspace[case.id]
    extras = {
        "tread_config": {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 0, "end_layer_idx": 0}]},
        "scheduled_sampling_max_step_offset": 2,
        "scheduled_sampling_probability": 1.0,
        "crepa_enabled": True,
        "crepa_block_index": 1,
        "crepa_model": str(tiny_dinov2_dir),
        "crepa_encoder_image_size": 28,
        "use_ema": True,
        "ema_decay": 0.9,
        "checkpointing_steps": 2,
    }
    # (each run builds its own cache: for LTX-2 with audio, building one moves the global RNG before the
    # LoRA is initialised, so a run that finds the cache built would start from another LoRA)
    whole = config_pair(tmp_path / "whole", case, model, clips, **extras)
    assert main(["train", "--config", str(whole)]) == 0
    parts = config_pair(tmp_path / "parts", case, model, clips, **extras, max_train_steps=2)
    assert main(["train", "--config", str(parts)]) == 0
    assert (
        main(["train", "--config", str(parts), "--max_train_steps=4", "--resume_from_checkpoint=latest"]) == 0
    )
    for name in ("lora.safetensors", "ema.safetensors", "crepa_projector.safetensors"):
        expected = load_file(str(tmp_path / "whole" / "output" / "checkpoint-4" / name))
        resumed = load_file(str(tmp_path / "parts" / "output" / "checkpoint-4" / name))
        assert expected.keys() == resumed.keys() and expected, name
        for key in expected:
            assert torch.equal(expected[key], resumed[key]), (name, key)
    ema = _lora(tmp_path / "whole" / "output" / "ema")
    assert ema.keys() == _lora(tmp_path / "whole" / "output").keys()
