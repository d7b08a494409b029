"""Named snapshots of the working database: the infrastructure doc's "manual snapshots before
migrations", near-instant for local use.

A snapshot is a template database, `<db>__snap_<name>`, copied from the working database with
CREATE DATABASE ... TEMPLATE (a file-level copy: no dump, no replay) and marked IS_TEMPLATE,
ALLOW_CONNECTIONS false so nothing changes it and it can always be cloned. Restoring clones
it back and swaps the clone in as the working database, as `devenv reset` does (pooled
clients held by PgBouncer, then reconnected). Being databases, snapshots live as long as the
server's data: they survive `down`/`up`, not `down --volumes`.

When a snapshot was taken is kept in its database comment (COMMENT ON DATABASE) rather than
in a table of the `postgres` database: the comment is attached to the database itself, so it
cannot outlive it or drift from it (a DROP DATABASE by hand leaves no orphan row), needs no
table created and migrated, and shows in psql's `\\l+`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from devenv.errors import ConfigError, StateError

if TYPE_CHECKING:
    import psycopg

    from devenv.db.janitor import Janitor

Say = Callable[[str], None]

# `__` is devenv's separator in database names (`__tpl_`, `__new_<pid>`, `__old_<pid>_<n>`):
# a name without it, that does not start with `_` either (`__snap_` + `_new_1` would make one),
# can never look like a template or a scratch database that `Janitor.ensure_template` or
# `Janitor.sweep` would drop.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
INFIX = "__snap_"
_COMMENT_KIND = "devenv snapshot"
_MAX_IDENTIFIER = 63


@dataclass(frozen=True)
class Snapshot:
    """One snapshot of the working database."""

    name: str
    database: str  # the template database holding it
    size: int  # bytes
    created_at: datetime | None  # None when its comment was lost (e.g. made by hand)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (`devenv snapshot list --json`)."""
        return {"name": self.name, "database": self.database, "size": self.size,
                "created_at": self.created_at.isoformat() if self.created_at else None}


def validate_name(name: str) -> str:
    """The name if it may name a snapshot, else ConfigError."""
    if not NAME_PATTERN.fullmatch(name) or "__" in name:
        raise ConfigError(
            f"invalid snapshot name {name!r}: use 1 to 40 of a-z, 0-9, '_' and '-', starting with a letter "
            "or digit, without '__'",
            hint="for example `devenv snapshot save before-migration-42`.",
        )
    return name


def database_name(working: str, name: str) -> str:
    """The template database that holds snapshot `name` of database `working`."""
    database = f"{working}{INFIX}{validate_name(name)}"
    if len(database.encode()) > _MAX_IDENTIFIER:  # PostgreSQL would silently truncate it
        raise ConfigError(f"snapshot name {name!r} is too long for database '{working}': "
                          f"'{database}' exceeds PostgreSQL's {_MAX_IDENTIFIER}-byte names",
                          hint="choose a shorter name.")
    return database


class Snapshots:
    """Save, restore, list and remove snapshots of one stack's working database.

    Uses the janitor's connections and its swap; the caller holds the profile's lock.
    """

    def __init__(self, janitor: "Janitor", say: Say = lambda line: None) -> None:
        self.janitor = janitor
        self.database = janitor.stack.postgres.database
        self.say = say

    @property
    def _admin(self) -> "psycopg.Connection[Any]":
        return self.janitor.admin

    def list_all(self) -> list[Snapshot]:
        """Every snapshot of the working database, oldest first."""
        rows = self._sql(
            "list the snapshots",
            lambda: self._admin.execute(
                "SELECT datname, pg_database_size(oid), shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE starts_with(datname, %s) ORDER BY datname", (f"{self.database}{INFIX}",),
            ).fetchall(),
        )
        found = []
        for datname, size, comment in rows:
            name = datname[len(self.database) + len(INFIX):]
            if NAME_PATTERN.fullmatch(name) and "__" not in name:  # not some other database's name
                found.append(Snapshot(name, datname, int(size), _created_at(comment)))
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        return sorted(found, key=lambda s: (s.created_at or epoch, s.name))

    def get(self, name: str) -> Snapshot:
        """The snapshot called `name`, else StateError naming the ones there are."""
        target = database_name(self.database, name)
        for snapshot in self.list_all():
            if snapshot.database == target:
                return snapshot
        names = ", ".join(s.name for s in self.list_all()) or "none"
        raise StateError(
            f"no snapshot '{name}' of database '{self.database}' (profile {self.janitor.stack.profile}; "
            f"snapshots: {names})",
            hint=f"`devenv snapshot list -p {self.janitor.stack.profile}` shows them; "
            f"`devenv snapshot save {name}` takes one.",
        )

    def save(self, name: str, force: bool = False) -> Snapshot:
        """Copy the working database into snapshot `name`; an existing one only with `force`."""
        from psycopg import sql

        target = database_name(self.database, name)
        existing = self._exists(target)
        if existing and not force:
            raise StateError(
                f"snapshot '{name}' of database '{self.database}' already exists",
                hint=f"pass --force to overwrite it, `devenv snapshot rm {name}` first, or choose another name.",
            )
        if not self._exists(self.database):
            raise StateError(f"database '{self.database}' does not exist: nothing to snapshot",
                             hint=f"run `devenv up -p {self.janitor.stack.profile}` first.")
        # Built under a scratch name that `sweep` drops if this process dies half-way, then
        # renamed: the snapshot appears whole or not at all.
        scratch = f"{self.database}__snapshot__building_{os.getpid()}"
        self.say(f"snapshot {name}: copying {self.database} (sessions held for the moment it takes)...")

        def build() -> None:
            self.janitor.drop(scratch)
            self.janitor.copy_live(self.database, scratch)
            ident = sql.Identifier(scratch)
            comment = json.dumps({"kind": _COMMENT_KIND, "name": name, "source": self.database,
                                  "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")})
            self._admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(comment)))
            # A template nobody can connect to: nothing changes it, and it can always be cloned.
            self._admin.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(ident))
            if existing:
                self.janitor.drop(target)
            self._admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident, sql.Identifier(target)))

        try:
            self._sql(f"save snapshot '{name}'", build)
        except BaseException:
            self._quietly_drop(scratch)
            raise
        return self.get(name)

    def restore(self, name: str) -> Snapshot:
        """Make the working database a copy of snapshot `name` (the snapshot stays)."""
        snapshot = self.get(name)
        self.say(f"snapshot {name}: restoring {self.database} from {snapshot.database}...")
        self._sql(f"restore snapshot '{name}'", lambda: self.janitor.clone(
            self.database, snapshot.database, method=self.janitor.method_for(snapshot.database)))
        return snapshot

    def remove(self, name: str) -> Snapshot:
        """Drop snapshot `name`."""
        snapshot = self.get(name)
        self._sql(f"remove snapshot '{name}'", lambda: self.janitor.drop(snapshot.database))
        return snapshot

    # ---- helpers -------------------------------------------------------------------------

    def _exists(self, datname: str) -> bool:
        return self._sql("look up a database", lambda: self._admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (datname,)).fetchone()) is not None

    def _quietly_drop(self, datname: str) -> None:
        try:
            self.janitor.drop(datname)
        except Exception:  # the connection may be what failed; `sweep` drops it later
            pass

    def _sql(self, what: str, action: Callable[[], Any]) -> Any:
        """Run `action`, turning a PostgreSQL error into a StateError that says what failed."""
        import psycopg

        try:
            return action()
        except psycopg.errors.ObjectInUse as exc:
            raise StateError(
                f"could not {what}: {_reason(exc)}",
                hint="a client kept reconnecting directly to the database; stop it (or retry) and run again.",
            ) from exc
        except psycopg.Error as exc:
            raise StateError(
                f"could not {what}: {_reason(exc)}",
                hint=f"the working database is unchanged; check `devenv status -p {self.janitor.stack.profile}` "
                "and the postgres log (`devenv logs postgres`).",
            ) from exc


def _created_at(comment: str | None) -> datetime | None:
    try:
        data = json.loads(comment or "")
        return datetime.fromisoformat(data["created_at"]) if data.get("kind") == _COMMENT_KIND else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _reason(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return (primary or str(exc)).strip()
