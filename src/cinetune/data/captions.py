"""Captions per clip, by the dataset's caption_strategy.

Captions are keyed by the clip's path, never by its position in a list: when an earlier clip is dropped
(broken, too short), a positional pairing would silently shift every later caption onto the wrong clip.
A clip can have several captions (lines of its .txt, a list in jsonl, several metadata rows); training picks
one per step.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path

from cinetune.config.dataset import DatasetConfig
from cinetune.errors import DataError

logger = logging.getLogger(__name__)

Captions = dict[Path, list[str]]
Reasons = dict[Path, str]


def captions_for(ds: DatasetConfig, files: list[Path]) -> tuple[Captions, Reasons]:
    """(captions per file, skip reason per file); every file lands in exactly one of the two.

    A metadata file that is missing or malformed raises DataError: that is a config problem of the whole
    dataset, not of one clip.
    """
    captions: Captions = {}
    reasons: Reasons = {}
    table = _load_metadata(ds) if ds.caption_strategy in ("jsonl", "csv") else None
    for path in files:
        if table is not None:
            found, reason = _from_table(ds, table, path)
        elif ds.caption_strategy == "textfile":
            found, reason = _from_textfile(path)
        elif ds.caption_strategy == "filename":
            found, reason = _from_filename(path)
        else:
            found, reason = [ds.instance_prompt or ""], ""
        if found:
            captions[path] = found
        else:
            reasons[path] = reason or "no caption"
    return captions, reasons


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _from_textfile(path: Path) -> tuple[list[str], str]:
    caption_path = path.with_suffix(".txt")
    try:
        raw = caption_path.read_bytes()
    except FileNotFoundError:
        return [], f"missing caption file: {caption_path.name}"
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows write a BOM
    except UnicodeDecodeError:
        return [], "caption file is not UTF-8"
    found = _lines(text)
    return found, "" if found else "empty caption file"


def _from_filename(path: Path) -> tuple[list[str], str]:
    caption = " ".join(re.sub(r"[_-]+", " ", path.stem).split())
    return ([caption], "") if caption else ([], "empty caption from the file name")


def metadata_path(ds: DatasetConfig) -> Path:
    """The jsonl/csv file of the dataset: metadata_file, else metadata.<strategy> in instance_data_dir."""
    if ds.metadata_file is not None:
        return ds.metadata_file
    assert ds.instance_data_dir is not None  # the config validator requires it for media datasets
    return ds.instance_data_dir / f"metadata.{ds.caption_strategy}"


def _load_metadata(ds: DatasetConfig) -> Captions:
    """Captions per resolved clip path. file_name is taken relative to the metadata file's folder and to
    instance_data_dir (both conventions exist in the wild); several rows for one file add captions."""
    path = metadata_path(ds)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"dataset '{ds.id}': metadata file {path} not found") from None
    except UnicodeDecodeError:
        raise DataError(f"dataset '{ds.id}': metadata file {path} is not UTF-8") from None
    rows = _jsonl_rows(text, path) if ds.caption_strategy == "jsonl" else _csv_rows(text, path)
    bases = {path.parent.resolve()}
    if ds.instance_data_dir is not None:
        bases.add(ds.instance_data_dir.resolve())
    table: Captions = {}
    for file_name, found in rows:
        for key in {(base / file_name).resolve() for base in bases}:
            table.setdefault(key, []).extend(found)
    logger.debug("dataset '%s': %d metadata rows from %s", ds.id, len(rows), path)
    return table


def _jsonl_rows(text: str, path: Path) -> list[tuple[str, list[str]]]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "file_name" not in row or "caption" not in row:
            raise DataError(f"{path}:{lineno}: each line needs 'file_name' and 'caption'")
        caption = row["caption"]
        items = caption if isinstance(caption, list) else [caption]
        if not all(isinstance(item, str) for item in items):
            raise DataError(f"{path}:{lineno}: 'caption' must be a string or a list of strings")
        rows.append((str(row["file_name"]), [item.strip() for item in items if item.strip()]))
    return rows


def _csv_rows(text: str, path: Path) -> list[tuple[str, list[str]]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = {"file_name", "caption"} - set(reader.fieldnames or [])
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; need file_name and caption")
    rows = []
    for row in reader:
        caption = (row["caption"] or "").strip()
        rows.append((row["file_name"] or "", [caption] if caption else []))
    return rows


def _from_table(ds: DatasetConfig, table: Captions, path: Path) -> tuple[list[str], str]:
    found = table.get(path.resolve())
    if found is None:
        return [], f"no row in {metadata_path(ds).name}"
    return list(found), "" if found else f"empty caption in {metadata_path(ds).name}"
