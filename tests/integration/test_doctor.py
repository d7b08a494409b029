"""`devenv doctor` and `devenv status`'s monitoring view against real servers, once per runtime.

Doctor passes on a healthy stack, catches settings changed by hand on the running servers
(Postgres ALTER SYSTEM, PgBouncer SET; Redis refuses CONFIG SET to REDIS_URL's user) and names a program holding one of
the stack's ports; status --json reports connections, pools, Redis memory and slow queries.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import psycopg
import pytest


def doctor(proj: Any, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run `devenv doctor --json` on the project's runtime: (exit code, report, text output)."""
    proc = proj.devenv("doctor", "--runtime", proj.runtime, "--json", *args, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    text = proj.devenv("doctor", "--runtime", proj.runtime, *args, check=False).stdout
    return proc.returncode, json.loads(proc.stdout), text


def by_status(report: dict[str, Any], status: str) -> list[dict[str, str]]:
    return [check for check in report["checks"] if check["status"] == status]


def admin_console(proj: Any) -> psycopg.Connection:
    pgb = proj.stack().pgbouncer
    return psycopg.connect(host="127.0.0.1", port=pgb.port, dbname="pgbouncer", user=pgb.admin_user,
                           password=pgb.admin_password, autocommit=True)


def test_doctor_passes_on_a_healthy_stack(running: Any) -> None:
    proj = running("dev")
    code, report, text = doctor(proj)
    assert code == 0, text
    assert report["ok"] is True and not by_status(report, "FAIL"), text
    names = {check["name"]: check for check in report["checks"]}
    for service in ("postgres", "pgbouncer", "redis"):
        assert names[f"health {service}"]["status"] == "ok", text
        assert names[f"settings {service}"]["status"] == "ok", text
        port = getattr(proj.stack(), service).port
        assert names[f"port {port}"]["status"] == "ok" and "this stack" in names[f"port {port}"]["detail"], text
    assert {"docker", "disk data", "disk cache", "binary psql", "binary pg_dump"} <= set(names)
    # The text form: one `ok|warn|FAIL  <check>: <detail>` line per check.
    lines = text.splitlines()
    assert len(lines) == len(report["checks"])
    assert all(line.split("  ", 1)[0].strip() in ("ok", "warn", "FAIL") for line in lines), text


def test_doctor_finds_settings_changed_on_the_running_servers(project: Any) -> None:
    project.devenv("up")
    assert doctor(project)[0] == 0
    with project.admin_connect(autocommit=True) as conn:  # ALTER SYSTEM is a superuser's
        conn.execute("ALTER SYSTEM SET work_mem = '8MB'")
        conn.execute("SELECT pg_reload_conf()")
    code, report, text = doctor(project)
    assert code != 0, text
    (drift,) = [c for c in by_status(report, "FAIL") if "work_mem" in c["name"]]
    assert "expected 4MB" in drift["detail"] and "actual 8MB" in drift["detail"], drift
    assert "FAIL  setting postgres.work_mem: expected 4MB" in text
    # The application role may not see where a value comes from; doctor asks as devenv's admin.
    assert "ALTER SYSTEM RESET work_mem" in drift["detail"], drift

    # PgBouncer and Redis changed at runtime are caught the same way.
    with admin_console(project) as conn:
        assert conn.pgconn.exec_(b"SET default_pool_size = 10").status == 1  # PGRES_COMMAND_OK
    # Redis: REDIS_URL's user may not CONFIG SET (as on ElastiCache), so what drifts there is
    # devenv.yaml changed since `up`: caught by the same check.
    import redis

    with pytest.raises(redis.exceptions.ResponseError, match="no permissions"):
        project.redis().config_set("maxmemory-policy", "noeviction")
    config = project.root / "devenv.yaml"
    original = config.read_text()
    config.write_text(original.replace("maxmemory-policy:           {default: allkeys-lru}",
                                       "maxmemory-policy:           {default: noeviction}"))
    code, report, text = doctor(project)
    failed = {c["name"]: c["detail"] for c in by_status(report, "FAIL")}
    assert "expected 20" in failed["setting pgbouncer.default_pool_size"] and "actual 10" in failed[
        "setting pgbouncer.default_pool_size"], text
    assert "expected noeviction" in failed["setting redis.maxmemory-policy"], text
    assert "actual allkeys-lru" in failed["setting redis.maxmemory-policy"], text

    # Undone by hand, doctor is content again.
    with project.admin_connect(autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET work_mem")
        conn.execute("SELECT pg_reload_conf()")
    with admin_console(project) as conn:
        conn.pgconn.exec_(b"SET default_pool_size = 20")
    config.write_text(original)
    code, report, text = doctor(project)
    assert code == 0, text


def test_doctor_names_a_port_held_by_another_process(project: Any) -> None:
    port = project.stack().redis.port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        code, report, text = doctor(project)
    assert code != 0, text
    (check,) = [c for c in by_status(report, "FAIL") if c["name"] == f"port {port}"]
    assert f"pid {os.getpid()}" in check["detail"], check  # this test's own process holds it
    assert "not by this stack" in check["detail"] and "DEVENV_REDIS_PORT" in check["detail"], check
    assert f"FAIL  port {port}: held by pid {os.getpid()}" in text
    assert [c["name"] for c in by_status(report, "FAIL")] == [f"port {port}"], text  # nothing else is wrong


def test_status_json_has_the_monitoring_view(running: Any) -> None:
    proj = running("dev")
    stack = proj.stack()
    with proj.connect(autocommit=True) as conn:  # dev logs statements over 1000 ms
        conn.execute("SELECT pg_sleep(1.1)")
    with proj.connect(pooled=True, autocommit=True) as conn:  # a client through PgBouncer opens its pool
        conn.execute("SELECT 1")
        proc = proj.devenv("status", "--json", check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [row["health"] for row in report["services"]] == ["healthy"] * 3
    view = report["monitoring"]

    connections = view["connections"]
    assert connections["max_connections"] == 20
    assert connections["readiness_threshold"] == stack.postgres.readiness_limit == 18
    assert 1 <= connections["in_use"] <= 20  # at least PgBouncer's server connection
    assert connections["ready"] is True

    (pool,) = [p for p in view["pools"]["pools"] if p["database"] == stack.pgbouncer.database]
    assert pool["cl_active"] >= 1 and pool["cl_waiting"] == 0 and pool["server_connections"] >= 1
    assert view["pools"]["default_pool_size"] == 20

    memory = view["redis_memory"]
    assert memory["maxmemory"] == 256 << 20
    assert 0 < memory["used_memory"] < memory["maxmemory"]
    assert memory["alert_percent"] == 80 and memory["alert"] is False

    slow = view["slow_queries"]
    assert slow["threshold_ms"] == 1000
    assert slow["count"] >= 1
    sleeps = [q for q in slow["recent"] if "pg_sleep(1.1)" in q["statement"]]
    assert sleeps and sleeps[-1]["duration_ms"] >= 1100, slow
    assert view["alerts"] == []

    text = proj.devenv("status").stdout.splitlines()
    assert [line.split()[0] for line in text[:3]] == ["postgres", "pgbouncer", "redis"]  # unchanged lines
    assert any(line.startswith("connections") and "max_connections 20" in line for line in text), text
    assert any("pg_sleep(1.1)" in line for line in text), text


def _shape(value: Any) -> Any:
    """A JSON value's keys and types, values left out (Redis memory and pid counts move between runs)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def test_status_loads_no_driver_nor_click_and_says_what_click_s_status_says(running: Any) -> None:
    """`devenv status` asks every server over devenv's own clients (pgwire, RESP) through the door
    and is read without click (devenv.cli.entry): psycopg's import alone cost more than the
    servers' answers, click's a third of the rest. The click command prints the same."""
    proj = running("dev")
    proj.env["PYTHONPROFILEIMPORTTIME"] = "1"  # python -X importtime
    try:
        plain = proj.devenv("status")
        plain_json = proj.devenv("status", "--json")
    finally:
        del proj.env["PYTHONPROFILEIMPORTTIME"]
    for proc in (plain, plain_json):
        imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert {"devenv.status", "devenv.clients.pgwire", "devenv.clients.resp"} <= imported, "no import trace to read"
        # docker: the SDK (and requests, urllib3) only where the stack runs on an engine.
        heavy = {"psycopg", "click", "redis"} | ({"docker", "requests"} if proj.runtime == "native" else set())
        loaded = heavy & {name.split(".")[0] for name in imported}
        assert not loaded, sorted(loaded)
        if proj.runtime == "native":  # what only `up` needs (devenv.runtime.native imports it there)
            up_only = {"devenv.render", "devenv.runtime.discovery", "devenv.runtime.serverenv", "devenv.certs",
                       "devenv.config.pgcatalog"}  # (pgcatalog: the profile's slow-query threshold, when not asked)
            assert not up_only & imported, sorted(up_only & imported)
        assert not [line for line in proc.stderr.splitlines() if not line.startswith("import time:")], proc.stderr
    # `--debug status` is left to click: the same lines, the same JSON fields and types.
    parsed = proj.devenv("--debug", "status", "--runtime", proj.runtime)
    parsed_json = json.loads(proj.devenv("--debug", "status", "--runtime", proj.runtime, "--json").stdout)
    plain_lines = plain.stdout.splitlines()
    changing = ("memory ", "connections ")  # Redis's used_memory, and sessions of other tests' clients
    assert [line for line in plain_lines if not line.startswith(changing)] == \
        [line for line in parsed.stdout.splitlines() if not line.startswith(changing)]
    report = json.loads(plain_json.stdout)
    assert _shape(report) == _shape(parsed_json)
    assert report["services"] == parsed_json["services"] and report["steps"] == parsed_json["steps"]
    connections = report["monitoring"]["connections"]
    assert {key: type(value) for key, value in connections.items()} == {
        "in_use": int, "active": int, "max_connections": int, "readiness_threshold": int, "ready": bool,
        "log_min_duration_statement_ms": int}


def test_status_asks_postgres_in_one_admin_session(running: Any) -> None:
    """The health check and the connections count share one admin session on `postgres` (and the
    pauses, the health check and the pools one console session): each login forks a backend and
    runs SCRAM, and nine of them were half of `status`'s time. Counted by Postgres itself."""
    import time

    proj = running("dev")
    stack = proj.stack()

    def sessions() -> int:  # sessions opened on the `postgres` database so far (asked from another)
        with proj.admin_connect(stack.postgres.database, autocommit=True) as conn:
            return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = 'postgres'").fetchone()[0]

    before = sessions()
    assert proj.devenv("status").returncode == 0
    deadline = time.monotonic() + 5
    while sessions() == before and time.monotonic() < deadline:  # counted when each backend reports
        time.sleep(0.05)
    time.sleep(0.3)  # a second session, had there been one, reports by now
    assert sessions() - before == 1


@pytest.mark.parametrize("how", ["plain", "click"])
def test_status_to_a_reader_that_left_exits_1_saying_nothing(running: Any, how: str) -> None:
    """`devenv status | head -1`: the reader gone, both ways exit 1 with nothing on stderr (click's
    rule), never "internal error: BrokenPipeError"."""
    import subprocess
    import sys

    proj = running("dev")
    read, write = os.pipe()
    os.close(read)  # the reader has left before status writes a line
    first = ["--debug"] if how == "click" else []
    try:
        proc = subprocess.run([sys.executable, "-m", "devenv", *first, "status", "-p", "dev", "--runtime", proj.runtime],
                              cwd=proj.root, env=proj.env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
