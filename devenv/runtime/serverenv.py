"""The environment a server process starts with: the few variables it needs, nothing of the caller's.

devenv often runs where the environment holds secrets (CI tokens, cloud credentials): a server
inheriting them would show them in /proc/<pid>/environ to anyone who gets that server to run a
command. Natively postgres, initdb, pgbouncer and redis-server get this environment; the Docker
runtime's containers get only what the compose file names (their image's own variables plus
POSTGRES_*/PGDATA, PgBouncer's PGPASSWORD and Redis's REDISCLI_AUTH for the health checks).
"""

from __future__ import annotations

import os
from typing import Mapping

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
