"""The web server's API against a real uvicorn on 127.0.0.1: projects, config validation, clips, captions,
and the security cases (traversal, absolute paths, symlinks out of the root, the Host check, the token)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from tests.server.conftest import start_server, stop_server


def _project(server, name="p1", template="ltxvideo-tiny-demo"):
    with server.client() as c:
        r = c.post("/api/projects", json={"name": name, "template": template})
        assert r.status_code == 200, r.text
    return server.root / name


def test_index_and_assets_come_from_the_package(server) -> None:
    with server.client() as c:
        page = c.get("/").text
        assert "/static/app.js" in page and "http" not in page.replace("http-equiv", "")
        js = c.get("/static/app.js")
        assert js.status_code == 200 and "EventSource" in js.text
        assert "//cdn" not in js.text and "https://" not in js.text
        meta = c.get("/api/meta").json()
    assert {"ltxvideo", "ltxvideo2", "kandinsky5-video"} <= set(meta["families"])
    assert "learning_rate" in meta["schema"]["train"]["properties"]
    assert meta["memory_planner"] == "cinetune plan"


def test_pickers_offer_only_the_familys_valid_values(server) -> None:
    with server.client() as c:
        fams = c.get("/api/meta").json()["families"]
    for name, fam in fams.items():
        assert fam["frames"], name
        step = 8 if name.startswith("ltx") else 4
        assert all((f - 1) % step == 0 for f in fam["frames"]), (name, fam["frames"])
        labels = {r["label"].split(" ")[1] for r in fam["resolutions"]}
        assert labels == {"(landscape)", "(portrait)", "(square)"}
        assert all(r["width"] % 32 == 0 and r["height"] % 32 == 0 for r in fam["resolutions"])


def test_create_from_each_template_and_the_plan_resolves_the_demo(server) -> None:
    with server.client() as c:
        templates = [t["name"] for t in c.get("/api/meta").json()["templates"]]
        assert {"ltxvideo", "ltxvideo2", "kandinsky5-video", "ltxvideo-tiny-demo"} <= set(templates)
        for i, name in enumerate(templates):
            assert c.post("/api/projects", json={"name": f"t{i}", "template": name}).status_code == 200
        again = c.post("/api/projects", json={"name": "t0", "template": templates[0]})
        assert again.status_code == 400 and "exists" in again.json()["error"]
        demo = f"t{templates.index('ltxvideo-tiny-demo')}"
        pair = c.get(f"/api/projects/{demo}/config").json()
    assert pair["config"]["model_flavour"] == "tiny"
    assert pair["plan"]["ok"], pair["plan"]


def test_the_memory_planner_answers_for_the_saved_pair(server) -> None:
    """The Projects page's planner: the same estimate `cinetune check` / `plan` compute for the pair, whether
    it fits a GPU size, and with a size nothing fits, no proposal rather than a wrong one."""
    from cinetune.check import memory_advice
    from cinetune.plan import resolve
    from cinetune.prep.project import load_project

    folder = _project(server, "mem")
    with server.client() as c:
        roomy = c.get("/api/projects/mem/memory", params={"vram": 24, "size": "64x48", "frames": 9}).json()
        tight = c.get("/api/projects/mem/memory", params={"vram": 0.01, "size": "64x48", "frames": 9}).json()
        bad = c.get("/api/projects/mem/memory", params={"size": "big"}).json()
    expected = memory_advice(resolve(load_project(folder)), 64, 48, 9, 24)
    assert (
        roomy["ok"] and roomy["peak_gib"] == expected["peak_gib"] > 0 and roomy["shape"] == expected["shape"]
    )
    assert roomy["fits"] is True and "proposal" not in roomy
    assert any(line.startswith("training: ") for line in roomy["lines"])
    assert tight["fits"] is False and tight["proposal"] is None
    assert not bad["ok"] and "WIDTHxHEIGHT" in bad["error"]


def test_field_errors_come_back_per_key_and_nothing_is_written(server) -> None:
    folder = _project(server, "errs")
    before = (folder / "config/config.json").read_text()
    bad = {**json.loads(before), "learning_rate": "fast", "lora_rank": 0, "learning_rat": 1}
    with server.client() as c:
        pair = c.get("/api/projects/errs/config").json()
        r = c.put("/api/projects/errs/config", json={"config": bad, "datasets": pair["datasets"]})
    assert r.status_code == 422
    errors = r.json()["errors"]["config"]
    assert set(errors) == {"learning_rate", "lora_rank", "learning_rat"}
    assert "did you mean 'learning_rate'" in errors["learning_rat"]
    assert (folder / "config/config.json").read_text() == before


def test_plan_rules_reach_the_page(server) -> None:
    """A pair every field of which validates, but that the run plan rejects (a cross-key rule)."""
    folder = _project(server, "plan")
    with server.client() as c:
        pair = c.get("/api/projects/plan/config").json()
        config = {**pair["config"], "eval_dataset_id": "no-such-dataset"}
        r = c.put("/api/projects/plan/config", json={"config": config, "datasets": pair["datasets"]})
    body = r.json()
    assert r.status_code == 200 and body["saved"], body
    assert body["plan"]["ok"] is False and "eval_dataset_id" in body["plan"]["error"]
    assert json.loads((folder / "config/config.json").read_text())["eval_dataset_id"] == "no-such-dataset"


def test_clips_facts_poster_and_caption_edit(server) -> None:
    folder = _project(server, "clips")
    with server.client() as c:
        clips = c.get("/api/projects/clips/clips").json()["clips"]
        assert len(clips) == 8
        first = clips[0]
        assert (first["width"], first["height"], first["frames"], first["audio"]) == (96, 64, 40, False)
        assert first["caption"].startswith("a red square")
        poster = c.get("/api/projects/clips/poster", params={"path": first["path"]})
        assert poster.status_code == 200 and poster.content[:2] == b"\xff\xd8"
        r = c.put("/api/projects/clips/caption", json={"path": first["path"], "text": "a crimson square"})
        assert r.status_code == 200
        assert c.get("/api/projects/clips/clips").json()["clips"][0]["caption"] == "a crimson square"
        video = c.get(
            "/api/projects/clips/file", params={"path": first["path"]}, headers={"Range": "bytes=0-99"}
        )
        assert video.status_code == 206 and len(video.content) == 100
    assert (folder / "datasets/clips/clip_00.txt").read_text() == "a crimson square"


@pytest.mark.parametrize(
    "path",
    [
        "../secret.txt",
        "datasets/../../secret.txt",
        "/etc/passwd",
        "C:\\Windows\\win.ini",
        "\\\\host\\share\\x",
        "..\\secret.txt",
        "datasets/clips/%2e%2e/%2e%2e/../secret.txt",
    ],
)
def test_paths_outside_the_project_are_refused(server, path) -> None:
    _project(server, "sec") if not (server.root / "sec").exists() else None
    (server.root.parent / "secret.txt").write_text("TOP-SECRET-CONTENT")
    with server.client() as c:
        for route in ("file", "poster"):
            r = c.get(f"/api/projects/sec/{route}", params={"path": path})
            assert r.status_code in (403, 404) and "TOP-SECRET" not in r.text, (route, r.status_code)
        r = c.put("/api/projects/sec/caption", json={"path": path, "text": "x"})
        assert r.status_code == 403
        assert c.get("/api/projects/..%2Fsecret.txt/config").status_code in (403, 404)
        assert c.post("/api/projects", json={"name": "../evil", "template": "ltxvideo"}).status_code == 403


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlinks_out_of_the_root_are_refused(server) -> None:
    folder = _project(server, "links")
    secret = server.root.parent / "outside.mp4"
    secret.write_bytes(b"not for the browser")
    (folder / "datasets/clips/link.mp4").symlink_to(secret)
    (folder / "up").symlink_to(server.root.parent)
    with server.client() as c:
        assert (
            c.get("/api/projects/links/file", params={"path": "datasets/clips/link.mp4"}).status_code == 403
        )
        assert c.get("/api/projects/links/file", params={"path": "up/outside.mp4"}).status_code == 403
        r = c.put("/api/projects/links/caption", json={"path": "datasets/clips/link.mp4", "text": "x"})
        assert r.status_code == 403
        names = [clip["path"] for clip in c.get("/api/projects/links/clips").json()["clips"]]
    assert "datasets/clips/link.mp4" not in names and len(names) == 8


def test_loopback_server_refuses_other_host_names(server) -> None:
    with server.client() as c:
        assert c.get("/api/projects", headers={"Host": "evil.example:8001"}).status_code == 403
        assert c.get("/api/projects", headers={"Host": "localhost:8001"}).status_code == 200


def test_token_is_checked_on_every_route_and_the_event_stream(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    srv = start_server(root, "--token", "s3cret-token")
    try:
        with srv.client() as c:
            for path in ("/", "/static/app.js", "/api/meta", "/api/projects"):
                assert c.get(path).status_code == 401, path
            assert c.get("/api/projects", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.post("/api/projects", json={"name": "x", "template": "ltxvideo"}).status_code == 401
            ok = c.get("/api/projects", headers={"Authorization": "Bearer s3cret-token"})
            assert ok.status_code == 200
            assert c.get("/?token=s3cret-token").status_code == 200
            assert c.get("/api/projects").status_code == 200  # the cookie the page got
        with srv.client() as c:
            c.post(
                "/api/projects",
                json={"name": "x", "template": "ltxvideo"},
                headers={"Authorization": "Bearer s3cret-token"},
            )
            assert c.get("/api/projects/x/events").status_code == 401
            with c.stream("GET", "/api/projects/x/events", params={"token": "s3cret-token"}) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                first = next(line for line in r.iter_lines() if line.startswith("data:"))
                assert json.loads(first[5:])["state"] == "none"
    finally:
        stop_server(srv)


def test_non_loopback_host_gets_a_generated_token_printed_once(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CINETUNE_TOKEN"}
    srv = start_server(root, host="0.0.0.0", env=env)
    try:
        log = next(tmp_path.glob("server-*.log")).read_text()
        lines = [line for line in log.splitlines() if "token (printed once" in line]
        assert len(lines) == 1
        token = lines[0].split(":", 1)[1].split()[-1]
        with srv.client() as c:
            assert c.get("/api/projects").status_code == 401
            assert c.get("/api/projects", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        stop_server(srv)


def test_shipped_templates_are_the_tested_quickstart_pairs() -> None:
    """The server's templates are tests/quickstarts/ (which test_quickstarts.py runs through check and train),
    byte for byte, so a template never drifts from what is tested."""
    from pathlib import Path

    from cinetune.server.projects import templates_dir

    quickstarts = Path(__file__).resolve().parents[1] / "quickstarts"
    for family in ("ltxvideo", "ltxvideo2", "kandinsky5-video"):
        for name in ("config.json", "multidatabackend.json"):
            assert (templates_dir() / family / name).read_bytes() == (
                quickstarts / family / name
            ).read_bytes()
