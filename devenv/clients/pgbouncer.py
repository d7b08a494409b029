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
# How long PAUSE lets a pooled transaction in progress finish by itself before `terminate` may end
# every session of the database (until then it ends only those idle in a transaction, which would
# hold PAUSE forever): a test's statements take milliseconds, and ending one is an error to its client.
PAUSE_GRACE = 2.0
# How long PAUSE waits for PgBouncer's logins to the database in progress to finish: PAUSE closes a
# login in progress, and PgBouncer then fails every client of the pool until a login succeeds
# ("server login has been failing, try again later (server_login_retry)"). A login includes
# PgBouncer's DNS lookup of the server (Docker's embedded DNS, every dns_max_ttl), which a busy
# engine answers slowly: 1 s was too short once in CI (two failed queries beside resets).
LOGIN_WAIT = 5.0


class Console:
    """One session on the admin console. Use as a context manager (closed on exit)."""

    def __init__(self, conn: "pgwire.Connection", profile: str = "dev", state_dir: Path | None = None,
                 heal: Callable[[str], None] | None = None) -> None:
        self._conn = conn
        self._profile = profile
        self._state_dir = state_dir  # where each PAUSE's owner is noted (devenv.state.note_pause)
        # Called with a database whose server login in progress a PAUSE or RECONNECT closed:
        # returns once a pooled login to it succeeds again (connect.pgbouncer_admin's heal_pool).
        self._heal = heal

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

        verb, _, database = command.partition(" ")
        closed = False
        try:
            if verb.upper() == "RECONNECT" and database:  # it closes a login in progress, as PAUSE does
                closed = self._send_when_no_login(database, command)
                self._conn.result()
            else:
                self._conn.query(command)
        except pgwire.PgError as exc:
            return self._judge(command, exc)
        if closed and self._heal is not None:
            self._heal(database)
        return True

    @contextlib.contextmanager
    def paused(self, dbname: str, terminate: Callable[[bool], None],
               reopen: Callable[[], "Console"], timeout: float = PAUSE_TIMEOUT) -> Iterator[None]:
        """PAUSE `dbname` for the block, then RESUME it.

        Pooled clients keep their connections; their next transaction waits until RESUME and
        then runs on a fresh server connection. PAUSE waits for transactions in progress:
        while it does, `terminate(False)` ends the sessions idle in a transaction (they would
        hold it forever), and past PAUSE_GRACE `terminate(True)` ends them all. Past `timeout`
        the pending PAUSE goes with this session, and RESUME is sent on a new one (`reopen()`).
        """
        from devenv.clients import pgwire
        from devenv.state import clear_pause, note_pause

        # Noted before PAUSE, removed after RESUME: should this process die in between, the next
        # command sees the pause has no owner any more and RESUMEs it (devenv.db.pauses).
        note = note_pause(self._state_dir, dbname) if self._state_dir is not None else None
        closed = self._send_when_no_login(dbname, f"PAUSE {dbname}")
        start = time.monotonic()
        deadline = start + timeout
        while not self._conn.answered(_POLL):
            terminate(time.monotonic() - start > PAUSE_GRACE)
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
        if closed and self._heal is not None:
            self._heal(dbname)

    def _send_when_no_login(self, dbname: str, command: str) -> bool:
        """Send `command` (PAUSE or RECONNECT of `dbname`) once PgBouncer has no server login to
        the database in progress (_logins_done), in one write with a SHOW SERVERS before it:
        the console runs the two back to back, so the SHOW tells exactly whether the command
        found (and will close) a login that began in between. The command's answer is left to
        read; True when it closes a login (the pool then needs healing)."""
        self._logins_done(dbname)
        self._conn.send_query("SHOW SERVERS", command)
        rows = [dict(zip(self._conn.columns, row)) for row in self._conn.result()]
        return _login_in_progress(rows, dbname)

    def _logins_done(self, dbname: str, timeout: float = LOGIN_WAIT) -> None:
        """Wait (up to `timeout`) until PgBouncer has no login to `dbname` in progress (SHOW
        SERVERS, state `new`): PAUSE and RECONNECT close one, and PgBouncer counts a closed login
        as a failed one: it then fails every new client of the pool at once ("server login has
        been failing, try again later (server_login_retry)") until a login succeeds, which it
        tries again only server_login_retry later."""
        deadline = time.monotonic() + timeout
        while _login_in_progress(self.show("SERVERS"), dbname):
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)

    def _judge(self, command: str, exc: Exception) -> bool:
        if "no such database" in str(exc) or "is not paused" in str(exc):
            return False
        raise HealthCheckError(f"PgBouncer refused `{command}`: {exc}",
                               hint=f"check `devenv status -p {self._profile}`.") from exc


def _login_in_progress(servers: list[dict[str, Optional[str]]], dbname: str) -> bool:
    """Whether SHOW SERVERS lists a login to `dbname` in progress (state `new`)."""
    return any(row.get("database") == dbname and row.get("state") == "new" for row in servers)
