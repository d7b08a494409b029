"""Generated credentials: strong, created on first use, stable across runs, never committed."""

from __future__ import annotations

import json
import os
import secrets as _random
from pathlib import Path

from devenv.errors import StateError

# postgres_admin_password: devenv's own superuser (stack.postgres.admin_user); postgres_password the application's.
SECRET_NAMES = ("postgres_password", "postgres_admin_password", "pgbouncer_admin_password", "redis_password")


def load_or_create_secrets(state_root: Path) -> dict[str, str]:
    """Read `.devenv/secrets.json`, adding any missing password; the file is mode 0600.

    One set for all profiles of a project, so switching profile keeps the same URLs.
    """
    path = state_root / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(
                f"{path} is unreadable or not JSON: {exc}",
                hint=f"delete {path} to generate new passwords (then `devenv down --volumes`, "
                "since existing data still expects the old ones).",
            ) from exc
    if path.exists() and path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # copied or restored with looser permissions: tighten
    missing = [name for name in SECRET_NAMES if not stored.get(name)]
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
        if len(missing) < len(SECRET_NAMES):
            os.replace(tmp, path)  # adding a name to an existing file
        else:
            try:
                os.link(tmp, path)  # a new file: the first process to link it wins...
            except FileExistsError:
                tmp.unlink()
                return load_or_create_secrets(state_root)  # ...and the others use its passwords
            tmp.unlink()
    return stored
