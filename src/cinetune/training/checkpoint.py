"""Resumable checkpoints: LoRA weights, optimizer, scheduler, train state and every rank's RNG states.

A checkpoint is written into a temporary folder, sealed by a manifest of its files' sizes and checksums
(written last) and renamed into place, so a crash mid-write never leaves a folder that looks complete, and a
file damaged later shows when the manifest is verified (`resume_from_checkpoint`). `checkpoints_total_limit`
prunes the oldest ones, never the newest that verifies. A full disk stops the save before it starts (the
space a checkpoint needs is known) or, if it fills meanwhile, removes the partial folder: the checkpoints
already written stay intact.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cinetune.errors import ConfigError, TrainingDiverged, disk_error
from cinetune.export.manifest import verify_manifest, write_manifest
from cinetune.faults import fault_point
from cinetune.plan import list_checkpoints
from cinetune.training.guard import lora_is_finite
from cinetune.training.state import TrainState, load_rng_state, rng_state

logger = logging.getLogger(__name__)
LORA_FILE = "lora.safetensors"


class Checkpointer:
    def __init__(
        self,
        output_dir: Path,
        total_limit: int | None,
        accelerator: Any,
        adapter: Any,
        parts: Sequence[Any] = (),
        fsdp: str | None = None,
        rank0_loads: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        # FSDP2 (memory/fsdp.py): the state dict type its trained parameters and optimizer state are saved in;
        # None: a plain or DDP run, whose rank 0 holds all of it. `rank0_loads`: FULL_STATE_DICT resumes are
        # read by rank 0 and broadcast (fsdp_cpu_ram_efficient_loading).
        self.fsdp = fsdp
        self.rank0_loads = rank0_loads
        self.total_limit = total_limit
        self.accelerator = accelerator
        self.adapter = adapter  # training/adapters.py: its state, and the shape a checkpoint must match
        # Extra state of the run's optional features (EMA...): objects with save(folder) / load(folder).
        self.parts = list(parts)
        self.current: Path | None = None  # a checkpoint that holds exactly the live state (loaded or saved)
        self.current_step = -1
        if accelerator.is_main_process:  # leftovers of an interrupted save or prune (the run lock is ours)
            for leftover in [*self.output_dir.glob(".tmp-checkpoint-*"), *self.output_dir.glob(".trash-*")]:
                shutil.rmtree(leftover, ignore_errors=True)

    def save(
        self, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: TrainState
    ) -> Path:
        acc = self.accelerator
        final = self.output_dir / f"checkpoint-{step}"
        if self.current == final.resolve() and self.current_step == step and final.is_dir():
            return final  # nothing trained since it was written or loaded (a resumed run ending at once)
        tmp = self.output_dir / f".tmp-checkpoint-{step}"
        lora = {k: v.detach().cpu().contiguous() for k, v in self.adapter.state_dict(model).items()}
        if not lora_is_finite(lora):
            raise TrainingDiverged(
                f"step {step}: the LoRA weights hold non-finite values; checkpoint-{step} is not written "
                f"(the last good checkpoint: {self.last_verified() or 'none'})"
            )
        try:
            if acc.is_main_process:
                self._write_main(tmp, step, lora, model, optimizer, scheduler, state)
            acc.wait_for_everyone()
            if self.fsdp is not None:  # every rank writes its shard (SHARDED) or sends it to rank 0 (FULL)
                from cinetune.memory.fsdp import save_state

                save_state(tmp, model, optimizer, self.fsdp, acc.is_main_process)
                fault_point("checkpoint.file")
            torch.save(rng_state(state.generator), tmp / f"rng_{acc.process_index}.pt")
            fault_point("checkpoint.file")
            acc.wait_for_everyone()
            if acc.is_main_process:
                write_manifest(tmp, {"step": step})
                fault_point("checkpoint.file")
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            error = disk_error(exc, self.output_dir, f"checkpoint-{step}", self._needed(lora, optimizer))
            if error is None:
                raise
            raise error from exc
        if acc.is_main_process:
            self._replace(tmp, final)
            fault_point("checkpoint.saved")
            self._prune()
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        self.current, self.current_step = final.resolve(), step
        return final

    def _write_main(
        self,
        tmp: Path,
        step: int,
        lora: dict[str, torch.Tensor],
        model: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        state: TrainState,
    ) -> None:
        acc = self.accelerator
        needed = self._needed(lora, optimizer)
        if shutil.disk_usage(self.output_dir).free < needed:  # stop before writing half a checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(lora, str(tmp / LORA_FILE))
        fault_point("checkpoint.file")
        if self.fsdp is None:  # FSDP2: `save_state` writes the optimizer state, once every rank is here
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            fault_point("checkpoint.file")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if acc.scaler is not None:  # fp16: the loss scale and its growth tracker
            torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
        for part in self.parts:
            part.save(tmp)
        meta = {**state.state_dict(), "world_size": acc.num_processes, "lora": self.adapter.shape(model)}
        if self.fsdp is not None:
            meta["fsdp"] = self.fsdp
        (tmp / "state.json").write_text(json.dumps(meta))
        fault_point("checkpoint.file")

    @staticmethod
    def _needed(lora: dict[str, torch.Tensor], optimizer: Any) -> int:
        """Bytes a checkpoint takes: the LoRA, the optimizer's state tensors, and room for the small files."""
        tensors = list(lora.values())
        for slot in optimizer.state_dict()["state"].values():
            tensors += [v for v in slot.values() if isinstance(v, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors) + (1 << 20)

    def _replace(self, tmp: Path, final: Path) -> None:
        """Rename the finished folder into place; an older folder of that name is moved away first."""
        if final.exists():
            trash = self.output_dir / f".trash-{final.name}"
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)

    def last_verified(self) -> Path | None:
        return last_verified(self.output_dir)

    def _prune(self) -> None:
        if not self.total_limit:
            return
        found = list_checkpoints(self.output_dir)
        keep = self.last_verified()
        for old in found[: max(0, len(found) - self.total_limit)]:
            if old == keep:  # the newer ones are damaged: this one is what a resume can use
                logger.warning("kept %s: it is the newest checkpoint that verifies", old)
                continue
            trash = self.output_dir / f".trash-{old.name}"  # a half-deleted folder never looks like one
            old.rename(trash)
            fault_point("checkpoint.prune")
            shutil.rmtree(trash, ignore_errors=True)
            logger.info("removed old checkpoint %s (checkpoints_total_limit=%d)", old, self.total_limit)

    def load(
        self, path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: TrainState
    ) -> None:
        """Restore everything `save` wrote; a checkpoint that does not fit this run is a ConfigError."""
        try:
            self._load(path, model, optimizer, scheduler, state)
        except (OSError, RuntimeError, EOFError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"cannot resume from {path}: {str(exc).splitlines()[0]} (a checkpoint of another LoRA setup, "
                "or damaged: resume from another checkpoint or start without resume_from_checkpoint)"
            ) from exc
        self.current, self.current_step = Path(path).resolve(), state.step
        logger.info("resumed from %s at step %d", path, state.step)

    def _load(
        self, path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: TrainState
    ) -> None:
        acc = self.accelerator
        meta = json.loads((path / "state.json").read_text())
        if meta.get("world_size", 1) != acc.num_processes:
            raise ConfigError(
                f"checkpoint {path} was written by {meta.get('world_size')} process(es); resume it "
                f"with the same number (now {acc.num_processes})"
            )
        shape = self.adapter.shape(model)
        if "lora" in meta and meta["lora"] != shape:
            raise ConfigError(
                f"checkpoint {path} holds a LoRA of {meta['lora']}; this run asks for {shape}: use the same "
                "lora_rank, lora_alpha, lora_target_modules, use_dora, lora_type and lycoris_config to resume"
            )
        saved_as = meta.get("fsdp")
        if saved_as != self.fsdp:
            raise ConfigError(
                f"checkpoint {path} was written {_engine(saved_as)}; this run trains {_engine(self.fsdp)}: "
                "resume it with the same fsdp_enable and fsdp_state_dict_type"
            )
        if self.fsdp is not None:
            from cinetune.memory.fsdp import load_state

            load_state(path, model, optimizer, self.fsdp, self.rank0_loads)
        else:
            unexpected = self.adapter.load_state_dict(model, load_file(str(path / LORA_FILE)))
            if unexpected:
                raise ConfigError(
                    f"checkpoint {path} does not match this LoRA setup: unexpected {unexpected[:3]}"
                )
            # Without map_location every rank would put its copy on the device it was saved from (cuda:0)
            # first. Read onto the CPU: the optimizer's load_state_dict moves each state tensor to its
            # parameter's device (this rank's) and keeps `step` on the CPU, as non-capturable optimizers need.
            optimizer.load_state_dict(
                torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
            )
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
        if acc.scaler is not None and (path / "scaler.pt").exists():
            acc.scaler.load_state_dict(torch.load(path / "scaler.pt", map_location="cpu", weights_only=False))
        for part in self.parts:
            part.load(path)
        state.load_state_dict(meta)
        rng = torch.load(path / f"rng_{acc.process_index}.pt", map_location="cpu", weights_only=False)
        load_rng_state(rng, state.generator)


def _engine(fsdp: str | None) -> str:
    return "without FSDP2" if fsdp is None else f"with FSDP2 ({fsdp})"


def last_verified(output_dir: Path) -> Path | None:
    """The newest checkpoint of `output_dir` whose manifest verifies."""
    return next((p for p in reversed(list_checkpoints(output_dir)) if verify_manifest(p) is None), None)
