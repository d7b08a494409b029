"""Logical backups: `devenv dump` and `devenv restore` (the infrastructure doc's pg_dump backups).

A dump is `pg_dump --format=custom` of the working database. A restore never touches the
working database until it has succeeded: the archive is restored into a scratch database,
`<db>__restore_<pid>`, with `pg_restore --exit-on-error --no-owner`, then swapped in as
`devenv reset` swaps a clone in (PgBouncer holds pooled clients, which then reconnect to
the new database). A failed restore drops the scratch database: the data is as it was.

pg_dump and pg_restore must be of the server's major version (an older pg_dump refuses a
newer server; an older pg_restore cannot read a newer archive), so the runtime provides them
(`Runtime.pg_tool`): natively from the running server's bindir; in Docker, inside the
postgres container. Archives go through stdin/stdout, so either works the same.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

from devenv.errors import DependencyError, SchemaError, UsageError
from devenv.config.stack import Stack

if TYPE_CHECKING:
    from devenv.db.janitor import Janitor
    from devenv.runtime.base import Runtime

Say = Callable[[str], None]
MAGIC = b"PGDMP"  # the first bytes of every custom-format archive
_CHUNK = 1 << 16
_DUMP_HINT = "no file was written (a partial one is removed); check `devenv status` and `devenv logs postgres`."


@dataclass(frozen=True)
class DumpResult:
    """What `dump` wrote."""

    database: str
    target: str  # a path, or "stdout"
    size: int  # bytes
    seconds: float


@dataclass(frozen=True)
class RestoreResult:
    """What `restore` did."""

    database: str
    source: Path
    size: int  # bytes of the archive
    seconds: float


def default_dump_path(stack: Stack, now: datetime | None = None) -> Path:
    """`<project>/.devenv/dumps/<profile>-<timestamp>.dump` (a new name even within one second),
    creating the directory."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    directory = stack.state_dir.parent / "dumps"
    directory.mkdir(parents=True, exist_ok=True)
    path, n = directory / f"{stack.profile}-{stamp}.dump", 1
    while path.exists():
        n += 1
        path = directory / f"{stack.profile}-{stamp}-{n}.dump"
    return path


def pg_tool(runtime: "Runtime", stack: Stack, tool: str) -> list[str]:
    """The argv prefix of `tool` from the runtime the stack runs on (see `Runtime.pg_tool`)."""
    return runtime.pg_tool(stack, tool)


def tool_env(stack: Stack) -> dict[str, str]:
    """The environment for pg_dump/pg_restore: the stack's password and SSL mode, nothing else PG*."""
    # The caller's PG* variables (PGHOST, PGDATABASE...) must not point the tool elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=stack.postgres.password, PGSSLMODE="require" if stack.postgres.ssl else "prefer",
               PGCONNECT_TIMEOUT="10", PGAPPNAME="devenv")
    return env


def dump(stack: Stack, runtime: "Runtime", destination: Path | IO[bytes], say: Say = lambda line: None) -> DumpResult:
    """pg_dump the working database in custom format to a file (written whole or not at all)
    or to a binary stream."""
    from devenv.clients import connect

    database = stack.postgres.database
    kind = destination_kind(destination) if isinstance(destination, Path) else "stream"  # before connecting
    connect.psycopg_postgres(stack, explain=True).close()  # "is the stack up?" said plainly, before pg_dump says it its way
    argv = pg_tool(runtime, stack, "pg_dump") + ["--format=custom", "--no-password", f"--dbname={database}"]
    start = time.monotonic()
    if isinstance(destination, Path) and kind in ("new", "file"):
        say(f"dump: dumping {database} to {destination}...")
        # Written under a fresh name beside it (O_EXCL: never through a link someone planted),
        # 0600 (a dump holds the data, password hashes included), then renamed over the file: it
        # is whole or not there. A file, not a pipe, lets pg_dump record data offsets for seeks.
        try:
            fd, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial")
        except OSError as exc:
            raise SchemaError(f"cannot write in {destination.parent}: {exc.strerror}",
                              hint="name a file in an existing, writable directory (or `-` for stdout).") from exc
        partial = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                _run(argv, stack, stdin=subprocess.DEVNULL, stdout=out, what=f"dump {database}", hint=_DUMP_HINT)
            os.replace(partial, destination)  # replaces a link itself, never what it points to
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        size, target = destination.stat().st_size, str(destination)
    elif isinstance(destination, Path):
        # A FIFO or a character device (/dev/null, a tty) is written through, never replaced.
        say(f"dump: dumping {database} into {destination} ({kind})...")
        try:
            fd = os.open(destination, os.O_WRONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise SchemaError(f"cannot write to {destination}: {exc.strerror}",
                              hint="name a writable file, FIFO or device (or `-` for stdout).") from exc
        with os.fdopen(fd, "wb") as out:
            size = _run_to_stream(argv, stack, out, what=f"dump {database}",
                                  hint=f"what went into {destination} is incomplete: discard it; check `devenv status`.")
        target = str(destination)
    else:
        say(f"dump: dumping {database} to stdout...")
        size = _run_to_stream(argv, stack, destination, what=f"dump {database}",
                              hint="what went to stdout is incomplete: discard it; check `devenv status`.")
        target = "stdout"
    seconds = time.monotonic() - start
    say(f"dump: {size} bytes in {seconds:.2f}s")
    return DumpResult(database, target, size, seconds)


def destination_kind(path: Path) -> str:
    """What a dump may do with `path`: "new" or "file" (written whole, then renamed over it),
    "fifo" or "character device" (written through). Anything else (a symlink, a directory, a
    socket, a block device) is refused: replacing it could break the machine or follow a link
    someone else planted."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "new"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "character device"
    what = ("a symbolic link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a block device" if stat.S_ISBLK(mode) else "not a regular file")
    raise UsageError(f"{path} is {what}: `devenv dump` writes only a new or regular file, a FIFO or a character "
                     "device, and never replaces anything else",
                     hint="name a regular file (for a link, the file it points to), or `-` for stdout.")


def restore(stack: Stack, runtime: "Runtime", janitor: "Janitor", source: Path,
            say: Say = lambda line: None) -> RestoreResult:
    """Replace the working database with the contents of a custom-format archive.

    The archive goes into a scratch database first; only a complete restore is swapped in.
    """
    import psycopg
    from psycopg import sql

    database = stack.postgres.database
    size = _check_archive(source)
    janitor.admin  # noqa: B018  ("is the stack up?" said plainly, before the runtime is asked for pg_restore)
    argv = pg_tool(runtime, stack, "pg_restore")
    start = time.monotonic()
    scratch = f"{database}__restore_{os.getpid()}"  # `Janitor.sweep` drops it if this process dies
    say(f"restore: restoring {source} ({size} bytes) into a scratch database, {scratch}")
    try:
        janitor.drop(scratch)
        # template0: nothing but what the archive holds (template1 may carry local additions).
        janitor.admin.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
            sql.Identifier(scratch), sql.Identifier(stack.postgres.user)))
    except psycopg.Error as exc:
        raise SchemaError(f"could not create the scratch database {scratch}: {_reason(exc)}",
                          hint="the working database is unchanged; check the postgres log (`devenv logs postgres`).") from exc
    try:
        # As the application role (pg_tool's user), which owns the scratch database: the archive's
        # functions, checks and index expressions never run as a superuser. It cannot create
        # event triggers (devenv's DDL guard): those refusals alone are let pass (not
        # --exit-on-error, which stops at the first), and the admin role installs the guard.
        with open(source, "rb") as archive:
            _run(argv + ["--no-owner", "--no-password", f"--dbname={scratch}"], stack,
                 stdin=archive, stdout=subprocess.DEVNULL, what=f"restore {source}",
                 hint=f"nothing was changed: {database} is as it was. Is {source} a complete archive made by "
                 "`devenv dump` (pg_dump --format=custom of this major version or older)? "
                 f"`pg_restore --list {source}` checks it.", tolerate=only_event_triggers_refused)
        if _has_guard(janitor, scratch):
            janitor.install_guard(scratch)
        say(f"restore: complete in {time.monotonic() - start:.2f}s; swapping it in as {database}")
        janitor.swap_in(database, scratch)
    except psycopg.Error as exc:
        _drop_quietly(janitor, scratch)
        raise SchemaError(f"could not swap the restored database in as {database}: {_reason(exc)}",
                          hint=f"{database} is as it was; retry, or check `devenv status`.") from exc
    except BaseException:
        _drop_quietly(janitor, scratch)
        raise
    seconds = time.monotonic() - start
    say(f"restore: {database} restored from {source} ({size} bytes) in {seconds:.2f}s")
    return RestoreResult(database, source, size, seconds)


# ---- helpers: the one place here that spawns the tools ------------------------------------------


def _check_archive(source: Path) -> int:
    """The archive's size; SchemaError unless it is a readable custom-format archive."""
    try:
        with open(source, "rb") as handle:
            head = handle.read(len(MAGIC))
        size = source.stat().st_size
    except OSError as exc:
        raise SchemaError(f"cannot read {source}: {exc.strerror}", hint="name a file written by `devenv dump`.") from exc
    if head != MAGIC:
        raise SchemaError(
            f"{source} is not a pg_dump custom-format archive (it does not start with {MAGIC.decode()})",
            hint="`devenv dump` writes one. A plain SQL dump loads with `devenv psql -f FILE`.",
        )
    return size


def only_event_triggers_refused(stderr: str) -> bool:
    """Whether every error pg_restore reported is a refused event trigger statement (the
    application role may not create them; devenv installs its own afterwards)."""
    errors = [line for line in stderr.splitlines() if ": error: " in line or line.startswith("ERROR:")]
    commands = [line.split("Command was:", 1)[1].strip() for line in stderr.splitlines() if "Command was:" in line]
    queries = [line for line in errors if "could not execute query" in line]
    return bool(queries) and len(queries) == len(errors) == len(commands) and all(
        command.upper().startswith(("CREATE EVENT TRIGGER", "ALTER EVENT TRIGGER", "COMMENT ON EVENT TRIGGER"))
        for command in commands)


def _has_guard(janitor: "Janitor", dbname: str) -> bool:
    """Whether a restored database carries devenv's DDL counter (a database made from a template)."""
    from devenv.clients import connect

    with connect.psycopg_postgres(janitor.stack, dbname, explain=True, autocommit=True) as conn:
        return conn.execute("SELECT to_regclass('devenv.ddl_changes') IS NOT NULL").fetchone()[0]


def _run(argv: list[str], stack: Stack, *, stdin: int | IO[bytes], stdout: int | IO[bytes], what: str,
         hint: str | None = None, tolerate: Callable[[str], bool] | None = None) -> None:
    """Run a PostgreSQL tool to completion; its stderr becomes the error when it fails (unless
    `tolerate` accepts that stderr)."""
    with tempfile.TemporaryFile() as errors:
        try:
            code = subprocess.run(argv, stdin=stdin, stdout=stdout, stderr=errors, env=tool_env(stack)).returncode
        except OSError as exc:
            raise _spawn_error(argv, exc) from exc
        if code != 0:
            errors.seek(0)
            text = errors.read().decode(errors="replace")
            if code > 0 and tolerate is not None and tolerate(text):
                return
            raise _tool_error(argv, code, text, what, hint)


def _run_to_stream(argv: list[str], stack: Stack, out: IO[bytes], what: str, hint: str | None = None) -> int:
    """Run a tool, copying its stdout to a stream; the number of bytes copied."""
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                    env=tool_env(stack))
        except OSError as exc:
            raise _spawn_error(argv, exc) from exc
        size = 0
        assert proc.stdout is not None
        with proc.stdout:
            while chunk := proc.stdout.read(_CHUNK):
                out.write(chunk)
                size += len(chunk)
        out.flush()
        code = proc.wait()
        if code != 0:
            errors.seek(0)
            raise _tool_error(argv, code, errors.read().decode(errors="replace"), what, hint)
    return size


def _spawn_error(argv: list[str], exc: OSError) -> DependencyError:
    return DependencyError(f"cannot run {argv[0]}: {exc.strerror or exc}",
                           hint="install the PostgreSQL client programs of the server's major version.")


def _tool_error(argv: list[str], code: int, stderr: str, what: str, hint: str | None) -> Exception:
    tool = next((Path(a).name for a in argv if Path(a).name in ("pg_dump", "pg_restore")), Path(argv[0]).name)
    lines = [_unprefixed(line.strip(), tool) for line in stderr.splitlines() if line.strip()]
    reason = "; ".join(lines[-3:])[:600] or (f"killed by signal {-code}" if code < 0 else f"exit code {code}")
    if code < 0:  # e.g. pg_restore crashing on a corrupt archive
        reason += f" ({tool} was killed by signal {-code})" if lines else ""
    if "version mismatch" in stderr or "unsupported version" in stderr:
        return DependencyError(f"could not {what}: {reason}",
                               hint=f"{tool} must be of the server's major version (or newer for reading archives).")
    return SchemaError(f"could not {what}: {tool} failed: {reason}", hint=hint or "see the message above.")


def _unprefixed(line: str, tool: str) -> str:
    for prefix in (f"{tool}: error: ", f"{tool}: "):
        if line.startswith(prefix):
            return line[len(prefix):]
    return line


def _drop_quietly(janitor: "Janitor", name: str) -> None:
    try:
        janitor.drop(name)
    except Exception:  # the connection may be what failed; `sweep` drops it later
        pass


def _reason(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    return ((getattr(diag, "message_primary", None) if diag is not None else None) or str(exc)).strip()
