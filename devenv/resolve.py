"""Config + profile -> Stack for one-shot commands, and the copy of it kept between them.

`load_stack_cached` is what every command on one profile (and `devenv reset`'s click-free fast
path) loads its Stack with: importing PyYAML, parsing and validating every profile costs more
than the reset, so the validated Stack is kept in `.devenv/<profile>/stack.json`. On the
`reset` path: no dataclasses, no yaml unless the copy is stale (see devenv/record.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devenv.stack import Stack

STACK_CACHE = "stack.json"


def load_stack_cached(config: str | os.PathLike[str] | None, profile: str) -> Stack:
    """The Stack of a profile, as `devenv.yaml` gives it, kept in `.devenv/<profile>/stack.json`.

    For one-shot commands that need only the model (`devenv reset`): importing PyYAML, parsing
    and validating every profile costs more than the reset. The copy is used while the inputs
    of `up` hash the same (state.fingerprint: devenv.yaml, the secrets, templates, seed files,
    DEVENV_* variables and devenv's version); otherwise the Stack is built and the copy renewed.
    """
    import json

    from devenv.project import find_config, state_dir
    from devenv.state import fingerprint

    path = find_config(config)
    cache = state_dir(path.parent, profile) / STACK_CACHE
    key = fingerprint(path.parent, path, profile, {"stack": STACK_CACHE})
    try:
        recorded = json.loads(cache.read_text(encoding="utf-8"))
        if recorded.get("fingerprint") == key:
            return _stack_from_dict(recorded["stack"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, unreadable or of another shape: build it
    from devenv.settings import load_config
    from devenv.stack import build_stack

    stack = build_stack(load_config(path), profile)
    key = fingerprint(path.parent, path, profile, {"stack": STACK_CACHE})  # building it may have created secrets.json
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{STACK_CACHE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the passwords
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"fingerprint": key, "stack": stack.as_dict()}, handle, default=str)
    os.replace(tmp, cache)
    return stack


def _stack_from_dict(data: dict[str, Any]) -> Stack:
    from devenv.stack import Limits, PgBouncer, Postgres, Redis, Stack

    postgres = dict(data["postgres"], limits=Limits(**data["postgres"]["limits"]))
    return Stack(**dict(data, root=Path(data["root"]), warnings=tuple(data["warnings"]), postgres=Postgres(**postgres),
                        pgbouncer=PgBouncer(**data["pgbouncer"]), redis=Redis(**data["redis"])))
