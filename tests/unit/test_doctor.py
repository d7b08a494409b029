"""doctor, the parts that need no server: base units, drift verdicts,
port verdicts, the slow-query log parser, RESP replies, formatting, the Docker probe.

tests/integration/test_doctor.py runs them against real servers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from devenv import doctor
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


def test_a_port_that_may_move_is_a_warning_naming_the_other_checkouts_stack() -> None:
    held = "the devenv stack of /src/review (profile dev, docker)"
    check = doctor.classify_port("redis", 6379, False, held, _state("redis", False), "native", pinned=False)
    assert check.status == WARN and held in check.detail and "takes the next free port" in check.detail


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
