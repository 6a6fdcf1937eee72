"""Speed options keep the training step's numbers: attention backend dispatch, regional compilation."""

from __future__ import annotations

import pytest
import torch

from cinetune.config import LoadedConfig
from cinetune.config.load import build_train_config
from cinetune.errors import ConfigError
from cinetune.plan import resolve
from cinetune.training.batches import Batch
from cinetune.training.trainer import Trainer


def _losses(**overrides) -> list[float]:
    from cinetune.benchmark import synthetic_batch
    from cinetune.config import LoadedConfig

    cfg = build_train_config(
        {
            "model_family": "ltxvideo",
            "model_flavour": "tiny",
            "mixed_precision": "no",
            "report_to": "none",
            "lora_rank": 4,
            "lora_init_type": "gaussian",
            **overrides,
        }
    )
    trainer = Trainer(resolve(LoadedConfig(train=cfg, data=None, config_path=None)))
    config = trainer.family.architecture_config()
    transformer = trainer.family.load_transformer(torch.float32)
    torch.manual_seed(0)  # the same LoRA init in every run
    trainer.setup_model(transformer, total_steps=10)
    torch.manual_seed(0)
    batch: Batch = synthetic_batch(trainer, config, (64, 64), 9, 2)
    return [trainer.optimizer_step([batch])[0] for _ in range(3)]


def test_attention_backend_math_matches_default() -> None:
    reference = _losses()
    assert _losses(attention_backend="_native_math") == pytest.approx(reference, rel=1e-5)


def test_unknown_attention_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="attention_backend 'flashy' is not a diffusers backend"):
        train = build_train_config({"model_family": "ltxvideo", "attention_backend": "flashy"})
        resolve(LoadedConfig(train=train, data=None, config_path=None))


@pytest.mark.slow
def test_regional_compile_trains_like_eager() -> None:
    reference = _losses()
    assert _losses(compile_transformer_blocks=True) == pytest.approx(reference, rel=1e-4, abs=1e-5)


def test_checkpointing_every_nth_block_keeps_the_losses(monkeypatch) -> None:
    import torch.utils.checkpoint

    calls: list[int] = []
    real = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    reference = _losses()
    assert not calls
    every = _losses(gradient_checkpointing=True)
    per_forward = len(calls) / 3  # 3 steps
    calls.clear()
    half = _losses(gradient_checkpointing=True, gradient_checkpointing_interval=2)
    assert per_forward >= 2 and len(calls) / 3 == pytest.approx(per_forward / 2, abs=0.5)
    assert every == pytest.approx(reference, rel=1e-5) and half == pytest.approx(reference, rel=1e-5)
    with pytest.raises(ConfigError, match="no effect without gradient_checkpointing"):
        build_train_config({"model_family": "ltxvideo", "gradient_checkpointing_interval": 2})
