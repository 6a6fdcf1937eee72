"""Where a clip's sound comes from: its own audio track (`audio.auto_split`), or the same-named file of a
linked audio dataset (`s2v_datasets`).

Pairing: a clip at `<video dir>/sub/a.mp4` takes `<audio dir>/sub/a.<ext>` (any audio extension); when the
audio folder is flat, `<audio dir>/a.<ext>` also matches, as long as only one file has that name. Linked
datasets are searched in the order given. The audio file's first sample is the clip's first frame (see
`cinetune.data.audio`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import av

from cinetune.config.dataset import DatasetConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioSource:
    """The file a clip's audio is read from, with its version (size, mtime) for cache keys."""

    path: Path
    size_bytes: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> AudioSource:
        stat = path.stat()
        return cls(path, stat.st_size, stat.st_mtime_ns)


def audio_stream_problem(path: Path) -> str | None:
    """Why `path` gives no audio (unreadable, no audio stream), or None when it does."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return f"no audio stream: in audio file {path}"
            if next(container.decode(container.streams.audio[0]), None) is None:
                return f"unreadable audio file: {path} (no audio frame decodes)"
    except (av.FFmpegError, OSError) as exc:
        return f"unreadable audio file: {path} ({type(exc).__name__}: {exc})"
    return None


class AudioLinks:
    """Same-named audio files of a video dataset's linked audio datasets."""

    def __init__(self, audio_datasets: list[DatasetConfig]) -> None:
        from cinetune.data.dataset import discover_files  # dataset.py imports this module

        self.ids = [ds.id for ds in audio_datasets]
        self._by_rel: list[dict[str, Path]] = []
        self._by_name: list[dict[str, list[Path]]] = []
        for ds in audio_datasets:
            assert ds.instance_data_dir is not None
            by_rel: dict[str, Path] = {}
            by_name: dict[str, list[Path]] = {}
            for path in discover_files(ds):
                stem = path.relative_to(ds.instance_data_dir).with_suffix("").as_posix()
                if stem in by_rel:
                    logger.warning(
                        "audio dataset '%s': %s and %s share a name; %s is used",
                        ds.id,
                        by_rel[stem].name,
                        path.name,
                        by_rel[stem].name,
                    )
                    continue
                by_rel[stem] = path
                by_name.setdefault(path.stem, []).append(path)
            self._by_rel.append(by_rel)
            self._by_name.append(by_name)

    def find(self, rel_clip_path: str) -> Path | None:
        """The audio file of the clip at `rel_clip_path` (relative to its dataset folder), or None."""
        stem = Path(rel_clip_path).with_suffix("").as_posix()
        name = Path(rel_clip_path).stem
        for by_rel, by_name in zip(self._by_rel, self._by_name, strict=True):
            if stem in by_rel:
                return by_rel[stem]
            matches = by_name.get(name, [])
            if len(matches) == 1:
                return matches[0]
        return None

    def missing_reason(self, rel_clip_path: str) -> str:
        names = ", ".join(f"'{i}'" for i in self.ids)
        stem = Path(rel_clip_path).with_suffix("").as_posix()
        return f"no audio file: none named {stem}.* in s2v dataset(s) {names}"


def clip_audio(
    ds: DatasetConfig, path: Path, has_track: bool, links: AudioLinks | None
) -> tuple[AudioSource | None, str | None]:
    """(where the clip's audio comes from, why it has none). Both None for a dataset without audio."""
    if ds.audio is None:
        return None, None
    if links is None:  # auto_split: the clip's own track
        if has_track:
            return AudioSource.of(path), None
        return None, "no audio track"
    assert ds.instance_data_dir is not None
    rel = path.relative_to(ds.instance_data_dir).as_posix()
    found = links.find(rel)
    if found is None:
        return None, links.missing_reason(rel)
    problem = audio_stream_problem(found)
    if problem is not None:
        return None, problem
    return AudioSource.of(found), None
