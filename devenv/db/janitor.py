"""Databases from the seeded template (devenv.db.template), and fast resets back to it.

The working database (and each pytest worker's) is cloned from the template. A reset uses one
of two strategies:

- `restore`: put back what was written since the last reset from snapshot tables that the
  template carries in the `devenv` schema, in one round trip (a function in the database,
  `devenv.restore`). A statement trigger on every table records which were written
  (`devenv.dirty`), so a test that changed nothing costs well under a millisecond; tables with
  a primary key also log the keys of the rows written (`devenv.keys_*`), and only those rows
  go back, so the reset costs what the test changed, not what the table holds. Others are
  compared whole (small data only). An event trigger counts DDL, so a database whose schema
  changed since its clone falls back to `clone`.
- `clone`: CREATE DATABASE from the template under a fresh name, swap the names, and drop
  the old database in the background (dropping forces a checkpoint: off the critical path).

PgBouncer is told through its admin console, so pooled clients reconnect cleanly: `RECONNECT`
after a restore (fresh server sessions), `PAUSE`/`RESUME` around a clone's swap (pooled clients
keep their connections and wait; PgBouncer closes its server connections to the old database).
Not `KILL`: PgBouncer 1.18 to 1.24 segfaults when it kills a database with clients mid-login
(pgbouncer/pgbouncer#1401; reproduced here with pooled logins beside KILL/RESUME in a loop).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator

from devenv.clients import connect
from devenv.record import Record
from devenv.config.stack import Stack
from devenv.db.versions import read_versions, versions_comment
from devenv.db.template import SCALE_FILE, SYSTEM_SCHEMAS, populate, template_name, template_prefix

if TYPE_CHECKING:
    import psycopg

    from devenv.clients import pgwire
    from devenv.clients.pgbouncer import Console

STRATEGIES = ("auto", "restore", "clone", "copy")
# Thresholds measured by bench/bench_reset.py: above this many seeded rows in the tables written
# since the last reset that have no key log, comparing them costs more than cloning (ci profile,
# a one-row write to tasks: restore 28 / 39 / 90 ms at 1k / 2k / 5k tasks, a clone 28 / 32 / 46
# ms). Putting rows back by key costs ~15 us per logged key (1,000 rows updated, 2,000 keys:
# 28-34 ms), about what a clone costs per 15 seeded rows: devenv.restore clones beyond
# seeded/15 keys (at least RESTORE_MAX_ROWS), and never beyond RESTORE_MAX_KEYS. Above this
# template size FILE_COPY (copy files, then checkpoint) beats WAL_LOG (every page through the WAL).
RESTORE_MAX_ROWS = 1_000
RESTORE_MAX_KEYS = 20_000
WAL_LOG_MAX_BYTES = 64 << 20
_drop_counter = itertools.count()
# Scratch databases of one process (group 2: its pid), which `sweep` drops once it is gone.
SCRATCH_PATTERN = r"__(new|old|building|restore|migrate)_([0-9]+)(_[0-9]+)?$"
# What follows template_prefix in the names of devenv's templates: the key (template_key's 12
# hex), and while one is built `__building_<pid>`. Pruning drops only these.
TEMPLATE_SHAPE = r"[0-9a-f]{12}(__building_[0-9]+)?$"


class ResetResult(Record):
    """How one reset went."""

    database: str
    strategy: str
    seconds: float
    # How a `restore` went: "rows" (every written table put back by primary key), "tables"
    # (some compared whole: no key, truncated, written under replication role replica).
    detail: str = ""


def restore_quick(stack: Stack, dbname: str | None = None, strategy: str = "auto") -> ResetResult | None:
    """The `restore` strategy in sessions of its own, for one-shot callers (`devenv reset`):
    one pgwire session to the database, and one to PgBouncer's console if it holds server
    connections to the database (no psycopg: its import costs 150-250 ms, a hundred times the
    restore). None when only `Janitor.reset` can do it (a clone: the database is missing, from
    another template, has had DDL or too much to reload).
    """
    from devenv.clients import connect, pgwire

    start = time.perf_counter()
    dbname = dbname or stack.postgres.database
    try:
        with connect.postgres(stack, dbname) as conn:
            restored = restore_in_place(conn, template_name(stack, conn.server_major), strategy)
    except (pgwire.PgError, OSError, ValueError):  # no such database (or server), not ours
        return None
    if restored is None:
        return None
    sessions, how = restored
    if sessions and stack.has_pgbouncer:  # fresh server sessions for pooled clients: no temp tables or settings from the last test
        with connect.pgbouncer_admin(stack, explain=True) as console:
            console.command(f"RECONNECT {dbname}")
    return ResetResult(dbname, "restore", time.perf_counter() - start, how)


def restore_in_place(conn: "pgwire.Connection", template: str, strategy: str = "auto",
                     known_sessions: Collection[int] = ()) -> tuple[int, str] | None:
    """THE in-place restore (devenv.restore in the database, one round trip): put back what was
    written since the last reset, by primary key where the table has one. The number of other
    sessions on the database afterwards, `known_sessions` (the caller's own, by backend pid) not
    counted (PgBouncer's are among the others: with none there is nothing to RECONNECT), and how
    it went ("rows" or "tables", see ResetResult.detail), or None when only a clone can reset it
    (from another template, DDL since, or under `auto` more than RESTORE_MAX_ROWS seeded rows to
    compare whole or RESTORE_MAX_KEYS keys to put back).
    Raises the driver's error for a database that is not ours.
    """
    from devenv.clients import pgwire

    forced = strategy == "restore"
    max_rows = "NULL" if forced else str(RESTORE_MAX_ROWS)
    max_keys = "NULL" if forced else str(RESTORE_MAX_KEYS)
    known = f"ARRAY[{', '.join(str(int(pid)) for pid in known_sessions)}]::integer[]"
    [(status, sessions, how)] = conn.query(
        f"SELECT * FROM devenv.restore({pgwire.literal(template)}, {max_rows}, {max_keys}, {known})")
    return (int(sessions or 0), how) if status == "restored" else None


class Janitor:
    """Creates and resets databases from the template, keeping its connections open.

    One per process; the pytest plugin and `devenv.connect` share it. Not thread-safe.
    """

    built = ""  # the template this Janitor built last (for `up`'s report), if any

    def __init__(self, stack: Stack, seeds_dir: Path | None = None, say: Callable[[str], None] | None = None) -> None:
        from devenv.state import note_scratch_owner

        self.stack = stack
        self.seeds_dir = seeds_dir or stack.root / "seeds"
        self.say = say  # where a `run:` step's output goes while a template is built (None: kept for its error only)
        # Its scratch databases carry this pid: if it is killed, the next `up` sees it and sweeps.
        note_scratch_owner(stack.state_dir)
        self._admin: psycopg.Connection[Any] | None = None
        self._db_conns: dict[str, pgwire.Connection] = {}  # kept for the in-place restore
        self._console: Console | None = None
        self._drops: list[threading.Thread] = []
        self._template: str | None = None
        self._keys: dict[tuple[Any, ...], str] = {}  # the steps' files' (name, mtime, size) + major -> template
        self._sizes: dict[str, int] = {}
        self._held: set[str] = set()  # databases writers_held holds: a pause inside it is no second PAUSE

    # ---- connections (all through devenv.clients.connect) --------------------------------

    @property
    def admin(self) -> "psycopg.Connection[Any]":
        """The admin role's connection to the maintenance database, for CREATE/DROP/ALTER DATABASE."""
        if self._admin is None or self._admin.closed:
            self._admin = self._session(self.stack.maintenance_database, admin=True)
        return self._admin

    def _session(self, dbname: str, admin: bool = False) -> "psycopg.Connection[Any]":
        """A new psycopg session of devenv's own (durable commits), autocommit, on `dbname`: as
        the application role (work inside its databases), or with `admin` as devenv's superuser."""
        return connect.psycopg_postgres(self.stack, dbname, admin=admin, durable=True, explain=True, autocommit=True)

    def install_guard(self, dbname: str) -> None:
        """The DDL guard's event triggers (superuser-only) in `dbname`, in an admin session.

        On an existing server whose role is no superuser there are none: the template keeps a
        catalogue signature instead (devenv.db.template.make_snapshots)."""
        from devenv.db.template import GUARD_TRIGGERS

        if self.stack.server is not None and not self.role_attributes()["rolsuper"]:
            return
        with self._session(dbname, admin=True) as conn:
            conn.execute(GUARD_TRIGGERS)

    def role_attributes(self) -> dict[str, bool]:
        """rolsuper and rolcreatedb of the role devenv's cluster-level sessions use."""
        row = self.admin.execute("SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
        return {"rolsuper": bool(row and row[0]), "rolcreatedb": bool(row and row[1])}

    def databases(self, pattern: str) -> list[str]:
        """The names of the databases matching a regular expression, sorted."""
        return [name for (name,) in self.admin.execute(
            "SELECT datname FROM pg_database WHERE datname ~ %s ORDER BY 1", (pattern,)).fetchall()]

    def owner(self, dbname: str) -> str | None:
        """The role owning a database; None when there is none of that name."""
        row = self.admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                 (dbname,)).fetchone()
        return row[0] if row else None

    def rename_away(self, dbname: str, to: str) -> None:
        """Rename `dbname` to `to` (the pytest plugin keeping a failed test's database), ending its
        sessions first; pooled clients wait meanwhile. The next reset of `dbname` clones afresh."""
        from psycopg import sql

        self._forget(dbname)
        with self._pooled_clients_held(dbname):
            self._terminate(dbname)
            self.admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(dbname), sql.Identifier(to)))

    def _db(self, name: str) -> "pgwire.Connection":
        conn = self._db_conns.get(name)
        if conn is None:
            conn = self._db_conns[name] = connect.postgres(self.stack, name)
        return conn

    def _forget(self, name: str) -> None:
        conn = self._db_conns.pop(name, None)
        if conn is not None:
            conn.close()

    def _open_console(self) -> Console:
        self._close_console()
        self._console = connect.pgbouncer_admin(self.stack, explain=True)
        return self._console

    def _close_console(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None

    def _pgbouncer_command(self, command: str) -> bool:
        """A command on PgBouncer's admin console, kept open; a stale session is replaced once."""
        from devenv.clients import pgwire

        try:
            return (self._console or self._open_console()).command(command)
        except (pgwire.PgError, OSError) as exc:
            if isinstance(exc, pgwire.PgError) and not isinstance(exc, pgwire.ServerClosedError):
                raise
            return self._open_console().command(command)

    @contextlib.contextmanager
    def _pooled_clients_held(self, dbname: str) -> Iterator[None]:
        """PAUSE `dbname` on PgBouncer for the block (terminating its sessions meanwhile), then RESUME."""
        if not self.stack.has_pgbouncer or dbname in self._held:  # no pooled clients, or held already
            yield
            return
        console = self._console or self._open_console()
        with console.paused(dbname, terminate=lambda everyone: self._terminate(dbname, everyone),
                            reopen=self._open_console):
            yield

    @contextlib.contextmanager
    def writers_held(self, dbname: str) -> Iterator[None]:
        """Nobody reaches `dbname` for the block, so nothing written to it can be lost by a copy
        of it swapped in: pooled clients wait (PgBouncer PAUSE, then RESUME: they go on on
        whatever `dbname` is then), new direct sessions are refused (ALLOW_CONNECTIONS false:
        they fail, which a client notices, rather than write into a database about to go) and
        open ones are ended. Should this process die inside, the next `up` opens it again
        (sweep)."""
        from psycopg import sql

        name = sql.Identifier(dbname)
        with self._pooled_clients_held(dbname):
            self._held.add(dbname)
            try:
                self.admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(name))
                self._forget(dbname)
                self._terminate(dbname)
                yield
            finally:
                self._held.discard(dbname)
                # `dbname` is the copy swapped in (open already) or, after a failure, the old one.
                if self.admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                    self.admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(name))

    def close(self) -> None:
        """Wait for background drops, close every connection."""
        for thread in self._drops:
            thread.join()
        self._drops.clear()
        for name in list(self._db_conns):
            self._forget(name)
        self._close_console()
        if self._admin is not None:
            self._admin.close()
        self._admin = None

    # ---- the template --------------------------------------------------------------------

    def template_name(self, major: int) -> str:
        """The name the current steps give the template (hashed again only when one of the files
        it reads changed: every sql step's file, every run step's input, listed afresh)."""
        from devenv.db.stepkeys import stat_signature

        scale = self.stack.root / "seeds" / SCALE_FILE
        try:
            stat = scale.stat()
            scaled: tuple[Any, ...] = (str(scale), stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            scaled = (str(scale),)
        signature: tuple[Any, ...] = (major, scaled, stat_signature(self.stack))
        if signature not in self._keys:
            self._keys = {signature: template_name(self.stack, major)}
        return self._keys[signature]

    def ensure_template(self, rebuild: bool = False, adopt: str | None = None) -> str:
        """The current template's name, built from the seed files when missing or stale.

        `adopt`: an empty database made with the cluster to build it in (renamed away), rather
        than a new one.
        """
        name = self.template_name(self.admin.info.server_version // 10000)
        if self._template == name and not rebuild:
            return name
        exists = self.admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and rebuild:
            self._drop(name)
            exists = None
        if not exists:
            self._build_template(name, adopt)
            self.built = name
        self._prune_templates(name)
        self._template = name
        return name

    def _prune_templates(self, current: str) -> None:
        """Drop older templates (other keys: stale, nothing may be served from them) and the
        `__building_<pid>` of a process gone; only names of devenv's own shapes (TEMPLATE_SHAPE),
        never a database that merely starts alike. One owned by another role (an existing
        server whose CI role changed) is left, with a one-line warning."""
        import warnings

        import psycopg

        pattern = "^" + re.escape(template_prefix(self.stack)) + TEMPLATE_SHAPE
        for old, owner, building in self.admin.execute(
            "SELECT datname, pg_get_userbyid(datdba), substring(datname from '__building_([0-9]+)$') "
            "FROM pg_database WHERE datname ~ %s AND datname <> %s ORDER BY 1", (pattern, current)
        ).fetchall():
            if building is not None and _pid_alive(int(building)):
                continue  # another process is building it right now
            try:
                self._drop(old)
            except psycopg.errors.InsufficientPrivilege:
                warnings.warn(f"devenv: old template {old} belongs to role {owner!r}, not dropped "
                              f"(DROP DATABASE \"{old}\" as {owner!r} to reclaim its space)", stacklevel=2)

    def _build_template(self, name: str, adopt: str | None = None) -> None:
        from psycopg import sql

        building = f"{name}__building_{os.getpid()}"
        self._drop(building)
        if adopt is None or not self._renamed(adopt, building):
            self.admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(building), sql.Identifier(self.stack.postgres.user)))
        try:
            with self._session(building) as conn:
                populate(conn, self.stack, self.seeds_dir, name, lambda: self.install_guard(building), say=self.say)
                heads = read_versions(lambda query: conn.execute(query.encode()).fetchall())
            self._rename_built(building, name)
        except BaseException:
            self._drop(building)  # a failed file leaves no half-built template behind
            raise
        # A template nobody can connect to can always be cloned ("source database is being accessed").
        self.admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        if heads:  # the migration tools' heads, for status to compare a working database with
            self.admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(versions_comment(heads))))

    def _rename_built(self, building: str, name: str) -> None:
        """The built database becomes the template. The steps are over and it is devenv's alone:
        a session a step left behind (a background child on DATABASE_URL) is ended, and no new
        one may start, or the rename would fail (ObjectInUse). A failure is exit 7, not a bug."""
        import psycopg
        from psycopg import sql

        from devenv.errors import SchemaError

        ident = sql.Identifier(building)
        try:
            self.admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident))
            self._terminate(building)
            self.admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident, sql.Identifier(name)))
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SchemaError(f"every step passed, but the database they built could not become template {name}: "
                              f"{reason}", hint="`devenv up` again (the half-built database was dropped); if it "
                              "persists, see `devenv logs postgres`.") from None

    def _renamed(self, name: str, to: str) -> bool:
        """ALTER DATABASE name RENAME TO to; False when it is gone or has sessions."""
        import psycopg
        from psycopg import sql

        # The rename itself waits up to 5 s for other sessions to end before it refuses: give
        # one just closed (create()'s look at the tables) a moment, a live one none.
        deadline = time.monotonic() + 0.5
        while self.admin.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s LIMIT 1", (name,)).fetchone():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        try:
            self.admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(to)))
        except (psycopg.errors.ObjectInUse, psycopg.errors.InvalidCatalogName):
            return False
        return True

    # ---- Redis ---------------------------------------------------------------------------

    def reset_redis(self, db: int = 0) -> None:
        """Redis index `db` back to its seeded state (devenv.db.redis_seed)."""
        from devenv.db.redis_seed import reset_redis

        reset_redis(self.stack, db, self.seeds_dir)

    # ---- databases from the template -----------------------------------------------------

    def create(self, dbname: str, adopt: bool = False) -> bool:
        """Create `dbname` from the template (True), or leave an existing one with data (False).

        An existing database without any table (the empty one the postgres image creates for
        POSTGRES_DB) is replaced by a clone. With `adopt` (that database was made with the
        cluster just now, by the image's entrypoint) the template is built in it instead of a
        new one, and then cloned to `dbname`: on a new cluster that spares a CREATE DATABASE
        and a DROP DATABASE (~0.35 s on Docker: each writes and syncs a database's worth of
        WAL, and the drop waits for a checkpoint).
        """
        exists = self.admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            with self._session(dbname) as conn:
                if conn.execute(
                    "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname <> ALL(%s) LIMIT 1",
                    (list(SYSTEM_SCHEMAS[:2]),),
                ).fetchone():
                    self.ensure_template()
                    return False
        template = self.ensure_template(adopt=dbname if exists and adopt else None)
        self.clone(dbname, template)
        return True

    def reset(self, dbname: str | None = None, strategy: str = "auto",
              known_sessions: Collection[int] = ()) -> ResetResult:
        """Put a database back to the freshly seeded state; create it if missing.

        `restore` (and `auto` while the tables to reload hold at most RESTORE_MAX_ROWS seeded
        rows) costs one round trip to the database, and one to PgBouncer when other sessions
        are on the database (`known_sessions`, the caller's own by backend pid, are not: they
        are none of PgBouncer's), and needs neither the maintenance connection nor the
        template: the database carries its snapshots and knows the template it came from,
        which must be the one the seed files name now.
        """
        start = time.perf_counter()
        dbname = dbname or self.stack.postgres.database
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown reset strategy {strategy!r}")
        if strategy in ("auto", "restore") and (how := self._restore(dbname, strategy, known_sessions)) is not None:
            return ResetResult(dbname, "restore", time.perf_counter() - start, how)
        template = self.ensure_template()
        if strategy == "auto":
            # Without fsync FILE_COPY's checkpoints cost next to nothing: measured faster than WAL_LOG
            # at every size then (ci profile: 18 vs 23 ms for the seed, 388 vs 1031 ms at 1M tasks).
            cheap_checkpoints = self.stack.postgres.settings.get("fsync") == "off"
            big = self._template_bytes(template) > WAL_LOG_MAX_BYTES
            strategy = "copy" if big or cheap_checkpoints else "clone"
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
        template = self.ensure_template(rebuild=True)
        self.clone(dbname, template)
        return ResetResult(dbname, "hard", time.perf_counter() - start)

    def _restore(self, dbname: str, strategy: str, known_sessions: Collection[int] = ()) -> str | None:
        """The in-place restore (restore_in_place) on the database's kept session: how it went
        (ResetResult.detail), or None if only a clone can reset it (missing, from another
        template, DDL since, or too much to reload)."""
        from devenv.clients import pgwire

        try:
            conn = self._db(dbname)
            restored = restore_in_place(conn, self.template_name(conn.server_major), strategy, known_sessions)
        except (pgwire.PgError, OSError, ValueError):  # no such database, or not one of ours, or a stale session
            self._forget(dbname)
            return None
        if restored is None:
            return None
        sessions, how = restored
        if sessions and self.stack.has_pgbouncer:  # fresh server sessions for pooled clients: no temp tables or settings from the last test
            self._pgbouncer_command(f"RECONNECT {dbname}")
        return how

    def clone(self, dbname: str, template: str, method: str = "wal_log") -> None:
        """Make `dbname` a fresh copy of `template` (a database nobody is connected to).

        The copy is built under a scratch name and swapped in (`swap_in`), so `dbname` is
        never missing or half copied. `method` is CREATE DATABASE's STRATEGY: `wal_log`
        for small templates, `file_copy` for big ones (see `method_for`).
        """
        fresh = f"{dbname}__new_{os.getpid()}"
        self._drop(fresh)
        self._create_from(fresh, template, method)
        try:
            self.swap_in(dbname, fresh)
        except BaseException:
            with contextlib.suppress(Exception):  # the swap's error is the one to report
                self._drop(fresh)
            raise

    def swap_in(self, dbname: str, fresh: str) -> None:
        """Rename the database `fresh` to `dbname`, replacing the one there.

        Pooled clients wait meanwhile (PgBouncer PAUSE, then RESUME) and go on on the new
        database; direct sessions on the old one are terminated. The old database is
        dropped in the background; if the final rename fails it is renamed back.
        """
        from psycopg import sql

        def rename(name: str, to: str) -> None:
            self.admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(name), sql.Identifier(to)))

        self._forget(dbname)
        if not self.admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            # Nobody is connected to a database that is not there: nothing for PgBouncer to hold,
            # which a first `up` on Docker may still be starting.
            rename(fresh, dbname)
            return
        old = f"{dbname}__old_{os.getpid()}_{next(_drop_counter)}"
        with self._pooled_clients_held(dbname):
            self._terminate(dbname)
            rename(dbname, old)
            try:
                rename(fresh, dbname)
            except BaseException:
                rename(old, dbname)  # put the old data back rather than leave no database at all
                raise
        self._drop_later(old)

    def copy_live(self, source: str, target: str, method: str | None = None) -> None:
        """CREATE DATABASE `target` from `source`, a database that may be in use.

        PostgreSQL copies only a database without sessions: pooled clients are held
        (PgBouncer PAUSE ... RESUME) and direct sessions terminated for the moment it takes.
        A client reconnecting directly in between makes the copy fail: it is retried twice.
        """
        import psycopg

        method = method or self.method_for(source)
        self._forget(source)
        with self._pooled_clients_held(source):
            for attempt in range(3):
                self._terminate(source)
                try:
                    self._create_from(target, source, method)
                    return
                except psycopg.errors.ObjectInUse:  # "source database ... is being accessed by other users"
                    if attempt == 2:
                        raise
                    time.sleep(0.1)

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
        # OWNER: the copy is the application's, as everything in it is.
        self.admin.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}{}").format(
            sql.Identifier(name), sql.Identifier(self.stack.postgres.user), sql.Identifier(template),
            sql.SQL(f" STRATEGY {method}") if self._supports_strategy() else sql.SQL("")))

    def _terminate(self, dbname: str, everyone: bool = True) -> None:
        """End the database's other sessions; not `everyone`: only those idle in a transaction for
        over 100 ms (left open: they would keep PgBouncer's PAUSE waiting forever), so that a
        pooled transaction going on finishes instead of failing."""
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            + ("" if everyone else " AND state LIKE 'idle in transaction%%'"
               " AND state_change < clock_timestamp() - interval '100 milliseconds'"),
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
                with self._session(self.stack.maintenance_database, admin=True) as conn:
                    from psycopg import sql

                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
            except Exception:  # the next reset's sweep catches what this missed
                pass

        self._drops = [t for t in self._drops if t.is_alive()]
        thread = threading.Thread(target=drop, name=f"drop {dbname}", daemon=True)
        thread.start()
        self._drops.append(thread)

    def sweep(self) -> list[str]:
        """Drop scratch databases (`__new_<pid>`, `__old_<pid>_<n>`, `__building_<pid>`,
        `__restore_<pid>`, `__migrate_<pid>`) whose process is gone: another process may be mid-reset on its own.
        Returns the names dropped.

        Snapshots (`<db>__snap_<name>`) never match: their names cannot contain `__`.
        """
        dropped = []
        for (name,) in self.admin.execute(
            "SELECT datname FROM pg_database WHERE datname ~ %s ORDER BY 1", (SCRATCH_PATTERN,)
        ).fetchall():
            pid = int(re.search(SCRATCH_PATTERN, name).group(2))
            if not _pid_alive(pid):
                self._drop(name)
                dropped.append(name)
        self._reopen_working()
        return dropped

    def _reopen_working(self) -> None:
        """The working database closed by a `writers_held` whose process died (no migration of it
        is left going on): open it again."""
        from psycopg import sql

        dbname = self.stack.postgres.database
        closed = self.admin.execute("SELECT 1 FROM pg_database WHERE datname = %s AND NOT datallowconn "
                                    "AND NOT datistemplate", (dbname,)).fetchone()
        migrating = self.admin.execute("SELECT 1 FROM pg_database WHERE starts_with(datname, %s)",
                                       (f"{dbname}__migrate_",)).fetchone()
        if closed and not migrating:
            self.admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(dbname)))
            if self.say is not None:
                self.say(f"postgres: {dbname} accepts connections again (a killed `up` had closed it to migrate it)")

    def _supports_strategy(self) -> bool:
        # CREATE DATABASE ... STRATEGY arrived in PostgreSQL 15 (WAL_LOG: no checkpoints).
        return self.admin.info.server_version >= 150000


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
