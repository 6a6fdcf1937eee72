"""Resumable checkpoints: LoRA weights, optimizer, scheduler, train state and every rank's RNG states.

A checkpoint is written into a temporary folder and renamed into place, so a crash mid-write never leaves a
folder that looks complete; `checkpoints_total_limit` prunes the oldest ones.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cinetune.errors import ConfigError
from cinetune.plan import list_checkpoints
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
    ) -> None:
        self.output_dir = Path(output_dir)
        self.total_limit = total_limit
        self.accelerator = accelerator
        self.adapter = adapter  # training/adapters.py: its state, and the shape a checkpoint must match
        # Extra state of the run's optional features (EMA...): objects with save(folder) / load(folder).
        self.parts = list(parts)

    def save(
        self, step: int, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: TrainState
    ) -> Path:
        acc = self.accelerator
        final = self.output_dir / f"checkpoint-{step}"
        tmp = self.output_dir / f".tmp-checkpoint-{step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(self.adapter.state_dict(model), str(tmp / LORA_FILE))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if acc.scaler is not None:  # fp16: the loss scale and its growth tracker
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
            for part in self.parts:
                part.save(tmp)
            (tmp / "state.json").write_text(
                json.dumps(
                    {**state.state_dict(), "world_size": acc.num_processes, "lora": self.adapter.shape(model)}
                )
            )
        acc.wait_for_everyone()
        torch.save(rng_state(state.generator), tmp / f"rng_{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self._prune()
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        return final

    def _prune(self) -> None:
        if not self.total_limit:
            return
        found = list_checkpoints(self.output_dir)
        for old in found[: max(0, len(found) - self.total_limit)]:
            shutil.rmtree(old, ignore_errors=True)
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
        unexpected = self.adapter.load_state_dict(model, load_file(str(path / LORA_FILE)))
        if unexpected:
            raise ConfigError(
                f"checkpoint {path} does not match this LoRA setup: unexpected {unexpected[:3]}"
            )
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        if acc.scaler is not None and (path / "scaler.pt").exists():
            acc.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=False))
        for part in self.parts:
            part.load(path)
        state.load_state_dict(meta)
        load_rng_state(torch.load(path / f"rng_{acc.process_index}.pt", weights_only=False), state.generator)
