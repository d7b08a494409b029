"""Schema and seed data: ordered SQL files, each in its own transaction, recorded in a ledger.

Files are `seeds/schema/*.sql` then `seeds/data/*.sql`, in name order. An applied file is
skipped; an applied file whose checksum changed is an error (`devenv reset --hard`
rebuilds); a failing file rolls back entirely and the error names the file and the line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.errors import SchemaError, StateError, byte_position
from devenv.record import Record
from devenv.config.stack import Stack

if TYPE_CHECKING:
    import psycopg

SEED_PARTS = ("schema", "data")
LEDGER_SCHEMA = "devenv"
LEDGER_TABLE = f"{LEDGER_SCHEMA}.applied_files"


class SeedFile(Record):
    """One SQL file of the schema or the seed data."""

    key: str  # "schema/001_users.sql": the ledger's primary key
    path: Path
    checksum: str

    @property
    def sql(self) -> str:
        """The file's text (SchemaError naming the file when it is not UTF-8)."""
        return read_sql(self.path)


def read_sql(path: Path) -> str:
    """A schema or seed file's text. Postgres takes the statements as UTF-8 (the database's
    encoding): bytes that are not are a SchemaError naming the file and where, never a guess."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = byte_position(data, exc.start)
        raise SchemaError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})",
            hint="save the file as UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 FILE > FILE.new && mv FILE.new FILE` "
            "if it was written as Latin-1; nothing was applied from it.",
        ) from None
    if "\0" in text:  # the server would take the statements only up to it, silently
        line = text.count("\n", 0, text.index("\0")) + 1
        raise SchemaError(f"{path}:{line}: a NUL byte; PostgreSQL would ignore everything after it",
                          hint="remove it (a binary file saved as .sql?); nothing was applied from it.")
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write: not SQL


def seed_files(seeds_dir: Path) -> list[SeedFile]:
    """The SQL files of `seeds_dir`/schema then /data, in the order they apply."""
    files = []
    for part in SEED_PARTS:
        files += folder_files(seeds_dir / part, seeds_dir)
    return files


def folder_files(folder: Path, base: Path) -> list[SeedFile]:
    """The `*.sql` files of one folder in name order, keyed by their path relative to `base`."""
    files = []
    for path in sorted(folder.glob("*.sql")):
        _check_name(path)
        key = path.relative_to(base).as_posix()
        files.append(SeedFile(key, path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return files


def step_files(stack: Stack, part: str | None = None) -> list[SeedFile]:
    """The SQL files of the stack's `sql:` steps (of one part if given), in the order they apply.

    Ledger keys are relative to `seeds/` for a folder under it (`schema/001_users.sql`, as
    always), else to the project root (`db/sql/001_x.sql`)."""
    seeds = stack.root / "seeds"
    files = []
    for step in stack.steps:
        if step.kind == "sql" and part in (None, step.part):
            folder = stack.root / step.path
            under_seeds = folder == seeds or seeds in folder.parents
            files += folder_files(folder, seeds if under_seeds else stack.root)
    return files


def _check_name(path: Path) -> None:
    """A seed file's name goes into the ledger and the template's key: UTF-8, one line."""
    import re
    import stat

    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError(f"{path.parent}/{path.name.encode('utf-8', 'surrogateescape')!r}: the file name is not UTF-8",
                          hint="rename the file (its name is recorded in the database).") from None
    if re.search(r"[\x00-\x1f\x7f-\x9f]", path.name):
        raise SchemaError(f"{path.parent}/{path.name!r}: the file name contains a control character",
                          hint="rename the file (its name is recorded in the database).")
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read it ({exc.strerror})", hint="fix or remove the file.") from None
    if not regular:  # a FIFO would block `up` for ever
        raise SchemaError(f"{path}: not a regular file", hint="schema and seed files are plain .sql files; remove it.")


def preload_driver() -> None:
    """Import psycopg on a background thread: for a runtime about to create a cluster.

    Seeding a new cluster needs psycopg (150-300 ms to import on a small machine); initdb or
    the image's entrypoint takes longer than that, so the import is free there. Everywhere
    else (a cold `up` with data, a start from the cache) psycopg is never loaded.
    """
    import threading

    threading.Thread(target=lambda: __import__("psycopg"), name="import psycopg", daemon=True).start()


def ensure_database(stack: Stack) -> bool:
    """Create the application database if it does not exist; True when created."""
    from psycopg import sql

    from devenv.clients import connect

    with connect.psycopg_postgres(stack, "postgres", admin=True, durable=True, explain=True, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (stack.postgres.database,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(stack.postgres.database),
                                                                     sql.Identifier(stack.postgres.user)))
        return True


def ensure_ledger(conn: "psycopg.Connection[Any]") -> None:
    """The ledger table (`devenv.applied_files`), created if missing."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {LEDGER_TABLE} ("
        " file text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )


def apply_seeds(stack: Stack, seeds_dir: Path | None = None, conn: "psycopg.Connection[Any] | None" = None,
                files: list[SeedFile] | None = None) -> list[str]:
    """Apply the files not yet in the ledger; return the keys applied (empty when up to date).

    `files`: those to apply (e.g. one `sql:` step's); else `seeds_dir`'s schema and data files
    when given, else every `sql:` step's of the stack."""
    if files is None:
        files = seed_files(seeds_dir) if seeds_dir is not None else step_files(stack)
    if not files:
        return []
    own = conn is None
    if conn is None:
        from devenv.clients import connect

        conn = connect.psycopg_postgres(stack, durable=True, explain=True, autocommit=True)
    try:
        ensure_ledger(conn)
        applied = dict(conn.execute(f"SELECT file, checksum FROM {LEDGER_TABLE}").fetchall())
        done = []
        for seed in files:
            if seed.key in applied:
                if applied[seed.key] != seed.checksum:
                    raise StateError(
                        f"{seed.path} changed after it was applied to database '{stack.postgres.database}'",
                        hint="applied files are never re-run; to rebuild from the changed files run "
                        "`devenv reset --hard` (this drops the data), or add the change as a new file.",
                    )
                continue
            _apply_one(conn, seed)
            done.append(seed.key)
        return done
    finally:
        if own:
            conn.close()


def _apply_one(conn: "psycopg.Connection[Any]", seed: SeedFile) -> None:
    import psycopg

    statement, line = "", 1
    try:
        with conn.transaction():
            # One statement at a time so that an error can name its line.
            for statement, line in split_statements(seed.sql):
                conn.execute(statement.encode("utf-8"))
            conn.execute(f"INSERT INTO {LEDGER_TABLE} (file, checksum) VALUES (%s, %s)", (seed.key, seed.checksum))
    except psycopg.Error as exc:
        position = getattr(exc.diag, "statement_position", None)
        if position:  # counts characters from 1 within the statement sent
            line += statement[: int(position) - 1].count("\n")
        message = (exc.diag.message_primary or str(exc)).strip()
        detail = f" ({exc.diag.message_detail.strip()})" if exc.diag.message_detail else ""
        raise SchemaError(
            f"{seed.path}:{line}: {message}{detail}",
            hint="the file was rolled back entirely and the database is as it was; fix the file and run "
            "`devenv up` again.",
        ) from exc


def split_statements(sql_text: str) -> list[tuple[str, int]]:
    """Split SQL into statements with the line each starts on.

    Understands what can hide a semicolon: 'strings', "identifiers", $tag$ bodies $tag$,
    -- line comments and /* block comments */.
    """
    statements: list[tuple[str, int]] = []
    i, n, start = 0, len(sql_text), 0
    while i < n:
        ch = sql_text[i]
        if ch == "-" and sql_text.startswith("--", i):
            i = _find_end(sql_text, "\n", i + 2)
        elif ch == "/" and sql_text.startswith("/*", i):
            i = _find_end(sql_text, "*/", i + 2)
        elif ch in ("'", '"'):
            i = _find_end(sql_text, ch, i + 1)
        elif ch == "$" and (tag := _dollar_tag(sql_text, i)):
            i = _find_end(sql_text, tag, i + len(tag))
        elif ch == ";":
            _add_statement(statements, sql_text, start, i)
            i += 1
            start = i
        else:
            i += 1
    _add_statement(statements, sql_text, start, n)
    return statements


def _find_end(text: str, closer: str, start: int) -> int:
    end = text.find(closer, start)
    return len(text) if end < 0 else end + len(closer)


def _dollar_tag(text: str, i: int) -> str | None:
    end = text.find("$", i + 1)
    tag = text[i : end + 1] if end > 0 else ""
    return tag if tag and (tag == "$$" or tag[1:-1].replace("_", "a").isalnum() and not tag[1].isdigit()) else None


def _add_statement(statements: list[tuple[str, int]], text: str, start: int, end: int) -> None:
    chunk = text[start:end]
    if not _strip_comments(chunk).strip():
        return
    i = start  # the statement's line is that of its first token, past leading comments
    while i < end:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            i = _find_end(text, "\n", i + 2)
        elif text.startswith("/*", i):
            i = _find_end(text, "*/", i + 2)
        else:
            break
    statements.append((text[i:end].strip(), text.count("\n", 0, i) + 1))


def _strip_comments(chunk: str) -> str:
    """The chunk without comments (only to tell whether it holds a statement)."""
    out, i = [], 0
    while i < len(chunk):
        if chunk.startswith("--", i):
            i = _find_end(chunk, "\n", i + 2)
        elif chunk.startswith("/*", i):
            i = _find_end(chunk, "*/", i + 2)
        else:
            out.append(chunk[i])
            i += 1
    return "".join(out)
