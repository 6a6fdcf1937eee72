"""`cinetune prep caption`: a caption for every clip of a folder, resumable.

Each caption is written the moment it exists: `clip.txt` beside the clip (written to a temporary name and
renamed, so a kill never leaves half a caption), or a line of `metadata.jsonl` (one `write` of a whole line;
a line cut short by a kill is dropped on the next run). A clip that already has a caption is skipped unless
`overwrite`, so an interrupted run continues with the clips not yet captioned. The model is loaded only when
some clip needs a caption.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cinetune.data.video_io import VIDEO_EXTS, MediaError, list_files
from cinetune.errors import ConfigError, DataError
from cinetune.prep.captioners import (
    DEFAULT_PROMPT,
    Captioner,
    CaptionError,
    clean_caption,
    render_prompt,
    sample_frames,
    with_trigger,
)
from cinetune.prep.progress import NullProgress, StageProgress
from cinetune.prep.report import StageReport

logger = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


@dataclass(frozen=True)
class CaptionOptions:
    backend: str = "local"  # local (transformers) | openai (any OpenAI-compatible chat API)
    model: str | None = None  # default: LLaVA-NeXT-Video-7B (local), gpt-4o-mini (openai)
    base_url: str | None = None
    api_key_env: str | None = None  # default: OPENAI_API_KEY when it is set (local servers need no key)
    trigger: str | None = None
    prompt: str = DEFAULT_PROMPT
    frames: int = 8
    frame_size: int = 512  # longest side of a frame sent to the model, pixels
    overwrite: bool = False
    output: str = "txt"  # txt: clip.txt beside each clip; jsonl: metadata.jsonl in the folder
    quantize: str | None = None
    device: str | None = None
    max_new_tokens: int = 300
    timeout: float = 120.0
    max_retries: int = 5
    requests_per_minute: float = 0.0

    def __post_init__(self) -> None:
        if self.backend not in ("local", "openai"):
            raise ConfigError(f"--backend '{self.backend}': one of local, openai")
        if self.output not in ("txt", "jsonl"):
            raise ConfigError(f"--output '{self.output}': one of txt, jsonl")
        if self.frames < 1 or self.frame_size < 16:
            raise ConfigError("--frames must be at least 1 and --frame_size at least 16 pixels")


def make_captioner(opts: CaptionOptions) -> Captioner:
    from cinetune.prep.local_vlm import DEFAULT_LOCAL_MODEL, LocalVLMCaptioner, check_quantize

    check_quantize(opts.quantize)
    if opts.backend == "local":
        return LocalVLMCaptioner(opts.model or DEFAULT_LOCAL_MODEL, opts.device, opts.max_new_tokens)
    from cinetune.prep.openai_api import ApiOptions, OpenAICaptioner

    api = ApiOptions(
        model=opts.model or ApiOptions.model,
        api_key=_api_key(opts.api_key_env),
        timeout=opts.timeout,
        max_retries=opts.max_retries,
        requests_per_minute=opts.requests_per_minute,
        max_tokens=opts.max_new_tokens,
    )
    if opts.base_url:
        api.base_url = opts.base_url
    return OpenAICaptioner(api)


def _api_key(env: str | None) -> str | None:
    key = os.environ.get(env or DEFAULT_KEY_ENV)
    if env and not key:
        raise ConfigError(f"--api_key_env {env}: that environment variable is not set")
    return key


class CaptionStore:
    """Where captions go and which clips have one."""

    def __init__(self, folder: Path, output: str) -> None:
        self.folder, self.output = folder, output
        self.rows: dict[str, str] = self._read_rows() if output == "jsonl" else {}

    def has(self, clip: Path) -> bool:
        if self.output == "jsonl":
            return bool(self.rows.get(self._name(clip)))
        try:
            return bool(clip.with_suffix(".txt").read_text(encoding="utf-8-sig").strip())
        except (FileNotFoundError, UnicodeDecodeError):
            return False

    def forget(self, clips: list[Path]) -> None:
        """Drop the jsonl rows of clips captioned again (one row per clip: each row is a caption to the
        trainer)."""
        names = {self._name(c) for c in clips} & set(self.rows)
        if self.output == "jsonl" and names:
            for name in names:
                del self.rows[name]
            self._rewrite()

    def write(self, clip: Path, caption: str) -> None:
        if self.output == "txt":
            target = clip.with_suffix(".txt")
            tmp = target.with_name(f".{target.name}.partial")
            tmp.write_text(caption + "\n", encoding="utf-8")
            tmp.replace(target)
            return
        name = self._name(clip)
        with (self.folder / METADATA).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"file_name": name, "caption": caption}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows[name] = caption

    def _name(self, clip: Path) -> str:
        return clip.relative_to(self.folder).as_posix()

    def _read_rows(self) -> dict[str, str]:
        path = self.folder / METADATA
        if not path.exists():
            return {}
        rows, damaged = {}, False
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                rows[row["file_name"]] = row["caption"]
            except (json.JSONDecodeError, KeyError, TypeError):
                damaged = True  # the line a kill cut short
        if damaged:
            self.rows = rows
            self._rewrite()
        return rows

    def _rewrite(self) -> None:
        path = self.folder / METADATA
        tmp = path.with_name(f".{METADATA}.partial")
        lines = [json.dumps({"file_name": n, "caption": c}) for n, c in self.rows.items()]
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        tmp.replace(path)


def caption_folder(
    folder: Path,
    opts: CaptionOptions,
    progress: StageProgress | None = None,
    captioner_factory: Callable[[CaptionOptions], Captioner] = make_captioner,
) -> StageReport:
    """Caption every clip under `folder` that has no caption yet (all of them with `overwrite`)."""
    progress = progress or NullProgress()
    report = StageReport("caption", unit="clip")
    if not Path(folder).is_dir():
        raise DataError(f"{folder}: no such folder")
    store = CaptionStore(Path(folder), opts.output)
    clips = list_files(Path(folder), VIDEO_EXTS)
    todo = clips if opts.overwrite else [c for c in clips if not store.has(c)]
    pending = set(todo)
    report.kept = [c.name for c in clips if c not in pending]
    progress.start(len(todo), "caption")
    if not todo:
        return report
    store.forget(todo)
    captioner = captioner_factory(opts)
    try:
        for clip in todo:
            reason = _caption_one(clip, opts, captioner, store)
            if reason:
                report.failed.append((clip.name, reason))
            else:
                report.done.append(clip.name)
            progress.advance(1)
    finally:
        captioner.close()
    return report


def _caption_one(clip: Path, opts: CaptionOptions, captioner: Captioner, store: CaptionStore) -> str:
    """Caption one clip; returns the reason it failed ('' when its caption was written)."""
    try:
        frames = sample_frames(clip, opts.frames, opts.frame_size)
    except MediaError as exc:
        return exc.reason
    except CaptionError as exc:
        return str(exc)
    try:
        answer = captioner.caption(frames, render_prompt(opts.prompt, clip, frames))
    except CaptionError as exc:
        return f"captioner error: {exc}"
    caption = clean_caption(answer)
    if not caption:
        return "empty answer from the captioner"
    store.write(clip, with_trigger(caption, opts.trigger))
    logger.debug("%s: %s", clip.name, caption)
    return ""
