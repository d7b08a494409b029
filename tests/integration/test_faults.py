"""Faults the next command recovers from by itself (issue 15, classes 15, 16, 17, 19): a killed
command's PgBouncer PAUSE, a lost or damaged native state.json, a port the servers cannot bind,
and pooled clients beside concurrent resets of every strategy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_lifecycle import (
    SEEDED_TASKS,
    alive,
    assert_healthy,
    cleanup,
    count,
    insert_user,
    native_dir,
    project_processes,
    refuses,
    server_pids,
    user_exists,
    wait_for,
)

SERVICES = ("postgres", "pgbouncer", "redis")


@pytest.fixture
def proj(project: Any) -> Any:
    """`project`, and afterwards no server process of it left, tracked or not."""
    yield project
    cleanup(project)


# ---- class 16: a lost or damaged native state.json ---------------------------------------------


@pytest.mark.native_only(reason="native's state.json")
@pytest.mark.parametrize("damage", ["deleted", "not-json", "wrong-shape"])
def test_a_lost_or_damaged_state_file_while_up_adopts_the_running_servers(proj: Any, damage: str) -> None:
    """Before: `up` stopped Postgres, SIGKILLed PgBouncer, then failed on its own Redis's port
    (exit 5), every time; `down` said "nothing was running" and left all three running."""
    proj.devenv("up")
    insert_user(proj)
    pids = server_pids(proj)
    state = native_dir(proj) / "state.json"
    fingerprint = proj.root / ".devenv" / proj.profile / "state.json"

    def damage_state() -> None:
        if damage == "deleted":
            state.unlink()
        elif damage == "not-json":
            state.write_text('{"postgres": {"pid": ')
        else:
            state.write_text('{"postgres": [1, 2], "pgbouncer": {"pid": "x"}, "redis": 7, "_meta": []}')
        fingerprint.write_text("[]")  # the no-op path's record too: the full `up` must run

    damage_state()
    result = proj.devenv("up", check=False)
    assert result.returncode == 0, result.stderr
    assert "adopted" in result.stderr, result.stderr
    assert server_pids(proj) == pids, "a running server of the stack was restarted or replaced"
    assert_healthy(proj)
    assert user_exists(proj)

    damage_state()
    stopped = proj.devenv("down")
    assert "stopped postgres, pgbouncer, redis" in stopped.stderr, stopped.stderr
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), 15, "the servers to stop")
    assert project_processes(proj) == []

    proj.devenv("up")
    assert user_exists(proj), "the data was not kept"
    assert count(proj, "tasks") == SEEDED_TASKS


# ---- class 17: a port the servers cannot bind; a failed `up` stops what it started -------------

BROKEN_SEED = "SELECT no_such_function();\n"


def _privileged_free_port() -> int:
    """A port below 1024 that nothing listens on (root may bind it; the servers' user may not)."""
    for port in range(1023, 900, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024")


@pytest.mark.native_only(reason="Docker publishes ports as root: any port binds")
@pytest.mark.parametrize("service", ["postgres", "redis"])
def test_a_port_the_servers_user_cannot_bind_fails_before_anything_starts(proj: Any, service: str) -> None:
    """Before: the check bound the port as root and passed; Postgres failed after initdb (exit 6),
    leaving PgBouncer and Redis running."""
    port = _privileged_free_port()
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= port:
        pytest.skip("this machine lets every user bind low ports")
    proj.env[f"DEVENV_{service.upper()}_PORT"] = str(port)
    result = proj.devenv("up", check=False)
    assert result.returncode == 3, result.stderr
    assert f"port {port} for {service}" in result.stderr and "hint:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert project_processes(proj) == [], "a server was started despite the port"
    assert "initdb" not in result.stderr, "the check must come before anything is done"


def test_a_failed_cold_up_stops_every_server_it_started(proj: Any) -> None:
    """Before: a cold `up` whose seed file failed left all three servers running."""
    (proj.root / "seeds" / "data" / "009_broken.sql").write_text(BROKEN_SEED)
    result = proj.devenv("up", check=False)
    assert result.returncode == 7, result.stderr
    assert "which this `up` had started" in result.stderr, result.stderr
    for service in SERVICES:
        assert refuses(proj.stack().__getattribute__(service).port), f"{service} still runs after the failed up"

    (proj.root / "seeds" / "data" / "009_broken.sql").unlink()
    proj.devenv("up")
    assert_healthy(proj)


def test_a_failed_up_leaves_what_ran_before_it(proj: Any) -> None:
    """Postgres stopped by hand, a broken seed file: `up` starts Postgres, the seed fails, Postgres
    is stopped again; PgBouncer and Redis, which ran before that `up`, run on untouched."""
    proj.devenv("up")
    pids = server_pids(proj)
    os.kill(pids["postgres"], signal.SIGINT)
    wait_for(lambda: not alive(pids["postgres"]), 20, "postgres to stop")
    (proj.root / "seeds" / "data" / "009_broken.sql").write_text(BROKEN_SEED)
    result = proj.devenv("up", check=False)
    assert result.returncode == 7, result.stderr
    assert "stopped postgres, which this `up` had started" in result.stderr, result.stderr
    assert refuses(proj.stack().postgres.port)
    assert alive(pids["pgbouncer"]) and alive(pids["redis"]), "a server that ran before the failed up was stopped"

    (proj.root / "seeds" / "data" / "009_broken.sql").unlink()
    proj.devenv("up")
    assert_healthy(proj)


# ---- class 15: a devenv killed inside its PgBouncer PAUSE ----------------------------------------


def _paused(proj: Any) -> list[str]:
    from devenv.clients import connect

    with connect.pgbouncer_admin(proj.stack(), timeout=5, query_timeout=5) as console:
        return _paused_on(console)


def _paused_on(console: Any) -> list[str]:
    return [row["name"] for row in console.show("DATABASES") if row.get("paused") not in (None, "0")]


def _pooled_answers(proj: Any, within: float) -> bool:
    """Whether a pooled query answers within `within` seconds (a paused database holds it)."""
    from devenv.clients import connect

    try:
        with connect.postgres(proj.stack(), pooled=True, timeout=within, query_timeout=within) as conn:
            return conn.scalar("SELECT count(*) FROM tasks") is not None
    except OSError:  # timed out
        return False


def _kill_inside_pause(proj: Any, args: list[str], point: str, attempts: int = 40) -> None:
    """Run `devenv ARGS`, freeze it at `point` ("noted": its pause note written, PAUSE not yet
    answered; "paused": PgBouncer holds the database), then SIGKILL it there."""
    notes = proj.root / ".devenv" / proj.profile / "paused"
    argv = [sys.executable, "-m", "devenv", *args, "--profile", proj.profile]
    from devenv.clients import connect

    for _ in range(attempts):
        child = subprocess.Popen(argv, cwd=proj.root, env=proj.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        caught = False
        with connect.pgbouncer_admin(proj.stack(), timeout=5, query_timeout=5) as console:
            while child.poll() is None:
                if (notes.is_dir() and any(notes.iterdir())) if point == "noted" else _paused_on(console):
                    child.send_signal(signal.SIGSTOP)
                    # Stopped just after its RESUME: another kill point, not this one (its note stays).
                    caught = point == "noted" or bool(_paused_on(console))
                    break
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
            if caught:
                return
            continue
        child.wait(timeout=60)
        assert child.returncode == 0, child.stderr.read().decode() if child.stderr else ""
    pytest.fail(f"never caught `devenv {' '.join(args)}` at {point!r} in {attempts} tries")


@pytest.mark.parametrize("command", [["snapshot", "save", "--force", "s1"], ["snapshot", "restore", "s0"],
                                     ["reset", "--strategy", "clone"]], ids=["save", "restore", "reset-clone"])
def test_a_devenv_killed_inside_its_pause_is_resumed_by_the_next_command(proj: Any, command: list[str]) -> None:
    """Before: SIGKILL inside the PAUSE left every pooled query hanging, and `up` said "nothing
    to do". Each kill point, then the next command (the no-op `up`, `reset`, `snapshot`)."""
    proj.devenv("up")
    proj.devenv("snapshot", "save", "s0")
    rounds = [("paused", ["up"]), ("noted", ["reset"]), ("paused", ["snapshot", "save", "--force", "s2"])]
    for point, next_command in rounds:
        _kill_inside_pause(proj, command, point)
        if point == "paused":
            assert _paused(proj) == ["taskflow"], "the case under test: PgBouncer holds the database"
            assert not _pooled_answers(proj, 1.0), "a pooled query should wait while paused"
            status = proj.devenv("status", "--json", check=False)
            assert "taskflow is paused by devenv pid" in status.stdout and "was killed" in status.stdout, status.stdout
            doctor = proj.devenv("doctor", check=False)
            assert "taskflow is paused by devenv pid" in doctor.stdout, doctor.stdout
        result = proj.devenv(*next_command)
        if point == "paused":
            assert "resumed pooled clients of taskflow" in result.stderr, result.stderr
        assert _paused(proj) == []
        assert _pooled_answers(proj, 5.0), f"pooled queries still wait after `devenv {' '.join(next_command)}`"
        assert not any((proj.root / ".devenv" / proj.profile / "paused").glob("*")), "a pause note was left"
    assert_healthy(proj)


@pytest.mark.parametrize("left", ["new copy", "old copy"])
def test_a_devenv_killed_between_the_renames_of_a_swap_leaves_the_database_named(proj: Any, left: str) -> None:
    """A reset killed between `taskflow` -> `taskflow__old_<pid>_<n>` and `taskflow__new_<pid>` ->
    `taskflow` left no `taskflow` (its pause note says which database and whose): the next
    command puts the new copy in place, or else the old data back, before it resumes pooled clients.
    Before: "database 'taskflow' does not exist" until the next `up` or reset."""
    proj.devenv("up")
    stack_dir = proj.root / ".devenv" / proj.profile
    # A devenv that noted its PAUSE of taskflow and died: its pid is gone.
    noted = subprocess.run([sys.executable, "-c", "import os, sys; from pathlib import Path; "
                            "from devenv.state import note_pause; note_pause(Path(sys.argv[1]), 'taskflow'); "
                            "print(os.getpid())", str(stack_dir)], env=proj.env, capture_output=True, text=True, check=True)
    pid = int(noted.stdout)
    with proj.connect(autocommit=True) as conn:
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('kept@example.com', 'x')")
    template = proj.stack()
    with proj.admin_connect(autocommit=True) as conn:
        [tpl] = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'taskflow\\_\\_tpl\\_%'").fetchone()
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'taskflow' AND pid <> pg_backend_pid()")
        conn.execute(f'ALTER DATABASE taskflow RENAME TO "taskflow__old_{pid}_0"')
        if left == "new copy":
            conn.execute(f'CREATE DATABASE "taskflow__new_{pid}" TEMPLATE "{tpl}" OWNER taskflow')
    from devenv.clients import connect

    with connect.pgbouncer_admin(template, timeout=5, query_timeout=5) as console:
        console.command("PAUSE taskflow")
    result = proj.devenv("snapshot", "save", "after")
    what = "its new copy" if left == "new copy" else "its data as it was"
    assert f"put taskflow back ({what}): devenv pid {pid} was killed between the two renames of a reset" in result.stderr
    assert "resumed pooled clients of taskflow" in result.stderr
    assert _pooled_answers(proj, 5.0)
    with proj.connect() as conn:
        kept = conn.execute("SELECT count(*) FROM users WHERE email = 'kept@example.com'").fetchone()[0]
    assert kept == (0 if left == "new copy" else 1)


# ---- class 19: pooled clients beside concurrent resets of every strategy ------------------------


def test_pooled_clients_see_no_error_beside_concurrent_resets_of_every_strategy(proj: Any) -> None:
    """Five `devenv reset`s at a time (auto, clone, copy, restore) beside three loops of pooled
    queries (two on kept connections, one connecting for each query), for some seconds: every
    query answers. Before: "server login has been failing, try again later (server_login_retry)"
    (PAUSE or RECONNECT closed a server login in progress, which PgBouncer counts as a failed
    login) and "terminating connection due to administrator command" (a running pooled statement
    ended by the reset)."""
    import psycopg

    proj.devenv("up")
    url = proj.stack().urls()["DATABASE_URL"]
    seconds = float(os.environ.get("DEVENV_TEST_RESET_LOAD_SECONDS", "12"))
    stop = time.monotonic() + seconds
    errors: list[str] = []
    queries = [0]
    resets: list[str] = []
    failed_resets: list[str] = []

    def pooled(fresh: bool) -> None:
        conn = None
        while time.monotonic() < stop:
            try:
                if conn is None or fresh:
                    if conn is not None:
                        conn.close()
                    conn = psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=30)
                assert conn.execute("SELECT count(*), pg_sleep(0.002) FROM tasks").fetchone()[0] > 0
                queries[0] += 1
            except Exception as exc:  # the finding
                errors.append(f"{type(exc).__name__}: {exc}".strip())
                conn = None
        if conn is not None:
            conn.close()

    def resetting(strategy: str) -> None:
        while time.monotonic() < stop:
            result = proj.devenv("reset", *(["--strategy", strategy] if strategy != "auto" else []), check=False)
            resets.append(strategy)
            if result.returncode != 0:
                failed_resets.append(result.stderr)

    threads = [threading.Thread(target=pooled, args=(fresh,)) for fresh in (False, False, True)]
    threads += [threading.Thread(target=resetting, args=(s,)) for s in ("auto", "clone", "copy", "restore", "auto")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed_resets, failed_resets[:3]
    assert {"clone", "copy", "restore", "auto"} <= set(resets)
    assert queries[0] > 100
    if errors:  # PgBouncer's own account of the server connections it closed, for whoever reads the failure
        closings = [line for line in proj.devenv("logs", "pgbouncer", check=False).stdout.splitlines()
                    if "closing because" in line and " S-" in line]
        pytest.fail(f"{len(errors)} pooled queries of {queries[0] + len(errors)} failed: {sorted(set(errors))[:5]}; "
                    f"PgBouncer closed server connections: {closings[-15:]}")


def test_a_pause_that_closes_a_login_in_progress_leaves_the_pool_serving_new_clients(proj: Any) -> None:
    """PAUSE closes a server login in progress, which PgBouncer counts as a failed login: it then
    refuses every new client of the empty pool ("server login has been failing, try again later
    (server_login_retry)") until a login succeeds. Made certain here: an uncommitted ALTER
    DATABASE holds the lock every new backend of the database waits for, so PgBouncer's login
    for a pooled client hangs in progress when the PAUSE comes. The console sees it (its SHOW
    SERVERS runs back to back with the PAUSE) and, after RESUME, returns only once a pooled
    login succeeds again: a new client right after the block is served. Before, the block
    returned at once and the client was refused."""
    import psycopg

    from devenv.clients import connect

    proj.devenv("up")
    stack = proj.stack()
    db = stack.postgres.database
    url = stack.urls()["DATABASE_URL"]
    with connect.psycopg_postgres(stack, "postgres", admin=True, autocommit=True) as admin:
        with connect.pgbouncer_admin(stack) as console:  # PgBouncer holds no server of the database now
            console.command(f"PAUSE {db}")
            console.command(f"RESUME {db}")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
        locker = connect.psycopg_postgres(stack, "postgres", admin=True)
        locker.execute(f'ALTER DATABASE "{db}" RENAME TO "{db}_locked"')  # uncommitted: the lock is held
        locker.execute(f'ALTER DATABASE "{db}_locked" RENAME TO "{db}"')
        waiting: list[Any] = []
        client = threading.Thread(target=lambda: waiting.append(
            psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=30).execute("SELECT 1").fetchone()))
        client.start()
        with connect.pgbouncer_admin(stack) as console:
            deadline = time.monotonic() + 10
            while not any(r["database"] == db and r["state"] == "new" for r in console.show("SERVERS")):
                assert time.monotonic() < deadline, "PgBouncer's login never started"
                time.sleep(0.01)
            with console.paused(db, terminate=lambda everyone: None, reopen=lambda: connect.pgbouncer_admin(stack)):
                # The login was closed by the PAUSE. The lock goes only 0.5 s after RESUME, so
                # every login until then hangs and every new client is refused meanwhile.
                release = threading.Timer(0.5, lambda: (locker.rollback(), locker.close()))
                release.start()
            assert not release.is_alive()  # the block waited for a login to succeed
            with psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=10) as fresh:
                assert fresh.execute("SELECT count(*) FROM tasks").fetchone()[0] == SEEDED_TASKS
        client.join(30)
        assert waiting == [(1,)]  # the client whose login was closed was served after RESUME
