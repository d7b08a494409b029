"""The door: every session devenv opens to Postgres, PgBouncer's admin console or Redis opens here.

Two Postgres drivers sit behind it. devenv.clients.pgwire, devenv's own, serves short admin
work (health checks, the cold `up`'s seed check, the password, `devenv reset`'s in-place
restore, status and doctor): importing psycopg costs 150-250 ms on a small machine, more than
a Postgres start or a reset. psycopg serves seeding, clones and what the Python API hands users.
Redis is spoken in RESP (devenv.clients.resp) by devenv itself, and through redis-py for users.

Where a server lives (the stack's host: 127.0.0.1 or a remote engine's, its ports, its
credentials) is decided here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devenv.errors import HealthCheckError

# How long heal_pool waits for PgBouncer's next login to a database to succeed.
HEAL_TIMEOUT = 5.0

if TYPE_CHECKING:
    import psycopg
    import redis as redis_module

    from devenv.clients import pgwire, resp
    from devenv.clients.pgbouncer import Console
    from devenv.config.stack import Stack

HOST = "127.0.0.1"  # every port a stack publishes is bound here, unless a remote engine publishes them (Stack.host)
# devenv's superuser sessions resolve names in the system catalogue only: a database the
# application role owns may hold its functions and operators in public (or set search_path on
# the database), which a superuser's query must never run.
ADMIN_OPTIONS = "-c search_path=pg_catalog,pg_temp"


def _role(stack: "Stack", admin: bool, pooled: bool) -> tuple[str, str]:
    """(user, password) of the application role, or with `admin` of devenv's own superuser."""
    pg = stack.postgres
    if not admin:
        return pg.user, pg.password
    if pooled:
        raise ValueError("the admin role never goes through PgBouncer: only the application role is pooled")
    return pg.admin_user, pg.admin_password


def _no_pgbouncer(stack: "Stack") -> None:
    if not stack.has_pgbouncer:
        raise ValueError("an existing server (--devenv-url) has no PgBouncer: connect directly")


def postgres(stack: "Stack", dbname: str | None = None, *, pooled: bool = False, admin: bool = False,
             socket_dir: str | None = None, password: str | None = None, user: str | None = None,
             timeout: float = 30.0, query_timeout: float | None = None,
             application_name: str = "devenv") -> "pgwire.Connection":
    """A pgwire session as the application role: direct, or through PgBouncer (`pooled`); with
    `admin`, as devenv's own superuser (direct only; search_path pinned to the catalogue).

    `dbname` defaults to the application database. `socket_dir` connects over the server's
    unix socket (the native runtime's trust login before a password is set, with `password`
    "", as `user` when given: an older devenv's cluster has no admin role yet). Over TCP, `user`
    only with its own `password` (a cluster restored from the cache: its one-time login). Connection
    failures are raised as the driver's (pgwire.PgError, OSError): callers probing a server
    that may not be up decide what a failure means.
    """
    from devenv.clients import pgwire

    if pooled:
        _no_pgbouncer(stack)
    pg, pgb = stack.postgres, stack.pgbouncer
    role, secret = _role(stack, admin, pooled)
    if user is not None and socket_dir is None and not password:
        raise ValueError("another user only over the trusted unix socket, or with its own password")
    role, secret = user or role, secret if password is None else password
    options = ADMIN_OPTIONS if admin or user is not None else ""
    if pooled:
        return pgwire.Connection(stack.host, pgb.port, role, secret, dbname or pgb.database, ssl=pg.ssl,
                                 timeout=timeout, query_timeout=query_timeout, application_name=application_name)
    server = stack.server
    tls: bool | str = (pg.ssl and socket_dir is None) if server is None else server.tls
    return pgwire.Connection(socket_dir or stack.host, pg.port, role, secret, dbname or pg.database,
                             ssl=tls, timeout=timeout, query_timeout=query_timeout,
                             application_name=application_name, options=options,
                             verify=server.sslmode if server and server.sslmode.startswith("verify") else "",
                             root_cert=server.sslrootcert if server else "",
                             scram_only=user is not None and socket_dir is None)  # a one-time login's password


def psycopg_postgres(stack: "Stack", dbname: str | None = None, *, pooled: bool = False, admin: bool = False,
                     durable: bool = False, explain: bool = False, application_name: str | None = "devenv",
                     **kwargs: Any) -> "psycopg.Connection[Any]":
    """A psycopg connection as the application role: direct, or through PgBouncer (`pooled`);
    with `admin`, as devenv's own superuser (direct only; search_path pinned to the catalogue).

    `durable`: devenv's own commits (template, database renames, the seed ledger) must outlive
    a killed server even where the profile turns synchronous_commit off (ci): an async commit
    lost to a SIGKILL once left the database under its scratch name, swept as litter. With
    fsync off as well this costs a write(), not a disk flush.
    `explain`: a failure to connect is raised as HealthCheckError naming the address and what
    to run, for devenv's commands; without it psycopg's own error (for the API's users).
    `application_name` labels devenv's own sessions (None for the API's users). Other keyword
    arguments go to psycopg.connect.
    """
    import psycopg

    if pooled:
        _no_pgbouncer(stack)
    pg, pgb = stack.postgres, stack.pgbouncer
    role, secret = _role(stack, admin, pooled)
    port, database = (pgb.port, dbname or pgb.database) if pooled else (pg.port, dbname or pg.database)
    host = stack.host
    params: dict[str, Any] = {
        "host": host, "port": port, "dbname": database, "user": role, "password": secret,
        # A server that is not there refuses at once; the timeout only bounds a live one that is
        # slow to answer, and a loaded CI machine took over 5 s (Docker's port proxy).
        "connect_timeout": 30,
    }
    if application_name:  # devenv's own session
        params["application_name"] = application_name
        # Names and text as str in every database: an SQL_ASCII one (initdb --locale=C without
        # --encoding) would otherwise give bytes, which the template's snapshots cannot name.
        params["client_encoding"] = "UTF8"
    # With ssl on, TLS is required on TCP by Postgres and PgBouncer alike (pg_hba's hostssl,
    # client_tls_sslmode): the same sslmode both ways.
    params["sslmode"] = "require" if pg.ssl else "prefer"
    if stack.server is not None:  # an existing server: the URL's sslmode (and CA)
        params["sslmode"] = stack.server.sslmode
        if stack.server.sslrootcert:
            params["sslrootcert"] = stack.server.sslrootcert
    options = [ADMIN_OPTIONS] if admin else []
    if durable:
        options.append("-c synchronous_commit=on")
    if options:
        params["options"] = " ".join(options)
    try:
        return psycopg.connect(**{**params, **kwargs})
    except psycopg.OperationalError as exc:
        if not explain:
            raise
        where = f"PgBouncer at {host}:{port}" if pooled else f"PostgreSQL at {host}:{port}"
        hint = (f"is the stack up? Run `devenv up -p {stack.profile}` (or check `devenv status -p {stack.profile}`)."
                if stack.server is None else
                f"check the server given by --devenv-url / devenv_url (as user {role}; the password comes "
                "from the URL or PGPASSWORD).")
        raise HealthCheckError(
            f"cannot connect to {where} (database {database}): {failure_reason(exc)}", hint=hint,
        ) from exc


def pgbouncer_admin(stack: "Stack", *, timeout: float = 30.0, query_timeout: float | None = None,
                    explain: bool = False) -> "Console":
    """PgBouncer's admin console (the `pgbouncer` pseudo-database) as its admin user.

    `explain`: an unreachable console is raised as HealthCheckError saying what to run.
    """
    from devenv.clients import pgwire
    from devenv.clients.pgbouncer import Console

    _no_pgbouncer(stack)
    pgb = stack.pgbouncer
    try:
        return Console(pgwire.Connection(stack.host, pgb.port, pgb.admin_user, pgb.admin_password, "pgbouncer",
                                         ssl=stack.postgres.ssl, timeout=timeout, query_timeout=query_timeout, application_name="devenv"),
                       stack.profile, stack.state_dir, heal=lambda dbname: heal_pool(stack, dbname))
    except (pgwire.PgError, OSError) as exc:
        if not explain:
            raise
        raise HealthCheckError(
            f"cannot reach PgBouncer's admin console at {stack.host}:{pgb.port}: {exc}",
            hint=f"check `devenv status -p {stack.profile}` and `devenv logs pgbouncer -p {stack.profile}`; "
                 f"`devenv up -p {stack.profile}` restarts what is down.",
        ) from exc


def heal_pool(stack: "Stack", dbname: str, timeout: float = HEAL_TIMEOUT) -> bool:
    """Return once a new pooled session to `dbname` works again, after a PAUSE or RECONNECT of
    devenv's closed a server login of PgBouncer's in progress (True; False past `timeout`).

    PgBouncer counts the closed login as a failed one and then refuses every new client of the
    pool while it has no server ("server login has been failing, try again later
    (server_login_retry)"), until a login succeeds; each refused client makes it try again once
    server_login_retry (0.1 s in devenv's pgbouncer.ini) has passed. Here devenv is that client,
    so that the test or command after a reset never is. Any other answer ends the wait: not
    this pool's closed login, and not for this function to judge.
    """
    import time

    from devenv.clients import pgwire

    deadline = time.monotonic() + timeout
    while True:
        try:
            with postgres(stack, dbname, pooled=True, timeout=timeout) as conn:
                conn.query("SELECT 1")
            return True
        except pgwire.PgError as exc:
            # PgBouncer refuses with that message, or closes before the client has read it.
            if "server_login_retry" not in str(exc) and not isinstance(exc, pgwire.ServerClosedError):
                return True
        except OSError:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def redis(stack: "Stack", db: int = 0, *, timeout: float = 2.0) -> "resp.Connection":
    """A RESP session to the stack's Redis, authenticated and on index `db`.

    A refused AUTH or SELECT raises resp.ReplyError naming the command.
    """
    from devenv.clients import resp

    conn = resp.Connection(_redis_host(stack), stack.redis.port, timeout=timeout)
    try:
        # An existing Redis may have no password (--devenv-redis-url without one).
        commands = ([["AUTH", stack.redis.password]] if stack.redis.password or stack.server is None else []) \
            + ([["SELECT", str(db)]] if db else [])
        for command, reply in zip(commands, conn.call(*commands)):
            if reply != "OK":
                raise resp.ReplyError(f"{command[0]} answered {reply!r}" if not isinstance(reply, Exception)
                                      else f"{command[0]} refused: {reply}")
    except BaseException:
        conn.close()
        raise
    return conn


def redis_py(stack: "Stack", db: int = 0) -> "redis_module.Redis":
    """A redis-py client on one index of the stack's Redis (for the API's users)."""
    import redis as redis_module

    return redis_module.Redis(host=_redis_host(stack), port=stack.redis.port, db=db,
                              password=stack.redis.password or None, decode_responses=True)


def _redis_host(stack: "Stack") -> str:
    """Where the stack's Redis listens; an existing server's only if one was given."""
    from devenv.errors import ConfigError

    if stack.server is None:
        return stack.host
    if not stack.server.redis_host:
        raise ConfigError("no Redis: the tests run on an existing server (--devenv-url) and no Redis was given",
                          hint="pass --devenv-redis-url redis://HOST:PORT (or set devenv_redis_url in the ini "
                               "file, or DEVENV_REDIS_URL).")
    return stack.server.redis_host


def ports_answer(ports: list[int], timeout: float = 0.2, host: object = HOST) -> bool:
    """Whether something accepts TCP connections on every one of `ports` of `host` (no session,
    no login; 127.0.0.1 for a host that is not a string): the no-op `up`'s look at a recorded stack."""
    import socket

    host = host if isinstance(host, str) and host else HOST
    for port in ports:
        try:
            with socket.create_connection((host.encode(), port), timeout=timeout):  # bytes: no idna codec import
                pass
        except OSError:
            return False
    return True


def failure_reason(exc: BaseException) -> str:
    """The last line of a driver's connection error: libpq's reason comes after the address."""
    return (str(exc).strip().splitlines() or ["no answer"])[-1]
