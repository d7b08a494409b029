"""devenv: TaskFlow's PostgreSQL + PgBouncer + Redis stack for laptops, tests and CI.

`devenv.Devenv` and `devenv.connect` are the Python API (devenv/api.py); they load lazily so
that `devenv --help` imports nothing it does not need.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Devenv", "connect", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Devenv", "connect"):
        from devenv import api

        return getattr(api, name)
    raise AttributeError(f"module 'devenv' has no attribute {name!r}")
