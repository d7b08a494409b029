"""Health checks through real clients, knowing nothing about how the services were started.

Each check talks to the Stack's host (127.0.0.1, or a remote engine's) on its ports: Postgres
liveness (`SELECT 1`) and readiness (CON-003's connection threshold), a real query through
PgBouncer with the application's credentials plus `SHOW VERSION` on its admin console, and
Redis `PING`.
`wait_until_healthy` polls them about every 100 ms until a deadline; a server that is merely
not up yet (connection refused, "starting up") is asked again every 10 ms instead, so it is
found healthy within ~10 ms of being ready rather than up to 100 ms later.

A probe's first tries get a short I/O timeout (FIRST_PROBE_TIMEOUT), doubled after each
timeout up to PROBE_TIMEOUT: Docker's port proxy accepts a connection before the container
listens and then holds it silent for about a second. Each service is probed in a thread of
its own, so one held that way delays no other.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

from devenv.clients import connect
from devenv.errors import HealthCheckError
from devenv.config.stack import Stack

POLL_INTERVAL = 0.1
STARTING_INTERVAL = 0.01  # "not listening yet" / "starting up" answers cost microseconds
# `gone` is asked at most this often per service: a container engine answers it with a request
# (an inspection) where a refused probe costs microseconds.
GONE_INTERVAL = 0.1
PROBE_TIMEOUT = 2.0  # seconds for connecting, logging in and each answer
FIRST_PROBE_TIMEOUT = 0.25

# A session a caller already holds, lent to a probe for one question (`status` asks each server
# several: devenv.status.Sessions): timeout -> a context manager giving the open session.
Lender = Callable[[float], ContextManager[Any]]


@dataclass(frozen=True)
class Probe:
    """One probe: `probe(timeout)` returns on success, raises with the reason on failure."""

    service: str
    name: str
    probe: Callable[[float], None]
    after: str | None = None  # a service that must be healthy before this check is tried


def postgres_checks(stack: Stack, dbname: str = "postgres", session: Lender | None = None) -> list[Probe]:
    """Liveness `SELECT 1` and readiness: non-idle connections below 90% of max_connections.

    As devenv's admin role: on a new cluster the application role does not exist yet. `session`
    lends an admin session on `dbname` the caller holds, instead of a new one.
    """
    pg = stack.postgres

    def probe(timeout: float) -> None:
        with session(timeout) if session else connect.postgres(
                stack, dbname, admin=True, timeout=timeout, query_timeout=timeout,
                application_name="devenv-health") as conn:
            conn.query("SELECT 1")
            ready = conn.scalar(
                f"SELECT count(*) < {int(pg.readiness_limit)} FROM pg_stat_activity WHERE state != 'idle'")
            if ready != "t":
                raise RuntimeError(f"not ready: {pg.readiness_limit} or more active connections")

    return [Probe("postgres", "SELECT 1 + readiness", probe)]


def pgbouncer_checks(stack: Stack, console: Lender | None = None) -> list[Probe]:
    """A real query through the pool as the application, and SHOW VERSION on the admin console
    (`console` lends one the caller holds, instead of a new one)."""

    def admin(timeout: float) -> None:
        with console(timeout) if console else connect.pgbouncer_admin(
                stack, timeout=timeout, query_timeout=timeout) as console_session:
            if not console_session.show("VERSION"):
                raise RuntimeError("SHOW VERSION returned no row")

    def pooled(timeout: float) -> None:
        with connect.postgres(stack, pooled=True, timeout=timeout, query_timeout=timeout,
                              application_name="devenv-health") as conn:
            conn.query("SELECT 1")

    # The admin console answers without Postgres; a pooled query sent while Postgres is still
    # starting would make PgBouncer wait out its login retry.
    return [Probe("pgbouncer", "SHOW VERSION (admin console)", admin),
            Probe("pgbouncer", "SELECT 1 through the pool", pooled, after="postgres")]


def redis_checks(stack: Stack) -> list[Probe]:
    """AUTH with the password, then PING answered exactly PONG.

    Spoken in RESP over a plain socket: importing redis-py costs more than a whole healthy
    Redis start, and `up` waits on this.
    """
    def probe(timeout: float) -> None:
        with connect.redis(stack, timeout=timeout) as conn:
            [reply] = conn.call(["PING"])
        if reply != "PONG":
            raise RuntimeError(f"PING answered {str(reply) if isinstance(reply, Exception) else repr(reply)}, not PONG")

    return [Probe("redis", "AUTH + PING", probe)]


def stack_checks(stack: Stack, postgres: Lender | None = None, console: Lender | None = None) -> dict[str, list[Probe]]:
    """Every check of the stack, by service; `postgres` and `console` lend sessions the caller
    holds (an admin session on the `postgres` database, PgBouncer's admin console)."""
    return {
        "postgres": postgres_checks(stack, session=postgres),
        "pgbouncer": pgbouncer_checks(stack, console),
        "redis": redis_checks(stack),
    }


def check_once(checks: list[Probe], timeout: float = PROBE_TIMEOUT) -> str | None:
    """Run checks once; None when all pass, else the first failure as text."""
    return _run_probes(checks, timeout)[1]


def _run_probes(checks: list[Probe], timeout: float) -> tuple[list[Probe], str | None, BaseException | None]:
    """Run checks in order until one fails: (those that passed, the failure as text, its exception)."""
    passed = []
    for check in checks:
        try:
            check.probe(timeout)
        except Exception as exc:  # any failure is a reason to report, never to crash
            return passed, f"{check.name}: {_one_line(exc)}", exc
        passed.append(check)
    return passed, None, None


def _starting(exc: BaseException | None) -> bool:
    """A server that is not up yet: it refused the connection or says it is starting up
    (SQLSTATE 57P03); or a proxy in front of it (Docker's) reset or closed the connection, or
    held it silent until the probe timed out (see FIRST_PROBE_TIMEOUT).

    Refusals come before any authentication and cost well under a millisecond, and a probe
    that timed out has waited already: all are asked again after STARTING_INTERVAL rather
    than POLL_INTERVAL.
    """
    from devenv.clients.pgwire import ServerClosedError

    return (isinstance(exc, (ConnectionError, TimeoutError, ServerClosedError))
            or getattr(exc, "sqlstate", "") == "57P03")


def wait_until_healthy(
    checks: dict[str, list[Probe]],
    timeout: float,
    progress: Callable[[str], None],
    gone: Callable[[str], str | None] = lambda service: None,
    log_tail: Callable[[str], str] = lambda service: "",
    on_healthy: Callable[[str], None] = lambda service: None,
    started: Callable[[str], bool] = lambda service: True,
) -> dict[str, float]:
    """Poll every service's checks until all pass; return seconds to healthy per service.

    Services are probed side by side (a thread each), so one that hangs delays no other. A
    failing service is probed again after POLL_INTERVAL, or after STARTING_INTERVAL while it
    is merely not up yet (see _starting). A check that passed is not repeated; one with
    `after` waits until that service is healthy. `gone(service)` reports a server that exited
    (fail at once rather than wait out the deadline); `on_healthy(service)` runs once when a
    service first passes (e.g. create the database before PgBouncer's pooled check needs it);
    a service is not probed before `started(service)` (a start still in progress).
    Callbacks run in the calling thread. On failure raises HealthCheckError naming the check,
    its last error and the service's log tail.
    """
    start = time.monotonic()
    deadline = start + timeout
    pending = {service: list(group) for service, group in checks.items()}
    due = dict.fromkeys(pending, start)  # when each service is probed next
    probe_timeout = dict.fromkeys(pending, FIRST_PROBE_TIMEOUT)
    healthy: dict[str, float] = {}
    last_error: dict[str, str] = {}
    in_flight: set[str] = set()
    asked_gone: dict[str, float] = {}  # service -> when `gone` was last asked
    # Plain threads, not concurrent.futures: its import (logging) costs more than a Redis start.
    # queue.Queue, not SimpleQueue: CPython 3.11's SimpleQueue.get(timeout) retries a wait that a
    # signal interrupted with the time left, and when that is negative it waits forever.
    results: queue.Queue[tuple[str, list[Probe], str | None, BaseException | None]] = queue.Queue()

    def run(service: str, runnable: list[Probe], seconds: float) -> None:
        results.put((service, *_run_probes(runnable, seconds)))

    while pending:
        now = time.monotonic()
        for service in pending:
            runnable = [check for check in pending[service] if check.after not in pending]
            if not runnable:
                last_error[service] = f"waiting for {pending[service][0].after}"
            elif service not in in_flight and due[service] <= now and not started(service):
                last_error.setdefault(service, "still being started")
                due[service] = now + STARTING_INTERVAL
            elif service not in in_flight and due[service] <= now:
                in_flight.add(service)  # a probe in flight ends within its timeout; daemon, never joined
                threading.Thread(target=run, args=(service, runnable, probe_timeout[service]),
                                 name=f"devenv-health-{service}", daemon=True).start()
        if now >= deadline:
            service = next(iter(pending))
            raise HealthCheckError(
                f"{service} not healthy after {timeout:.0f}s: {last_error.get(service, 'no answer')}",
                hint="raise --timeout if the machine is slow, or read `devenv logs " + service + "`.",
                log_tail=_format_tail(service, log_tail(service)),
            )
        idle = [due[s] for s in pending if s not in in_flight
                and any(check.after not in pending for check in pending[s])]
        wake = min(min(idle, default=deadline), deadline)
        try:
            service, passed, error, exc = results.get(timeout=max(0.0, wake - time.monotonic()))
        except queue.Empty:
            continue
        in_flight.discard(service)
        for check in passed:
            pending[service].remove(check)
        if error is None and not pending[service]:
            healthy[service] = time.monotonic() - start
            del pending[service]
            progress(f"{service:<10} healthy in {healthy[service]:.2f}s")
            on_healthy(service)
            for waiting in pending:  # a check that waited for it is tried at once
                if any(check.after == service for check in pending[waiting]):
                    due[waiting] = time.monotonic()
            continue
        if error is None:
            continue  # the rest waits for another service
        last_error[service] = error
        if isinstance(exc, TimeoutError):
            probe_timeout[service] = min(PROBE_TIMEOUT, probe_timeout[service] * 2)
        due[service] = time.monotonic() + (STARTING_INTERVAL if _starting(exc) else POLL_INTERVAL)
        if time.monotonic() - asked_gone.get(service, -GONE_INTERVAL) < GONE_INTERVAL:
            continue
        asked_gone[service] = time.monotonic()
        reason = gone(service)
        if reason:
            raise HealthCheckError(
                f"{service} {reason} before it became healthy (last check: {error})",
                hint=f"see its log: `devenv logs {service}`; the last lines are above.",
                log_tail=_format_tail(service, log_tail(service)),
            )
    return healthy


def _format_tail(service: str, tail: str) -> str:
    if not tail.strip():
        return ""
    return f"--- last lines of the {service} log ---\n{tail.rstrip()}\n---"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
