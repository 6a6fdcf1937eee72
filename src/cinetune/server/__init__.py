"""`cinetune server`: the web UI (FastAPI + uvicorn) over the same schema, run plan and commands as the CLI.

Modules: `paths` (every file the server touches stays inside its roots), `auth` (the token and the Host
check), `jobs` (training / cache / prep runs in their own processes, reattached after a restart),
`projects` (project folders, templates, config validation with per-field errors), `media` (clips, probe facts,
poster frames, captions, results), `app` (the routes and the event stream), `static/` (plain JS and CSS).
"""
