"""Health checks through real clients, knowing nothing about how the services were started.

Each check talks to 127.0.0.1 on the ports of the Stack: Postgres liveness (`SELECT 1`) and
readiness (CON-003's connection threshold), a real query through PgBouncer with the
application's credentials plus `SHOW VERSION` on its admin console, and Redis `PING`.
`wait_until_healthy` polls them about every 100 ms until a deadline; while a service's port
still refuses connections it is watched every 10 ms with a bare TCP connect instead, so a
server that comes up is probed within ~10 ms of listening rather than up to 100 ms later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from devenv.errors import HealthCheckError
from devenv.stack import Stack

if TYPE_CHECKING:
    from devenv import pgwire

POLL_INTERVAL = 0.1
PORT_INTERVAL = 0.01  # a refused TCP connect costs microseconds: cheap to watch closely


@dataclass(frozen=True)
class Check:
    """One probe: returns on success, raises with the reason on failure."""

    service: str
    name: str
    probe: Callable[[], None]
    port: int | None = None  # the 127.0.0.1 port it talks to: watched while it refuses


def _pg_connect(stack: Stack, dbname: str, port: int, user: str, password: str, ssl: bool = False):  # type: ignore[no-untyped-def]
    """A psycopg connection for doctor's richer queries (the checks themselves use _session)."""
    import psycopg

    return psycopg.connect(
        host="127.0.0.1", port=port, dbname=dbname, user=user, password=password,
        sslmode="require" if ssl else "prefer", connect_timeout=2, autocommit=True,
        application_name="devenv-health",
    )


def _session(port: int, user: str, password: str, dbname: str, ssl: bool = False) -> "pgwire.Connection":
    # The checks' few one-line queries need no driver: psycopg's import alone takes longer
    # than a Postgres start (see devenv.pgwire).
    from devenv import pgwire

    return pgwire.Connection("127.0.0.1", port, user, password, dbname, ssl=ssl, timeout=2.0,
                             application_name="devenv-health")


def postgres_checks(stack: Stack, dbname: str = "postgres") -> list[Check]:
    """Liveness `SELECT 1` and readiness: non-idle connections below 90% of max_connections."""
    pg = stack.postgres

    def probe() -> None:
        with _session(pg.port, pg.user, pg.password, dbname, pg.ssl) as conn:
            conn.query("SELECT 1")
            ready = conn.scalar(
                f"SELECT count(*) < {int(pg.readiness_limit)} FROM pg_stat_activity WHERE state != 'idle'")
            if ready != "t":
                raise RuntimeError(f"not ready: {pg.readiness_limit} or more active connections")

    return [Check("postgres", "SELECT 1 + readiness", probe, pg.port)]


def pgbouncer_checks(stack: Stack) -> list[Check]:
    """A real query through the pool as the application, and SHOW VERSION on the admin console."""
    pg, pgb = stack.postgres, stack.pgbouncer

    def admin() -> None:
        with _session(pgb.port, pgb.admin_user, pgb.admin_password, "pgbouncer") as conn:
            if not conn.query("SHOW VERSION"):
                raise RuntimeError("SHOW VERSION returned no row")

    def pooled() -> None:
        with _session(pgb.port, pg.user, pg.password, pgb.database) as conn:
            conn.query("SELECT 1")

    return [Check("pgbouncer", "SHOW VERSION (admin console)", admin, pgb.port),
            Check("pgbouncer", "SELECT 1 through the pool", pooled, pgb.port)]


def redis_checks(stack: Stack) -> list[Check]:
    """AUTH with the password, then PING answered exactly PONG.

    Spoken in RESP over a plain socket: importing redis-py costs more than a whole healthy
    Redis start, and `up` waits on this.
    """
    def probe() -> None:
        from devenv import resp

        replies = resp.exchange(stack.redis.port, [["AUTH", stack.redis.password], ["PING"]])
        if replies[0] != "+OK":
            raise RuntimeError(f"AUTH answered {replies[0]!r}")
        if replies[1] != "+PONG":
            raise RuntimeError(f"PING answered {replies[1]!r}, not PONG")

    return [Check("redis", "AUTH + PING", probe, stack.redis.port)]


def stack_checks(stack: Stack) -> dict[str, list[Check]]:
    """Every check of the stack, by service."""
    return {
        "postgres": postgres_checks(stack),
        "pgbouncer": pgbouncer_checks(stack),
        "redis": redis_checks(stack),
    }


def check_once(checks: list[Check]) -> str | None:
    """Run checks once; None when all pass, else the first failure as text."""
    for check in checks:
        try:
            check.probe()
        except Exception as exc:  # any failure is a reason to report, never to crash
            return f"{check.name}: {_one_line(exc)}"
    return None


def wait_until_healthy(
    checks: dict[str, list[Check]],
    timeout: float,
    progress: Callable[[str], None],
    gone: Callable[[str], str | None] = lambda service: None,
    log_tail: Callable[[str], str] = lambda service: "",
    on_healthy: Callable[[str], None] = lambda service: None,
    depends_on: dict[str, str] | None = None,
) -> dict[str, float]:
    """Poll every service's checks until all pass; return seconds to healthy per service.

    `gone(service)` reports a server that exited (fail at once rather than wait out the
    deadline); `on_healthy(service)` runs once when a service first passes (e.g. create the
    database before PgBouncer's pooled check needs it). A service in `depends_on` is probed
    only once its dependency is healthy: a pooled query sent while Postgres is still starting
    makes PgBouncer wait out its login retry. On failure raises HealthCheckError naming the
    check, its last error and the service's log tail.
    """
    depends_on = {"pgbouncer": "postgres"} if depends_on is None else depends_on
    start = time.monotonic()
    deadline = start + timeout
    # Dependencies first: PgBouncer is probed in the very round Postgres turns healthy.
    pending = {service: checks[service] for service in sorted(checks, key=lambda s: s in depends_on)}
    healthy: dict[str, float] = {}
    last_error: dict[str, str] = {}
    while pending:
        for service in list(pending):
            if depends_on.get(service) in pending:
                last_error[service] = f"waiting for {depends_on[service]}"
                continue
            error = check_once(pending[service])
            if error is None:
                healthy[service] = time.monotonic() - start
                del pending[service]
                progress(f"{service:<10} healthy in {healthy[service]:.2f}s")
                on_healthy(service)
                continue
            last_error[service] = error
            reason = gone(service)
            if reason:
                raise HealthCheckError(
                    f"{service} {reason} before it became healthy (last check: {error})",
                    hint=f"see its log: `devenv logs {service}`; the last lines are above.",
                    log_tail=_format_tail(service, log_tail(service)),
                )
        if not pending:
            break
        if time.monotonic() >= deadline:
            service = next(iter(pending))
            raise HealthCheckError(
                f"{service} not healthy after {timeout:.0f}s: {last_error.get(service, 'no answer')}",
                hint="raise --timeout if the machine is slow, or read `devenv logs " + service + "`.",
                log_tail=_format_tail(service, log_tail(service)),
            )
        ports = {check.port for service in pending if depends_on.get(service) not in pending
                 for check in pending[service] if check.port is not None}
        _pause(sorted(ports), min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
    return healthy


def _pause(ports: list[int], interval: float) -> None:
    """Wait `interval` before the next round, or less as soon as a port that refused accepts."""
    end = time.monotonic() + interval
    refusing = [port for port in ports if not _accepts(port)]
    while refusing and time.monotonic() + PORT_INTERVAL < end:
        time.sleep(PORT_INTERVAL)
        if any(_accepts(port) for port in refusing):
            return
    time.sleep(max(0.0, end - time.monotonic()))


def _accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (connect, then close at once)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _format_tail(service: str, tail: str) -> str:
    if not tail.strip():
        return ""
    return f"--- last lines of the {service} log ---\n{tail.rstrip()}\n---"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
