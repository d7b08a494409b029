"""The cluster's two roles: devenv's own superuser and the application's role, which is not one.

`stack.postgres.admin_user` (devenv_admin) is the cluster's bootstrap superuser: devenv's
cluster-level work (creating, cloning, renaming and dropping databases, event triggers, base
backups, passwords) logs in as it through devenv.clients.connect (`admin=True`), with its
search_path pinned to the catalogue. `stack.postgres.user` is what URLs, the API, the pytest
plugin and `devenv psql` hand out: LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION
NOBYPASSRLS, a member of no role (so none of pg_execute_server_program, pg_read_server_files,
pg_write_server_files, pg_signal_backend...: nothing that reaches the OS), the owner of its
databases and of every object in them. CREATEDB because the API and the pytest plugin create
per-worker databases; SET on session_replication_role because devenv's in-place reset
(`devenv.restore`, run as the owner of the tables) reloads rows without firing triggers.

Work inside the application's databases (seeding, snapshots of tables, in-place restores)
runs as the application role, never as the superuser: a superuser's INSERT into a table the
application owns runs the application's triggers and index functions with superuser rights.

An older devenv made the application role the bootstrap superuser, which cannot be demoted:
`up` migrates such a cluster in place (rename_bootstrap, then ensure_roles hands over).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pathlib import Path

    from devenv.clients import pgwire
    from devenv.config.stack import Stack

APP_ATTRIBUTES = "LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
# A superuser of the moment, made by the old bootstrap role to rename it (no session may rename
# its own role); dropped by the next step, or by the next `up` after a kill.
MIGRATING_ROLE = "devenv_migrating"
# A cached Docker cluster's one-time login (a superuser with a password only the cache entry
# holds): a cold `up` from the cache sets this checkout's passwords as it over the published
# port, then drops it (take_over_restored). Made and dropped in the saving cluster around the save.
RESTORE_ROLE = "devenv_restore"
BOOTSTRAP_OID = 10
FIRST_NORMAL_OID = 16384  # objects below are the system's own
MIGRATED_NOTE = ("postgres: migrated this cluster from an older devenv: '{app}' is no longer a superuser; "
                 "devenv's own superuser is now '{admin}' (its password in .devenv/secrets.json), and '{app}' "
                 "owns its databases and their objects")


def set_passwords(conn: "pgwire.Connection", stack: "Stack") -> None:
    """On a session of the admin role: both roles get this checkout's passwords (as the SCRAM
    secrets PgBouncer's userlist holds), kept out of the server log."""
    from devenv.clients import pgwire

    pg = stack.postgres
    conn.query("SET log_statement = 'none'")  # one statement per message: the SET first
    conn.query(f"ALTER ROLE {pgwire.identifier(pg.admin_user)} PASSWORD {pgwire.literal(pg.admin_password_secret)}")
    if conn.query(f"SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {pgwire.literal(pg.user)}"):
        conn.query(f"ALTER ROLE {pgwire.identifier(pg.user)} PASSWORD {pgwire.literal(pg.password_secret)}")
    conn.query(f"DROP ROLE IF EXISTS {pgwire.identifier(MIGRATING_ROLE)}, {pgwire.identifier(RESTORE_ROLE)}")


def add_restore_login(conn: "pgwire.Connection", password: str, state_dir: "Path") -> None:
    """On a session of the admin role: the one-time login RESTORE_ROLE with `password` (sent as
    its SCRAM secret, kept out of the server log), for the copy of the cluster about to be cached.

    A note in `state_dir` says so until drop_restore_login: should this process die in between,
    the next `up` (the no-op one included) drops the login from the live cluster (ensure_roles)."""
    from devenv.clients import pgwire
    from devenv.state import restore_login_note

    restore_login_note(state_dir).touch(mode=0o600)
    role = pgwire.identifier(RESTORE_ROLE)
    conn.query("SET log_statement = 'none'")
    conn.query(f"DROP ROLE IF EXISTS {role}")
    conn.query(f"CREATE ROLE {role} SUPERUSER LOGIN PASSWORD {pgwire.literal(pgwire.scram_secret(RESTORE_ROLE, password))}")


def drop_restore_login(conn: "pgwire.Connection", state_dir: "Path") -> None:
    """On a session of the admin role: the one-time login leaves the live cluster once its copy is saved."""
    from devenv.clients import pgwire
    from devenv.state import restore_login_note

    conn.query(f"DROP ROLE IF EXISTS {pgwire.identifier(RESTORE_ROLE)}")
    restore_login_note(state_dir).unlink(missing_ok=True)


def take_over_restored(stack: "Stack", password: str, timeout: float, alive: Callable[[], bool]) -> bool:
    """A cluster restored from the cache, as its first session, over the server's published port:
    logged in as RESTORE_ROLE with the cache entry's `password`, both roles get this checkout's
    passwords (set_passwords, out of the server log) and the one-time login is dropped.

    Retried while the server starts. False, with nothing changed, when the login is refused (an
    archive without it, or not this archive's: the caller falls back to the unix socket), when
    the server does not answer within `timeout`, or when `alive()` says its container stopped.
    """
    import time

    from devenv.clients import connect, pgwire

    deadline = time.monotonic() + timeout
    checked = time.monotonic()
    while True:
        try:
            conn = connect.postgres(stack, "postgres", user=RESTORE_ROLE, password=password, timeout=2.0)
            break
        except pgwire.ServerClosedError:
            pass  # not listening yet: the engine's port proxy accepted, then closed
        except pgwire.PgError as exc:
            if exc.sqlstate != "57P03":  # not "the database system is starting up": refused
                return False
        except OSError:
            pass  # not listening yet
        now = time.monotonic()
        if now > deadline:
            return False
        if now - checked > 1.0:  # a server that exited never answers: say so without waiting out the timeout
            checked = now
            if not alive():
                return False
        time.sleep(0.01)
    with conn:
        try:
            conn.query("SET log_statement = 'none'")
            # No session may drop its own login role: the rest of the session is the admin role's.
            conn.query(f"SET SESSION AUTHORIZATION {pgwire.identifier(stack.postgres.admin_user)}")
            set_passwords(conn, stack)  # drops RESTORE_ROLE too
        except pgwire.PgError:
            return False  # e.g. no admin role (an older layout): the socket's way migrates it
    return True


def set_passwords_over_socket(stack: "Stack", socket_dir: str,
                              give_up: Callable[[BaseException], "Exception | None"]) -> bool:
    """The native runtime's way: set_passwords in an admin session over the server's unix socket
    (trusted), retried while the server starts until `give_up(error)` returns the error to
    raise. An older devenv's cluster is first migrated (rename_bootstrap): True then.

    Over pgwire, not psycopg: a start from the cache needs no database driver at all.
    """
    import time

    from devenv.clients import connect, pgwire

    def open_as(user: str) -> "pgwire.Connection":
        return connect.postgres(stack, "postgres", socket_dir=socket_dir, password="", user=user, timeout=5.0)

    migrated = False
    while True:
        try:
            conn = connect.postgres(stack, "postgres", admin=True, socket_dir=socket_dir, password="", timeout=2.0)
            break
        except (pgwire.PgError, OSError) as exc:
            if isinstance(exc, pgwire.PgError) and exc.sqlstate == "28000" and "does not exist" in str(exc) \
                    and not migrated:
                rename_bootstrap(open_as, stack)  # an older devenv's cluster: no admin role yet
                migrated = True
                continue
            error = give_up(exc)
            if error is not None:
                raise error from exc
            time.sleep(0.01)
    with conn:
        set_passwords(conn, stack)
    return migrated


def rename_bootstrap(open_as: Callable[[str], "pgwire.Connection"], stack: "Stack") -> None:
    """An older devenv's cluster (the application role is the bootstrap superuser): rename that
    role to the admin role's name, through a superuser of the moment. `open_as(user)` opens a
    trusted session (the unix socket) to the `postgres` database as `user`.

    The application role is made afresh, and handed its databases, by ensure_roles.
    """
    from devenv.clients import pgwire

    pg = stack.postgres
    with open_as(pg.user) as conn:
        conn.query("SET log_statement = 'none'")
        conn.query(f"DROP ROLE IF EXISTS {pgwire.identifier(MIGRATING_ROLE)}")
        conn.query(f"CREATE ROLE {pgwire.identifier(MIGRATING_ROLE)} SUPERUSER LOGIN")
    with open_as(MIGRATING_ROLE) as conn:
        # No session of the role may remain (PgBouncer's, an application's): end them, then rename.
        for _ in range(50):
            conn.query(f"SELECT pg_catalog.pg_terminate_backend(pid, 2000) FROM pg_catalog.pg_stat_activity "
                       f"WHERE usename = {pgwire.literal(pg.user)}")
            try:
                conn.query(f"ALTER ROLE {pgwire.identifier(pg.user)} RENAME TO {pgwire.identifier(pg.admin_user)}")
                break
            except pgwire.PgError as exc:
                if exc.sqlstate != "55006":  # object_in_use: a session came back meanwhile
                    raise
        else:
            raise pgwire.PgError(f"sessions of {pg.user} kept coming back: cannot rename it", "55006")


def ensure_roles(stack: "Stack") -> list[str]:
    """As the admin role: the application role exists with its attributes, its password, no
    role memberships and the SET grant; databases the bootstrap role still owns (an older
    devenv's, or the image's POSTGRES_DB) are handed over with everything in them. Returns
    what was done worth saying (the migration's note); idempotent and cheap when all is in place.
    """
    from devenv.clients import connect, pgwire

    pg = stack.postgres
    app, lit = pgwire.identifier(pg.user), pgwire.literal
    notes: list[str] = []
    with connect.postgres(stack, "postgres", admin=True, query_timeout=60.0) as conn:
        conn.query("SET log_statement = 'none'")
        row = conn.query(
            "SELECT rolsuper OR rolcreaterole OR rolreplication OR rolbypassrls OR NOT rolcanlogin OR NOT rolcreatedb, "
            f"rolpassword IS NOT DISTINCT FROM {lit(pg.password_secret)} FROM pg_catalog.pg_authid WHERE rolname = {lit(pg.user)}")
        if not row:
            conn.query(f"CREATE ROLE {app} {APP_ATTRIBUTES} PASSWORD {lit(pg.password_secret)}")
        else:
            if row[0][0] == "t":
                conn.query(f"ALTER ROLE {app} {APP_ATTRIBUTES}")
            if row[0][1] != "t":
                conn.query(f"ALTER ROLE {app} PASSWORD {lit(pg.password_secret)}")
        for (role,) in conn.query(f"SELECT roleid::pg_catalog.regrole::text FROM pg_catalog.pg_auth_members "
                                  f"WHERE member = {lit(pg.user)}::pg_catalog.regrole"):
            conn.query(f"REVOKE {role} FROM {app}")  # regrole's text is quoted as an identifier already
        conn.query(f"GRANT SET ON PARAMETER session_replication_role TO {app}")
        conn.query(f"DROP ROLE IF EXISTS {pgwire.identifier(MIGRATING_ROLE)}, {pgwire.identifier(RESTORE_ROLE)}")
        handed = conn.query(
            # devenv's templates and snapshots (IS_TEMPLATE) take no connections: for a moment they
            # do, then never again (also after a handover killed half-way).
            "SELECT datname, datistemplate OR NOT datallowconn FROM pg_catalog.pg_database "
            f"WHERE datdba = {BOOTSTRAP_OID} AND datname NOT IN ('postgres', 'template0', 'template1') ORDER BY 1")
        for datname, closed in handed:
            database = pgwire.identifier(datname)
            if closed == "t":
                conn.query(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
            try:
                with connect.postgres(stack, datname, admin=True, query_timeout=300.0) as inside:
                    moved = inside.query(HAND_OVER.replace("@APP@", lit(pg.user)))
            finally:
                if closed == "t":
                    conn.query(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
            conn.query(f"ALTER DATABASE {database} OWNER TO {app}")  # last: the mark that it is done
            if moved and moved[0][0] not in (None, "0"):
                notes.append(datname)
    return notes


# Run as the admin role inside one database: every object the bootstrap role owns there that
# the system did not make (oid >= 16384) goes to the application role, except what only a
# superuser may own (event triggers and the functions they call) and extension members.
# Sequences owned by a column follow their table, indexes and row types too.
HAND_OVER = """
DO $devenv$
DECLARE
    statement text;
    moved bigint := 0;
BEGIN
    FOR statement IN
        SELECT pg_catalog.format('ALTER SCHEMA %I OWNER TO %I', nspname, @APP@) FROM pg_catalog.pg_namespace
         WHERE nspowner = 10 AND oid >= 16384
        UNION ALL
        SELECT pg_catalog.format('ALTER %s %s OWNER TO %I',
                   CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                                  WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.oid::pg_catalog.regclass, @APP@)
          FROM pg_catalog.pg_class c
         WHERE c.relowner = 10 AND c.oid >= 16384 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                           AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))
        UNION ALL
        SELECT pg_catalog.format('ALTER ROUTINE %s OWNER TO %I', p.oid::pg_catalog.regprocedure, @APP@)
          FROM pg_catalog.pg_proc p
         WHERE p.proowner = 10 AND p.oid >= 16384
           AND p.oid NOT IN (SELECT evtfoid FROM pg_catalog.pg_event_trigger)
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                           AND d.objid = p.oid AND d.deptype = 'e')
        UNION ALL
        SELECT pg_catalog.format('ALTER %s %s OWNER TO %I', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                                 t.oid::pg_catalog.regtype, @APP@)
          FROM pg_catalog.pg_type t
         WHERE t.typowner = 10 AND t.oid >= 16384 AND t.typtype IN ('c', 'd', 'e', 'r')
           AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass
                           AND d.objid = t.oid AND d.deptype = 'e')
        UNION ALL
        SELECT pg_catalog.format('ALTER COLLATION %I.%I OWNER TO %I', n.nspname, c.collname, @APP@)
          FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace
         WHERE c.collowner = 10 AND c.oid >= 16384
        UNION ALL
        SELECT pg_catalog.format('ALTER TEXT SEARCH CONFIGURATION %s OWNER TO %I', c.oid::pg_catalog.regconfig, @APP@)
          FROM pg_catalog.pg_ts_config c WHERE c.cfgowner = 10 AND c.oid >= 16384
        UNION ALL
        SELECT pg_catalog.format('ALTER TEXT SEARCH DICTIONARY %s OWNER TO %I', d.oid::pg_catalog.regdictionary, @APP@)
          FROM pg_catalog.pg_ts_dict d WHERE d.dictowner = 10 AND d.oid >= 16384
        UNION ALL
        SELECT pg_catalog.format('ALTER STATISTICS %I.%I OWNER TO %I', n.nspname, s.stxname, @APP@)
          FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace
         WHERE s.stxowner = 10
        UNION ALL
        SELECT pg_catalog.format('ALTER LARGE OBJECT %s OWNER TO %I', m.oid, @APP@)
          FROM pg_catalog.pg_largeobject_metadata m WHERE m.lomowner = 10
    LOOP
        EXECUTE statement;
        moved := moved + 1;
    END LOOP;
    PERFORM pg_catalog.set_config('devenv.moved', moved::text, false);
END $devenv$;
SELECT pg_catalog.current_setting('devenv.moved');
"""
