"""`devenv status`'s monitoring view, the parts that need no server: alerts, the text lines, the
slow queries read from postgres logs, Redis INFO. (Against real servers: tests/integration/test_doctor.py.)"""

from __future__ import annotations

import io

from devenv import status


def _view(used: int = 1 << 20, limit: int = 256 << 20, waiting: int = 0) -> dict:
    view = {
        "connections": {"in_use": 3, "active": 1, "max_connections": 20, "readiness_threshold": 18, "ready": True},
        "pools": {"pools": [{"database": "taskflow", "user": "taskflow", "pool_mode": "transaction", "cl_active": 2,
                             "cl_waiting": waiting, "sv_active": 1, "sv_idle": 4, "sv_used": 0, "server_connections": 5,
                             "maxwait_s": 0}], "default_pool_size": 20},
        "redis_memory": {"used_memory": used, "maxmemory": limit, "percent": round(100 * used / limit, 1),
                         "alert_percent": 80, "alert": 100 * used / limit > 80, "maxmemory_policy": "allkeys-lru"},
        "slow_queries": {"threshold_ms": 1000, "count": 1, "recent": [
            {"duration_ms": 1101.2, "statement": "SELECT pg_sleep(1.1)", "time": "2025-11-22 01:00:00.000 UTC", "pid": 9}]},
    }
    view["alerts"] = status.alerts(view)
    return view


def test_format_monitoring() -> None:
    lines = status.format_monitoring(_view())
    assert lines[0] == "connections   3 of max_connections 20 in use, 1 active (readiness threshold 18)"
    assert lines[1] == ("pool          taskflow/taskflow (transaction): clients 2 active, 0 waiting; "
                        "servers 5 of 20 (1 active, 4 idle)")
    assert lines[2] == "memory        Redis used_memory 1.0 MiB of 256.0 MiB (0.4%, alert above 80%)"
    assert lines[3] == "slow queries  1 logged over 1000 ms (log_min_duration_statement); the latest:"
    assert lines[4].endswith("1101 ms  SELECT pg_sleep(1.1)")
    assert not any(line.startswith("warn") for line in lines)


def test_monitoring_warns_above_the_80_percent_redis_alert_and_on_waiting_clients() -> None:
    view = _view(used=220 << 20, waiting=3)
    warnings = [line for line in status.format_monitoring(view) if line.startswith("warn")]
    assert len(warnings) == 2
    assert "85.9% of maxmemory, above the 80% alert threshold" in warnings[0]
    assert "3 clients waiting" in warnings[1]
    assert not status.alerts(_view(used=200 << 20))  # 78%: under the threshold


def test_format_monitoring_shows_probe_errors_instead_of_failing() -> None:
    lines = status.format_monitoring({"redis_memory": {"error": "ConnectionRefusedError: refused"}, "alerts": []})
    assert lines == ["memory        unknown (ConnectionRefusedError: refused)"]


# ---- the slow-query log ------------------------------------------------------------------------

DEV_LOG = """\
2025-11-22 01:00:00.000 UTC [100] LOG:  database system is ready to accept connections
2025-11-22 01:00:01.000 UTC [201] LOG:  statement: SELECT pg_sleep(1.1)
2025-11-22 01:00:01.500 UTC [202] LOG:  statement: SELECT 1
2025-11-22 01:00:02.101 UTC [201] LOG:  duration: 1101.234 ms
2025-11-22 01:00:03.000 UTC [203] LOG:  execute <unnamed>: SELECT pg_sleep($1)
2025-11-22 01:00:03.000 UTC [203] DETAIL:  parameters: $1 = '1.5'
2025-11-22 01:00:04.500 UTC [203] LOG:  duration: 1500.0 ms
2025-11-22 01:00:05.000 UTC [204] LOG:  statement: SELECT count(*)
	  FROM tasks
	  WHERE pg_sleep(2) IS NOT NULL
2025-11-22 01:00:07.000 UTC [204] LOG:  duration: 2000.5 ms
2025-11-22 01:00:08.000 UTC [205] LOG:  duration: 3.2 ms
"""

PROD_LOG = """\
2025-11-22 01:00:01.000 UTC [301] LOG:  duration: 1200.000 ms  statement: SELECT pg_sleep(1.2)
2025-11-22 01:00:02.000 UTC [302] LOG:  duration: 1300.000 ms  execute <unnamed>: SELECT pg_sleep($1)
2025-11-22 01:00:02.000 UTC [302] DETAIL:  parameters: $1 = '1.3'
2025-11-22 01:00:03.000 UTC [303] ERROR:  canceling statement due to statement timeout
2025-11-22 01:00:03.000 UTC [303] STATEMENT:  duration: 9999 ms
2025-11-22 01:00:04.000 UTC [304] LOG:  duration: 1400.000 ms  statement: SELECT 1,
	  pg_sleep(1.4)
"""


def test_slow_queries_pair_a_bare_duration_with_the_statement_its_backend_logged() -> None:
    count, recent = status.parse_slow_queries(DEV_LOG.splitlines(), 1000)
    assert count == 3
    assert [(q.duration_ms, q.statement, q.pid) for q in recent] == [
        (1101.234, "SELECT pg_sleep(1.1)", 201),
        (1500.0, "SELECT pg_sleep($1)", 203),
        (2000.5, "SELECT count(*) FROM tasks WHERE pg_sleep(2) IS NOT NULL", 204),
    ]
    assert recent[0].time == "2025-11-22 01:00:02.101 UTC"


def test_slow_queries_with_the_statement_on_the_duration_line() -> None:
    count, recent = status.parse_slow_queries(io.StringIO(PROD_LOG), 1000)
    assert count == 3  # the ERROR's STATEMENT line is not a duration
    assert [q.statement for q in recent] == ["SELECT pg_sleep(1.2)", "SELECT pg_sleep($1)", "SELECT 1, pg_sleep(1.4)"]


def test_slow_queries_threshold_and_limit() -> None:
    assert status.parse_slow_queries(DEV_LOG.splitlines(), 1600)[0] == 1
    assert status.parse_slow_queries(DEV_LOG.splitlines(), -1) == (0, [])
    assert status.parse_slow_queries(DEV_LOG.splitlines(), None) == (0, [])
    count, recent = status.parse_slow_queries(DEV_LOG.splitlines(), 1000, keep=1)
    assert count == 3 and [q.duration_ms for q in recent] == [2000.5]


def test_slow_queries_without_a_pid_in_the_prefix() -> None:
    lines = ["LOG:  statement: SELECT pg_sleep(1)", "LOG:  duration: 1001 ms"]
    assert [q.statement for q in status.parse_slow_queries(lines, 1000)[1]] == ["SELECT pg_sleep(1)"]


# ---- RESP replies and INFO ------------------------------------------------------------------------


def test_parse_info() -> None:
    text = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:268435456\r\n\r\nmaxmemory_policy:allkeys-lru\r\n"
    fields = status.parse_info(text)
    assert fields["used_memory"] == "1048576" and fields["maxmemory_policy"] == "allkeys-lru"
    assert "# Memory" not in fields


def test_a_postgres_that_cannot_be_asked_gives_the_profile_s_slow_query_threshold() -> None:
    """The connections probe fails (nothing listens on the port): its error is shown, and the slow
    queries use log_min_duration_statement as the profile sets it (dev: 1000 ms)."""
    import socket
    from pathlib import Path

    from devenv.config.resolve import build_stack
    from devenv.config.settings import load_config

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    repo = Path(__file__).resolve().parents[2]
    stack = build_stack(load_config(repo / "devenv.yaml", {"DEVENV_POSTGRES_PORT": str(port)}), "dev")

    class Logs:  # the runtime's log lines (the only call slow_queries makes)
        def follow_logs(self, stack: object, service: str, follow: bool) -> list[str]:
            return ["2025-11-22 00:50:01.123 UTC [7] LOG:  duration: 1500.0 ms  statement: SELECT 1"]

    view = status.monitoring(stack, Logs(), {"postgres"})  # type: ignore[arg-type]
    assert "error" in view["connections"] and "Connection" in view["connections"]["error"]
    assert view["slow_queries"]["threshold_ms"] == 1000.0 and view["slow_queries"]["count"] == 1
