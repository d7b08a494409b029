"""What both runtimes decide the same way: the services and runtime names, reload or restart after
a change, the render key, the note of the superuser's password, and keeping seeded data in the cache.

devenv.cli imports this for RUNTIME_NAMES on every command, `--help` included: at import time
it loads only re and typing (both loaded already); each function imports what it needs.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from pathlib import Path

    from devenv.render import Placement
    from devenv.runtime.base import Progress
    from devenv.config.stack import Stack

RUNTIME_NAMES = ("auto", "native", "docker", "podman")
# The program each service's main process runs (its comm in /proc), to tell it from a reused pid.
PROGRAMS = {"postgres": "postgres", "pgbouncer": "pgbouncer", "redis": "redis-server"}
# Setting contexts (pg_settings.context) that a reload (SIGHUP) applies without a restart.
RELOADABLE_CONTEXTS = frozenset({"sighup", "user", "superuser", "backend", "superuser-backend"})

# Compiled on first use (re caches it): compiling at import would cost every CLI start ~1 ms.
_CONF_LINE = r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(.*?)\s*$"


# ---- reload or restart -------------------------------------------------------------------------


def changed_settings(old: Mapping[str, str], new: Mapping[str, str]) -> set[str]:
    """The names of settings added, removed or given another value."""
    return {name for name in set(old) | set(new) if old.get(name) != new.get(name)}


def reload_suffices(old: Mapping[str, str], new: Mapping[str, str], major: int) -> bool:
    """Whether a reload (SIGHUP) of PostgreSQL `major` applies every change from `old` to `new`
    settings; else the server must restart. No change at all (e.g. only pg_hba.conf) reloads.
    A name the catalogue does not know restarts: the safe side."""
    from devenv.config import pgcatalog

    catalog = pgcatalog.load_catalog(major).settings
    return all(catalog.get(name, {}).get("context") in RELOADABLE_CONTEXTS for name in changed_settings(old, new))


def conf_values(text: str) -> dict[str, str]:
    """name -> raw value of every setting line of a postgresql.conf (names lower-cased)."""
    out = {}
    setting = re.compile(_CONF_LINE)
    for line in text.splitlines():
        match = setting.match(line)  # comment lines start with '#': no match
        if match and match.group(2):
            out[match.group(1).lower()] = match.group(2)
    return out


# ---- rendering ---------------------------------------------------------------------------------


def render_key(stack: Stack, placement: Placement) -> str:
    """Everything the rendered files depend on: the model, the placement, the templates.

    While it is unchanged, a runtime reuses the files it rendered before (Jinja2 costs ~0.2 s).
    """
    import hashlib

    from devenv.config.project import template_dirs

    digest = hashlib.sha256(repr((stack, placement)).encode())
    for directory in template_dirs(stack.root):
        for template in sorted(directory.glob("*.j2")):
            digest.update(os.fsencode(template.name) + template.read_bytes())
    return digest.hexdigest()


# ---- the superuser's password ------------------------------------------------------------------


def password_note_path(stack: Stack, pgdata: Path | None = None) -> Path:
    """Where the note of which password the data's superuser has is kept (devenv.state.note_password).

    Beside a data directory on this machine (native: the directory outlives the checkout, it
    is keyed by the project's path); for a Docker volume, in the profile's state directory.
    """
    if pgdata is not None:
        return pgdata.with_name(pgdata.name + ".password-sha256")
    from devenv.config.identity import VOLUME_PASSWORD_NOTE  # the note also marks a pre-id Docker stack

    return stack.state_dir / VOLUME_PASSWORD_NOTE


def has_password(note: Path, stack: Stack) -> bool:
    """Whether the data's roles have this checkout's passwords (and devenv's role layout). Not
    after a restore from the cache, nor on data an earlier checkout left (deleted and cloned
    again: its .devenv/ and secrets gone), nor on an older devenv's cluster: then the runtime
    sets them (and migrates an older cluster) over the server's unix socket."""
    from devenv.state import password_noted

    return password_noted(note, stack.postgres.roles_secret)


def remember_password(note: Path, stack: Stack) -> None:
    """Note that the data's superuser now has this checkout's password."""
    from devenv.state import note_password

    note_password(note, stack.postgres.roles_secret)


# ---- the seeded-data cache ---------------------------------------------------------------------


def save_live(stack: Stack, pgdata: Path, key: str, login: str = "") -> Path:
    """A base backup of the running server's data directory into the cache (cache.save_live),
    in a session of devenv's admin role (a base backup is a superuser's work). With `login`,
    the copy has the one-time login (devenv.db.roles.RESTORE_ROLE) with that password, and
    the live cluster does not: it is dropped once the copy is whole."""
    import contextlib

    from devenv.clients import connect, pgwire
    from devenv.db import cache, roles

    with connect.postgres(stack, "postgres", admin=True, query_timeout=300.0) as conn:
        if login:
            roles.add_restore_login(conn, login, stack.state_dir)
        try:
            path = cache.save_live(pgdata, key, conn)
        except BaseException:
            if login:
                with contextlib.suppress(pgwire.PgError, OSError):  # the save's error is the one to say
                    roles.drop_restore_login(conn, stack.state_dir)
            raise
        if login:  # only after the archive's WAL was read: replayed, a DROP in it would reach the copy
            roles.drop_restore_login(conn, stack.state_dir)
        return path


def save_cache(progress: Progress, save: Callable[[], Path],
               errors: tuple[type[BaseException], ...] = (), why: Callable[[BaseException], str] = str) -> None:
    """Keep a freshly seeded data directory in the cache with `save` (which returns the archive),
    and say where and how long it took. A failure (OSError, pgwire.PgError or one of `errors`,
    told by `why`) is only said: the cache speeds up the next cold `up`, nothing needs it."""
    import time

    from devenv.clients import pgwire

    start = time.perf_counter()
    try:
        path = save()
    except (OSError, pgwire.PgError, *errors) as exc:
        progress(f"postgres   could not cache the seeded data: {why(exc)}")
        return
    progress(f"postgres   cached the seeded data in {path} ({path.stat().st_size / 1e6:.1f} MB, "
             f"{time.perf_counter() - start:.2f}s)")


def adopted_entry(stack: Stack, service: str, pid: int, conf: Path, files: Mapping[str, str], new_hash: str,
                  notes: list[str]) -> dict[str, Any]:
    """The native state entry for a running server of the stack that its state file did not name.

    It was started from the files in `conf`: when they are what this `up` rendered (`files`), it
    runs as asked and is recorded as current; else with no hash, so that it is restarted.
    """
    from devenv.render import SERVICE_FILES

    current = all((conf / n).is_file() and (conf / n).read_text() == files.get(n) for n in SERVICE_FILES[service])
    notes.append(f"{service:<10} adopted its running server (pid {pid}), which state.json did not name"
                 + ("" if current else "; its configuration changed: restarting it"))
    return {"pid": pid, "hash": new_hash if current else "", "port": getattr(stack, service).port if current else 0,
            "settings": getattr(stack, service).settings if current else {}}
