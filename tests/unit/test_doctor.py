"""doctor and status's monitoring view, the parts that need no server: base units, drift verdicts,
port verdicts, the slow-query log parser, RESP replies, formatting, the Docker probe.

tests/integration/test_doctor.py runs them against real servers.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from devenv import doctor, status
from devenv.config import pgcatalog
from devenv.doctor import FAIL, OK, WARN, Check
from devenv.runtime.base import ServiceState

# ---- pgcatalog: values in the unit pg_settings reports ------------------------------------------


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("shared_buffers", "128MB", 16384.0),  # 8kB pages
    ("shared_buffers", "16384", 16384.0),  # a plain number is already in base units
    ("work_mem", "4MB", 4096.0),  # kB
    ("maintenance_work_mem", "1GB", 1048576.0),
    ("log_min_duration_statement", "1s", 1000.0),  # ms
    ("log_min_duration_statement", "500ms", 500.0),
    ("log_min_duration_statement", "-1", -1.0),
    ("checkpoint_timeout", "5min", 300.0),  # s
    ("wal_level", "logical", "logical"),  # not a number: unchanged
    ("ssl", "on", "on"),
    ("no_such_setting", "4MB", "4MB"),
])
def test_base_units(name: str, value: str, expected: float | str) -> None:
    assert pgcatalog.base_units(name, value, 16) == expected


def test_base_units_rejects_a_unit_the_setting_cannot_take() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        pgcatalog.base_units("max_connections", "20MB", 16)


@pytest.mark.parametrize(("name", "expected", "reported", "same"), [
    ("work_mem", "4MB", "4096", True),
    ("work_mem", "4MB", "8192", False),
    ("work_mem", "4096kB", "4096", True),
    ("shared_buffers", "128MB", "16384", True),
    ("log_min_duration_statement", "1000", "1000", True),
    ("log_min_duration_statement", "1s", "1000", True),
    ("log_min_duration_statement", "1000", "500", False),
    ("ssl", "off", "off", True),
    ("fsync", "off", "on", False),
    ("fsync", "false", "off", True),
    ("wal_level", "logical", "logical", True),
    ("wal_level", "logical", "replica", False),
    ("synchronous_commit", "off", "off", True),
    ("checkpoint_completion_target", "0.9", "0.9", True),
])
def test_same_setting(name: str, expected: str, reported: str, same: bool) -> None:
    assert pgcatalog.same_setting(name, expected, reported, 16) is same


# ---- drift verdicts ------------------------------------------------------------------------------


def _row(setting: str, shown: str, source: str = "configuration file", sourcefile: str = "/x/postgresql.conf",
         pending: bool = False) -> tuple[str, str, str, str, bool]:
    return (setting, shown, source, sourcefile, pending)


def test_postgres_drift_names_the_setting_expected_actual_and_the_undo() -> None:
    wanted = {"work_mem": "4MB", "shared_buffers": "128MB", "wal_level": "logical"}
    rows = {
        "work_mem": _row("8192", "8MB", sourcefile="/data/postgresql.auto.conf"),
        "shared_buffers": _row("16384", "128MB"),
        "wal_level": _row("logical", "logical"),
    }
    checks = doctor.compare_postgres_settings("dev", wanted, rows, 16)
    assert [c.status for c in checks] == [FAIL]
    (check,) = checks
    assert check.name == "setting postgres.work_mem"
    assert "expected 4MB" in check.detail and "actual 8MB" in check.detail
    assert "ALTER SYSTEM RESET work_mem" in check.detail


def test_postgres_without_drift_is_one_ok_line() -> None:
    rows = {"work_mem": _row("4096", "4MB"), "ssl": _row("off", "off")}
    checks = doctor.compare_postgres_settings("dev", {"work_mem": "4MB", "ssl": "off"}, rows, 16)
    assert checks == [Check("settings postgres", OK, "all 2 settings as devenv.yaml's dev column")]


def test_postgres_drift_reports_pending_restart_and_unknown_settings() -> None:
    rows = {"shared_buffers": _row("16384", "128MB", pending=True)}
    checks = doctor.compare_postgres_settings("dev", {"shared_buffers": "128MB", "gone": "1"}, rows, 16)
    statuses = {c.name: c.status for c in checks}
    assert statuses == {"setting postgres.shared_buffers": WARN, "setting postgres.gone": FAIL}


def test_redis_and_pgbouncer_values_compare_by_meaning() -> None:
    wanted = {"maxmemory": "256mb", "maxmemory-policy": "allkeys-lru", "appendonly": "no"}
    reported = {"maxmemory": "268435456", "maxmemory-policy": "noeviction"}
    checks = doctor.compare_named_settings("redis", "dev", wanted, reported, "CONFIG GET")
    assert [(c.name, c.status) for c in checks] == [
        ("setting redis.maxmemory-policy", FAIL), ("setting redis.appendonly", WARN)]
    assert "expected allkeys-lru" in checks[0].detail and "actual noeviction" in checks[0].detail
    ok = doctor.compare_named_settings("pgbouncer", "dev", {"pool_mode": "transaction", "default_pool_size": "20"},
                                       {"pool_mode": "transaction", "default_pool_size": "20"}, "SHOW CONFIG")
    assert [c.status for c in ok] == [OK]


@pytest.mark.parametrize(("text", "size"), [
    ("256mb", 256 << 20), ("1gb", 1 << 30), ("1g", 10**9), ("100", 100), ("64KB", 64 << 10), ("lots", None), ("1tb", None),
])
def test_redis_bytes(text: str, size: int | None) -> None:
    assert doctor.redis_bytes(text) == size


# ---- ports -------------------------------------------------------------------------------------


def _state(service: str, running: bool, pid: int | None = None) -> ServiceState:
    return ServiceState(service, running, 6379, pid)


def test_port_free_and_stack_down_is_ok() -> None:
    check = doctor.classify_port("redis", 6379, True, None, _state("redis", False), "native")
    assert check == Check("port 6379", OK, "free for redis")


def test_port_held_by_another_program_names_port_and_holder() -> None:
    check = doctor.classify_port("redis", 6379, False, "pid 4242 (nc)", _state("redis", False), "native")
    assert check.status == FAIL
    assert check.name == "port 6379"
    assert "pid 4242 (nc)" in check.detail and "DEVENV_REDIS_PORT" in check.detail


def test_port_held_by_this_stack() -> None:
    own = doctor.classify_port("redis", 6379, False, "pid 77 (redis-server)", _state("redis", True, 77), "native")
    assert own.status == OK and "this stack's redis (pid 77)" in own.detail
    docker = doctor.classify_port("redis", 6379, False, "pid 900 (docker-proxy)", _state("redis", True, 5000), "docker")
    assert docker.status == OK and "published by Docker" in docker.detail


def test_port_held_by_someone_else_while_the_stack_runs() -> None:
    check = doctor.classify_port("redis", 6379, False, "pid 4242 (nc)", _state("redis", True, 77), "native")
    assert check.status == FAIL and "pid 4242 (nc)" in check.detail


def test_port_free_while_the_service_runs_is_a_warning() -> None:
    assert doctor.classify_port("redis", 6379, True, None, _state("redis", True, 77), "native").status == WARN


# ---- formatting --------------------------------------------------------------------------------


def test_format_checks_one_line_each_and_failed() -> None:
    checks = [Check("docker", OK, "no engine"), Check("disk cache", WARN, "512.0 MiB free"),
              Check("setting postgres.work_mem", FAIL, "expected 4MB, actual 8MB")]
    assert doctor.format_checks(checks) == [
        "ok    docker: no engine",
        "warn  disk cache: 512.0 MiB free",
        "FAIL  setting postgres.work_mem: expected 4MB, actual 8MB",
    ]
    assert doctor.failed(checks)
    assert not doctor.failed(checks[:2])
    assert json.loads(json.dumps([c.to_json() for c in checks]))[2]["status"] == "FAIL"


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


@pytest.mark.parametrize(("output", "version"), [
    ("PgBouncer 1.18.0\nlibevent 2.1.12-stable\n", "1.18.0"),
    ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", "7.0.15"),
    ("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", "15.18"),
    ("OpenSSL 3.0.19 27 Jan 2026 (Library: OpenSSL 3.0.19 27 Jan 2026)", "3.0.19"),
    ("", None),
])
def test_parse_version(output: str, version: str | None) -> None:
    assert doctor.parse_version(output) == version


# ---- the Docker engine probe ---------------------------------------------------------------------

_NO_ENGINE_PROBE = """
import json, sys
from pathlib import Path
from devenv import doctor
auto = doctor.docker_check({"HOME": "/nonexistent"}, "auto", sockets=[Path("/nonexistent/docker.sock")])
asked = doctor.docker_check({"HOME": "/nonexistent"}, "docker", sockets=[Path("/nonexistent/docker.sock")])
heavy = sorted({"docker", "psycopg", "redis"} & {name.split(".")[0] for name in sys.modules})
print(json.dumps({"auto": auto.to_json(), "asked": asked.to_json(), "heavy": heavy}))
"""


def test_no_engine_is_decided_without_the_docker_sdk() -> None:
    result = subprocess.run([sys.executable, "-c", _NO_ENGINE_PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == [], "doctor imported a client library just to find no engine"
    assert report["auto"]["status"] == OK and "/nonexistent/docker.sock" in report["auto"]["detail"]
    assert report["asked"]["status"] == FAIL  # --runtime docker without an engine


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[Path]:
    """A unix socket answering every request like the engine's /_ping."""
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                seen.append(conn.recv(4096))
                conn.sendall(b"HTTP/1.1 200 OK\r\nApi-Version: 1.47\r\nServer: Docker/27.3.1 (linux)\r\n"
                             b"Content-Length: 2\r\nContent-Type: text/plain\r\n\r\nOK")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    server.close()
    assert all(request.startswith(b"GET /_ping ") for request in seen), seen


def test_a_socket_is_pinged_over_raw_http(fake_engine: Path) -> None:
    check = doctor.docker_check({"DOCKER_HOST": f"unix://{fake_engine}"}, "auto")
    assert check == Check("docker", OK, f"engine at unix://{fake_engine} (from DOCKER_HOST) answers /_ping "
                          "(Docker/27.3.1 (linux), API 1.47)")


def test_a_socket_nobody_answers(tmp_path: Path) -> None:
    dead = tmp_path / "docker.sock"
    dead.touch()  # a stale socket file: the engine is gone
    check = doctor.docker_check({"HOME": "/nonexistent"}, "auto", sockets=[dead])
    assert check.status == WARN and "does not answer" in check.detail and "native" in check.detail
    assert doctor.docker_check({"HOME": "/nonexistent"}, "docker", sockets=[dead]).status == FAIL
