"""Every file the server reads or writes is inside one of its roots.

A request names files relative to a project; `inside` rejects absolute paths (POSIX or Windows spelling),
`..` parts and NUL bytes, then resolves symlinks and checks the real path still lies under the root, so a link
that points out of the root is refused too.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PathRefusedError(ValueError):
    """A path outside the server's roots (or spelled so that it could be)."""


def inside(root: Path, relative: str) -> Path:
    """`root / relative`, resolved; PathRefusedError when it is absolute, climbs or links out of `root`."""
    if not isinstance(relative, str) or "\x00" in relative:
        raise PathRefusedError("invalid path")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute():
        raise PathRefusedError(f"absolute paths are refused: {relative}")
    if PureWindowsPath(relative).drive or relative.startswith(("\\", "/")):
        raise PathRefusedError(f"absolute paths are refused: {relative}")
    parts = PureWindowsPath(relative).parts  # splits on both / and \
    if ".." in parts:
        raise PathRefusedError(f"'..' is refused: {relative}")
    base = Path(root).resolve()
    target = (base / Path(*parts)).resolve() if parts else base
    if not target.is_relative_to(base):
        raise PathRefusedError(f"outside the served folder: {relative}")
    return target


def project_dir(root: Path, name: str) -> Path:
    """The folder of project `name` (a plain folder name directly under the root)."""
    if not _PROJECT_NAME.match(name or ""):
        raise PathRefusedError(f"project names are letters, digits, '.', '_' and '-': {name!r}")
    return inside(root, name)


def relative_to_project(project: Path, path: Path) -> str:
    """`path` as the browser names it: relative to the project, with forward slashes."""
    return Path(path).resolve().relative_to(project.resolve()).as_posix()
