"""`cinetune server`: pick the token, build the app, run uvicorn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cinetune.errors import ConfigError
from cinetune.server.auth import choose_token, is_loopback


def serve(
    host: str, port: int, root: Path, token: str | None, say: Callable[[str], None], log_level: str = "info"
) -> None:
    import uvicorn

    from cinetune.server.app import create_app

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--root {root}: not a folder")
    token, generated = choose_token(host, token)
    app = create_app(root, token=token, loopback_only=is_loopback(host))
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if token and generated:
        say(f"token (printed once, keep it): {token}")
    say(
        f"cinetune web UI on {url}{'?token=' + token if token and generated else ''}  (root {root.resolve()})"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
