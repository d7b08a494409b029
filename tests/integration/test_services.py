"""The running servers, asked through real clients: settings, pooling, seed data, LISTEN/NOTIFY."""

from __future__ import annotations

import re
import select
import shutil
import subprocess
import threading
import time

import pytest

from devenv.config import pgcatalog

PROFILES = ["dev", "prod"]


@pytest.mark.every_engine
@pytest.mark.parametrize("profile", PROFILES)
def test_every_postgres_setting_is_what_the_server_reports(running, profile: str) -> None:
    proj = running(profile)
    stack = proj.stack()
    with proj.connect() as conn:
        major = conn.info.server_version // 10000  # the server that runs (natively maybe not the image's)
        reported = {row[0]: row[1] for row in conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(stack.postgres.settings),))}
    assert set(reported) == set(stack.postgres.settings)
    for name, value in stack.postgres.settings.items():
        want = pgcatalog.base_units(name, value, major)  # the unit pg_settings.setting uses
        got = reported[name]
        if isinstance(want, float):
            assert float(got) == want, f"{profile}: {name} is {got}, devenv.yaml says {value}"
        else:
            assert got == want, f"{profile}: {name} is {got!r}, devenv.yaml says {value!r}"


@pytest.mark.parametrize("profile", PROFILES)
def test_seed_doc_values_per_profile(running, profile: str) -> None:
    """CON-003's Development vs Production table, checked on the live server."""
    expected = {
        "dev": {"max_connections": "20", "shared_buffers": "128MB", "log_statement": "all", "ssl": "off"},
        "prod": {"max_connections": "100", "shared_buffers": "256MB", "log_statement": "ddl", "ssl": "on"},
    }[profile]
    shared = {"work_mem": "4MB", "maintenance_work_mem": "64MB", "wal_level": "logical", "log_min_duration_statement": "1s"}
    with running(profile).connect() as conn:
        for name, value in {**expected, **shared}.items():
            assert conn.execute(f"SHOW {name}").fetchone()[0] == value, name


@pytest.mark.parametrize("profile", PROFILES)
def test_pgbouncer_config(running, profile: str) -> None:
    import psycopg

    proj = running(profile)
    pgb = proj.stack().pgbouncer
    with psycopg.connect(host="127.0.0.1", port=pgb.port, dbname="pgbouncer", user=pgb.admin_user,
                         password=pgb.admin_password, autocommit=True) as conn:
        result = conn.pgconn.exec_(b"SHOW CONFIG")  # the admin console speaks simple protocol only
        rows = {result.get_value(i, 0).decode(): (result.get_value(i, 1) or b"").decode() for i in range(result.ntuples)}
    assert rows["pool_mode"] == "transaction"
    assert rows["default_pool_size"] == "20"
    assert rows["max_client_conn"] == "100"
    assert rows["listen_port"] == str(proj.listen_port("pgbouncer"))  # pgb.port itself natively


@pytest.mark.parametrize("profile", PROFILES)
def test_redis_config(running, profile: str) -> None:
    client = running(profile).redis()
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
    want = {"dev": 256 << 20, "prod": 1 << 30}[profile]
    assert int(client.config_get("maxmemory")["maxmemory"]) == want
    assert client.ping() is True


def test_redis_refuses_clients_without_the_password(running) -> None:
    import redis

    port = running("dev").stack().redis.port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()


@pytest.mark.every_engine
def test_seed_answers_jsonb_and_full_text_queries(running) -> None:
    with running("dev").connect() as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 8
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
        high = conn.execute("""SELECT count(*) FROM tasks WHERE metadata @> '{"priority": "high"}'""").fetchone()[0]
        assert high == 10
        invoice = conn.execute(
            "SELECT array_agg(id::text ORDER BY id) FROM tasks "
            "WHERE to_tsvector('english', title || ' ' || coalesce(description, '')) @@ plainto_tsquery('english', 'invoice')"
        ).fetchone()[0]
        assert len(invoice) == 6
        assert "00000000-0000-4000-9000-000000000001" in invoice
        # The search can use the GIN index (the expression must match the index's).
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM tasks WHERE to_tsvector('english', title || ' ' || coalesce(description, '')) "
            "@@ plainto_tsquery('english', 'invoice')"))
        assert "tasks_search_idx" in plan


@pytest.mark.every_engine
def test_listen_on_direct_url_receives_notify_from_trigger(running) -> None:
    """LISTEN needs a session: it uses DIRECT_DATABASE_URL; the change goes through the pool."""
    proj = running("dev")
    task = "00000000-0000-4000-9000-000000000014"
    with proj.connect(autocommit=True) as listener, proj.connect(pooled=True, autocommit=True) as app:
        listener.execute("LISTEN task_changes")
        app.execute("UPDATE tasks SET status = 'in_progress' WHERE id = %s", (task,))
        try:
            received = []
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                received = list(listener.notifies(timeout=0.5, stop_after=1))
            assert received, "no notification within 5 s"
            assert received[0].channel == "task_changes"
            assert f'"id" : "{task}"' in received[0].payload or task in received[0].payload
            assert "UPDATE" in received[0].payload
        finally:
            app.execute("UPDATE tasks SET status = 'todo' WHERE id = %s", (task,))


@pytest.mark.every_engine
def test_pgbench_through_pgbouncer_with_more_clients_than_the_pool(running, tmp_path) -> None:
    """30 clients through a pool of 20: all transactions complete; Postgres never sees more than 20."""
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    proj = running("prod")  # max_connections 100 leaves room for the watcher's own connection
    stack = proj.stack()
    script = tmp_path / "taskflow.sql"
    script.write_text("SELECT count(*) FROM tasks WHERE metadata @> '{\"priority\": \"high\"}';\n"
                      "SELECT pg_sleep(0.002);\n")
    peak = {"server": 0}
    stop = threading.Event()

    def watch() -> None:
        with proj.connect(autocommit=True) as conn:
            while not stop.is_set():
                count = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()", (stack.postgres.database,)).fetchone()[0]
                peak["server"] = max(peak["server"], count)
                time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # prod requires TLS on TCP, PgBouncer included
        env = {**proj.env, "PGPASSWORD": stack.postgres.password, "PGSSLMODE": "require"}
        proc = subprocess.run(
            [pgbench, "-n", "-h", stack.host, "-p", str(stack.pgbouncer.port), "-U", stack.postgres.user,
             "-c", "30", "-j", "2", "-t", "40", "-f", str(script), stack.pgbouncer.database],
            env=env, capture_output=True, text=True, timeout=120,
        )
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", proc.stdout)
    assert processed and processed.group(1) == processed.group(2) == str(30 * 40), proc.stdout
    assert 0 < peak["server"] <= 20, f"Postgres saw {peak['server']} connections from a pool of 20"


@pytest.mark.every_engine
@pytest.mark.parametrize("profile", PROFILES)
def test_pgwire_speaks_to_postgres_and_pgbouncer(running, profile: str) -> None:
    """devenv.clients.pgwire (health checks, the cold-`up` seed check) against the real servers:
    SCRAM over TLS (prod) or plain (dev), NULLs, errors with SQLSTATE, the admin console."""
    from devenv.clients import pgwire

    proj = running(profile)
    pg, pgb, host = proj.stack().postgres, proj.stack().pgbouncer, proj.stack().host
    with proj.connect() as reference:
        major = reference.info.server_version // 10000
    with pgwire.Connection(host, pg.port, pg.user, pg.password, pg.database, ssl=pg.ssl) as conn:
        assert conn.server_major == major
        assert conn.query("SELECT 1, NULL::text, 'it''s'") == [("1", None, "it's")]
        assert conn.scalar("SELECT count(*) FROM tasks") == "40"
        assert conn.scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == ("t" if pg.ssl else "f")
        with pytest.raises(pgwire.PgError) as caught:
            conn.query("SELECT no_such_column FROM tasks")
        assert caught.value.sqlstate == "42703"
        assert conn.scalar("SELECT 2") == "2", "the session survives an error"
    with pgwire.Connection(host, pgb.port, pgb.admin_user, pgb.admin_password, "pgbouncer", ssl=pg.ssl) as conn:
        assert conn.scalar("SHOW VERSION").startswith("PgBouncer")
    with pgwire.Connection(host, pgb.port, pg.user, pg.password, pgb.database, ssl=pg.ssl) as conn:
        assert conn.scalar("SELECT current_user") == pg.user
    with pytest.raises(pgwire.PgError) as caught:
        pgwire.Connection(host, pg.port, pg.user, "wrong", pg.database, ssl=pg.ssl)
    assert caught.value.sqlstate == "28P01"


def test_prod_requires_tls_on_tcp_to_postgres_and_pgbouncer(running) -> None:
    """prod requires TLS on TCP as RDS's rds.force_ssl does: a plain session to Postgres or to
    PgBouncer (admin console included) is refused with the right password; both URLs as
    `devenv env` prints them carry sslmode=require and are encrypted end to end (PgBouncer's
    server connections too); devenv's own sessions (health, status, reset's console) still work."""
    import psycopg

    from devenv.clients import pgwire

    proj = running("prod")
    stack = proj.stack()
    pg, pgb = stack.postgres, stack.pgbouncer
    printed = dict(line.split("=", 1) for line in proj.devenv("env").stdout.split())
    for name in ("DATABASE_URL", "DIRECT_DATABASE_URL"):
        assert printed[name].endswith("?sslmode=require"), printed[name]
        with psycopg.connect(printed[name], autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use, f"{name}: the client's session is not encrypted"
            # direct: this session; pooled: PgBouncer's server connection to Postgres
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
        with pytest.raises(psycopg.OperationalError, match="no encryption|SSL required"):
            psycopg.connect(printed[name].replace("sslmode=require", "sslmode=disable")).close()
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(host="127.0.0.1", port=pgb.port, dbname="pgbouncer", user=pgb.admin_user,
                        password=pgb.admin_password, sslmode="disable").close()
    for port, user, password, dbname in ((pg.port, pg.user, pg.password, pg.database),
                                         (pgb.port, pg.user, pg.password, pgb.database),
                                         (pgb.port, pgb.admin_user, pgb.admin_password, "pgbouncer")):
        with pytest.raises(pgwire.PgError):
            pgwire.Connection("127.0.0.1", port, user, password, dbname, ssl=False).close()
    status = proj.devenv("status")
    assert status.stdout.count(" healthy ") == 3, status.stdout
    proj.devenv("reset", "--strategy", "clone")  # the admin console's PAUSE/RESUME, over TLS
    proj.devenv("reset")
    assert "nothing to do" in proj.devenv("up").stderr


def test_the_door_opens_every_kind_of_session(running) -> None:
    """devenv.clients.connect against the real servers: direct and pooled pgwire sessions,
    psycopg with durable commits, the admin console (SHOW, RECONNECT, PAUSE/RESUME), and Redis
    on an index of its own."""
    import threading
    import time

    from devenv.clients import connect

    proj = running("dev")
    stack = proj.stack()
    with connect.postgres(stack) as conn:
        assert conn.scalar("SELECT current_database()") == stack.postgres.database
    with connect.postgres(stack, pooled=True) as conn:
        assert conn.scalar("SELECT current_user") == stack.postgres.user
    with connect.psycopg_postgres(stack, "postgres", durable=True, autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    with connect.pgbouncer_admin(stack) as console:
        assert any(row["key"] == "pool_mode" for row in console.show("CONFIG"))
        assert console.command(f"RECONNECT {stack.pgbouncer.database}") is True
        # A pooled client's next query waits while the database is paused, then runs.
        answered: list[float] = []
        with console.paused(stack.pgbouncer.database, terminate=lambda: None, reopen=lambda: console):
            def query() -> None:
                with connect.postgres(stack, pooled=True, timeout=10) as pooled:
                    pooled.query("SELECT 1")
                    answered.append(time.monotonic())
            client = threading.Thread(target=query)
            client.start()
            time.sleep(0.3)
            resumed = time.monotonic()
            assert not answered, "a query ran through a paused database"
        client.join(10)
        assert answered and answered[0] >= resumed
    with connect.redis(stack, 3) as conn:
        assert conn.call(["SET", "door", "3"], ["GET", "door"]) == ["OK", "3"]
    with connect.redis(stack) as conn:
        assert conn.call(["GET", "door"]) == [None], "index 0 is not index 3"
    with connect.redis(stack, 3) as conn:
        conn.call(["DEL", "door"])


def test_redis_url_cannot_reconfigure_or_open_redis(running) -> None:
    """Whoever holds REDIS_URL (the application, its tests) uses every data command but cannot
    reconfigure Redis or its users: binding it beyond 127.0.0.1, turning protected mode off,
    clearing the password or adding a user are refused (as on ElastiCache), and Redis stays as
    devenv configured it."""
    import redis

    proj = running("dev")
    client = proj.redis()
    client.set("devenv-test-key", "1")
    assert client.get("devenv-test-key") in ("1", b"1")
    client.delete("devenv-test-key")
    for command in (("CONFIG", "SET", "bind", "0.0.0.0"), ("CONFIG", "SET", "protected-mode", "no"),
                    ("CONFIG", "SET", "requirepass", ""), ("ACL", "SETUSER", "intruder", "on", "nopass", "+@all"),
                    ("CONFIG", "REWRITE"), ("MODULE", "LOAD", "/tmp/x.so"), ("REPLICAOF", "127.0.0.1", "1")):
        with pytest.raises(redis.exceptions.ResponseError, match="no permissions|not allowed"):
            client.execute_command(*command)
    assert client.config_get("bind")["bind"] in ("127.0.0.1", "* -::*", "0.0.0.0")
    assert client.config_get("protected-mode")["protected-mode"] == "yes"
    assert client.acl_users() == ["default"]
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=proj.stack().redis.port).ping()
