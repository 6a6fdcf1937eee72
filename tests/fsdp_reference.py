"""Run by tests/test_fsdp.py under `torchrun --nproc_per_node=2` (CPU, gloo): FSDP2 over two ranks, each with
one sample, against one process that trains on both samples as one batch (the same global batch).

Both start from the same tiny LTX-Video transformer and LoRA (same seed), take the family's own training
inputs (`prepare_inputs`) and loss (`compute_loss`) and step AdamW 4 times; rank 0 writes the largest LoRA
difference into the file named by argv[1]."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model_state_dict

from cinetune.memory.fsdp import apply_fsdp, full
from cinetune.models.registry import build_family
from cinetune.objectives import compute_loss

STEPS = 4


def samples(family, config):
    """Two samples' latents, noise, sigmas and caption embeddings, the same on every rank."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(2):
        latents = torch.randn(1, config.in_channels, 2, 2, 2, generator=gen)
        text = {
            "prompt_embeds": torch.randn(1, 5, config.caption_channels, generator=gen),
            "prompt_attention_mask": torch.tensor([[1, 1, 1, 1 - i, 0]]),
        }
        out.append((latents, torch.randn(latents.shape, generator=gen), torch.tensor([0.3 + 0.4 * i]), text))
    return out


def loss_of(family, model, batch):
    latents, noise, sigmas, text = batch
    inputs = family.prepare_inputs(latents, noise, sigmas, text, 24.0, torch.float32)
    return compute_loss([inputs], [model(**inputs.kwargs)]).total


def cat(batches):
    """The two samples as one batch of two."""
    text = {k: torch.cat([b[3][k] for b in batches]) for k in batches[0][3]}
    return (*tuple(torch.cat([b[i] for b in batches]) for i in range(3)), text)


def train(family, model, batches, world_batch):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(STEPS):
        loss_of(family, model, world_batch if world_batch is not None else batches).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: full(v.detach()).clone() for k, v in get_peft_model_state_dict(model).items()}


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    family = build_family("ltxvideo", "tiny", None)
    torch.manual_seed(0)
    model = family.load_transformer(torch.float32).requires_grad_(False)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, p in model.named_parameters():  # LoRA B starts at zero: give it values, so A moves too
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05
    batches = samples(family, model.config)
    reference = train(family, copy.deepcopy(model), None, cat(batches)) if rank == 0 else None
    cfg = SimpleNamespace(fsdp_reshard_after_forward=True)
    sharded = apply_fsdp(model, family.blocks(model), cfg, torch.device("cpu"))
    # each rank its own sample; FSDP2 averages the gradients over the ranks as the batch mean does
    trained = train(family, sharded, batches[rank], None)
    if rank == 0:
        diff = max(float((trained[k] - reference[k]).abs().max()) for k in reference)
        moved = max(float(v.abs().max()) for v in reference.values())
        figures = {"max_diff": diff, "max_value": moved, "tensors": len(reference)}
        Path(sys.argv[1]).write_text(json.dumps(figures), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # as cinetune.cli's ranks do (cli._leave_as_rank): skip the interpreter's teardown, where gloo's native
    # threads were torn down mid-flight now and then on CI machines (SIGABRT after everything was written)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
