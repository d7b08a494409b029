"""PgBouncer pauses whose devenv died inside them: found by their notes, resumed, reported.

Every PAUSE devenv sends (devenv.clients.pgbouncer.Console.paused) is noted first with its
owner, the process's pid and start time (devenv.state.note_pause), and the note is removed
after RESUME. A process killed in between (SIGKILL, OOM, a CI job cancelled) leaves the note;
PgBouncer keeps the database paused and every pooled query waits. The next command that takes
the profile's lock sees the owner gone and RESUMEs it; `status` and `doctor` name a database
that is paused and whether its owner lives.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Callable, ContextManager

    from devenv.clients.pgbouncer import Console
    from devenv.config.stack import Stack


def resume_orphaned(stack: "Stack") -> list[str]:
    """RESUME every database that a devenv process PAUSEd and died inside (its note names an
    owner that is gone), so that pooled clients do not hang; what was done, one line each.

    One listdir when there is nothing to do: `up` (whose no-op path only looks), `reset`,
    `snapshot` and `restore` call it under the profile's lock, before they do anything else.
    """
    from devenv.state import clear_pause, pause_notes

    orphans = [(path, database, pid) for path, database, pid, alive in pause_notes(stack.state_dir) if not alive]
    if not orphans:
        return []
    from devenv.clients import connect, pgwire

    try:
        console = connect.pgbouncer_admin(stack, timeout=5.0, query_timeout=10.0)
    except (ConnectionRefusedError, FileNotFoundError):  # PgBouncer is not running: no pause outlived it
        for path, _, _ in orphans:
            clear_pause(path)
        return []
    except (pgwire.PgError, OSError) as exc:
        return [f"warning: could not reach PgBouncer to resume what a killed devenv paused: {exc}"]
    said = []
    with console:
        for path, database, pid in orphans:
            said += _put_back(stack, database, pid)
            if console.command(f"RESUME {database}"):
                said.append(f"resumed pooled clients of {database}: devenv pid {pid} paused them and was killed")
            clear_pause(path)
    return said


def _put_back(stack: "Stack", database: str, pid: int) -> list[str]:
    """A devenv killed between the two renames of a swap (Janitor.swap_in: `db` to `db__old_<pid>_<n>`,
    then `db__new_<pid>` to `db`) left no database under its name: name the new copy so (its
    clone was complete), or else the old one back. Before the RESUME: pooled clients then find
    the database, not an error. One query when the database is there."""
    from devenv.clients import connect, pgwire

    try:
        with connect.postgres(stack, "postgres", admin=True, timeout=5.0, query_timeout=30.0) as conn:
            names = [row[0] for row in conn.query(
                f"SELECT datname FROM pg_database WHERE datname = {pgwire.literal(database)} "
                f"OR datname IN ({pgwire.literal(f'{database}__new_{pid}')}) "
                f"OR datname ~ {pgwire.literal('^' + re.escape(f'{database}__old_{pid}_') + '[0-9]+$')}")]
            if database in names or not names:
                return []
            fresh = f"{database}__new_{pid}"
            # The newest old copy is the one the killed swap had just renamed away.
            source = fresh if fresh in names else max(names, key=lambda name: int(name.rsplit("_", 1)[1]))
            conn.query(f"ALTER DATABASE {pgwire.identifier(source)} RENAME TO {pgwire.identifier(database)}")
    except (pgwire.PgError, OSError) as exc:
        return [f"warning: {database} is missing after a killed devenv and could not be put back: {exc}"]
    what = "its new copy" if source == fresh else "its data as it was"
    return [f"put {database} back ({what}): devenv pid {pid} was killed between the two renames of a reset"]


def describe_paused(stack: "Stack", console: "Console") -> list[str]:
    """One line per database PgBouncer holds paused now: who paused it, and whether it still runs."""
    from devenv.state import pause_notes

    owners = {database: (pid, alive) for _, database, pid, alive in pause_notes(stack.state_dir)}
    lines = []
    for database in console.paused_databases():
        pid, alive = owners.get(database, (None, False))
        if pid is None:
            lines.append(f"database {database} is paused (not by devenv: `RESUME {database}` on the admin console)")
        elif alive:
            lines.append(f"database {database} is paused by devenv pid {pid}, which is running (a reset or snapshot)")
        else:
            lines.append(f"database {database} is paused by devenv pid {pid}, which was killed: pooled queries "
                         f"wait; `devenv up -p {stack.profile}` resumes it")
    return lines


def paused_problem(stack: "Stack", timeout: float = 2.0,
                   console: "Callable[[float], ContextManager[Console]] | None" = None) -> str | None:
    """What `status` and `doctor` say of PgBouncer when it holds a database paused (else None,
    also when its console does not answer: the health check says why). Asked before the pooled
    health check, which would wait out its timeout on a paused database. `console` lends a
    console session the caller holds (devenv.health.Lender), instead of a new one."""
    from devenv.clients import connect, pgwire

    try:
        with console(timeout) if console else connect.pgbouncer_admin(
                stack, timeout=timeout, query_timeout=timeout) as session:
            return "; ".join(describe_paused(stack, session)) or None
    except (pgwire.PgError, OSError):
        return None
