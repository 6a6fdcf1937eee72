"""Which frozen weights are on the compute device during the backward pass (group offload and block swap).

Offload hooks move a group of frozen weights to the device for a module's forward and away after it. That is
enough for inference, not for training: autograd keeps a reference to the weights a layer used (a linear
layer's backward multiplies by its weight), and once the group has gone back to the CPU (or to disk) the
backward pass would compute with weights that are elsewhere or gone. diffusers' offload alone gives NaN from
the second step when its groups go to disk: the saved weights are empty placeholders by then.

`Residency` brings the groups back for the backward pass, in reverse order, and sends them away again:

- a group whose module produced an output that needs a gradient gets a hook on that output: when the
  gradient arrives, just before the module's backward runs, the group is onloaded;
- the declared transformer blocks (`ModelFamily.blocks`) are the unit of eviction: when the gradient reaches
  block k's output, the backward of every later block is complete (autograd runs one device's work in reverse
  creation order, and nothing of block k depends on a later block), so their groups go away;
- groups outside the blocks (embeddings, input/output projections) stay until the backward pass ends;
- under gradient checkpointing a block's forward runs again inside backward: the hooks then onload without
  ever offloading, because the recomputed graph refers to the weights until that block's backward is over;
- when the backward pass ends (an autograd engine callback) every group is offloaded.

Groups that can copy asynchronously (CUDA streams) are prefetched one block ahead in backward too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch


class Resident(Protocol):
    """A set of frozen tensors that is either on the compute device or away."""

    blocks: frozenset[int]  # indices of the declared blocks it belongs to; empty: outside them
    onloaded: bool

    def onload(self, wait: bool = True) -> None: ...

    def wait(self) -> None: ...

    def offload(self) -> None: ...


def in_backward() -> bool:
    """True while autograd's engine runs (a gradient-checkpointed forward is being recomputed)."""
    return torch._C._current_graph_task_id() != -1


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a module's output (tensors, tuples, lists, dicts, diffusers' output dataclasses)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, list | tuple):
        return [t for item in output for t in output_tensors(item)]
    return []


class Residency:
    """Onloads groups for the backward pass and evicts them block by block (see the module docstring)."""

    def __init__(self, blocks: list[torch.nn.Module]) -> None:
        self.block_index = {id(block): k for k, block in enumerate(blocks)}
        self._member = {id(sub): k for k, block in enumerate(blocks) for sub in block.modules()}
        self.groups: list[Resident] = []
        self._queued = False
        self.backward_onloads = 0  # groups brought back by backward passes (tests and bench read it)

    def add(self, group: Resident) -> Resident:
        self.groups.append(group)
        return group

    def blocks_of(self, modules: list[torch.nn.Module]) -> frozenset[int]:
        """The declared blocks that contain (or are) any of `modules`."""
        return frozenset(self._member[id(m)] for m in modules if id(m) in self._member)

    def watch(self, output: Any, block: int | None = None, group: Resident | None = None) -> None:
        """After a forward that builds a graph: when the gradient reaches `output`, enter `block` (evict the
        later blocks' groups) and onload `group`."""
        if not torch.is_grad_enabled() or in_backward():
            return
        tensors = [t for t in output_tensors(output) if t.requires_grad]
        if not tensors or (block is None and group is None):
            return
        hook = self._gradient_hook(block, group)
        for tensor in tensors:
            tensor.register_hook(hook)

    def need(self, group: Resident) -> None:
        """A group's weights are needed now (its backward, or its forward recomputed inside backward)."""
        self._queue_finish()
        if not group.onloaded:
            group.onload(wait=True)
            self.backward_onloads += 1
        else:
            group.wait()

    def _gradient_hook(self, block: int | None, group: Resident | None) -> Callable[[torch.Tensor], None]:
        def hook(_grad: torch.Tensor) -> None:
            if block is not None:
                self._enter_block(block)
            if group is not None:
                self.need(group)

        return hook

    def _enter_block(self, block: int) -> None:
        self._queue_finish()
        for group in self.groups:
            if group.onloaded and group.blocks and block not in group.blocks and min(group.blocks) > block:
                group.offload()
        for (
            group
        ) in self.groups:  # prefetch the block before (only groups that copy asynchronously wait less)
            if getattr(group, "asynchronous", False) and (block - 1) in group.blocks and not group.onloaded:
                group.onload(wait=False)
                self.backward_onloads += 1

    def _queue_finish(self) -> None:
        if not self._queued and in_backward():
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._queued = True

    def _finish(self) -> None:
        for group in self.groups:
            if group.onloaded:
                group.offload()
        self._queued = False
