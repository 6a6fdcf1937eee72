from __future__ import annotations

import json
from pathlib import Path

import pytest

from cinetune.config.dataset import DatasetConfig
from cinetune.data import captions_for
from cinetune.errors import DataError


def _ds(root: Path, **kwargs: object) -> DatasetConfig:
    return DatasetConfig(id="clips", instance_data_dir=root, **kwargs)


def _clips(root: Path, *names: str) -> list[Path]:
    paths = [root / name for name in names]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not read by captions_for")
    return paths


def test_textfile_lines_are_captions_and_problems_are_reasons(tmp_path: Path) -> None:
    one, multi, missing, empty, latin1, bom = _clips(
        tmp_path, "one.mp4", "multi.mp4", "missing.mp4", "empty.mp4", "latin1.mp4", "bom.mp4"
    )
    (tmp_path / "one.txt").write_text("a red car\n", encoding="utf-8")
    (tmp_path / "multi.txt").write_text("first take\n\n  second take  \n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text(" \n\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("un café".encode("latin-1"))
    (tmp_path / "bom.txt").write_bytes("\ufeffwith a bom".encode())
    captions, reasons = captions_for(_ds(tmp_path), [one, multi, missing, empty, latin1, bom])
    assert captions == {one: ["a red car"], multi: ["first take", "second take"], bom: ["with a bom"]}
    assert reasons == {
        missing: "missing caption file: missing.txt",
        empty: "empty caption file",
        latin1: "caption file is not UTF-8",
    }


def test_filename_strategy_turns_separators_into_spaces(tmp_path: Path) -> None:
    (clip,) = _clips(tmp_path, "sub/a_dog--running_fast.mov")
    captions, reasons = captions_for(_ds(tmp_path, caption_strategy="filename"), [clip])
    assert captions == {clip: ["a dog running fast"]} and not reasons


def test_instanceprompt_is_every_caption(tmp_path: Path) -> None:
    clips = _clips(tmp_path, "a.mp4", "b.mp4")
    ds = _ds(tmp_path, caption_strategy="instanceprompt", instance_prompt="sks style")
    captions, _ = captions_for(ds, clips)
    assert captions == {clips[0]: ["sks style"], clips[1]: ["sks style"]}


def test_jsonl_rows_match_by_file_name_with_lists_and_missing_rows(tmp_path: Path) -> None:
    a, b, c = _clips(tmp_path, "a.mp4", "sub/b.mp4", "c.mp4")
    rows = [
        {"file_name": "sub/b.mp4", "caption": ["b one", "b two"]},
        {"file_name": "a.mp4", "caption": "caption of a"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    captions, reasons = captions_for(_ds(tmp_path, caption_strategy="jsonl"), [a, b, c])
    assert captions == {a: ["caption of a"], b: ["b one", "b two"]}
    assert reasons == {c: "no row in metadata.jsonl"}


def test_csv_metadata_file_elsewhere_names_clips_relative_to_the_data_dir(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    a, b = _clips(root, "a.mp4", "b.mp4")
    meta = tmp_path / "meta" / "captions.csv"
    meta.parent.mkdir()
    meta.write_text('file_name,caption\nb.mp4,"b, with a comma"\na.mp4,\n', encoding="utf-8")
    captions, reasons = captions_for(_ds(root, caption_strategy="csv", metadata_file=meta), [a, b])
    assert captions == {b: ["b, with a comma"]}
    assert reasons == {a: "empty caption in captions.csv"}


def test_missing_or_malformed_metadata_is_a_data_error(tmp_path: Path) -> None:
    clips = _clips(tmp_path, "a.mp4")
    with pytest.raises(DataError, match=r"metadata\.jsonl not found"):
        captions_for(_ds(tmp_path, caption_strategy="jsonl"), clips)
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "a.mp4", "caption": "ok"}\n{broken\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"metadata\.jsonl:2"):
        captions_for(_ds(tmp_path, caption_strategy="jsonl"), clips)
    (tmp_path / "metadata.csv").write_text("name,text\na.mp4,hi\n", encoding="utf-8")
    with pytest.raises(DataError, match="file_name"):
        captions_for(_ds(tmp_path, caption_strategy="csv"), clips)
