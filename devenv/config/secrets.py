"""Generated credentials: strong, created on first use, stable across runs, never committed."""

from __future__ import annotations

import json
import os
import stat
import re
import secrets as _random
from pathlib import Path
from typing import Any

from devenv.errors import StateError

# postgres_admin_password: devenv's own superuser (stack.postgres.admin_user); postgres_password the application's.
SECRET_NAMES = ("postgres_password", "postgres_admin_password", "pgbouncer_admin_password", "redis_password")
SECRETS_FILE = "secrets.json"
# What a password may hold: it goes into connection URLs and config files unquoted, so only
# URL-safe characters (what `token_urlsafe` makes), nothing a config lexer would split on.
_PASSWORD = re.compile(r"[A-Za-z0-9._~-]{1,256}")
_MAX_BYTES = 64 << 10  # a few passwords; anything larger is not devenv's file


def _recovery_hint(path: Path) -> str:
    """How to get going again from a bad secrets.json, keeping the data."""
    return (
        f"move it aside (`mv {path} {path}.bad`) and run `devenv up`: it makes new passwords and sets "
        "them on the servers, keeping your data (`down` works without the file). The passwords in use "
        f"until now are also in {path.parent}/<profile>/stack.json, if you need them back."
    )


def read_secrets(path: Path) -> dict[str, str]:
    """`.devenv/secrets.json` as a flat {name: string}; StateError naming what is wrong.

    Names devenv does not know are kept as they are (a newer devenv may have added them); a
    known name holding an empty string counts as missing.
    """
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # a FIFO would block every command
                raise ValueError("not a regular file")
            raw = handle.read(_MAX_BYTES + 1)
        if len(raw) > _MAX_BYTES:
            raise ValueError(f"larger than {_MAX_BYTES >> 10} KiB")
        stored: Any = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise StateError(f"{path} is unreadable or not JSON: {why}", hint=_recovery_hint(path)) from exc
    if not isinstance(stored, dict):
        raise StateError(f"{path}: expected a JSON object of names and passwords, found a {type(stored).__name__}",
                         hint=_recovery_hint(path))
    for name, value in stored.items():
        if not isinstance(value, str):
            raise StateError(f"{path}: '{name}' is a {type(value).__name__}, not a string",
                             hint=f"delete the '{name}' entry to generate it again, or " + _recovery_hint(path))
        if name in SECRET_NAMES and value and not _PASSWORD.fullmatch(value):
            raise StateError(
                f"{path}: '{name}' holds characters a password here cannot have (only letters, digits and . _ ~ -)",
                hint=f"delete the '{name}' entry to generate it again, or " + _recovery_hint(path),
            )
    return stored


def load_or_create_secrets(state_root: Path, names: tuple[str, ...] = SECRET_NAMES) -> dict[str, str]:
    """Read `.devenv/secrets.json`, adding any missing password; the file is mode 0600.

    One set for all profiles of a project, so switching profile keeps the same URLs. `names`
    are the passwords to make when missing (other modules may add their own names).
    """
    path = state_root / SECRETS_FILE
    stored: dict[str, str] = {}
    existed = path.exists()
    if existed:
        stored = read_secrets(path)
    if existed and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # copied or restored with looser permissions: tighten
    missing = [name for name in names if not stored.get(name)]
    if missing:
        for name in missing:
            # URL-safe: the passwords go into connection URLs and config files unquoted.
            stored[name] = _random.token_urlsafe(24)
        state_root.mkdir(parents=True, exist_ok=True)
        # A name of its own: two `up`s started together both get here on a new checkout.
        tmp = path.with_name(f".secrets.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)  # a leftover would keep its old mode through os.open
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(stored, handle, indent=2, sort_keys=True)
        if existed:
            os.replace(tmp, path)  # adding a name to an existing file (even `{}`)
        else:
            try:
                os.link(tmp, path)  # a new file: the first process to link it wins...
            except FileExistsError:
                tmp.unlink()
                return load_or_create_secrets(state_root, names)  # ...and the others use its passwords
            tmp.unlink()
    return stored
