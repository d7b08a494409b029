"""Running devenv.yaml's `run:` steps, and bringing an existing working database forward.

A `run:` step (e.g. `alembic upgrade head`) runs from the project root with the database to
build in its environment: `DATABASE_URL` (direct, not pooled: migration tools use session
features), libpq's `PG*` variables, as the application role; no shell, stdin from /dev/null,
its output shown line by line and its last lines kept for the error. Its run is recorded in the
ledger (`run:<part>:<n>:<command>`, the step's key as checksum: devenv.db.stepkeys).

An existing working database is brought forward inside a copy that is swapped in: the schema's
`run:` steps run again on the copy (migration tools are idempotent: `upgrade head` applies what
is new) and the SQL files it lacks are applied; if anything fails the copy goes and the working
database is exactly as it was.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import quote

from devenv.config.stack import Stack, Step
from devenv.db.seeds import LEDGER_TABLE, apply_seeds, ensure_ledger, step_files
from devenv.db.stepkeys import ledger_name, run_key, run_steps
from devenv.db.versions import read_versions, template_versions, versions_behind
from devenv.errors import SchemaError

if TYPE_CHECKING:
    import psycopg

    from devenv.db.janitor import Janitor

Say = Callable[[str], None]
TAIL_LINES = 20
# A step's output is shown on the terminal and kept in the exit-7 error: its control characters
# (an escape sequence, an OSC title, BEL, NUL) must not drive the terminal. C0 and DEL are shown
# in caret notation (ESC -> `^[`), C1 as U+FFFD; TAB stays.
_VISIBLE = {code: f"^{chr(code ^ 0x40)}" for code in (*range(0x20), 0x7F) if code != 0x09}
_VISIBLE.update({code: "\ufffd" for code in range(0x80, 0xA0)})


# The steps running now, in any thread (`up` builds the template in its "seed check" thread on
# an existing cluster): an interrupted `up` kills their process groups (kill_running).
_running: set[subprocess.Popen[bytes]] = set()
_running_lock = threading.Lock()
_stopping = threading.Event()


def kill_running(grace: float = 5.0) -> None:
    """End every running step's process group (SIGTERM, then SIGKILL after `grace` seconds), and
    start no new step until resume_steps(): an interrupted `up` calls it from the main thread."""
    _stopping.set()
    with _running_lock:
        procs = list(_running)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def resume_steps() -> None:
    """Steps may start again (after kill_running, once the interrupted `up` has cleaned up)."""
    _stopping.clear()


def step_env(stack: Stack, dbname: str) -> dict[str, str]:
    """The caller's environment plus the application role's connection to `dbname`, direct."""
    env = dict(os.environ)
    for name in ("PGSSLMODE", "PGSERVICE", "PGHOSTADDR", "PGPASSFILE", "PGOPTIONS"):  # the caller's must not redirect it
        env.pop(name, None)
    env.update(stack.libpq_env())
    env["PGDATABASE"] = dbname
    env["DATABASE_URL"] = stack.urls(database=dbname)["DIRECT_DATABASE_URL"]
    env["PYTHONUNBUFFERED"] = "1"  # a Python tool's lines come as they are written
    return env


def run_step(stack: Stack, step: Step, dbname: str, say: Say | None = None) -> None:
    """Run one `run:` step against `dbname`; SchemaError (exit 7) naming the step, its exit
    status and its last lines when it fails. Ctrl-C or an error here kills its process group."""
    show = say or (lambda line: None)
    if _stopping.is_set():
        raise KeyboardInterrupt  # `up` was interrupted while another step ran: start no more
    show(f"{step.label}: running on {dbname}")
    try:
        proc = subprocess.Popen(step.argv, cwd=stack.root, env=step_env(stack, dbname), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except FileNotFoundError:
        raise SchemaError(f"{step.label}: {step.argv[0]}: command not found",
                          hint=f"install it (or activate the environment that has it: `{step.argv[0]}` must be "
                          "on PATH), or fix `run:` in devenv.yaml; nothing was changed.") from None
    except OSError as exc:  # not executable, a directory...
        raise SchemaError(f"{step.label}: cannot run {step.argv[0]}: {exc.strerror}",
                          hint="fix `run:` in devenv.yaml (or the program's permissions); nothing was changed.") from None
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    prefix = f"  {step.part} {step.index} | "
    # A tool that prints its URL must not put the password in devenv's output (or a CI log).
    secrets = [text for text in {stack.postgres.password, quote(stack.postgres.password, safe="")} if text]
    try:
        with _running_lock:
            _running.add(proc)
        if _stopping.is_set():  # interrupted while it was starting
            raise KeyboardInterrupt
        for raw in _lines(proc):
            line = raw.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1]
            for secret in secrets:
                line = line.replace(secret, "****")
            line = line.translate(_VISIBLE)
            tail.append(line)
            show(prefix + line)
        status = proc.wait()
        with contextlib.suppress(ProcessLookupError):  # what it left running in the background goes too
            os.killpg(proc.pid, signal.SIGKILL)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        with _running_lock:
            _running.discard(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    if status != 0:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        last = "\n".join(f"  | {line}" for line in tail) or "  (no output)"
        raise SchemaError(f"{step.label} {how}; its last lines:\n{last}",
                          hint="fix the step (run it yourself with the stack's DIRECT_DATABASE_URL from `devenv env`), "
                          "then `devenv up` again; the template being built was discarded and the working database "
                          "is as it was.")


def _lines(proc: subprocess.Popen[bytes], linger: float = 1.0) -> Iterator[bytes]:
    """The step's output, line by line (without the newline), as it comes. Ends at the end of
    the output, or `linger` seconds after the step exited: a process it left in the background
    holding the pipe must not keep devenv waiting."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    exited: float | None = None
    while True:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            yield from lines
        if exited is None and proc.poll() is not None:
            exited = time.monotonic()
        if exited is not None and (not ready or time.monotonic() - exited > linger):
            if not ready and time.monotonic() - exited < 0.1:
                continue  # what it wrote just before exiting may still be on its way
            break
    if pending:
        yield pending


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End the step and whatever it started (its own session: start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def record_run(conn: "psycopg.Connection[Any]", stack: Stack, step: Step) -> None:
    """Note in the ledger that `step` ran here, with its current key."""
    ensure_ledger(conn)
    conn.execute(f"INSERT INTO {LEDGER_TABLE} (file, checksum) VALUES (%s, %s) "
                 "ON CONFLICT (file) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
                 (ledger_name(step), run_key(stack.root, step)))


def run_in_template(conn: "psycopg.Connection[Any]", stack: Stack, say: Say | None = None,
                    run_parts: tuple[str, ...] = ("schema", "seed"), on_step: Callable[[Step], None] | None = None
                    ) -> list[str]:
    """The steps in order into the database `conn` is on (a template being built, or a working
    database's copy): each `sql:` step's files it lacks, the `run:` steps of `run_parts`. What
    was applied (file keys, step labels) is returned; `on_step` hears of each step as it starts."""
    done: list[str] = []
    for step in stack.steps:
        if on_step is not None:
            on_step(step)
        if step.kind == "sql":
            done += apply_seeds(stack, conn=conn, files=step_files(stack.replace(steps=(step,))))
        elif step.part in run_parts:
            run_step(stack, step, conn.info.dbname, say)
            record_run(conn, stack, step)
            done.append(step.label)
    return done


def ledger(stack: Stack, conn: "psycopg.Connection[Any]") -> dict[str, str]:
    """The ledger's rows (file -> checksum) of the database `conn` is on; {} without a ledger."""
    if conn.execute("SELECT to_regclass(%s)", (LEDGER_TABLE,)).fetchone()[0] is None:
        return {}
    return dict(conn.execute(f"SELECT file, checksum FROM {LEDGER_TABLE}").fetchall())


def stale_runs(stack: Stack, applied: dict[str, str], part: str) -> list[Step]:
    """The `run:` steps of `part` whose current key the ledger does not hold."""
    return [step for step in run_steps(stack, part) if applied.get(ledger_name(step)) != run_key(stack.root, step)]


def bring_forward(janitor: "Janitor", stack: Stack, say: Say) -> list[str]:
    """Bring the existing working database to the current steps; what was done, for the report.

    Without a stale schema `run:` step, the SQL files it lacks are applied in place (each in
    its own transaction, as always). Otherwise in a copy swapped in: the schema steps in order
    (`run:` ones again, `sql:` ones' missing files), then the seed's missing SQL files. Seed
    `run:` steps never run again on existing data (seed scripts are not idempotent)."""
    from devenv.clients import connect

    dbname = stack.postgres.database
    with connect.psycopg_postgres(stack, dbname, durable=True, explain=True, autocommit=True) as conn:
        applied = ledger(stack, conn)
        query = lambda text: conn.execute(text.encode()).fetchall()  # noqa: E731
        moved = versions_behind(read_versions(query), template_versions(query, janitor.template_name(conn.info.server_version // 10000)))
    for step in stale_runs(stack, applied, "seed"):
        say(f"{step.label} changed since {dbname} was seeded: seed steps do not run again on existing data; "
            f"`devenv reset` serves the new seed")
    if moved and run_steps(stack, "schema"):
        say(f"{dbname}: {'; '.join(moved)}: the schema steps run again")
    elif not stale_runs(stack, applied, "schema"):
        return apply_seeds(stack)
    scratch = f"{dbname}__migrate_{os.getpid()}"
    janitor.drop(scratch)
    running: list[Step] = []  # the step under way when something fails
    try:
        # Held from the copy to the swap: a write in between would go with the old database.
        with janitor.writers_held(dbname):
            janitor.copy_live(dbname, scratch)
            with connect.psycopg_postgres(stack, scratch, durable=True, explain=True, autocommit=True) as conn:
                # Seed `run:` steps are not idempotent: never again on existing data.
                done = run_in_template(conn, stack, say, run_parts=("schema",), on_step=running.append)
            janitor.swap_in(dbname, scratch)
    except BaseException as exc:
        janitor.drop(scratch)  # the working database was never touched
        if isinstance(exc, SchemaError) and running and exc.message.startswith(running[-1].label):
            exc.hint = (f"it passed on a fresh template but not on {dbname}'s data (a copy of it, now dropped: "
                        f"{dbname} is as it was); fix the migration or the data and `devenv up` again, or "
                        "`devenv reset` to start over from the new template (this drops the data).")
        raise
    return done
