"""Where a project's files are: devenv.yaml, templates, seeds, `.devenv/`. Cheap to import."""

from __future__ import annotations

import os
from pathlib import Path

from devenv.errors import ConfigError

CONFIG_NAME = "devenv.yaml"
STATE_DIR_NAME = ".devenv"
_OWN_CHECKOUT = Path(__file__).resolve().parents[2]  # devenv/config/project.py -> the checkout


def find_config(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Path:
    """Locate devenv.yaml: --config/DEVENV_CONFIG if given, else the nearest one upwards."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist",
                hint="check --config / DEVENV_CONFIG, or run devenv from the project directory.",
            )
        return path.resolve()
    start = (cwd or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} found in {start} or any parent directory",
        hint="run devenv inside the project, or pass --config PATH (or set DEVENV_CONFIG).",
    )


def template_dirs(root: Path) -> list[Path]:
    """Where templates are looked up: the project first, then devenv's own checkout."""
    dirs = [root, root / "templates"]
    if _OWN_CHECKOUT != root:
        dirs += [_OWN_CHECKOUT, _OWN_CHECKOUT / "templates"]
    return [d for d in dirs if d.is_dir()]


def state_dir(root: Path, profile: str) -> Path:
    """`.devenv/<profile>/` of a project."""
    return root / STATE_DIR_NAME / profile
