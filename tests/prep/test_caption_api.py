"""Captioning through an OpenAI-compatible API: a fake server on 127.0.0.1, started and stopped by each
test."""

from __future__ import annotations

import base64
import io
import itertools
import json
import time
from pathlib import Path

import pytest
from PIL import Image

from cinetune.errors import ConfigError
from cinetune.prep.captioners import even_indices, sample_frames
from cinetune.prep.captioning import CaptionOptions, caption_folder
from cinetune.prep.openai_api import ApiOptions, OpenAICaptioner

from .fake_api import FakeChatServer, Reply


def _fast(server: FakeChatServer, **kwargs):
    """A captioner factory with test-sized waits (the CLI's defaults wait seconds)."""
    opts = {
        "base_url": server.url,
        "model": "test-vlm",
        "backoff": 0.01,
        "timeout": 5.0,
        "max_retries": 2,
        **kwargs,
    }
    return lambda caption_opts: OpenAICaptioner(ApiOptions(**opts))


def test_frames_are_spread_evenly_from_first_to_last(tmp_path: Path) -> None:
    from tests.data.clips import frame_index, index_clip

    clip = index_clip(tmp_path / "index.mp4", 40)
    frames = sample_frames(clip, 5, 32)
    assert even_indices(40, 5) == frames.indices == [0, 10, 20, 29, 39]
    assert [frame_index(__import__("numpy").asarray(im)) for im in frames.images] == frames.indices
    assert max(frames.images[0].size) == 32  # 64x48 scaled to a longest side of 32
    assert even_indices(3, 8) == [0, 1, 2]


def test_every_clip_captioned_with_its_frames_trigger_and_key(clip_folder: Path, monkeypatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-test")
    caption = "A red square glides\nacross a dark screen."
    with FakeChatServer(lambda n, body: Reply(caption=f'"{caption}"')) as server:
        opts = CaptionOptions(
            backend="openai",
            base_url=server.url,
            model="test-vlm",
            api_key_env="MY_KEY",
            trigger="APT",
            frames=4,
            frame_size=32,
        )
        report = caption_folder(clip_folder, opts)
    assert len(report.done) == 5 and not report.failed
    for clip in clip_folder.glob("*.mp4"):
        assert clip.with_suffix(".txt").read_text() == "APT A red square glides across a dark screen.\n"
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"]["model"] == "test-vlm"
    parts = request["body"]["messages"][0]["content"]
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(images) == 4
    first = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    assert max(first.size) == 32


def test_busy_server_is_retried_after_429_and_a_slow_one_reported(clip_folder: Path) -> None:
    clips = sorted(clip_folder.glob("*.mp4"))

    def behave(number: int, body: dict) -> Reply:
        if number == 0:
            return Reply(status=429, headers={"Retry-After": "0.05"})
        if "clip_02" in json.dumps(body["messages"][0]["content"][0]):
            return Reply(delay=1.0)  # longer than the client's timeout, every time
        return Reply()

    with FakeChatServer(behave) as server:
        opts = CaptionOptions(backend="openai", prompt="Describe {name}.", frames=2)
        report = caption_folder(
            clip_folder, opts, captioner_factory=_fast(server, timeout=0.3, max_retries=1)
        )
    assert sorted(report.done) == sorted(c.name for c in clips if c.name != "clip_02.mp4")
    assert report.failed == [
        ("clip_02.mp4", "captioner error: no answer within 0.3 s (gave up after 2 tries)")
    ]
    assert not (clip_folder / "clip_02.txt").exists()
    prompts = server.prompts()
    assert prompts[:2] == ["Describe clip_00.", "Describe clip_00."]  # the 429, then the retry that worked
    assert prompts.count("Describe clip_02.") == 2


def test_empty_answers_and_broken_clips_are_reported_and_the_rest_goes_on(clip_folder: Path) -> None:
    (clip_folder / "broken.mp4").write_bytes(b"\x00" * 100)
    with FakeChatServer(
        lambda n, body: Reply(caption="   " if "clip_01" in str(body) else "Waves.")
    ) as server:
        opts = CaptionOptions(backend="openai", prompt="Describe {name}.", frames=2, output="jsonl")
        report = caption_folder(clip_folder, opts, captioner_factory=_fast(server))
    failed = dict(report.failed)
    assert failed["clip_01.mp4"] == "empty answer from the captioner"
    assert failed["broken.mp4"].startswith("cannot be decoded")
    rows = [json.loads(line) for line in (clip_folder / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["file_name"] for r in rows) == [
        "clip_00.mp4",
        "clip_02.mp4",
        "clip_03.mp4",
        "clip_04.mp4",
    ]
    assert {r["caption"] for r in rows} == {"Waves."}


def test_a_refused_key_stops_the_run_and_keeps_what_was_written(clip_folder: Path) -> None:
    with FakeChatServer(lambda n, body: Reply(status=401) if n == 2 else Reply()) as server:
        opts = CaptionOptions(backend="openai", frames=1)
        with pytest.raises(ConfigError, match="HTTP 401, the API refused the key"):
            caption_folder(clip_folder, opts, captioner_factory=_fast(server))
    assert len(list(clip_folder.glob("*.txt"))) == 2 and len(server.requests) == 3


def test_requests_are_spaced_by_the_rate_limit(clip_folder: Path) -> None:
    """The start of each request, on the client's monotonic clock (the server's receipt times also carry the
    loopback latency, which varies on a loaded machine)."""
    starts: list[float] = []

    def factory(caption_opts):
        captioner = _fast(server, requests_per_minute=600)(caption_opts)
        send = captioner._request

        def timed(data: bytes):
            starts.append(time.monotonic())
            return send(data)

        captioner._request = timed
        return captioner

    with FakeChatServer() as server:
        caption_folder(clip_folder, CaptionOptions(backend="openai", frames=1), captioner_factory=factory)
    assert len(server.requests) == 5 and len(starts) == 5
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.1 - 1e-3  # 600 per minute


def test_existing_captions_are_kept_unless_overwrite(clip_folder: Path) -> None:
    (clip_folder / "clip_00.txt").write_text("my own words\n")
    with FakeChatServer() as server:
        report = caption_folder(
            clip_folder, CaptionOptions(backend="openai", frames=1), captioner_factory=_fast(server)
        )
        assert report.kept == ["clip_00.mp4"] and len(report.done) == 4
        assert (clip_folder / "clip_00.txt").read_text() == "my own words\n"
        again = caption_folder(
            clip_folder, CaptionOptions(backend="openai", frames=1), captioner_factory=_fast(server)
        )
        assert again.done == [] and len(server.requests) == 4  # nothing left to caption: no request
        caption_folder(
            clip_folder,
            CaptionOptions(backend="openai", frames=1, overwrite=True),
            captioner_factory=_fast(server),
        )
    assert (clip_folder / "clip_00.txt").read_text() == "A grey sea under a low sky.\n"
    assert len(server.requests) == 9
