"""The seeded template and fast resets: every database goes back to the freshly seeded state.

After schema and seed, devenv keeps a template database, `<db>__tpl_<key>`, where the key
hashes the schema and seed files and the server's major version: a change to any of them
builds a new template, so nothing stale is served. The working database (and each pytest
worker's) is created from it. A reset uses one of two strategies:

- `restore`, for small data: TRUNCATE the tables and reload them from snapshot tables
  that the template carries in the `devenv` schema; a few milliseconds. An event trigger
  counts DDL, so a database whose schema changed since its clone falls back to `clone`.
- `clone`: CREATE DATABASE from the template under a fresh name, swap the names, and drop
  the old database in the background (dropping forces a checkpoint: off the critical path).

PgBouncer is told through its admin console, so pooled clients reconnect cleanly: `RECONNECT`
after a restore (fresh server sessions), `KILL`/`RESUME` around a clone.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.database import apply_seeds, connect, seed_files
from devenv.errors import SchemaError
from devenv.stack import Stack

if TYPE_CHECKING:
    import psycopg

STRATEGIES = ("auto", "restore", "clone", "copy")
# Thresholds measured by bench/bench_reset.py: above this many seeded rows reloading costs
# more than cloning; above this template size FILE_COPY (copy files, then checkpoint) beats
# WAL_LOG (every page through the WAL).
RESTORE_MAX_ROWS = 2_000  # measured: restore ~10 ms + ~0.03 ms/row; a clone ~30-45 ms whatever the seed
WAL_LOG_MAX_BYTES = 64 << 20
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "devenv", "pg_toast")
_drop_counter = itertools.count()
_SCHEMA_CHANGED = "devenv: schema changed since the clone"
_TEMPLATE_FORMAT = 2  # bump when what a template carries (snapshots, guards) changes
# Scratch databases of one process (group 2: its pid), which `sweep` drops once it is gone.
SCRATCH_PATTERN = r"__(new|old|building|restore)_([0-9]+)(_[0-9]+)?$"

# Installed in every template: counts DDL so that `restore` knows when it is not enough.
_DDL_GUARD = """
CREATE SEQUENCE IF NOT EXISTS devenv.ddl_changes;
CREATE OR REPLACE FUNCTION devenv.count_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM nextval('devenv.ddl_changes'); END $$;
CREATE EVENT TRIGGER devenv_ddl_end ON ddl_command_end EXECUTE FUNCTION devenv.count_ddl();
CREATE EVENT TRIGGER devenv_ddl_drop ON sql_drop EXECUTE FUNCTION devenv.count_ddl();
"""


@dataclass(frozen=True)
class ResetResult:
    """How one reset went."""

    database: str
    strategy: str
    seconds: float


def template_key(seeds_dir: Path, major: int, scale: int = 0) -> str:
    """Content hash of the schema and seed files, the server's major version and the scale."""
    digest = hashlib.sha256(f"format{_TEMPLATE_FORMAT}\0pg{major}\0{scale}\0".encode())
    for seed in seed_files(seeds_dir):
        digest.update(f"{seed.key}\0{seed.checksum}\0".encode())
    if scale:
        digest.update((seeds_dir / SCALE_FILE).read_bytes())
    return digest.hexdigest()[:12]


SCALE_FILE = "scale.sql"
REDIS_SEED_FILE = "redis.json"


class Janitor:
    """Creates and resets databases from the template, keeping its connections open.

    One per process; the pytest plugin and `devenv.connect` share it. Not thread-safe.
    """

    def __init__(self, stack: Stack, seeds_dir: Path | None = None) -> None:
        self.stack = stack
        self.seeds_dir = seeds_dir or stack.root / "seeds"
        self._admin: psycopg.Connection[Any] | None = None
        self._db_conns: dict[str, psycopg.Connection[Any]] = {}
        self._pgbouncer: psycopg.Connection[Any] | None = None
        self._drops: list[threading.Thread] = []
        self._template: str | None = None
        self._plans: dict[str, _RestorePlan | None] = {}
        self._sizes: dict[str, int] = {}

    # ---- connections ---------------------------------------------------------------------

    @property
    def admin(self) -> "psycopg.Connection[Any]":
        """A connection to the maintenance database, for CREATE/DROP/ALTER DATABASE."""
        if self._admin is None or self._admin.closed:
            self._admin = connect(self.stack, "postgres", autocommit=True)
        return self._admin

    def _db(self, name: str) -> "psycopg.Connection[Any]":
        conn = self._db_conns.get(name)
        if conn is None or conn.closed or conn.broken:
            conn = self._db_conns[name] = connect(self.stack, name, autocommit=True)
        return conn

    def _forget(self, name: str) -> None:
        conn = self._db_conns.pop(name, None)
        if conn is not None:
            conn.close()

    def _pgbouncer_command(self, command: str) -> None:
        """Run a command on PgBouncer's admin console (simple query protocol only)."""
        import psycopg

        pgb = self.stack.pgbouncer
        for attempt in (1, 2):
            if self._pgbouncer is None or self._pgbouncer.closed or self._pgbouncer.broken:
                self._pgbouncer = psycopg.connect(
                    host="127.0.0.1", port=pgb.port, dbname="pgbouncer", user=pgb.admin_user,
                    password=pgb.admin_password, autocommit=True, connect_timeout=5,
                )
            result = self._pgbouncer.pgconn.exec_(command.encode())
            if result.status in (1, 2):  # COMMAND_OK, TUPLES_OK
                return
            message = result.error_message.decode(errors="replace")
            if "no such database" in message:  # PgBouncer has not pooled this one yet
                return
            if attempt == 2 or not self._pgbouncer.broken:
                raise SchemaError(f"PgBouncer refused `{command}`: {message.strip()}")

    def close(self) -> None:
        """Wait for background drops, close every connection."""
        for thread in self._drops:
            thread.join()
        self._drops.clear()
        for name in list(self._db_conns):
            self._forget(name)
        for conn in (self._admin, self._pgbouncer):
            if conn is not None:
                conn.close()
        self._admin = self._pgbouncer = None

    # ---- the template --------------------------------------------------------------------

    def ensure_template(self, rebuild: bool = False) -> str:
        """The current template's name, built from the seed files when missing or stale."""
        major = int(self.admin.execute("SHOW server_version_num").fetchone()[0]) // 10000
        name = f"{self.stack.postgres.database}__tpl_{template_key(self.seeds_dir, major, self.stack.seed_scale)}"
        if self._template == name and not rebuild:
            return name
        exists = self.admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and rebuild:
            self._drop(name)
            exists = None
        if not exists:
            self._build_template(name)
        # Older templates (other keys) are stale: nothing may be served from them.
        prefix = f"{self.stack.postgres.database}__tpl_"
        for (old,) in self.admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s", (prefix, name)
        ).fetchall():
            self._drop(old)
        if self._template != name:
            self._plans.clear()  # plans name the template their database was cloned from
        self._template = name
        return name

    def _build_template(self, name: str) -> None:
        from psycopg import sql

        building = f"{name}__building_{os.getpid()}"
        self._drop(building)
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
        try:
            with connect(self.stack, building, autocommit=True) as conn:
                apply_seeds(self.stack, self.seeds_dir, conn)
                if self.stack.seed_scale:
                    self._generate(conn)
                conn.execute(_DDL_GUARD)
                _make_snapshots(conn, name)
        except BaseException:
            self._drop(building)  # a failed file leaves no half-built template behind
            raise
        self.admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
        # A template nobody can connect to can always be cloned ("source database is being accessed").
        self.admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(sql.Identifier(name)))

    def _generate(self, conn: "psycopg.Connection[Any]") -> None:
        """Add `seed_scale` generated tasks (seeds/scale.sql) to the template being built."""
        path = self.seeds_dir / SCALE_FILE
        if not path.is_file():
            raise SchemaError(f"profile sets seed_scale but {path} does not exist",
                              hint="add seeds/scale.sql (a generator using :scale), or remove seed_scale.")
        from devenv.database import split_statements

        text = path.read_text(encoding="utf-8").replace(":scale", str(int(self.stack.seed_scale)))
        with conn.transaction():
            for statement, line in split_statements(text):
                try:
                    conn.execute(statement.encode())
                except Exception as exc:
                    raise SchemaError(f"{path}:{line}: {exc}", hint="fix the generator.") from exc
        conn.execute("ANALYZE")

    # ---- Redis ---------------------------------------------------------------------------

    def reset_redis(self, db: int = 0) -> None:
        """FLUSHDB on one index, then load seeds/redis.json if there is one, atomically.

        seeds/redis.json maps keys to values: a string is SET, a list RPUSHed, an object HSET.
        """
        from devenv import resp

        commands = [["AUTH", self.stack.redis.password], ["SELECT", str(db)], ["MULTI"], ["FLUSHDB"]]
        for key, value in self._redis_seed().items():
            if isinstance(value, list):
                commands.append(["RPUSH", key, *map(str, value)])
            elif isinstance(value, dict):
                commands.append(["HSET", key, *(str(x) for pair in value.items() for x in pair)])
            else:
                commands.append(["SET", key, str(value)])
        commands.append(["EXEC"])
        replies = resp.exchange(self.stack.redis.port, commands)
        errors = [reply for reply in replies if reply.startswith("-")]
        if errors:
            raise SchemaError(f"Redis refused the reset: {errors[0][1:]}",
                              hint=f"check {self.seeds_dir / REDIS_SEED_FILE} and `devenv status`.")

    def _redis_seed(self) -> dict[str, Any]:
        path = self.seeds_dir / REDIS_SEED_FILE
        if not path.is_file():
            return {}
        import json

        try:
            keys = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise SchemaError(f"{path}: not valid JSON: {exc}", hint="it maps key names to values.") from exc
        if not isinstance(keys, dict):
            raise SchemaError(f"{path}: expected an object mapping keys to values")
        return keys

    # ---- databases from the template -----------------------------------------------------

    def create(self, dbname: str) -> bool:
        """Create `dbname` from the template (True), or leave an existing one with data (False).

        An existing database without any table (the empty one the postgres image creates for
        POSTGRES_DB) is replaced by a clone.
        """
        template = self.ensure_template()
        exists = self.admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            with connect(self.stack, dbname, autocommit=True) as conn:
                if conn.execute(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname <> ALL(%s) LIMIT 1",
                    (list(_SYSTEM_SCHEMAS[:2]),),
                ).fetchone():
                    return False
        self.clone(dbname, template)
        return True

    def reset(self, dbname: str | None = None, strategy: str = "auto") -> ResetResult:
        """Put a database back to the freshly seeded state; create it if missing."""
        start = time.perf_counter()
        dbname = dbname or self.stack.postgres.database
        template = self.ensure_template()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown reset strategy {strategy!r}")
        used = ""
        if strategy in ("auto", "restore"):
            plan = self._restore_plan(dbname, template)
            if plan is not None and (strategy == "restore" or plan.rows <= RESTORE_MAX_ROWS):
                if self._restore(dbname, plan):
                    used = "restore"
        if not used:
            if strategy == "auto":
                strategy = "clone" if self._template_bytes(template) <= WAL_LOG_MAX_BYTES else "copy"
            used = "copy" if strategy == "copy" else "clone"
            self.clone(dbname, template, method="file_copy" if used == "copy" else "wal_log")
        return ResetResult(dbname, used, time.perf_counter() - start)

    def _template_bytes(self, template: str) -> int:
        if template not in self._sizes:
            self._sizes[template] = self.admin.execute("SELECT pg_database_size(%s)", (template,)).fetchone()[0]
        return self._sizes[template]

    def reset_hard(self, dbname: str | None = None) -> ResetResult:
        """Rebuild the template from the schema files, then recreate the database from it."""
        start = time.perf_counter()
        dbname = dbname or self.stack.postgres.database
        self._plans.clear()
        template = self.ensure_template(rebuild=True)
        self.clone(dbname, template)
        return ResetResult(dbname, "hard", time.perf_counter() - start)

    def _restore_plan(self, dbname: str, template: str) -> "_RestorePlan | None":
        """What `restore` would reload, or None if this database cannot be restored."""
        if dbname in self._plans:
            return self._plans[dbname]
        try:
            conn = self._db(dbname)
            plan = _RestorePlan.read(conn, template)
        except Exception:  # missing database, or not cloned from this template
            plan = None
        self._plans[dbname] = plan
        return plan

    def _restore(self, dbname: str, plan: "_RestorePlan") -> bool:
        """Reload the snapshots in place, in one round trip; False if the schema changed."""
        import psycopg

        conn = self._db(dbname)
        try:
            conn.execute(plan.sql)
        except psycopg.errors.RaiseException as exc:
            conn.execute("ROLLBACK")
            if _SCHEMA_CHANGED in str(exc):
                return False  # DDL since the clone: only a clone restores the schema
            raise
        # Fresh server sessions for pooled clients: no temp tables or settings from the last test.
        self._pgbouncer_command(f"RECONNECT {dbname}")
        return True

    def clone(self, dbname: str, template: str, method: str = "wal_log") -> None:
        """Make `dbname` a fresh copy of `template` (a database nobody is connected to).

        The copy is built under a scratch name and swapped in (`swap_in`), so `dbname` is
        never missing or half copied. `method` is CREATE DATABASE's STRATEGY: `wal_log`
        for small templates, `file_copy` for big ones (see `method_for`).
        """
        fresh = f"{dbname}__new_{os.getpid()}"
        self._drop(fresh)
        self._create_from(fresh, template, method)
        self.swap_in(dbname, fresh)

    def swap_in(self, dbname: str, fresh: str) -> None:
        """Rename the database `fresh` to `dbname`, replacing the one there.

        Pooled clients wait meanwhile (PgBouncer KILL, then RESUME) and reconnect to the new
        database; direct sessions on the old one are terminated. The old database is
        dropped in the background; if the final rename fails it is renamed back.
        """
        from psycopg import sql

        self._forget(dbname)
        self._plans.pop(dbname, None)
        self._pgbouncer_command(f"KILL {dbname}")  # pooled clients wait until RESUME
        try:
            exists = self.admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            old = None
            if exists:
                old = f"{dbname}__old_{os.getpid()}_{next(_drop_counter)}"
                self._terminate(dbname)
                self.admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(dbname), sql.Identifier(old)))
            try:
                self.admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(fresh), sql.Identifier(dbname)))
            except BaseException:
                if old is not None:  # put the old data back rather than leave no database at all
                    self.admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(dbname)))
                raise
            if old is not None:
                self._drop_later(old)
        finally:
            self._pgbouncer_command(f"RESUME {dbname}")

    def copy_live(self, source: str, target: str, method: str | None = None) -> None:
        """CREATE DATABASE `target` from `source`, a database that may be in use.

        PostgreSQL copies only a database without sessions: pooled clients are held
        (PgBouncer KILL ... RESUME) and direct sessions terminated for the moment it takes.
        A client reconnecting directly in between makes the copy fail: it is retried twice.
        """
        import psycopg

        method = method or self.method_for(source)
        self._forget(source)
        self._pgbouncer_command(f"KILL {source}")
        try:
            for attempt in range(3):
                self._terminate(source)
                try:
                    self._create_from(target, source, method)
                    return
                except psycopg.errors.ObjectInUse:  # "source database ... is being accessed by other users"
                    if attempt == 2:
                        raise
                    time.sleep(0.1)
        finally:
            self._pgbouncer_command(f"RESUME {source}")

    def method_for(self, source: str) -> str:
        """CREATE DATABASE's STRATEGY for copying `source`: WAL_LOG when small, else FILE_COPY."""
        size = self.admin.execute("SELECT pg_database_size(%s)", (source,)).fetchone()[0]
        return "wal_log" if size <= WAL_LOG_MAX_BYTES else "file_copy"

    def drop(self, dbname: str) -> None:
        """Drop a database now, template or not, terminating its sessions (no-op if missing)."""
        self._drop(dbname)

    def _create_from(self, name: str, template: str, method: str) -> None:
        from psycopg import sql

        # WAL_LOG (15+) copies through the WAL: no checkpoints, the fastest for small databases.
        self.admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
            sql.Identifier(name), sql.Identifier(template),
            sql.SQL(f" STRATEGY {method}") if self._supports_strategy() else sql.SQL("")))

    def _terminate(self, dbname: str) -> None:
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )

    def _drop(self, dbname: str) -> None:
        from psycopg import sql

        name = sql.Identifier(dbname)
        row = self.admin.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if row and row[0]:  # PostgreSQL refuses to drop a database marked as a template
            self.admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(name))
        self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))

    def _drop_later(self, dbname: str) -> None:
        """Drop in a background thread: DROP DATABASE waits for a checkpoint."""
        def drop() -> None:
            try:
                with connect(self.stack, "postgres", autocommit=True) as conn:
                    from psycopg import sql

                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            except Exception:  # the next reset's sweep catches what this missed
                pass

        self._drops = [t for t in self._drops if t.is_alive()]
        thread = threading.Thread(target=drop, name=f"drop {dbname}", daemon=True)
        thread.start()
        self._drops.append(thread)

    def sweep(self) -> None:
        """Drop scratch databases (`__new_<pid>`, `__old_<pid>_<n>`, `__building_<pid>`,
        `__restore_<pid>`) whose process is gone: another process may be mid-reset on its own.

        Snapshots (`<db>__snap_<name>`) never match: their names cannot contain `__`.
        """
        for (name,) in self.admin.execute(
            "SELECT datname FROM pg_database WHERE datname ~ %s", (SCRATCH_PATTERN,)
        ).fetchall():
            pid = int(re.search(SCRATCH_PATTERN, name).group(2))
            if not _pid_alive(pid):
                self._drop(name)

    def _supports_strategy(self) -> bool:
        # CREATE DATABASE ... STRATEGY arrived in PostgreSQL 15 (WAL_LOG: no checkpoints).
        return int(self.admin.execute("SHOW server_version_num").fetchone()[0]) >= 150000


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class _RestorePlan:
    """The SQL that reloads a database cloned from a template with snapshots."""

    sql: bytes
    rows: int
    ddl_mark: tuple[int, bool]

    @classmethod
    def read(cls, conn: "psycopg.Connection[Any]", template: str) -> "_RestorePlan":
        tables = conn.execute("SELECT schema_name, table_name, snapshot, row_count FROM devenv.snapshots ORDER BY 1, 2").fetchall()
        sequences = conn.execute("SELECT sequence, last_value, is_called FROM devenv.snapshot_sequences").fetchall()
        mark = conn.execute("SELECT ddl_mark_value, ddl_mark_called, template FROM devenv.snapshot_meta").fetchone()
        if mark[2] != template:
            raise LookupError(f"cloned from {mark[2]}, not the current template {template}")  # never serve stale data
        ident = lambda schema, name: f'"{schema}"."{name}"'  # noqa: E731  (names from the catalog)
        parts = [
            "BEGIN",
            # Sessions inside a transaction hold locks the reload would wait on; idle ones are harmless.
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state <> 'idle'",
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM devenv.ddl_changes WHERE last_value = {int(mark[0])} "
            f"AND is_called = {bool(mark[1])}) THEN RAISE EXCEPTION '{_SCHEMA_CHANGED}'; END IF; END $$",
            "SET LOCAL session_replication_role = replica",  # no triggers, no FK checks: the data is known good
        ]
        # DELETE, not TRUNCATE: for the few rows restore is chosen for it is faster (2.9 vs 4.8 ms
        # measured on the seed), as TRUNCATE creates and unlinks files for every table and index.
        parts += [f"DELETE FROM {ident(s, t)}" for s, t, _, _ in tables]
        parts += [f'INSERT INTO {ident(s, t)} SELECT * FROM devenv."{snap}"' for s, t, snap, _ in tables]
        parts += [f"SELECT setval('{seq}', {value}, {called})" for seq, value, called in sequences]
        parts.append("COMMIT")
        return cls(sql=(";\n".join(parts) + ";").encode(), rows=sum(r for *_, r in tables), ddl_mark=(mark[0], mark[1]))


def _make_snapshots(conn: "psycopg.Connection[Any]", template: str) -> None:
    """Copy every seeded table into `devenv.snap_*` so a clone can restore itself in place."""
    conn.execute(
        "CREATE TABLE devenv.snapshots (schema_name text, table_name text, snapshot text, row_count bigint);"
        "CREATE TABLE devenv.snapshot_sequences (sequence text, last_value bigint, is_called boolean);"
        "CREATE TABLE devenv.snapshot_meta (template text, ddl_mark_value bigint, ddl_mark_called boolean)"
    )
    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname <> ALL(%s) "
        "AND n.nspname NOT LIKE 'pg_temp%%' ORDER BY 1, 2",
        (list(_SYSTEM_SCHEMAS),),
    ).fetchall()
    for index, (schema, table) in enumerate(tables):
        snapshot = f"snap_{index}_{table}"[:63]
        conn.execute(f'CREATE TABLE devenv."{snapshot}" AS TABLE "{schema}"."{table}"')
        rows = conn.execute(f'SELECT count(*) FROM devenv."{snapshot}"').fetchone()[0]
        conn.execute("INSERT INTO devenv.snapshots VALUES (%s, %s, %s, %s)", (schema, table, snapshot, rows))
    for (schema, name) in conn.execute(
        "SELECT schemaname, sequencename FROM pg_sequences WHERE schemaname <> ALL(%s)", (list(_SYSTEM_SCHEMAS),)
    ).fetchall():
        qualified = f'"{schema}"."{name}"'
        value, called = conn.execute(f"SELECT last_value, is_called FROM {qualified}").fetchone()
        conn.execute("INSERT INTO devenv.snapshot_sequences VALUES (%s, %s, %s)", (qualified, value, called))
    # The DDL count after building the snapshots: any later DDL makes it differ.
    conn.execute("INSERT INTO devenv.snapshot_meta SELECT %s, last_value, is_called FROM devenv.ddl_changes", (template,))
