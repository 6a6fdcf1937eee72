"""Validation videos: each prompt x resolution through the family's pipeline with the current LoRA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cinetune.cache.builder import CacheIndex
from cinetune.config import DatasetConfig, TrainConfig
from cinetune.data import MediaError, Sample, discover_files, load_pixels, probe, read_window, write_video
from cinetune.errors import ConfigError
from cinetune.faults import fault_point
from cinetune.models.base import ModelFamily

logger = logging.getLogger(__name__)


def condition_images(
    family: ModelFamily, cfg: TrainConfig, media: list[DatasetConfig], samples: list[Sample], limit: int = 8
) -> list[np.ndarray] | None:
    """Conditioning images (uint8 H x W x 3) for image-to-video validation, or None.

    From the eval dataset (its images, or its videos' first frames) when eval_dataset_id is set; else, with
    validation_using_datasets, the first frames of the first training samples; else None, and the family
    makes its own (the first frame of a text-to-video generation).
    """
    if not getattr(family, "conditions_on_image", False):
        return None
    if cfg.eval_dataset_id is not None:
        dataset = next(d for d in media if d.id == cfg.eval_dataset_id)
        images = []
        for path in discover_files(dataset)[:limit]:
            try:
                info = probe(path)
                size = (info.width, info.height)
                images.append(read_window(path, info, 0, 1, info.fps or cfg.frame_rate, size)[0])
            except MediaError as exc:
                logger.warning("eval dataset '%s': skipping %s (%s)", dataset.id, path, exc.reason)
        if not images:
            raise ConfigError(f"eval_dataset_id '{dataset.id}': no readable image or video")
        return images
    if cfg.validation_using_datasets:
        firsts = [load_pixels(sample, 0)[:, 0] for sample in samples[:limit]]
        return [((f.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for f in firsts]
    return None


class Validator:
    def __init__(
        self,
        family: ModelFamily,
        cfg: TrainConfig,
        prompts: dict[str, str],
        cache: CacheIndex,
        vae: torch.nn.Module,
        scheduler: Any,
        device: torch.device,
        dtype: torch.dtype,
        offload_vae: bool,
        condition_images: list[np.ndarray] | None = None,
        frame_rate: float | None = None,
        write: bool = True,
    ) -> None:
        self.family, self.cfg, self.cache = family, cfg, cache
        self.write = write  # FSDP2: every rank generates (each holds a shard of the model), rank 0 writes
        self.frame_rate = frame_rate or cfg.frame_rate
        self.condition_images = condition_images
        self.vae, self.scheduler = vae, scheduler
        self.device, self.dtype, self.offload_vae = device, dtype, offload_vae
        self.prompts = prompts
        rule = family.frame_rule
        self.num_frames = rule.adjust_frames(cfg.validation_num_video_frames, "validation_num_video_frames")
        self.sizes = []
        for width, height in cfg.resolutions:
            size = (rule.side_down(width), rule.side_down(height))
            if size != (width, height):
                logger.warning(
                    "validation_resolution %dx%d is not a multiple of %d; using %dx%d",
                    width,
                    height,
                    rule.spatial_multiple,
                    *size,
                )
            self.sizes.append(size)

    @torch.no_grad()
    def run(
        self, step: int, model: torch.nn.Module, output_dir: Path, on_video: Any = None, tag: str = ""
    ) -> list[Path]:
        """Write OUTPUT_DIR/validation/step_N/<prompt><tag>_<W>x<H>.mp4 for every prompt and resolution (tag
        "_ema": the EMA weights)."""
        folder = Path(output_dir) / "validation" / f"step_{step}"
        if self.write:
            folder.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        model.eval()
        if self.offload_vae:
            self.vae.to(self.device)
        pipe = self.family.build_pipeline(model, self.vae, self.scheduler)
        pipe.set_progress_bar_config(disable=True)
        negative = self.cache.text_embeds(self.cfg.validation_negative_prompt)
        written = []
        seed = self.cfg.validation_seed
        for number, (name, prompt) in enumerate(self.prompts.items()):
            positive = self.cache.text_embeds(prompt)
            # Only image-to-video families take (and get) a conditioning image; prompt k uses image k mod n.
            extra = {}
            if self.condition_images:
                extra["image"] = self.condition_images[number % len(self.condition_images)]
            for width, height in self.sizes:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    result = self.family.generate(
                        pipe,
                        positive,
                        negative,
                        width=width,
                        height=height,
                        num_frames=self.num_frames,
                        guidance_scale=self.cfg.validation_guidance,
                        num_inference_steps=self.cfg.validation_num_inference_steps,
                        frame_rate=self.frame_rate,
                        generator=generator,
                        device=self.device,
                        **extra,
                    )
                path = folder / f"{name}{tag}_{width}x{height}.mp4"
                if not _finite(result):  # NaN frames would be written as black ones: say so, write none
                    logger.warning("validation video %s is not written: the generation is non-finite", path)
                    continue
                if not self.write:
                    continue
                video = (np.clip(result.frames, 0, 1) * 255).round().astype(np.uint8)
                write_video(path, video, self.frame_rate, audio=result.audio, sample_rate=result.sample_rate)
                fault_point("validation.video")
                written.append(path)
                if on_video is not None:
                    on_video(f"{name}{tag}_{width}x{height}", video)
        if self.offload_vae:  # back to the CPU until the next validation: the VAE and the family's others
            for module in (self.vae, *self.family.validation_modules()):
                module.to("cpu")
        model.train(was_training)
        if written:
            logger.info("validation videos for step %d in %s", step, folder)
        return written


def _finite(result: Any) -> bool:
    audio = getattr(result, "audio", None)
    frames_ok = bool(np.isfinite(result.frames).all())
    return frames_ok and (audio is None or bool(np.isfinite(np.asarray(audio)).all()))
