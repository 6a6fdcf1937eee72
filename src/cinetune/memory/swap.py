"""Block swap (`musubi_blocks_to_swap` N, `musubi_block_swap_device`): the last N declared transformer blocks
keep their frozen weights on the swap device and are streamed in for their forward AND their backward.

Each swapped block's frozen tensors are copied once to a store on the swap device (pinned host memory when
it is the CPU and the compute device is a GPU). A swapped-out block holds no weights: its parameters are
empty placeholders on the compute device, so moving the model to the device moves none of them, and any use of
a swapped-out weight fails instead of computing quietly. LoRA weights are never
swapped: the optimizer finds them and their gradients on the device.

Forward: block i's hook swaps it in (waiting for the copy started earlier) and starts copying block i+1 on a
side CUDA stream, so the copy overlaps block i's compute; after its forward block i swaps out. Backward: the
same `Residency` as group offload (residency.py) swaps block i back in when the gradient reaches its output,
prefetches block i-1, and swaps the later blocks out; under gradient checkpointing the recomputed forward
swaps in and never out. Without a GPU the copies are plain and synchronous.
"""

from __future__ import annotations

from typing import Any

import torch

from cinetune.memory.residency import Residency, in_backward


class SwapGroup:
    """The frozen tensors of one swapped block and their store on the swap device."""

    def __init__(self, block: torch.nn.Module, index: int, device: torch.device, store: torch.device) -> None:
        self.blocks = frozenset({index})
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.asynchronous = self.stream is not None
        pin = store.type == "cpu" and device.type == "cuda"
        self.tensors = [p for p in block.parameters() if not p.requires_grad] + list(block.buffers())
        self.store = {}
        for tensor in self.tensors:
            kept = tensor.data.to(store, copy=True)
            self.store[tensor] = kept.pin_memory() if pin else kept
        self.same_device = store == device or (store.type == device.type == "cpu")
        self._event: Any = None
        self.onloaded = True
        self.offload()

    def onload(self, wait: bool = True) -> None:
        if self.onloaded:
            if wait:
                self.wait()
            return
        if self.stream is None:
            for tensor in self.tensors:
                kept = self.store[tensor]
                tensor.data = kept if self.same_device else kept.to(self.device)
        else:
            with torch.cuda.stream(self.stream):
                for tensor in self.tensors:
                    tensor.data = self.store[tensor].to(self.device, non_blocking=True)
                self._event = torch.cuda.Event()
                self._event.record(self.stream)
        self.onloaded = True
        if wait:
            self.wait()

    def wait(self) -> None:
        if self._event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(self._event)
            for tensor in self.tensors:  # allocated on the side stream, used on the compute stream
                tensor.data.record_stream(compute)
            self._event = None

    def offload(self) -> None:
        for tensor in self.tensors:
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=self.device)
        self.onloaded = False


def apply_block_swap(
    module: torch.nn.Module, cfg: Any, *, device: torch.device, blocks: list[torch.nn.Module]
) -> Residency:
    """Swap the last `cfg.musubi_blocks_to_swap` of `blocks` (the declared transformer blocks, in forward
    order) to `cfg.musubi_block_swap_device`; returns the residency that drives them."""
    from diffusers.hooks import HookRegistry, ModelHook

    count = min(int(cfg.musubi_blocks_to_swap), len(blocks))
    store = torch.device(cfg.musubi_block_swap_device)
    residency = Residency(blocks)
    first = len(blocks) - count
    groups = {k: residency.add(SwapGroup(blocks[k], k, device, store)) for k in range(first, len(blocks))}

    class SwapHook(ModelHook):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index
            self.group = groups.get(index)

        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            if self.group is not None:
                if in_backward():
                    residency.need(self.group)  # a forward recomputed by gradient checkpointing
                    return args, kwargs
                self.group.onload(wait=True)
            following = groups.get(self.index + 1)
            if following is not None and not in_backward():
                following.onload(wait=False)  # overlaps this block's compute on the side stream
            return args, kwargs

        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            if in_backward():
                return output
            residency.watch(output, block=self.index, group=self.group)
            if self.group is not None:
                self.group.offload()
            return output

    for k in range(max(first - 1, 0), len(blocks)):
        HookRegistry.check_if_exists_or_initialize(blocks[k]).register_hook(
            SwapHook(k), "cinetune_block_swap"
        )
    return residency
