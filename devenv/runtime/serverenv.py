"""How a native server process starts: as whom, with the few variables it needs (nothing of the
caller's), logging where; the one place that spawns them.

devenv often runs where the environment holds secrets (CI tokens, cloud credentials): a server
inheriting them would show them in /proc/<pid>/environ to anyone who gets that server to run a
command. Natively postgres, initdb, pgbouncer and redis-server get this environment; the Docker
runtime's containers get only what the compose file names (their image's own variables plus
POSTGRES_*/PGDATA, PgBouncer's PGPASSWORD and Redis's REDISCLI_AUTH for the health checks).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from devenv import safefs

# System directories only: a PATH entry the caller controls must not choose what a server runs.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LOCALE_NAMES = ("LANG", "LANGUAGE")


def server_env(home: str, caller: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH of system directories, the caller's locale (LANG, LC_*; LC_ALL C unless set) and
    TZ when set, HOME of the account the server runs as. No PG* variable (PGDATA, PGPORT would
    steer the servers), no credential."""
    caller = os.environ if caller is None else caller
    env = {"PATH": SYSTEM_PATH, "HOME": home}
    for name, value in caller.items():
        if name in _LOCALE_NAMES or name.startswith("LC_") or name == "TZ":
            env[name] = value
    env.setdefault("LC_ALL", "C")
    return env


def home_of(uid: int) -> str:
    """The home directory of account `uid` ("/" when it has none)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_dir or "/"
    except KeyError:
        return "/"


@dataclass(frozen=True)
class RunUser:
    """The unprivileged account the servers run as when devenv runs as root."""

    name: str
    uid: int
    gid: int


def spawn(argv: list[str], log_path: Path, user: RunUser | None, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own session (Ctrl-C on devenv must not reach it), logging to a file."""
    with safefs.open_append(log_path) as log:  # root's, in root's log/: the server writes to the handle
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
            start_new_session=True, env=child_env(user), **as_user(user),
        )


def run(argv: list[str], log_path: Path, user: RunUser | None) -> subprocess.CompletedProcess[bytes]:
    """Run a one-off server program (initdb) to completion, as `user`, logging to a file."""
    with safefs.open_append(log_path) as log:
        # A group of its own: a killed `up` leaves initdb and its bootstrap backend to be ended together.
        return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              env=child_env(user), cwd="/", start_new_session=True, **as_user(user))


def as_user(user: RunUser | None) -> dict:
    """subprocess arguments that make a child run as `user` (nothing when None)."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def child_env(user: RunUser | None) -> dict[str, str]:
    """The environment of a server run as `user` (server_env: not the caller's)."""
    return server_env(home_of(user.uid if user is not None else os.geteuid()))
