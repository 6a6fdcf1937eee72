"""Build the text-embedding and VAE-latent caches, one encoder on the device at a time.

Keys cover everything an entry depends on (source file path/size/mtime, frame window, fps, bucket, crop, model
and VAE identity, dtype), so a changed config never reuses a stale entry; entries already on disk are skipped,
so an interrupted build resumes where it stopped. An entry on disk is read and checked before it is trusted:
a truncated or corrupted one is reported and built again.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cinetune.cache.store import TensorCache, cache_key
from cinetune.data import Sample, load_pixels
from cinetune.errors import DataError, RunStopped, disk_error
from cinetune.faults import fault_point
from cinetune.memory import prepare_encoder
from cinetune.memory.vae import apply_vae_memory
from cinetune.models.base import ModelFamily
from cinetune.models.vision import FrameFeatures

logger = logging.getLogger(__name__)


@dataclass
class CacheIndex:
    """Where every caption's embedding and every (sample, window) latent lives."""

    text: TensorCache
    latents: dict[str, TensorCache]
    caption_keys: dict[str, str] = field(default_factory=dict)
    latent_keys: dict[tuple[int, int], str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)  # entries found damaged, set aside and rebuilt

    def text_embeds(self, caption: str) -> dict[str, torch.Tensor]:
        return self.text.load(self.caption_keys[caption])

    def latent(self, sample_index: int, window: int, dataset_id: str) -> dict[str, torch.Tensor]:
        return self.latents[dataset_id].load(self.latent_keys[(sample_index, window)])


def _collect() -> None:
    """After the last reference to an encoder is dropped: free its host and device memory now."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class CacheBuilder:
    """Encodes what is missing from the caches. The family knows how to encode; this knows what and when."""

    def __init__(
        self,
        family: ModelFamily,
        *,
        text_root: Path,
        latent_roots: dict[str, Path],
        device: torch.device,
        dtype: torch.dtype,
        max_sequence_length: int,
        text_batch_size: int = 16,
        progress: Callable[[str, int], Iterable] | None = None,
        features: FrameFeatures | None = None,
        stop_signal: Callable[[], int | None] | None = None,
        vae_dtype: torch.dtype | None = None,
        share: tuple[int, int] = (0, 1),
        loading: Callable[[Callable[[], Any]], Any] | None = None,
        cfg: Any | None = None,
    ) -> None:
        self.family = family
        self.features = features  # CREPA: vision features of each window, stored with its latents
        self.cfg = cfg  # the memory keys (quantized encoders, offload, VAE options); None: none of them
        self.index = CacheIndex(TensorCache(text_root), {k: TensorCache(v) for k, v in latent_roots.items()})
        self.device = device
        self.dtype = dtype  # the text encoder's, and its entries'
        self.vae_dtype = vae_dtype or dtype  # the VAEs', and their entries'
        self.max_sequence_length = max_sequence_length
        self.text_batch_size = text_batch_size
        self.progress = progress or (lambda _label, _total: None)
        self.stop_signal = stop_signal or (lambda: None)  # a signal number once Ctrl-C / SIGTERM arrived
        self._dtype_name = str(dtype).removeprefix("torch.")
        self._vae_dtype_name = str(self.vae_dtype).removeprefix("torch.")
        # (rank, ranks): this builder encodes entry n of every list when n % ranks == rank (training/ranks.py)
        self.share = share
        self.loading = loading or (lambda load: load())  # runs a load (to the device) in this rank's turn

    # ---- keys ----------------------------------------------------------------------------------------------
    def text_key(self, caption: str) -> str:
        return cache_key(
            {
                "kind": "text",
                "caption": caption,
                "encoder": self.family.component_identity("text"),
                "family": self.family.name,
                "max_len": self.max_sequence_length,
                "dtype": self._dtype_name,
                **self._changes("text_encoder_1_precision", "text_encoder_2_precision"),
            }
        )

    def latent_key(self, sample: Sample, window: int) -> str:
        return cache_key(
            {
                "kind": "latent",
                "path": str(sample.path.resolve()),
                "size": sample.size_bytes,
                "mtime_ns": sample.mtime_ns,
                "start": sample.window_starts[window],
                "frames": sample.bucket.num_frames,
                "fps": sample.frame_rate,
                "bucket": [sample.bucket.width, sample.bucket.height],
                "crop": "center",
                "family": self.family.name,
                "vae": self.family.component_identity("vae"),
                "dtype": self._vae_dtype_name,
                **self.family.latent_key_fields(sample),
                **({"crepa": self.features.identity} if self.features is not None else {}),
                **self._changes("vae_enable_tiling"),  # tiles blend at the seams; the others keep the latents
            }
        )

    def _changes(self, *keys: str) -> dict[str, Any]:
        """Memory keys that change what an encoder produces, when set (absent ones keep existing keys)."""
        values = {k: getattr(self.cfg, k) for k in keys} if self.cfg is not None else {}
        return {k: v for k, v in values.items() if v not in ("no_change", False)}

    # ---- phases --------------------------------------------------------------------------------------------
    def build(self, samples: list[Sample], extra_prompts: Iterable[str] = ()) -> CacheIndex:
        captions = sorted({c for s in samples for c in s.captions} | {""} | set(extra_prompts))
        self.build_text(captions)
        self.build_latents(samples)
        self.index.stats["damaged_rebuilt"] = len(self.index.damaged)
        return self.index

    def build_text(self, captions: list[str]) -> None:
        keys = {c: self.text_key(c) for c in captions}
        self.index.caption_keys.update(keys)
        missing = [
            c
            for n, c in enumerate(captions)
            if self._mine(n) and not self._usable(self.index.text, keys[c], "text")
        ]
        self.index.stats["text_entries"] = len(captions)
        self.index.stats["text_encoded"] = len(missing)
        if not missing:
            return
        start = time.perf_counter()
        tokenizer, encoder = self.loading(self._text_encoder_on_device)
        bar = self.progress("text embeddings", len(missing))
        for i in range(0, len(missing), self.text_batch_size):
            chunk = missing[i : i + self.text_batch_size]
            self._stop_point("text embeddings", len(missing) - i)
            for caption, encoded in zip(
                chunk,
                self.family.encode_text(tokenizer, encoder, chunk, self.max_sequence_length),
                strict=True,
            ):
                tensors = {k: v.to(self.dtype) for k, v in encoded.items()}
                meta = {"caption": caption[:2000], "rank": str(self.share[0])}
                self._save(self.index.text, keys[caption], tensors, meta, "text", len(missing) - i)
                fault_point("cache.text")
            if bar is not None:
                bar(len(chunk))
        encoder.cpu()
        del encoder, tokenizer
        _collect()
        self.index.stats["text_seconds"] = time.perf_counter() - start

    def build_latents(self, samples: list[Sample]) -> None:
        todo = []
        for i, sample in enumerate(samples):
            for window in range(len(sample.window_starts)):
                key = self.latent_key(sample, window)
                mine = self._mine(len(self.index.latent_keys))
                self.index.latent_keys[(i, window)] = key
                if mine and not self._usable(self.index.latents[sample.dataset_id], key, "latent"):
                    todo.append((i, window, key))
        self.index.stats["latent_entries"] = len(self.index.latent_keys)
        self.index.stats["latent_encoded"] = len(todo)
        if not todo:
            return
        start = time.perf_counter()
        frames = 0
        encoders = self.loading(self._latent_encoders_on_device)  # the VAE, e.g. an audio VAE
        vision = None  # CREPA's vision encoder, loaded in this rank's turn too
        if self.features is not None:
            vision = self.loading(lambda: self.features.load(self.dtype).to(self.device))
        bar = self.progress("video latents", len(todo))
        for done, (i, window, key) in enumerate(todo):
            self._stop_point("video latents", len(todo) - done)
            sample = samples[i]
            pixels = load_pixels(sample, window)
            frames += pixels.shape[1]
            tensors = self.family.encode_sample(encoders, sample, window, pixels)
            if vision is not None:
                latent_frames = tensors["latents"].shape[1]
                tensors["crepa_features"] = self.features.encode(vision, pixels, latent_frames)
            meta = {
                "path": str(sample.path),
                "start": str(sample.window_starts[window]),
                "bucket": sample.bucket.key,
                "rank": str(self.share[0]),
            }
            tensors = {k: v.to(self.vae_dtype) for k, v in tensors.items()}
            self._save(self.index.latents[sample.dataset_id], key, tensors, meta, "latent", len(todo) - done)
            fault_point("cache.latent")
            if bar is not None:
                bar(1)
        for encoder in encoders.values():
            encoder.cpu()
        del encoders, vision
        _collect()
        seconds = time.perf_counter() - start
        self.index.stats.update(latent_seconds=seconds, latent_frames=frames)

    def _mine(self, n: int) -> bool:
        rank, ranks = self.share
        return n % ranks == rank

    def _text_encoder_on_device(self) -> tuple[Any, torch.nn.Module]:
        """Loaded, quantized / offloaded as the memory keys say, on the device (in this rank's turn)."""
        tokenizer, encoder = self.family.load_text_encoder(self.dtype)
        encoder = prepare_encoder(encoder, self.cfg, self.device, self.family.text_encoder_parts(encoder))
        return tokenizer, encoder

    def _latent_encoders_on_device(self) -> dict[str, torch.nn.Module]:
        """The VAE (with its memory options) and e.g. an audio VAE, on the device."""
        encoders = self.family.load_latent_encoders(self.vae_dtype)
        encoders["vae"] = apply_vae_memory(encoders["vae"], self.cfg)
        for name, encoder in encoders.items():
            encoders[name] = prepare_encoder(encoder, self.cfg, self.device)
        return encoders

    def count_missing(self, samples: list[Sample], extra_prompts: Iterable[str] = ()) -> int:
        """Entries of the whole cache not on disk yet (a cheap existence check, no read)."""
        captions = {c for s in samples for c in s.captions} | {""} | set(extra_prompts)
        missing = sum(not self.index.text.has(self.text_key(c)) for c in captions)
        for sample in samples:
            cache = self.index.latents[sample.dataset_id]
            missing += sum(
                not cache.has(self.latent_key(sample, w)) for w in range(len(sample.window_starts))
            )
        return missing

    # ---- integrity, stops and full disks -------------------------------------------------------------------
    def _usable(self, cache: TensorCache, key: str, kind: str) -> bool:
        """Whether an entry exists and reads back whole; a damaged one is reported, set aside and rebuilt."""
        if not cache.has(key):
            return False
        reason = cache.damaged(key)
        if reason is None:
            return True
        aside = cache.set_aside(key)
        logger.warning("%s cache entry %s is damaged (%s): rebuilding it", kind, cache.path(key), reason)
        self.index.damaged.append(f"{aside} ({reason})")
        return False

    def _save(
        self,
        cache: TensorCache,
        key: str,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, str],
        kind: str,
        remaining: int = 1,
    ) -> None:
        _require_finite(tensors, kind, meta)
        try:
            cache.save(key, tensors, meta)
        except OSError as exc:
            # what this entry and the ones after it need, at this entry's size
            need = remaining * sum(t.numel() * t.element_size() for t in tensors.values())
            error = disk_error(exc, cache.root, f"the {kind} cache", need)
            if error is None:
                raise
            raise error from exc

    def _stop_point(self, label: str, remaining: int) -> None:
        """Between two entries: a requested stop ends the build here; every entry written stays valid."""
        signum = self.stop_signal()
        if signum is not None:
            raise RunStopped(
                f"stopped while caching {label} ({remaining} still to encode); the entries written are "
                "kept and the next run encodes only what is missing",
                signum,
            )


def _require_finite(tensors: dict[str, torch.Tensor], kind: str, meta: dict[str, str]) -> None:
    """A NaN / inf entry would poison every step that draws it: stop before writing it, naming its source."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        source = meta.get("path") or repr(meta.get("caption", "")[:80])
        raise DataError(
            f"the {kind} encoder produced non-finite values ({', '.join(bad)}) for {source}; nothing was "
            "written. An encoder run in fp16 overflows: vae_dtype fp32 (or bf16) avoids it for the VAE"
        )
