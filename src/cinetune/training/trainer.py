"""The training run: load -> cache -> prepare -> train -> export, each a named phase."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import InitProcessGroupKwargs, set_seed

from cinetune.cache.builder import CacheBuilder, CacheIndex
from cinetune.data import SkipReport, scan_datasets
from cinetune.errors import CacheEntryDamaged, RunStopped, disk_errors
from cinetune.export.lora import COMFYUI_FILE, staged_files
from cinetune.faults import fault_point
from cinetune.memory import frozen_dtype, prepare_base_weights, prepare_for_training
from cinetune.memory.fsdp import gradient_sync
from cinetune.memory.vae import apply_vae_memory
from cinetune.plan import RunPlan, resolve_checkpoint
from cinetune.training.adapters import build_adapter
from cinetune.training.batches import Batch, load_batch
from cinetune.training.checkpoint import Checkpointer, last_verified
from cinetune.training.devices import DTYPES, enable_tf32, encoder_dtype, rank_checksum
from cinetune.training.extras import RunExtras, frame_features
from cinetune.training.guard import NonFiniteGuard, advice_for, measure_step
from cinetune.training.metrics import MetricsLog, make_progress
from cinetune.training.optim import build_optimizer, build_scheduler
from cinetune.training.ranks import (
    check_shared_storage,
    close_process_group,
    in_turn,
    storage_folders,
    wait_for_entries,
)
from cinetune.training.sampler import epoch_batches, plan_epoch
from cinetune.training.signals import StopFlag
from cinetune.training.speed import (
    apply_attention_backend,
    apply_gradient_checkpointing,
    apply_regional_compile,
)
from cinetune.training.state import TrainState
from cinetune.training.step import step_loss
from cinetune.training.validation import Validator, condition_images

logger = logging.getLogger(__name__)
_DTYPES = DTYPES


def make_accelerator(cfg: Any) -> Accelerator:
    use_cpu = cfg.cpu or not torch.cuda.is_available()
    trackers = None if cfg.report_to == "none" else cfg.report_to
    if cfg.cpu and not torch.cuda.is_available():
        logger.warning(
            "cpu: true changes nothing here: no GPU is available, so training runs on the CPU anyway"
        )
    mixed = cfg.mixed_precision if not (use_cpu and cfg.mixed_precision == "fp16") else "no"
    if mixed != cfg.mixed_precision:
        logger.warning("fp16 mixed precision needs a GPU; training in fp32 on the CPU")
    if "WORLD_SIZE" not in os.environ:
        # accelerate keeps process-wide singletons: a second run in one process starts fresh
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    # Only the main process validates while the others wait at a barrier: a long validation of a big model
    # must not trip the collective timeout.
    timeout = InitProcessGroupKwargs(timeout=timedelta(hours=2))
    return Accelerator(
        mixed_precision=mixed,
        cpu=use_cpu,
        log_with=trackers,
        project_dir=str(cfg.output_dir),
        kwargs_handlers=[timeout],
    )


class Trainer:
    """Runs a resolved plan (`cinetune.plan.resolve`): the config it reads has every default filled in."""

    def __init__(self, plan: RunPlan, accelerator: Accelerator | None = None) -> None:
        self.plan = plan
        self.cfg = plan.train
        self.data_cfg = plan.data  # None for `cinetune bench`: no dataset
        self.family = plan.family
        self.acc = accelerator or make_accelerator(self.cfg)
        self.device = self.acc.device
        enable_tf32(self.device)
        self.dtype = _DTYPES[self.acc.mixed_precision]
        self.weight_dtype = frozen_dtype(self.cfg, self.dtype)
        self.text_dtype = encoder_dtype("default", self.weight_dtype, self.device)
        self.vae_dtype = encoder_dtype(self.cfg.vae_dtype, self.weight_dtype, self.device)
        self.output_dir = Path(self.cfg.output_dir)
        self.report = SkipReport()
        self.state = TrainState(
            generator=torch.Generator().manual_seed(self.cfg.seed + 7919 * self.acc.process_index)
        )
        self.max_sequence_length = self.cfg.max_sequence_length
        # FSDP2 (memory/fsdp.py): the transformer sharded over the ranks; with one process there is nothing
        # to shard over (the plan warns) and the run is a plain one.
        self.fsdp = self.cfg.fsdp_enable and self.acc.num_processes > 1
        self.weights_from_rank0 = False  # `cinetune bench` under FSDP2: only rank 0 built real weights
        self.prompts: dict[str, str] = dict(plan.validation_prompts)
        # reliability (docs/ARCHITECTURE.md, "When a run fails"): signals, non-finite steps
        self.stop = StopFlag()
        self.stop_agreed = False  # set by each step: some rank had a stop signal
        self.guard = NonFiniteGuard(
            self.cfg.max_nonfinite_steps,
            scaler_skips=self.acc.scaler is not None,
            advice=advice_for(self.cfg),
            last_checkpoint=lambda: last_verified(self.output_dir),
        )

    # ---- phases --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        with self.stop.handling_signals(), disk_errors(self.output_dir, "the run's outputs"):
            self.output_dir.mkdir(parents=True, exist_ok=True)
            set_seed(self.cfg.seed)
            self.scan()
            self.cache()
            self.prepare()
            self.train()
            return self.export()

    def scan(self) -> None:
        check_shared_storage(self.acc, storage_folders(self.output_dir, self.cache_roots()))  # multi-node
        self.samples = scan_datasets(
            self.plan.training_media,
            self.family.frame_rule,
            self.cfg.frame_rate,
            self.cfg.seed,
            self.report,
            audio_datasets=self.data_cfg.datasets,
        )
        if self.acc.is_main_process:
            self.report.save(self.output_dir)
            if len(self.report):
                logger.warning("skipped %d file(s):\n%s", len(self.report), self.report.summary())
        cfg = self.cfg
        self.items, self.steps_per_epoch = plan_epoch(
            self.samples,
            {d.id: d.repeats for d in self.plan.media},
            cfg.train_batch_size,
            cfg.gradient_accumulation_steps,
            cfg.seed,
            self.acc.process_index,
            self.acc.num_processes,
        )
        first = self.samples[0] if self.samples else None
        self.prompts = self.plan.prompts_for(first.captions[0] if first else None)
        if self.plan.prompt_from_first_sample and first is not None:
            logger.info("validation prompt (the first caption of %s): %s", first.path, first.captions[0])

    def cache_roots(self) -> tuple[Path, dict[str, Path]]:
        embeds = self.data_cfg.text_embeds
        text_root = embeds.cache_dir if embeds and embeds.cache_dir else self.output_dir / "cache" / "text"
        latent_roots = {
            d.id: d.cache_dir_vae or self.output_dir / "cache" / "vae" / d.id for d in self.data_cfg.media
        }
        return Path(text_root), {k: Path(v) for k, v in latent_roots.items()}

    def cache(self) -> CacheIndex:
        text_root, latent_roots = self.cache_roots()
        embeds = self.data_cfg.text_embeds
        builder = CacheBuilder(
            self.family,
            text_root=text_root,
            latent_roots=latent_roots,
            device=self.device,
            dtype=self.text_dtype,
            vae_dtype=self.vae_dtype,
            max_sequence_length=self.max_sequence_length,
            text_batch_size=embeds.write_batch_size if embeds else 16,
            features=frame_features(self.cfg),  # CREPA's vision features, stored with the latents
            cfg=self.cfg,
            stop_signal=lambda: self.stop.signum,
            share=(self.acc.process_index, self.acc.num_processes),
            loading=in_turn(self.output_dir, "cache encoders", self.acc.num_processes > 1),
        )
        extra = set(self.prompts.values()) | {self.cfg.validation_negative_prompt}
        if self.acc.num_processes > 1:
            # Each rank encodes its share, then waits on the files for the others' (training/ranks.py).
            builder.build(self.samples, extra)
            wait_for_entries(lambda: builder.count_missing(self.samples, extra), lambda: self.stop.signum)
            builder.share = (0, 1)  # the index of every entry; each is on disk and read back whole
        self.index = builder.build(self.samples, extra)
        return self.index

    def prepare(self) -> None:
        cfg = self.cfg
        self.total_steps = cfg.max_train_steps or cfg.num_train_epochs * self.steps_per_epoch
        # On several ranks one at a time reads the transformer and moves it to its device (training/ranks.py).
        load = in_turn(self.output_dir, "transformer", self.acc.num_processes > 1)
        if self.fsdp and cfg.fsdp_cpu_ram_efficient_loading:  # rank 0 alone reads: no turns to take
            from cinetune.memory.fsdp import load_on_rank0

            transformer = load_on_rank0(self.family, self.weight_dtype)
        elif self.fsdp:  # sharding moves the weights to the device block by block, never the whole model
            transformer = load(lambda: self.family.load_transformer(self.weight_dtype))
        else:
            transformer = load(lambda: self.family.load_transformer(self.weight_dtype).to(self.device))
        self.setup_model(transformer, self.total_steps)
        self.checkpointer = Checkpointer(
            self.output_dir,
            cfg.checkpoints_total_limit,
            self.acc,
            self.adapter,
            self.extras.checkpoint_parts(),
            fsdp=self.cfg.fsdp_state_dict_type if self.fsdp else None,
            rank0_loads=self.cfg.fsdp_cpu_ram_efficient_loading,
        )
        # the same on every rank: whether rank 0 validates (the others then wait for it at a barrier)
        self.validates = not cfg.disable_validation and bool(self.prompts)
        self.validator = self._make_validator()
        self.metrics = MetricsLog(self.output_dir, self.acc, cfg.report_to != "none")
        if cfg.report_to != "none":
            run = cfg.tracker_run_name
            # tensorboard: OUTPUT_DIR/<project>/<run>; wandb: project + run name
            project = f"{cfg.tracker_project_name}/{run}" if run and cfg.report_to == "tensorboard" else None
            self.acc.init_trackers(
                project or cfg.tracker_project_name,
                config=_flat_config(cfg),
                init_kwargs={"wandb": {"name": run}} if run and cfg.report_to == "wandb" else {},
            )
        # Last, so that nothing after it (loading the validation VAE...) consumes the restored RNG states.
        resume = resolve_checkpoint(self.output_dir, cfg.resume_from_checkpoint)  # newest at this moment
        if resume is not None:
            self.checkpointer.load(
                resume, self.acc.unwrap_model(self.model), self.optimizer, self.scheduler, self.state
            )

    def setup_model(self, transformer: torch.nn.Module, total_steps: int) -> None:
        """LoRA on the frozen transformer, fp32 trainable weights, optimizer, schedule, device placement.

        `cinetune bench` calls this with a full-size random transformer: one code path for both.
        """
        cfg = self.cfg
        transformer.requires_grad_(False)
        prepare_base_weights(transformer, self.plan, self.device)  # quantized frozen weights, before LoRA
        self.adapter = build_adapter(cfg)  # peft LoRA / DoRA, or LyCORIS (training/adapters.py)
        self.adapter.inject(transformer)
        self.lora_config = getattr(self.adapter, "config", None)
        # TREAD, scheduled sampling, CREPA, EMA: the optional features (training/extras.py)
        self.extras = RunExtras(cfg, self.family, transformer)
        params = [p for p in transformer.parameters() if p.requires_grad]
        for p in params:  # LoRA weights and optimizer state in fp32, frozen weights in weight_dtype
            p.data = p.data.float()
        if cfg.init_lora:
            self.adapter.load_init(transformer, cfg.init_lora)
        if cfg.gradient_checkpointing:
            apply_gradient_checkpointing(transformer, cfg.gradient_checkpointing_interval)
        apply_attention_backend(transformer, cfg.attention_backend)
        if cfg.compile_transformer_blocks:
            apply_regional_compile(transformer)
        transformer.train()
        if self.fsdp:  # before the optimizer: it must hold the sharded parameters
            from cinetune.memory.fsdp import shard_for_training

            from_rank0 = cfg.fsdp_cpu_ram_efficient_loading or self.weights_from_rank0
            shard_for_training(transformer, self.plan, self.device, from_rank0)
            params = [p for p in transformer.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, cfg)
        self.scheduler = build_scheduler(optimizer, cfg, total_steps)
        self.model, self.optimizer = prepare_for_training(
            self.acc, transformer, optimizer, self.plan, sharded=self.fsdp
        )
        self.params = params
        self.extras.start(self.acc.unwrap_model(self.model), self.device)

    def _make_validator(self) -> Validator | None:
        cfg = self.cfg
        # Under FSDP2 every rank runs the validation (each holds a shard of every block); rank 0 writes.
        if not self.validates or not (self.acc.is_main_process or self.fsdp):
            return None
        if cfg.offload_during_startup and self.device.type == "cpu":
            logger.warning(
                "offload_during_startup changes nothing on this run: it trains on the CPU, where the "
                "validation VAE lives anyway"
            )
        vae = apply_vae_memory(self.family.load_vae(self.vae_dtype), cfg).requires_grad_(False).eval()
        vae.to("cpu" if cfg.offload_during_startup else self.device)
        return Validator(
            self.family,
            cfg,
            self.prompts,
            self.index,
            vae,
            self.family.load_scheduler(),
            self.device,
            self.dtype,
            offload_vae=cfg.offload_during_startup,
            condition_images=condition_images(self.family, cfg, self.plan.media, self.samples),
            frame_rate=self._training_frame_rate(),
            write=self.acc.is_main_process,
        )

    def _training_frame_rate(self) -> float:
        """The fps the model trains at (RoPE): validation generates and writes its videos at the same one."""
        rates = sorted({s.frame_rate for s in self.samples})
        if len(rates) == 1 and rates[0] != self.cfg.frame_rate:
            logger.warning(
                "datasets train at %g fps (video.frame_rate) but frame_rate is %g: validation uses %g fps",
                rates[0],
                self.cfg.frame_rate,
                rates[0],
            )
            return rates[0]
        if len(rates) > 1:
            logger.warning(
                "datasets train at several frame rates %s; validation uses frame_rate=%g",
                rates,
                self.cfg.frame_rate,
            )
        return self.cfg.frame_rate

    # ---- the loop ------------------------------------------------------------------------------------------
    def train(self) -> None:
        cfg, state = self.cfg, self.state
        self.losses: list[float] = []
        accum = cfg.gradient_accumulation_steps
        with make_progress(self.acc.is_main_process) as progress:
            task = progress.add_task(
                "train", total=self.total_steps, completed=state.step, loss=0.0, lr=0.0, sps=0.0
            )
            while state.step < self.total_steps:
                batches = epoch_batches(
                    self.items,
                    cfg.train_batch_size,
                    cfg.seed,
                    state.epoch,
                    self.acc.process_index,
                    self.acc.num_processes,
                )
                usable = len(batches) // accum * accum
                while state.batch_in_epoch < usable and state.step < self.total_steps:
                    self.stop_if_requested()
                    start = time.perf_counter()
                    group = batches[state.batch_in_epoch : state.batch_in_epoch + accum]
                    loss, grad_norm = self.optimizer_step(self.load_group(group))
                    state.batch_in_epoch += accum
                    state.step += 1
                    seconds = time.perf_counter() - start
                    lr = self.scheduler.get_last_lr()[0]
                    self.losses.append(loss)
                    progress.update(task, completed=state.step, loss=loss, lr=lr, sps=seconds)
                    if state.step % cfg.logging_steps == 0 or state.step == self.total_steps:
                        self.metrics.log(
                            state.step,
                            {
                                "loss": loss,
                                "lr": lr,
                                "grad_norm": grad_norm,
                                "epoch": state.epoch,
                                "s_per_step": seconds,
                            },
                        )
                    self.guard.raise_if_diverged(state.step)
                    self.stop_if_requested()
                    self.periodic(state.step)
                if state.batch_in_epoch >= usable:
                    state.epoch += 1
                    state.batch_in_epoch = 0

    def load_group(self, group: list[list[int]]) -> list[Batch]:
        """The micro-batches of one optimizer step, from the cache. A damaged cache entry stops the run with a
        checkpoint of the state before this step (the generator is put back), so a resume is exact."""
        before = self.state.generator.get_state()
        try:
            return self._load_group(group)
        except CacheEntryDamaged as exc:
            self.state.generator.set_state(before)
            path = self.save_checkpoint()
            raise CacheEntryDamaged(
                f"{exc}. Stopped at step {self.state.step}: {path} holds the state, and "
                "resume_from_checkpoint: latest continues exactly from there"
            ) from exc

    def _load_group(self, group: list[list[int]]) -> list[Batch]:
        return [
            load_batch(
                indices,
                self.samples,
                self.index,
                self.family,
                self.state.epoch,
                self.state.generator,
                self.cfg.caption_dropout_probability,
                self.cfg.vae_latent_sampling == "sample",
            )
            for indices in group
        ]

    def optimizer_step(self, batches: list[Batch]) -> tuple[float, float]:
        """Backward each micro-batch (grads synced on the last), clip, step -> (mean loss, grad norm).
        A non-finite loss or gradient skips the update (training/guard.py)."""
        total = torch.zeros((), device=self.device)
        streams: dict[str, torch.Tensor] = {}
        for n, batch in enumerate(batches):
            sync = n == len(batches) - 1
            if self.fsdp:
                context = gradient_sync(self.model, sync)
            else:
                context = self.acc.no_sync(self.model) if not sync else nullcontext()
            with context:
                out = step_loss(
                    self.family,
                    self.model,
                    batch,
                    self.state.generator,
                    self.cfg.flow_sigma_sampler,
                    self.device,
                    self.weight_dtype,
                    self.extras,
                )
                self.acc.backward(out.total / len(batches))
            # one host sync per step (measure_step), not per micro-batch
            total += out.total.detach().float() / len(batches)
            for name, value in out.streams.items():
                streams[name] = streams.get(name, 0.0) + value.float() / len(batches)
            fault_point("train.micro_batch")
        health = measure_step(
            self.acc, self.params, self.cfg.max_grad_norm, total, streams, self.stop.signum is not None
        )
        self.stop_agreed = health.stop
        applied = self.guard.apply(health)
        if applied:
            self.optimizer.step()
            if not self.optimizer.step_was_skipped:  # fp16: the GradScaler skipped an overflowing step
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.record(self.state.step + 1, health)
        if applied:  # EMA follows the weights only where they moved
            self.extras.after_optimizer_step(self.state.step + 1)
        fault_point("train.step")
        return health.loss, health.grad_norm

    def periodic(self, step: int) -> None:
        cfg = self.cfg
        last = step == self.total_steps
        if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0 and not last:
            self.save_checkpoint()
        if cfg.validation_steps and step % cfg.validation_steps == 0 and not last:
            self.validate(step)

    # ---- stops ---------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        model = self.acc.unwrap_model(self.model)
        return self.checkpointer.save(self.state.step, model, self.optimizer, self.scheduler, self.state)

    def stop_if_requested(self) -> None:
        """After a stop signal: checkpoint the state where it is (between two steps) and leave."""
        signum = self.stop.signum
        if self.acc.num_processes > 1:  # every rank stops after the same step: the one whose figures said so
            signum = (signum or signal.SIGTERM) if self.stop_agreed else None
        if signum is None:
            return
        path = self.save_checkpoint()
        self.acc.end_training()
        close_process_group()
        raise RunStopped(
            f"stopped at step {self.state.step} of {self.total_steps}: {path} holds the state, nothing was "
            "exported; resume_from_checkpoint: latest continues exactly from there",
            signum,
        )

    def validate(self, step: int) -> list[Path]:
        written: list[Path] = []
        if not self.validates:
            return written
        if self.validator is None:  # DDP: rank 0 validates, the others wait for it (no collective between)
            self.acc.wait_for_everyone()
            return written
        model = self.acc.unwrap_model(self.model)
        # FSDP2: every rank judges the whole LoRA (gathered), so all of them validate or none does
        state = self.adapter.state_dict(model) if self.fsdp else None
        self.guard.require_finite_lora(model, step, "validation videos", state)
        for tag, weights in self.extras.validation_variants():
            with weights():  # the trained weights, or the EMA's
                written += self.validator.run(
                    step,
                    model,
                    self.output_dir,
                    on_video=lambda name, v: (
                        self.metrics.log_video_frames(step, name, v) if self.acc.is_main_process else None
                    ),
                    tag=tag,
                )
        self.acc.wait_for_everyone()
        return written

    # ---- outputs -------------------------------------------------------------------------------------------
    def check_ranks_in_sync(self) -> list[list[float]]:
        """Every rank must hold the same LoRA; a divergence means broken DDP, so fail loudly."""
        model = self.acc.unwrap_model(self.model)
        summary = rank_checksum([p for p in model.parameters() if p.requires_grad]).to(self.device)
        gathered = self.acc.gather(summary.unsqueeze(0)).cpu().tolist()
        if self.acc.is_main_process:
            (self.output_dir / "ddp_sync.json").write_text(json.dumps({"ranks": gathered}))
        if any(row != gathered[0] for row in gathered):
            raise RuntimeError(f"LoRA weights differ between processes: {gathered}")
        return gathered

    def export(self) -> dict[str, Any]:
        step = self.state.step
        if self.acc.num_processes > 1 and not self.fsdp:  # FSDP2: each rank holds its own shard by design
            self.check_ranks_in_sync()
        if self.cfg.checkpointing_steps:
            self.save_checkpoint()
        self.stop_if_requested()
        videos = self.validate(step)
        result: dict[str, Any] = {"steps": step, "losses": self.losses, "videos": [str(v) for v in videos]}
        self.stop_if_requested()
        # the adapter's state, gathered from the shards under FSDP2 (every rank takes part)
        state = self.adapter.state_dict(self.acc.unwrap_model(self.model)) if self.fsdp else None
        if self.acc.is_main_process:
            self.guard.require_finite_lora(
                self.acc.unwrap_model(self.model), step, "the LoRA files are", state
            )
            result["lora"], result["comfyui"] = self.export_lora(self.output_dir, state)
            for folder, weights in self.extras.export_variants(self.output_dir):  # the EMA's LoRA
                with weights():
                    result[folder.name] = self.export_lora(folder)[0]
        self.acc.wait_for_everyone()
        self.acc.end_training()
        close_process_group()
        return result

    def export_lora(self, folder: Path, state: dict[str, torch.Tensor] | None = None) -> tuple[str, str]:
        """The diffusers (LyCORIS: LyCORIS's) and ComfyUI files of the model's adapter as it is now (`state`:
        the adapter's state already gathered, under FSDP2)."""
        folder.mkdir(parents=True, exist_ok=True)
        with staged_files(folder) as staging:  # all files replace the previous ones together, or none does
            lora = self.adapter.save(staging, self.family, self.acc.unwrap_model(self.model), state)
            self.family.export_comfyui(staging)
        logger.info("LoRA written: %s and %s", folder / lora.name, folder / COMFYUI_FILE)
        return str(folder / lora.name), str(folder / COMFYUI_FILE)


def _flat_config(cfg: Any) -> dict[str, Any]:
    out = {}
    for key, value in cfg.model_dump().items():
        out[key] = value if isinstance(value, int | float | str | bool) else str(value)
    return out
