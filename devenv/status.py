"""The monitoring view of `devenv status`: how the running stack is doing.

The infrastructure doc's monitoring section, locally: connections in use against
max_connections and the readiness threshold, PgBouncer pools, Redis used_memory against
maxmemory with the 80% alert, and the slow queries the postgres log holds (over
log_min_duration_statement). Each service's state and health come first (`report`).

Nothing here prints: the CLI formats the results (`format_monitoring`).
"""

from __future__ import annotations

import re
from collections import deque
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ContextManager, Iterable, Iterator, Mapping

from devenv import humanize

if TYPE_CHECKING:
    from devenv.clients import pgwire
    from devenv.clients.pgbouncer import Console
    from devenv.runtime.base import Runtime
    from devenv.config.stack import Stack

# The infrastructure doc's ElastiCache alarm: "memory > 80%".
REDIS_MEMORY_ALERT_PERCENT = 80
RECENT_SLOW_QUERIES = 10
PROBE_TIMEOUT = 2.0


def report(stack: "Stack", runtime: "Runtime", *, monitor: bool = True) -> dict[str, Any]:
    """{"services": each service's state, health (a real check, once), port, pid;
    "monitoring": the monitoring view of the healthy services, None when none is up}.

    The monitoring view is asked only of services that passed their check, so `status` on a
    stopped stack stays as fast as before.
    """
    from devenv import health
    from devenv.db.pauses import paused_problem

    with Sessions(stack) as sessions:  # one admin session and one console session, each asked in turn
        checks = health.stack_checks(stack, sessions.postgres, sessions.console)
        rows = []
        for state in runtime.states(stack):
            problem = None
            if state.running:
                paused = paused_problem(stack, PROBE_TIMEOUT, sessions.console) if state.name == "pgbouncer" else None
                problem = paused or health.check_once(checks[state.name])
            rows.append({
                "service": state.name,
                "state": "running" if state.running else (state.detail or "stopped"),
                "health": ("healthy" if problem is None else "unhealthy") if state.running else "-",
                "problem": problem or "",
                "port": state.port,
                "pid": state.pid,
            })
        healthy = {row["service"] for row in rows if row["health"] == "healthy"}
        view = monitoring(stack, runtime, healthy, sessions) if monitor and healthy else None
    from devenv.db import stepstatus
    from devenv.db.stepkeys import check_inputs

    check_inputs(stack)  # a missing input or sql folder: exit 3 naming its line
    # The steps, and (Postgres up) whether the working database is at the template's key.
    steps = stepstatus.report(stack, PROBE_TIMEOUT) if "postgres" in healthy else {
        "steps": stepstatus.describe(stack), "template": None, "at_template_key": None, "behind": [], "versions": {},
        "error": "postgres is not running"}
    return {"services": rows, "monitoring": view, "steps": steps}


class Sessions:
    """The sessions `status` opens once and lends to each of its questions in turn: an admin
    session on the `postgres` database (the health check, then the connections), and PgBouncer's
    admin console (the pauses, the health check, then the pools). Each session costs a login (a
    backend forked, SCRAM, 2-10 ms here): `status` opened nine, three of them on the console; now six.

    A question that fails closes its session: the next one opens anew, as each did before.
    """

    def __init__(self, stack: "Stack") -> None:
        self.stack = stack
        self._open: dict[str, Any] = {}

    def __enter__(self) -> "Sessions":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every session opened (each once)."""
        while self._open:
            self._open.popitem()[1].close()

    def postgres(self, timeout: float) -> "Iterator[pgwire.Connection]":
        """The admin session on `postgres` (search_path pinned to the catalogue), lent."""
        from devenv.clients import connect

        return self._lend("postgres", lambda: connect.postgres(
            self.stack, "postgres", admin=True, timeout=timeout, query_timeout=timeout,
            application_name="devenv-status"))

    def console(self, timeout: float) -> "Iterator[Console]":
        """PgBouncer's admin console, lent."""
        from devenv.clients import connect

        return self._lend("console", lambda: connect.pgbouncer_admin(self.stack, timeout=timeout,
                                                                     query_timeout=timeout))

    @contextmanager
    def _lend(self, key: str, open_session: Any) -> Iterator[Any]:
        session = self._open.get(key)
        if session is None:
            session = self._open[key] = open_session()
        try:
            yield session
        except BaseException:
            # It may be mid-answer or gone: the next question opens its own.
            self._open.pop(key, None)
            session.close()
            raise


def _held(stack: "Stack", sessions: Sessions | None) -> ContextManager[Sessions]:
    """`sessions`, or else sessions of one probe's own (closed after it)."""
    return nullcontext(sessions) if sessions is not None else Sessions(stack)


def format_report(view: Mapping[str, Any]) -> list[str]:
    """What `devenv status` prints after the services: the monitoring view, then the steps."""
    from devenv.db import stepstatus

    lines = format_monitoring(view["monitoring"]) if view["monitoring"] else []
    return lines + stepstatus.format_report(dict(view["steps"]))


@dataclass(frozen=True)
class SlowQuery:
    """One statement the postgres log reports as slower than log_min_duration_statement."""

    duration_ms: float
    statement: str
    time: str = ""
    pid: int | None = None


# '%m [%p] ' (the default log_line_prefix): "2025-11-22 00:50:01.123 UTC [1234] LOG:  ..."
_LOG_MESSAGE = re.compile(r"^(?P<prefix>.*?)\b(?P<level>LOG|STATEMENT|DETAIL|HINT|ERROR|FATAL|PANIC|WARNING|NOTICE|INFO|"
                          r"DEBUG\d?|CONTEXT):\s+(?P<message>.*)$")
_LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?(?: ?[A-Z]{2,5}| ?[+-]\d\d(?::?\d\d)?)?)")
_LOG_PID = re.compile(r"\[(\d+)\]")
_DURATION = re.compile(r"^duration: (?P<ms>\d+(?:\.\d+)?) ms(?:\s+(?:statement|(?:execute|parse|bind) [^:]*|"
                       r"fastpath function call): (?P<text>.*))?$")
_STATEMENT = re.compile(r"^(?:statement|execute [^:]*): (?P<text>.*)$")


def parse_slow_queries(lines: Iterable[str], threshold_ms: float | None,
                       keep: int = RECENT_SLOW_QUERIES) -> tuple[int, list[SlowQuery]]:
    """(how many, the last `keep`) statements the log reports at or over `threshold_ms`.

    A `duration:` line carries its statement unless log_statement had already logged it (dev
    logs every statement): then the statement is the one the same backend (pid) logged last.
    Continuation lines of a multi-line statement start with a tab.
    """
    last_statement: dict[int | None, str] = {}
    recent: deque[SlowQuery] = deque(maxlen=keep)
    count = 0
    current: str | None = None  # what a continuation line extends: "statement" or "slow"
    pid: int | None = None
    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith("\t") and current:
            extra = " " + line.strip()
            if current == "statement":
                last_statement[pid] = last_statement.get(pid, "") + extra
            elif current == "slow" and recent:
                query = recent[-1]
                recent[-1] = SlowQuery(query.duration_ms, (query.statement + extra).strip(), query.time, query.pid)
            continue
        current = None
        match = _LOG_MESSAGE.match(line)
        if not match or match.group("level") != "LOG":
            continue
        prefix, message = match.group("prefix"), match.group("message")
        pid_match = _LOG_PID.search(prefix)
        pid = int(pid_match.group(1)) if pid_match else None
        duration = _DURATION.match(message)
        if duration:
            ms = float(duration.group("ms"))
            if threshold_ms is None or threshold_ms < 0 or ms < threshold_ms:
                continue  # log_duration lines, or a threshold raised since
            text = duration.group("text")
            time_match = _LOG_TIME.search(prefix)
            count += 1
            recent.append(SlowQuery(ms, text if text is not None else last_statement.get(pid, ""),
                                    time_match.group(1) if time_match else "", pid))
            current = "slow" if text is not None else None
            continue
        statement = _STATEMENT.match(message)
        if statement:
            last_statement[pid] = statement.group("text")
            current = "statement"
    return count, list(recent)


def monitoring(stack: "Stack", runtime: "Runtime", healthy: set[str], sessions: Sessions | None = None) -> dict[str, Any]:
    """The monitoring view of the services that are healthy (only those are asked).

    Keys: connections, slow_queries (Postgres), pools (PgBouncer), redis_memory (Redis), and
    alerts: one line per threshold crossed. A probe that fails gives {"error": ...} instead.
    `sessions`: the ones `report` holds (else each probe opens its own).
    """
    out: dict[str, Any] = {}
    threshold: float | None = None
    if "postgres" in healthy:
        out["connections"] = _guarded(lambda: postgres_connections(stack, sessions))
        asked = out["connections"]  # the profile's value (pgcatalog's import) only when the server was not asked
        threshold = asked["log_min_duration_statement_ms"] if "log_min_duration_statement_ms" in asked \
            else _profile_threshold(stack)
        out["slow_queries"] = _guarded(lambda: slow_queries(stack, runtime, threshold))
    if "pgbouncer" in healthy:
        out["pools"] = _guarded(lambda: pgbouncer_pools(stack, sessions))
    if "redis" in healthy:
        out["redis_memory"] = _guarded(lambda: redis_memory(stack))
    out["alerts"] = alerts(out)
    return out


def _profile_threshold(stack: "Stack") -> float | None:
    """log_min_duration_statement in ms as the profile sets it (when the server cannot be asked)."""
    from devenv.config import pgcatalog

    value = stack.postgres.settings.get("log_min_duration_statement")
    if value is None:
        return None
    number = pgcatalog.base_units("log_min_duration_statement", value, stack.postgres.major)
    return float(number) if isinstance(number, float) else None


def _guarded(probe: Any) -> dict[str, Any]:
    try:
        return dict(probe())
    except Exception as exc:  # monitoring is best effort: `status` must still print the services
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}


def postgres_connections(stack: "Stack", sessions: Sessions | None = None) -> dict[str, Any]:
    """Client connections in use (and active) against max_connections and the readiness threshold.

    Counted as the readiness check counts them (non-idle backends), leaving out this probe's own.
    """
    pg = stack.postgres
    # As devenv's admin role: the application role would not see other roles' sessions' state.
    with _held(stack, sessions) as held, held.postgres(PROBE_TIMEOUT) as conn:
        [row] = conn.query(
            "SELECT count(*) FILTER (WHERE backend_type = 'client backend'),"
            " count(*) FILTER (WHERE state != 'idle'),"
            " current_setting('max_connections')::int,"
            " (SELECT setting::int FROM pg_settings WHERE name = 'log_min_duration_statement')"
            " FROM pg_stat_activity WHERE pid != pg_backend_pid()")
    in_use, active, max_connections = (int(value or 0) for value in row[:3])
    slow_ms = int(row[3]) if row[3] is not None else None
    return {
        "in_use": in_use,
        "active": active,
        "max_connections": max_connections,
        "readiness_threshold": pg.readiness_limit,  # ready while fewer than this are active
        "ready": active + 1 < pg.readiness_limit,  # + the health check's own connection
        "log_min_duration_statement_ms": slow_ms,
    }


def slow_queries(stack: "Stack", runtime: "Runtime", threshold_ms: float | None) -> dict[str, Any]:
    """The postgres log's statements over log_min_duration_statement (through the runtime: file or container)."""
    if threshold_ms is None or threshold_ms < 0:
        return {"threshold_ms": threshold_ms, "count": 0, "recent": [], "note": "log_min_duration_statement is off"}
    count, recent = parse_slow_queries(runtime.follow_logs(stack, "postgres", False), threshold_ms)
    return {"threshold_ms": threshold_ms, "count": count, "recent": [asdict(q) for q in recent]}


def pgbouncer_pools(stack: "Stack", sessions: Sessions | None = None) -> dict[str, Any]:
    """`SHOW POOLS` on the admin console: clients active/waiting, server connections, per pool."""
    pgb = stack.pgbouncer
    with _held(stack, sessions) as held, held.console(PROBE_TIMEOUT) as console:
        rows = console.show("POOLS")
    pools = []
    for row in rows:
        if row.get("database") == "pgbouncer":  # the admin console's own pseudo-pool
            continue
        number = lambda key: int(row.get(key) or 0)  # noqa: E731
        pools.append({
            "database": row.get("database"), "user": row.get("user"), "pool_mode": row.get("pool_mode"),
            "cl_active": number("cl_active"), "cl_waiting": number("cl_waiting"),
            "sv_active": number("sv_active"), "sv_idle": number("sv_idle"), "sv_used": number("sv_used"),
            "server_connections": sum(number(k) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")),
            "maxwait_s": number("maxwait"),
        })
    return {"pools": pools, "default_pool_size": int(pgb.settings.get("default_pool_size", 20))}


def redis_memory(stack: "Stack") -> dict[str, Any]:
    """INFO memory: used_memory against maxmemory, and whether it crossed the 80% alert."""
    from devenv.clients import connect

    with connect.redis(stack, timeout=PROBE_TIMEOUT) as conn:
        (info,) = conn.call(["INFO", "memory"])
    if isinstance(info, Exception):
        raise info
    fields = parse_info(info)
    used, limit = int(fields.get("used_memory", 0)), int(fields.get("maxmemory", 0))
    percent = round(100 * used / limit, 1) if limit else None
    return {
        "used_memory": used, "maxmemory": limit, "percent": percent,
        "alert_percent": REDIS_MEMORY_ALERT_PERCENT,
        "alert": percent is not None and percent > REDIS_MEMORY_ALERT_PERCENT,
        "maxmemory_policy": fields.get("maxmemory_policy", ""),
    }


def alerts(view: Mapping[str, Any]) -> list[str]:
    """The thresholds a monitoring view crosses, as sentences."""
    out = []
    memory = view.get("redis_memory") or {}
    if memory.get("alert"):
        out.append(f"Redis used_memory is {memory['percent']}% of maxmemory, above the "
                   f"{memory['alert_percent']}% alert threshold")
    connections = view.get("connections") or {}
    if "active" in connections and not connections.get("ready", True):
        out.append(f"{connections['active']} active connections: at the readiness threshold "
                   f"({connections['readiness_threshold']})")
    for pool in (view.get("pools") or {}).get("pools", []):
        if pool["cl_waiting"]:
            out.append(f"{pool['cl_waiting']} clients waiting for a server connection in pool "
                       f"{pool['database']}/{pool['user']}")
    return out


def format_monitoring(view: Mapping[str, Any]) -> list[str]:
    """The monitoring view as text lines for `devenv status` (warn lines last)."""
    lines = []
    connections = view.get("connections")
    if connections is not None:
        if "error" in connections:
            lines.append(f"connections   unknown ({connections['error']})")
        else:
            lines.append(f"connections   {connections['in_use']} of max_connections {connections['max_connections']} in use, "
                         f"{connections['active']} active (readiness threshold {connections['readiness_threshold']})")
    pools = view.get("pools")
    if pools is not None:
        if "error" in pools:
            lines.append(f"pools         unknown ({pools['error']})")
        for pool in pools.get("pools", []):
            lines.append(f"pool          {pool['database']}/{pool['user']} ({pool['pool_mode']}): clients "
                         f"{pool['cl_active']} active, {pool['cl_waiting']} waiting; servers {pool['server_connections']} "
                         f"of {pools['default_pool_size']} ({pool['sv_active']} active, {pool['sv_idle']} idle)")
        if "error" not in pools and not pools.get("pools"):
            lines.append("pools         none yet (a pool opens with its first client)")
    memory = view.get("redis_memory")
    if memory is not None:
        if "error" in memory:
            lines.append(f"memory        unknown ({memory['error']})")
        else:
            limit = humanize.size(memory["maxmemory"]) if memory["maxmemory"] else "no maxmemory"
            share = f"{memory['percent']}%, " if memory["percent"] is not None else ""
            lines.append(f"memory        Redis used_memory {humanize.size(memory['used_memory'])} of {limit} "
                         f"({share}alert above {memory['alert_percent']}%)")
    slow = view.get("slow_queries")
    if slow is not None:
        if "error" in slow:
            lines.append(f"slow queries  unknown ({slow['error']})")
        elif slow.get("threshold_ms") is None or slow["threshold_ms"] < 0:
            lines.append("slow queries  not logged (log_min_duration_statement is off)")
        else:
            lines.append(f"slow queries  {slow['count']} logged over {_ms(slow['threshold_ms'])} "
                         f"(log_min_duration_statement){'; the latest:' if slow['recent'] else ''}")
            for query in slow["recent"]:
                when = f"{query['time']}  " if query["time"] else ""
                lines.append(f"              {when}{_ms(query['duration_ms'])}  {_shorten(query['statement'])}")
    lines += [f"warn          {alert}" for alert in view.get("alerts", [])]
    return lines


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if float(value).is_integer() or value >= 100 else f"{value:.1f} ms"


def _shorten(statement: str, width: int = 100) -> str:
    text = " ".join(statement.split()) or "(statement not in the log)"
    return text if len(text) <= width else text[: width - 1] + "…"


def parse_info(text: str) -> dict[str, str]:
    """Redis INFO text -> {field: value} ('# Memory' headers and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out
