"""The web UI's routes: projects and their config, dataset, jobs (with a server-sent event stream), results.

Every path a request names is taken relative to a project folder under the root (`paths.inside`); the token
middleware (auth.py) guards every route, the static files and the event stream included.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sse_starlette.sse import EventSourceResponse

from cinetune.errors import CinetuneError
from cinetune.server import media, projects
from cinetune.server.auth import TokenMiddleware
from cinetune.server.jobs import KINDS, JobConflictError, Jobs, read_from, read_tail
from cinetune.server.paths import PathRefusedError, inside, project_dir

JsonBody = Annotated[dict, Body()]
OptionalBody = Annotated[dict | None, Body()]
STATIC = Path(str(resources.files("cinetune.server") / "static"))


def create_app(root: Path, token: str | None = None, loopback_only: bool = True) -> FastAPI:
    root = Path(root).resolve()
    app = FastAPI(title="cinetune", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(TokenMiddleware, token=token, loopback_only=loopback_only)
    app.state.root, app.state.jobs = root, Jobs()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(PathRefusedError)
    async def _refused(_request: Request, exc: PathRefusedError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=403)

    @app.exception_handler(CinetuneError)
    async def _user_error(_request: Request, exc: CinetuneError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(JobConflictError)
    async def _job_refused(_request: Request, exc: JobConflictError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    _project_routes(app, root)
    _dataset_routes(app, root)
    _job_routes(app, root)
    return app


def _existing(root: Path, name: str) -> Path:
    folder = project_dir(root, name)
    if not folder.is_dir():
        raise HTTPException(404, f"no project '{name}'")
    return folder


def _project_routes(app: FastAPI, root: Path) -> None:
    static_meta = {  # built once: the schema and the families' choices do not change while serving
        "families": projects.families(),
        "schema": projects.schemas(),
        "memory_planner": "cinetune plan",  # the Projects page's panel calls /memory
    }

    @app.get("/api/meta")
    def meta() -> dict[str, Any]:
        return {**static_meta, "templates": projects.list_templates()}

    @app.get("/api/projects")
    def list_projects() -> list[dict[str, Any]]:
        return projects.list_projects(root)

    @app.post("/api/projects")
    def create(body: JsonBody) -> dict[str, Any]:
        folder = project_dir(root, str(body.get("name", "")))
        projects.create_project(folder, str(body.get("template", "")))
        return {"name": folder.name}

    @app.get("/api/projects/{name}/config")
    def get_config(name: str) -> dict[str, Any]:
        folder = _existing(root, name)
        return {**projects.read_pair(folder), "plan": projects.plan_messages(folder)}

    @app.get("/api/projects/{name}/memory")
    def memory(
        name: str, size: str | None = None, frames: int | None = None, vram: float | None = None
    ) -> dict[str, Any]:
        return projects.memory_advice(_existing(root, name), size, frames, vram)

    @app.post("/api/projects/{name}/validate")
    def validate(name: str, body: JsonBody) -> dict[str, Any]:
        _existing(root, name)
        return {"errors": projects.field_errors(body.get("config"), body.get("datasets"))}

    @app.put("/api/projects/{name}/config")
    def put_config(name: str, body: JsonBody) -> JSONResponse:
        folder = _existing(root, name)
        errors = projects.field_errors(body.get("config"), body.get("datasets"))
        if errors["config"] or errors["datasets"] or errors["general"]:
            return JSONResponse({"saved": False, "errors": errors}, status_code=422)
        projects.write_pair_raw(folder, body["config"], body["datasets"])
        return JSONResponse({"saved": True, "errors": errors, "plan": projects.plan_messages(folder)})


def _dataset_routes(app: FastAPI, root: Path) -> None:
    @app.get("/api/projects/{name}/clips")
    def clips(name: str) -> dict[str, Any]:
        folder = _existing(root, name)
        return {"clips": media.list_clips(folder), "report": media.data_report(folder)}

    @app.put("/api/projects/{name}/caption")
    def caption(name: str, body: JsonBody) -> dict[str, Any]:
        folder = _existing(root, name)
        path = media.write_caption(folder, str(body.get("path", "")), str(body.get("text", "")))
        return {"written": path.relative_to(folder.resolve()).as_posix()}

    @app.get("/api/projects/{name}/poster")
    def poster(name: str, path: str) -> FileResponse:
        return FileResponse(media.poster(_existing(root, name), path), media_type="image/jpeg")

    @app.get("/api/projects/{name}/file")
    def file(name: str, path: str, download: bool = False) -> FileResponse:
        target = inside(_existing(root, name), path)
        if not target.is_file():
            raise HTTPException(404, "no such file")
        return FileResponse(target, filename=target.name if download else None)

    @app.get("/api/projects/{name}/results")
    def results(name: str) -> dict[str, Any]:
        return media.results(_existing(root, name))

    @app.post("/api/projects/{name}/export")
    def export(name: str, body: JsonBody) -> dict[str, Any]:
        folder = _existing(root, name)
        return {"path": _export(folder, str(body.get("format", "")))}


def _export(folder: Path, fmt: str) -> str:
    """The run's final LoRA in the asked format (cinetune export's code): its path in the project."""
    from cinetune.export.lora import DIFFUSERS_FILE, check_lora_file
    from cinetune.models.registry import family_class

    out = projects.output_dir(folder)
    config = projects.read_pair(folder)["config"] or {}
    if fmt == "diffusers":
        check_lora_file(out / DIFFUSERS_FILE)
        path = out / DIFFUSERS_FILE
    elif fmt == "comfyui":
        path = family_class(config.get("model_family", "")).export_comfyui(out)
    else:
        raise HTTPException(400, "format is diffusers or comfyui")
    return Path(path).resolve().relative_to(folder.resolve()).as_posix()


def _job_args(folder: Path, kind: str, body: dict[str, Any]) -> list[str]:
    if kind == "prep":  # one click: split raw footage -> caption -> config -> check -> cache
        raw = inside(folder, str(body.get("raw") or "datasets/raw"))
        args = ["prep", "all", str(raw), "--project", str(folder)]
        for key in ("backend", "model", "trigger"):
            if body.get(key):
                args += [f"--{key}", str(body[key])]
        return args
    args = [kind, "--config", str(Path("config/config.json"))]
    if kind == "train" and body.get("resume"):
        args.append("--resume_from_checkpoint=latest")
    return args


def _job_routes(app: FastAPI, root: Path) -> None:
    jobs: Jobs = app.state.jobs

    @app.get("/api/projects/{name}/jobs")
    def status(name: str) -> dict[str, Any]:
        folder = _existing(root, name)
        return {kind: _public(jobs.status(folder, kind)) for kind in KINDS}

    @app.post("/api/projects/{name}/jobs/{kind}")
    def start(name: str, kind: str, body: OptionalBody = None) -> dict[str, Any]:
        folder = _existing(root, name)
        if kind not in KINDS:
            raise HTTPException(404, f"no job kind '{kind}'")
        out = projects.output_dir(folder)
        note = jobs.start(
            folder, kind, _job_args(folder, kind, body or {}), out, projects.total_steps(folder)
        )
        return {"pid": note.pid}

    @app.post("/api/projects/{name}/jobs/{kind}/stop")
    def stop(name: str, kind: str) -> dict[str, Any]:
        jobs.stop(_existing(root, name), kind)
        return {"stopping": True}

    @app.get("/api/projects/{name}/log/{kind}")
    def log(name: str, kind: str) -> dict[str, str]:
        if kind not in KINDS:
            raise HTTPException(404, f"no job kind '{kind}'")
        return {"text": read_tail(jobs.log_path(_existing(root, name), kind), 20000)}

    @app.get("/api/projects/{name}/events")
    async def events(name: str, request: Request, kind: str = "train") -> EventSourceResponse:
        folder = _existing(root, name)
        if kind not in KINDS:
            raise HTTPException(404, f"no job kind '{kind}'")
        return EventSourceResponse(_stream(jobs, folder, kind, request), ping=15)


def _public(status: dict[str, Any]) -> dict[str, Any]:
    note = status["note"] or {}
    return {"state": status["state"], "returncode": status["returncode"], "total": note.get("total_steps")}


async def _stream(jobs: Jobs, folder: Path, kind: str, request: Request):
    """Every second: the job's state, new metrics records and new log lines (from the start on connect, so a
    reopened tab or a restarted server shows the whole run)."""
    metrics_at = log_at = 0
    last_state = None
    while not await request.is_disconnected():
        status = jobs.status(folder, kind)
        metrics_path = projects.output_dir(folder) / "metrics.jsonl"
        text, metrics_at = read_from(metrics_path, metrics_at)
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        log, log_at = read_from(jobs.log_path(folder, kind), log_at)
        public = _public(status)
        if records or log or public != last_state:
            yield {"event": "update", "data": json.dumps({**public, "metrics": records, "log": log})}
            last_state = public
        await asyncio.sleep(1.0)
