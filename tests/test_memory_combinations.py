"""Every combination of the memory keys the schema accepts trains correctly or is rejected with its reason
(the README's combination table lists the same rows).

Trained combinations run 4 LoRA steps on the tiny LTX-Video with the feature and without it (the same
precision and the same other keys): the LoRA must be bit-identical, since offload and swap only move weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tests.memory_helpers import make_trainer, plain_run, same_weights, train_steps, write_config

from cinetune.config import load_config
from cinetune.errors import CinetuneError
from cinetune.plan import resolve

OFFLOAD = {"enable_group_offload": True}
SWAP = {"musubi_blocks_to_swap": 1}
PRECISIONS = ["bf16", "int8-quanto", "int4-quanto", "fp8-quanto", "int8-torchao", "fp8-torchao"]

# (mover, the other keys): trained with and without the mover, LoRA compared bit for bit
TRAINED: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    *[("group offload", OFFLOAD, {"base_model_precision": p}) for p in PRECISIONS],
    *[("block swap", SWAP, {"base_model_precision": p}) for p in PRECISIONS],
    (
        "group offload",
        {**OFFLOAD, "group_offload_type": "leaf_level"},
        {"base_model_precision": "int8-quanto"},
    ),
    ("group offload", {**OFFLOAD, "group_offload_blocks_per_group": 2}, {"gradient_checkpointing": True}),
    (
        "group offload",
        {**OFFLOAD, "gradient_checkpointing_interval": 2},
        {"gradient_checkpointing": True},
    ),
    ("block swap", {**SWAP, "gradient_checkpointing_interval": 2}, {"gradient_checkpointing": True}),
    ("group offload", OFFLOAD, {"gradient_accumulation_steps": 2}),
    ("block swap", {"musubi_blocks_to_swap": 5}, {}),  # more blocks than the model has: all of them
]

# (config keys, a fragment of the reason)
REJECTED: list[tuple[dict[str, Any], str]] = [
    ({**OFFLOAD, **SWAP}, "pick one"),
    (
        {**OFFLOAD, "group_offload_to_disk_path": "x", "base_model_precision": "int8-quanto"},
        "cannot store quant",
    ),
    (
        {**OFFLOAD, "group_offload_to_disk_path": "x", "text_encoder_1_precision": "fp8-torchao"},
        "cannot store",
    ),
    ({**OFFLOAD, "num_processes": 2}, "DDP broadcasts every weight"),
    ({**SWAP, "num_processes": 2}, "DDP broadcasts every weight"),
    ({**OFFLOAD, "compile_transformer_blocks": True}, "replace the blocks' forward"),
    ({**SWAP, "compile_transformer_blocks": True}, "replace the blocks' forward"),
    ({**SWAP, "musubi_block_swap_device": "meta"}, "on the cpu or on another cuda device"),
    ({"text_encoder_2_precision": "int8-quanto"}, "has one text encoder"),
    ({"model_family": "kandinsky5-video", "vae_enable_temporal_roll": True}, "normalizes over all frames"),
]
if not torch.cuda.is_available():
    REJECTED.append(({"base_model_precision": "nf4-bnb"}, "needs bitsandbytes and a CUDA GPU"))


@pytest.mark.parametrize(
    ("mover", "keys", "others"),
    TRAINED,
    ids=[
        f"{m}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'plain'}-{i}"
        for i, (m, _, o) in enumerate(TRAINED)
    ],
)
def test_combination_trains_the_lora_it_trains_without_the_mover(
    tmp_path: Path, mover: str, keys: dict[str, Any], others: dict[str, Any]
) -> None:
    dtype = {"mixed_precision": "bf16"} if others.get("base_model_precision") == "bf16" else {}
    plain = plain_run(tmp_path, **dtype, **others)
    moved = train_steps(make_trainer(tmp_path / "moved", **dtype, **others, **keys))
    assert moved[0] == plain[0] and same_weights(moved[1], plain[1]), mover


@pytest.mark.parametrize(("keys", "reason"), REJECTED, ids=[r for _, r in REJECTED])
def test_combination_is_rejected_with_its_reason(tmp_path: Path, keys: dict[str, Any], reason: str) -> None:
    with pytest.raises(CinetuneError, match=reason):
        resolve(load_config(write_config(tmp_path, **keys)))


def test_caching_with_a_quantized_text_encoder_under_group_offload(tmp_path: Path) -> None:
    """The text encoder quantized (int8-quanto) and group-offloaded while caching encodes as the quantized
    encoder alone."""
    from cinetune.memory import prepare_encoder
    from cinetune.models.registry import build_family

    family = build_family("ltxvideo", "tiny", None)
    captions = ["a red square", "a dog runs on the beach"]
    outputs = []
    for extra in ({}, OFFLOAD):
        cfg = resolve(
            load_config(
                write_config(tmp_path / str(len(outputs)), text_encoder_1_precision="int8-quanto", **extra)
            )
        ).train
        tokenizer, encoder = family.load_text_encoder(torch.float32)
        encoder = prepare_encoder(encoder, cfg, torch.device("cpu"), family.text_encoder_parts(encoder))
        outputs.append(family.encode_text(tokenizer, encoder, captions, 128))
    for a, b in zip(*outputs, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
