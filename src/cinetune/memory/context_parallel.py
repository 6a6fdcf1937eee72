"""Context parallelism (context_parallel_size, context_parallel_comm_strategy): what diffusers' own support
does for each family's training, measured by bench/context_parallel_probe.py (bench/RESULTS.md, "Context
parallelism (CPU, gloo, tiny models)"), and the rejection that follows from it.

diffusers (0.42) shards a transformer's sequence with `ModelMixin.enable_parallelism` and the model class's
`_cp_plan`; allgather is its ring attention (ring_degree), alltoall its Ulysses attention (ulysses_degree).
Until a family trains correctly under it, with every rank of a context-parallel group fed the same batch and
the LoRA gradients summed over the group, context_parallel_size > 1 is rejected with what failed.
"""

from __future__ import annotations

import logging
from typing import Any

from cinetune.errors import NotSupportedYet

logger = logging.getLogger(__name__)

# What to use instead for long clips, in every rejection.
INSTEAD = (
    "for long clips use gradient_checkpointing, enable_group_offload or musubi_blocks_to_swap, or shard "
    "the weights with fsdp_enable (FSDP2)"
)

# What cinetune's loop lacks for any family (true whatever diffusers does), and diffusers' CPU limit.
_LOOP = (
    "cinetune's sampler also deals each rank its own batch, while the ranks of a context-parallel group must "
    "share one, and DDP averages the LoRA gradients where the group's partial gradients must be summed; "
    "diffusers' enable_parallelism does not start on a host without an accelerator (it divides by their "
    "count, 0)"
)

# Per family: why diffusers' context parallelism cannot train it (measured on the tiny models, 2 ranks).
_WHY: dict[str, str] = {
    "kandinsky5-video": (
        "diffusers has no context-parallel plan (_cp_plan) for Kandinsky5Transformer3DModel, so it cannot "
        "split its sequence"
    ),
    "ltxvideo": (
        "diffusers' context parallelism does not train LTXVideoTransformer3DModel: with the text attention "
        "mask cinetune passes, alltoall (Ulysses) fails in the forward (the per-head mask is not split "
        "with the heads), and even without a mask its backward fails on cross-attention (text keys shorter "
        "than the video queries); allgather (ring) needs an attention backend that returns the softmax "
        "log-sum-exp, which native SDPA (the default, and the only one on the CPU) does not, and has not "
        "been tried with the CUDA ones that do; first_frame_conditioning_p's per-token timesteps are not "
        "split with the tokens (the forward fails with either strategy)"
    ),
    "ltxvideo2": (
        "diffusers' context parallelism does not train LTX2VideoTransformer3DModel: its plan splits a 3-D "
        "rope, while every LTX-2 release has rope_type split (4-D), so the forward fails with either "
        "strategy; the plan splits neither the audio tokens nor the audio-video cross-attention rope, and "
        "first_frame_conditioning_p's per-token timesteps are not split with the tokens"
    ),
}


def check_context_parallel(cfg: Any, family: Any) -> None:
    """Reject context_parallel_size > 1 with this family's measured reason; warn when the exchange strategy
    is set without it (it changes nothing)."""
    if cfg.context_parallel_size > 1:
        why = _WHY.get(
            family.name,
            f"diffusers' context parallelism has not been tried on the {family.name} family's training",
        )
        raise NotSupportedYet(
            f"context_parallel_size {cfg.context_parallel_size} (context parallelism) is not supported yet "
            f"for {family.name}: {why}; {_LOOP}; {INSTEAD}"
        )
    if "context_parallel_comm_strategy" in cfg.model_fields_set:
        logger.warning(
            "context_parallel_comm_strategy changes nothing in this run: context_parallel_size is 1 (no "
            "sequence is split)"
        )
