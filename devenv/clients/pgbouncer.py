"""PgBouncer's admin console: SHOW, RECONNECT, PAUSE/RESUME, each answer judged here once.

Open it with devenv.clients.connect.pgbouncer_admin. The console speaks only the simple query
protocol, which devenv.clients.pgwire is: no psycopg needed for a reset's RECONNECT.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from devenv.errors import HealthCheckError

if TYPE_CHECKING:
    from devenv.clients import pgwire

# How long PAUSE may take to close PgBouncer's server connections to a database whose sessions
# are being terminated meanwhile (it takes under 5 ms when idle).
PAUSE_TIMEOUT = 30.0
_POLL = 0.02  # an idle pool answers PAUSE in a few ms


class Console:
    """One session on the admin console. Use as a context manager (closed on exit)."""

    def __init__(self, conn: "pgwire.Connection", profile: str = "dev", state_dir: Path | None = None) -> None:
        self._conn = conn
        self._profile = profile
        self._state_dir = state_dir  # where each PAUSE's owner is noted (devenv.state.note_pause)

    def __enter__(self) -> "Console":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End the session."""
        self._conn.close()

    def show(self, what: str) -> list[dict[str, Optional[str]]]:
        """`SHOW <what>` (POOLS, CONFIG, VERSION ...): rows as dicts by column name."""
        return self._conn.query_named(f"SHOW {what}")

    def paused_databases(self) -> list[str]:
        """The databases PgBouncer holds paused now (`SHOW DATABASES`, its `paused` column)."""
        return [row["name"] or "" for row in self.show("DATABASES") if row.get("paused") not in (None, "0")]

    def command(self, command: str) -> bool:
        """Run RECONNECT/RESUME/...: True when it took effect, False when there was nothing to do
        (PgBouncer does not pool that database yet; RESUME of one not paused); any other refusal
        raises HealthCheckError."""
        from devenv.clients import pgwire

        try:
            self._conn.query(command)
        except pgwire.PgError as exc:
            return self._judge(command, exc)
        return True

    @contextlib.contextmanager
    def paused(self, dbname: str, terminate: Callable[[], None],
               reopen: Callable[[], "Console"], timeout: float = PAUSE_TIMEOUT) -> Iterator[None]:
        """PAUSE `dbname` for the block, then RESUME it.

        Pooled clients keep their connections; their next transaction waits until RESUME and
        then runs on a fresh server connection. PAUSE waits for transactions in progress, so
        `terminate()` ends the database's sessions while it waits (a reset ends them anyway),
        or an idle-in-transaction client would hold it forever. Past `timeout` the pending PAUSE
        goes with this session, and RESUME is sent on a new one (`reopen()`).
        """
        from devenv.clients import pgwire
        from devenv.state import clear_pause, note_pause

        # Noted before PAUSE, removed after RESUME: should this process die in between, the next
        # command sees the pause has no owner any more and RESUMEs it (resume_orphaned).
        note = note_pause(self._state_dir, dbname) if self._state_dir is not None else None
        self._conn.send_query(f"PAUSE {dbname}")
        deadline = time.monotonic() + timeout
        while not self._conn.answered(_POLL):
            terminate()
            if time.monotonic() > deadline:
                self.close()
                with reopen() as fresh:
                    fresh.command(f"RESUME {dbname}")
                if note is not None:
                    clear_pause(note)
                raise HealthCheckError(
                    f"PgBouncer did not PAUSE {dbname} within {timeout:.0f}s: its server "
                    f"connections to the database stayed busy",
                    hint=f"see `devenv logs pgbouncer -p {self._profile}`.")
        try:
            self._conn.result()
            paused = True
        except pgwire.PgError as exc:
            paused = self._judge(f"PAUSE {dbname}", exc)
        try:
            yield
        finally:
            if paused:
                self.command(f"RESUME {dbname}")
            if note is not None:  # kept when RESUME failed: the next command resumes it
                clear_pause(note)

    def _judge(self, command: str, exc: Exception) -> bool:
        if "no such database" in str(exc) or "is not paused" in str(exc):
            return False
        raise HealthCheckError(f"PgBouncer refused `{command}`: {exc}",
                               hint=f"check `devenv status -p {self._profile}`.") from exc

