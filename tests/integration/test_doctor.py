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
