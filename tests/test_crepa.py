"""CREPA on the tiny models with a tiny random DINOv2: cached features, the alignment formula, every family,
the term falling while training, the projector in checkpoints (resumed exactly) and never in the LoRA."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import Dinov2Model

from cinetune.benchmark import synthetic_batch
from cinetune.cache.builder import CacheBuilder
from cinetune.cli import main
from cinetune.config import load_config
from cinetune.data import SkipReport, load_pixels, scan_datasets
from cinetune.export.lora import DIFFUSERS_FILE
from cinetune.models.vision import FrameFeatures
from cinetune.plan import resolve
from cinetune.training.regularizers.crepa import PROJECTOR_FILE, alignment
from cinetune.training.step import step_loss
from cinetune.training.trainer import Trainer

CASES = {
    "ltxvideo": {"model_family": "ltxvideo", "model_flavour": "tiny"},
    "ltxvideo2-i2v": {
        "model_family": "ltxvideo2",
        "model_flavour": "tiny",
        "first_frame_conditioning_p": 1.0,
    },
    "kandinsky5-i2v": {"model_family": "kandinsky5-video", "model_flavour": "tiny-i2v"},
}


def _crepa(dinov2: Path, **kw: Any) -> dict[str, Any]:
    return {
        "crepa_enabled": True,
        "crepa_block_index": 1,
        "crepa_model": str(dinov2),
        "crepa_encoder_image_size": 28,
        **kw,
    }


def test_cached_features_are_dinov2_patch_tokens_of_the_latent_frames(
    tmp_path: Path, clips_dir: Path, make_config, tiny_dinov2_dir: Path
) -> None:
    plan = resolve(load_config(make_config(tmp_path, clips_dir, None, **_crepa(tiny_dinov2_dir))))
    samples = scan_datasets(plan.training_media, plan.family.frame_rule, 24, plan.train.seed, SkipReport())
    features = FrameFeatures(str(tiny_dinov2_dir), 28)

    def builder(with_features: FrameFeatures | None) -> CacheBuilder:
        return CacheBuilder(
            plan.family,
            text_root=tmp_path / "text",
            latent_roots={"clips": tmp_path / "vae"},
            device=torch.device("cpu"),
            dtype=torch.float32,
            max_sequence_length=plan.train.max_sequence_length,
            features=with_features,
        )

    index = builder(features)
    index.build_latents(samples)
    entry = index.index.latent(0, 0, "clips")
    pixels = load_pixels(samples[0], 0)  # (3, 9, H, W) in [-1, 1]
    latent_frames = entry["latents"].shape[1]
    picks = torch.linspace(0, pixels.shape[1] - 1, latent_frames).long()  # frames 0 and 8 of 9
    assert picks.tolist() == [0, 8]
    images = F.interpolate((pixels[:, picks].permute(1, 0, 2, 3) + 1) / 2, size=(28, 28), mode="bilinear")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model = Dinov2Model.from_pretrained(tiny_dinov2_dir).eval()
    with torch.no_grad():
        expected = model(pixel_values=(images - mean) / std).last_hidden_state[:, 1:]
    assert entry["crepa_features"].shape == (latent_frames, 4, 24)  # 2 x 2 patches of 14 px, width 24
    torch.testing.assert_close(entry["crepa_features"], expected, rtol=1e-5, atol=1e-5)
    plain = builder(None)
    assert plain.latent_key(samples[0], 0) != index.latent_key(samples[0], 0)  # features are in the key
    assert plain.latent_key(samples[0], 0) != builder(FrameFeatures(str(tiny_dinov2_dir), 56)).latent_key(
        samples[0], 0
    )


def test_alignment_is_the_distance_weighted_cosine_of_frames_and_their_neighbours() -> None:
    torch.manual_seed(0)
    projected, features = torch.randn(2, 4, 3, 2, 8), torch.randn(2, 4, 3, 2, 8)
    for distance, tau in ((0, 1.0), (1, 1.0), (2, 0.5), (9, 1.0)):
        score, own = alignment(projected, features, distance, tau)
        expected = torch.zeros(2)
        for b in range(2):
            frames = []
            for f in range(4):

                def s(g: int, b: int = b, f: int = f) -> float:
                    return float(F.cosine_similarity(projected[b, f], features[b, g], dim=-1).mean())

                total = s(f)
                d = min(distance, 3)
                if d:
                    total += math.exp(-d / tau) * sum(s(g) for g in (f - d, f + d) if 0 <= g < 4)
                frames.append(total)
            expected[b] = sum(frames) / 4
        torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-6)
    own_expected = F.cosine_similarity(projected, features, dim=-1).mean()
    torch.testing.assert_close(own, own_expected)


def _trainer(tmp_path: Path, clips_dir: Path, make_config, case: str, dinov2: Path, **kw: Any) -> Trainer:
    plan = resolve(load_config(make_config(tmp_path, clips_dir, None, **CASES[case], **_crepa(dinov2), **kw)))
    trainer = Trainer(plan)
    torch.manual_seed(0)
    trainer.setup_model(plan.family.load_transformer(torch.float32), total_steps=30)
    return trainer


def _batch(trainer: Trainer) -> Any:
    torch.manual_seed(1)
    return synthetic_batch(trainer, trainer.family.architecture_config(), (64, 64), 9, 2)


@pytest.mark.parametrize("case", list(CASES))
def test_crepa_trains_the_projector_and_the_lora_on_every_family(
    case: str, tmp_path: Path, clips_dir: Path, make_config, tiny_dinov2_dir: Path
) -> None:
    routes = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 1, "end_layer_idx": 1}]}
    trainer = _trainer(tmp_path, clips_dir, make_config, case, tiny_dinov2_dir, tread_config=routes)
    model = trainer.acc.unwrap_model(trainer.model)
    projector = trainer.extras.crepa.projector
    assert {id(p) for p in projector.parameters()} <= {id(p) for p in trainer.params}
    batch = _batch(trainer)
    assert batch.tensors["crepa_features"].shape[2:] == (4, 24)
    out = step_loss(
        trainer.family,
        trainer.model,
        batch,
        torch.Generator().manual_seed(2),
        "uniform",
        trainer.device,
        torch.float32,
        trainer.extras,
    )
    assert "crepa" in out.streams and math.isfinite(float(out.streams["crepa"]))
    out.total.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in projector.parameters())
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]  # (B = 0: A has no gradient yet)
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in lora_b)


def test_the_alignment_term_falls_while_training(
    tmp_path: Path, clips_dir: Path, make_config, tiny_dinov2_dir: Path
) -> None:
    trainer = _trainer(tmp_path, clips_dir, make_config, "ltxvideo", tiny_dinov2_dir, learning_rate=1e-2)
    batch = _batch(trainer)
    terms = []
    for step in range(10):
        generator = torch.Generator().manual_seed(step)
        trainer.state.step = step
        out = step_loss(
            trainer.family,
            trainer.model,
            batch,
            generator,
            "uniform",
            trainer.device,
            torch.float32,
            trainer.extras,
        )
        terms.append(float(out.streams["crepa"]))
        out.total.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert terms[-1] < terms[0] - 0.05, terms  # more negative: better aligned


def test_projector_resumes_exactly_and_stays_out_of_the_lora(
    tmp_path: Path, clips_dir: Path, make_config, tiny_dinov2_dir: Path
) -> None:
    common = {**_crepa(tiny_dinov2_dir), "checkpointing_steps": 2, "use_ema": True}
    whole = make_config(tmp_path / "whole", clips_dir, None, max_train_steps=4, **common)
    assert main(["train", "--config", str(whole)]) == 0
    parts = make_config(tmp_path / "parts", clips_dir, None, max_train_steps=2, **common)
    assert main(["train", "--config", str(parts)]) == 0
    assert (
        main(["train", "--config", str(parts), "--max_train_steps=4", "--resume_from_checkpoint=latest"]) == 0
    )
    for name in (PROJECTOR_FILE, "lora.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "whole" / "output" / "checkpoint-4" / name))
        b = load_file(str(tmp_path / "parts" / "output" / "checkpoint-4" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    start = load_file(str(tmp_path / "parts" / "output" / "checkpoint-2" / PROJECTOR_FILE))
    end = load_file(str(tmp_path / "parts" / "output" / "checkpoint-4" / PROJECTOR_FILE))
    assert any(not torch.equal(start[k], end[k]) for k in start)  # it trained
    for folder in ("output", "output/ema"):
        lora = load_file(str(tmp_path / "whole" / folder / DIFFUSERS_FILE))
        assert lora and not any("crepa" in k for k in lora)
        ema = load_file(str(tmp_path / "whole" / "output" / "checkpoint-4" / "ema.safetensors"))
        assert not any("crepa" in k for k in ema)  # the EMA is the adapter's, not the projector's


def test_crepa_settings_are_checked(
    tmp_path: Path, clips_dir: Path, make_config, tiny_dinov2_dir, capsys
) -> None:
    for settings, message in (
        ({"crepa_block_index": 2}, "crepa_block_index 2: the ltxvideo flavour has 2 video blocks"),
        ({"crepa_cumulative_neighbors": True}, "not supported yet"),
        ({"crepa_encoder_image_size": 30}, None),
    ):
        path = make_config(tmp_path, clips_dir, None, **{**_crepa(tiny_dinov2_dir), **settings})
        if message is None:  # not a multiple of the patch size: found when the encoder loads
            with pytest.raises(Exception, match="not a multiple of the DINOv2 patch size 14"):
                FrameFeatures(str(tiny_dinov2_dir), 30).load(torch.float32)
            continue
        assert main(["check", "--config", str(path)]) == 2
        assert message in capsys.readouterr().err
    path = make_config(tmp_path, clips_dir, None, **_crepa(tiny_dinov2_dir), crepa_drop_vae_encoder=True)
    assert any("crepa_drop_vae_encoder changes nothing" in m for m in resolve(load_config(path)).warnings)
