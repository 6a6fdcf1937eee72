"""Group offload: diffusers' `apply_group_offloading`, on the transformer while training and on the text
encoder and VAE while caching.

For inference (the encoders) diffusers' hooks are used as they are. For training three things are added to
the groups they create, without changing what they do in a forward pass:

- trainable tensors (the LoRA weights) leave every group: they stay on the device, so the optimizer always
  finds a weight and its gradient in one place, and a group written to disk holds only weights that never
  change (diffusers writes a group's file once and reads it back at every onload);
- `Residency` (residency.py) brings the groups back for the backward pass and evicts them block by block;
- under gradient checkpointing, the forward recomputed inside backward onloads its group and never offloads
  it (the recomputed graph refers to those weights until that block's backward is over).

`group_offload_use_stream` needs a device with streams; on the CPU it falls back to plain copies (the plan
warns once, `memory.rules`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from cinetune.memory.residency import Residency, in_backward

logger = logging.getLogger(__name__)
_GROUP_OFFLOADING = "group_offloading"  # diffusers' hook name


def streams_available(device: torch.device) -> bool:
    return device.type != "cpu" and hasattr(getattr(torch, device.type, None), "Stream")


def apply_group_offload(
    module: torch.nn.Module,
    cfg: Any,
    *,
    device: torch.device,
    blocks: list[torch.nn.Module] | None = None,
    block_modules: list[str] | None = None,
) -> Residency | None:
    """Offload `module`'s frozen weights by groups as the config says. With trainable parameters (LoRA) the
    groups are made to train and their `Residency` is returned; `blocks` are the declared transformer blocks
    (the unit of eviction in backward). `block_modules` names children to recurse into (text encoders)."""
    from diffusers.hooks import apply_group_offloading

    use_stream = bool(cfg.group_offload_use_stream) and streams_available(device)
    block_level = cfg.group_offload_type == "block_level"
    trainable = [p for p in module.parameters() if p.requires_grad]
    kept = {p: p.data for p in trainable}  # the values, whatever the groups do to the parameters at first
    disk = cfg.group_offload_to_disk_path
    apply_group_offloading(
        module,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type=cfg.group_offload_type,
        num_blocks_per_group=cfg.group_offload_blocks_per_group if block_level else None,
        non_blocking=use_stream,
        use_stream=use_stream,
        offload_to_disk_path=str(disk) if disk is not None else None,
        block_modules=block_modules,
    )
    if not trainable:
        return None
    residency = Residency(blocks or [])
    ids = {id(p) for p in trainable}
    watched: set[int] = set()
    for group, members in _groups(module).items():
        resident = _DiffusersGroup(group, residency.blocks_of(group.modules or [group.onload_leader]))
        residency.add(resident)
        _exclude_trainable(group, ids)
        for member, hook in members:
            block = residency.block_index.get(id(member))
            watched |= {block} if block is not None else set()
            _wrap(hook, residency, resident, block)
    for param in trainable:
        param.data = kept[param].to(device)
    missing = set(range(len(residency.block_index))) - watched
    if block_level and missing:
        raise RuntimeError(f"group offload did not group the declared transformer blocks {sorted(missing)}")
    watch_blocks(residency, blocks or [], skip=watched)
    return residency


class _DiffusersGroup:
    """A diffusers `ModuleGroup` seen as a `Resident`; its on/offload methods keep `onloaded` right whoever
    calls them (diffusers' hooks, its stream prefetch, the residency)."""

    def __init__(self, group: Any, blocks: frozenset[int]) -> None:
        self.group, self.blocks, self.onloaded = group, blocks, False
        self.asynchronous = group.stream is not None
        onload, offload = group.onload_, group.offload_

        def onload_() -> None:
            onload()
            self.onloaded = True

        def offload_() -> None:
            offload()
            self.onloaded = False

        group.onload_, group.offload_ = onload_, offload_

    def onload(self, wait: bool = True) -> None:
        self.group.onload_()
        if wait:
            self.wait()

    def wait(self) -> None:
        if self.group.stream is not None:
            backend = getattr(torch, self.group.onload_device.type)
            backend.current_stream().wait_stream(self.group.stream)

    def offload(self) -> None:
        self.group.offload_()


def _groups(module: torch.nn.Module) -> dict[Any, list[tuple[torch.nn.Module, Any]]]:
    """diffusers' module groups under `module`, each with the (module, hook) pairs that drive it."""
    found: dict[Any, list[tuple[torch.nn.Module, Any]]] = {}
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
        if hook is not None:
            found.setdefault(hook.group, []).append((sub, hook))
    return found


def _exclude_trainable(group: Any, trainable: set[int]) -> None:
    """Move a group's membership from whole modules to explicit frozen tensors."""
    params = [p for m in group.modules for p in m.parameters()] + list(group.parameters)
    buffers = [b for m in group.modules for b in m.buffers()] + list(group.buffers)
    group.parameters = list({id(p): p for p in params if id(p) not in trainable}.values())
    group.buffers = list({id(b): b for b in buffers}.values())
    group.modules = []
    for tensor in [p for p in params if id(p) in trainable]:
        group.cpu_param_dict.pop(tensor, None)
        key = getattr(group, "tensor_to_key", {}).pop(tensor, None)
        if key is not None:
            group.key_to_tensor.pop(key, None)


def _wrap(hook: Any, residency: Residency, resident: _DiffusersGroup, block: int | None) -> None:
    """Inside backward (a recomputed forward): onload, never offload. Otherwise diffusers' hook, after which
    the output is watched so the group comes back for backward."""
    pre, post = hook.fn_ref.pre_forward, hook.fn_ref.post_forward

    def pre_forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if in_backward():
            residency.need(resident)
            return args, kwargs
        return pre(module, *args, **kwargs)

    def post_forward(module: torch.nn.Module, output: Any) -> Any:
        if in_backward():
            return output
        residency.watch(output, block=block, group=resident)
        return post(module, output)

    hook.fn_ref.pre_forward, hook.fn_ref.post_forward = pre_forward, post_forward


def watch_blocks(residency: Residency, blocks: list[torch.nn.Module], skip: set[int]) -> None:
    """A diffusers hook on each declared block not in `skip` (one without a group of its own, as in leaf-level
    offload): when the gradient reaches its output, the later blocks' groups are evicted."""
    from diffusers.hooks import HookRegistry, ModelHook

    class BlockWatch(ModelHook):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            residency.watch(output, block=self.index)
            return output

    for k, block in enumerate(blocks):
        if k not in skip:
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                BlockWatch(k), "cinetune_block_watch"
            )


def block_path(module: torch.nn.Module) -> list[str]:
    """The child names leading to `module`'s largest block list (a text encoder's layers), for diffusers'
    `block_modules`: block-level offload groups the lists it finds among the children it recurses into."""
    best, best_size = "", 0
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.ModuleList | torch.nn.Sequential) and len(sub) > 1:
            size = sum(p.numel() for p in sub.parameters())
            if size > best_size:
                best, best_size = name, size
    return best.split(".")[:-1] if best else []


def offload_frozen(
    module: torch.nn.Module, parts: list[torch.nn.Module], cfg: Any, device: torch.device
) -> None:
    """Group-offload each part of a frozen module whose parts are called directly (a text encoder wrapper,
    a VAE's encoder and decoder); every other weight of the module goes to the device."""
    inside = {id(m) for part in parts for m in part.modules()}
    for part in parts:
        apply_group_offload(part, cfg, device=device, block_modules=block_path(part))
    for sub in module.modules():
        if id(sub) in inside:
            continue
        for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
            tensor.data = tensor.data.to(device)
