"""Can diffusers' context parallelism TRAIN a family's LoRA correctly? Measured on the tiny models, CPU, gloo.

Run by hand (2 ranks = one context-parallel group of 2):

    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 bench/context_parallel_probe.py [--family ltxvideo]
        [--family ltxvideo2] [--json out.json]

Every rank builds the same tiny transformer with the same LoRA (lora_B randomised so both LoRA matrices get
gradients) and the same inputs, made by the family's own `prepare_inputs` (what `cinetune train` feeds the
transformer): a text batch padded to its longest caption (so the text attention mask is not all true), and a
second case with first-frame conditioning (the timestep becomes per token, as with
first_frame_conditioning_p); a third, diagnostic case drops the text mask (cinetune never does) to see
whether the rest of the model is sharded correctly. LTX-Video: a fourth (diagnostic) also makes the text as
long as the video, so that every attention has as many keys as queries. LTX-2: a fourth adds audio latents,
and three diagnostic ones build the model with rope_type "interleaved" (3-D rope, which its `_cp_plan`
expects; the releases use "split"). Then, per case:

- reference: the plain model on each rank, forward + backward of the masked MSE on the whole output;
- ring (ring_degree=2) and ulysses (ulysses_degree=2): a fresh identical model after
  `enable_parallelism(ContextParallelConfig(...))`; the same loss on the gathered output, backward; the LoRA
  gradients are compared as computed on the rank (`local`), summed over the group (`sum`) and averaged over
  it (`mean`, what DDP's all-reduce would give).

The max abs differences (output, loss, LoRA gradients) or the exception each run raised are printed by rank
0 (and written to --json). diffusers (0.42) builds the context-parallel mesh on
`torch.accelerator.device_count()` devices, which is 0 on a CPU-only host (a ZeroDivisionError); the probe
records that, then patches the count to 1 so the rest of the question can be answered on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

FAMILIES = ("ltxvideo", "ltxvideo2")


def _tiny_model(name: str, family: Any, rope_type: str | None = None) -> torch.nn.Module:
    from peft import LoraConfig

    torch.manual_seed(0)
    if name == "ltxvideo":
        from diffusers import LTXVideoTransformer3DModel

        from cinetune.models.ltxvideo.configs import TINY_TRANSFORMER_CONFIG

        model = LTXVideoTransformer3DModel(**TINY_TRANSFORMER_CONFIG)
    else:
        from cinetune.models.ltxvideo2.tiny import TINY_TRANSFORMER_CONFIG, LTX2VideoTransformer3DModel

        config = dict(TINY_TRANSFORMER_CONFIG)
        if rope_type:
            config["rope_type"] = rope_type
        model = family.prepare_transformer(LTX2VideoTransformer3DModel(**config))
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(family.default_lora_targets)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.float()


def _inputs(name: str, family: Any, first_frame: bool, audio: bool, lengths: tuple[int, int]) -> Any:
    """The family's own training inputs: batch 2, latents (C, 2, 2, 4) = 16 video tokens, captions of
    `lengths` tokens (padded to the longest)."""
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 16, 2, 2, 4, generator=gen)
    noise = torch.randn(2, 16, 2, 2, 4, generator=gen)
    sigmas = torch.tensor([0.3, 0.8])
    first = None
    if first_frame:
        first = torch.zeros(2, 16, dtype=torch.bool)
        first[:, :8] = True  # the first latent frame (2 x 4 tokens) is clean
    if name == "ltxvideo":
        text = family.collate_text([{"prompt_embeds": torch.randn(n, 32, generator=gen)} for n in lengths])
        return family.prepare_inputs(x0, noise, sigmas, text, 25.0, torch.float32, first_frame=first)
    from cinetune.models.ltxvideo2.family import AudioInputs
    from cinetune.models.ltxvideo2.text import PROJ_KEY

    text = family.collate_text([{PROJ_KEY: torch.randn(n, 32, generator=gen)} for n in lengths])
    av = None
    if audio:
        av = AudioInputs(
            torch.randn(2, 6, 32, generator=gen),
            torch.randn(2, 6, 32, generator=gen),
            torch.tensor([0.2, 0.6]),
            torch.ones(2, 6),
        )
    return family.prepare_inputs(
        x0, noise, sigmas, text, 24.0, torch.float32, first_frame=first, audio=av, audio_channels=32
    )


def _loss(outputs: Any, inputs: Any) -> torch.Tensor:
    total = 0
    for stream in inputs.streams:
        err = (outputs[stream.output] - stream.target) ** 2
        if stream.mask is not None:
            m = stream.mask.to(err.dtype).unsqueeze(-1).expand_as(err)
            total = total + (err * m).sum() / m.sum()
        else:
            total = total + err.mean()
    return total


def _forward(model: torch.nn.Module, inputs: Any) -> tuple[Any, torch.Tensor]:
    outputs = model(**inputs.kwargs)
    return outputs, _loss(outputs, inputs)


def _backward(model: torch.nn.Module, loss: torch.Tensor) -> dict:
    loss.backward()
    # a LoRA the forward did not reach (LTX-2's audio layers in a video-only step) has no gradient: zero
    return {
        n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for n, p in model.named_parameters()
        if "lora_" in n
    }


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _probe(
    name: str,
    case: str,
    first_frame: bool,
    audio: bool,
    masked: bool,
    rope_type: str | None = None,
    lengths: tuple[int, int] = (3, 6),
) -> dict:
    from diffusers import ContextParallelConfig, ParallelConfig

    from cinetune.models.registry import build_family

    family = build_family(name, "tiny", None)
    inputs = _inputs(name, family, first_frame, audio, lengths)
    if not masked:  # diagnostic only: cinetune always passes the text mask
        inputs.kwargs["encoder_attention_mask"] = None
        inputs.kwargs.pop("audio_encoder_attention_mask", None)
    ref_model = _tiny_model(name, family, rope_type)
    ref_out, ref_loss = _forward(ref_model, inputs)
    ref_grads = _backward(ref_model, ref_loss)
    grad_scale = max(float(g.abs().max()) for g in ref_grads.values())
    result: dict[str, Any] = {"family": name, "case": case, "ref_loss": float(ref_loss)}
    result["ref_max_abs_lora_grad"] = grad_scale
    for strategy, degrees in (("ring", {"ring_degree": 2}), ("ulysses", {"ulysses_degree": 2})):
        model = _tiny_model(name, family, rope_type)
        found: dict[str, Any] = {}
        result[strategy] = found
        stage = "enable_parallelism"
        try:
            model.enable_parallelism(
                config=ParallelConfig(context_parallel_config=ContextParallelConfig(**degrees))
            )
            stage = "forward"
            out, loss = _forward(model, inputs)
            found["output_max_abs_diff"] = max(
                float((o - r).abs().max()) for o, r in zip(out, ref_out, strict=True)
            )
            found["loss_abs_diff"] = float((loss - ref_loss).abs())
            stage = "backward"
            grads = _backward(model, loss)
        except Exception as exc:  # the finding is the failure itself
            where = traceback.extract_tb(exc.__traceback__)[-1]
            found["error"] = f"{stage}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            found["at"] = f"{Path(where.filename).name}:{where.lineno}"
            continue
        summed = {k: g.clone() for k, g in grads.items()}
        for g in summed.values():
            dist.all_reduce(g)
        world = dist.get_world_size()
        found["lora_grad_max_abs_diff_local"] = _max_diff(grads, ref_grads)
        found["lora_grad_max_abs_diff_sum"] = _max_diff(summed, ref_grads)
        found["lora_grad_max_abs_diff_mean"] = _max_diff({k: g / world for k, g in summed.items()}, ref_grads)
    return result


def _mesh_on_cpu() -> str | None:
    """diffusers' mesh setup on a host with no accelerator: the error it raises, then patch it."""
    if torch.accelerator.device_count() > 0:
        return None
    from diffusers import ContextParallelConfig, ParallelConfig
    from diffusers.models.transformers.transformer_ltx import LTXVideoTransformer3DModel

    from cinetune.models.ltxvideo.configs import TINY_TRANSFORMER_CONFIG

    finding = None
    try:
        LTXVideoTransformer3DModel(**TINY_TRANSFORMER_CONFIG).enable_parallelism(
            config=ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=2))
        )
    except ZeroDivisionError as exc:
        finding = f"ZeroDivisionError: {exc} (torch.accelerator.device_count() == 0)"
    torch.accelerator.device_count = lambda: 1  # the probe's CPU workaround, see the module docstring
    return finding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results: dict[str, Any] = {
        "torch": torch.__version__,
        "world_size": dist.get_world_size(),
        "cpu_mesh": _mesh_on_cpu(),
        "runs": [],
    }
    import diffusers

    results["diffusers"] = diffusers.__version__
    cases = [
        ("padded text", False, False, True),
        ("padded text + first frame (per-token timestep)", True, False, True),
        ("diagnostic: no text mask (encoder_attention_mask=None)", False, False, False),
    ]
    for name in args.family or ["ltxvideo"]:
        extra = [("padded text + audio", False, True, True)] if name == "ltxvideo2" else []
        for case, first, audio, masked in cases + extra:
            results["runs"].append(_probe(name, case, first, audio, masked))
        if name == "ltxvideo":  # diagnostic: text as long as the video (16 tokens), the cross-attention
            # keys as many as its queries (Ulysses' backward assumes it)
            label = "diagnostic: no text mask, 16 text tokens (= video tokens)"
            results["runs"].append(_probe(name, label, False, False, False, None, (16, 16)))
        if name == "ltxvideo2":  # diagnostic: every LTX-2 release has rope_type "split" (4-D rope)
            for case, audio, masked in (
                ("padded text, video only", False, True),
                ("padded text + audio", True, True),
                ("no text mask + audio", True, False),
            ):
                label = f"diagnostic: rope_type interleaved, {case}"
                results["runs"].append(_probe(name, label, False, audio, masked, "interleaved"))
    if dist.get_rank() == 0:
        print(json.dumps(results, indent=1))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
