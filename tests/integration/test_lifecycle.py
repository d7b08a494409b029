"""Lifecycle of the real stack, driven through the CLI: idempotence, data across down/up,
conflicts, crashes and kills, seeds that fail, settings that change, the lock, and the
read-only commands (status, env, logs).

Every test that changes state uses its own throwaway project (`proj`, a wrapper of the
`project` fixture that also ends any server process of the project that devenv lost track
of); tests that only read share `running("ci")`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

SERVICES = ("postgres", "pgbouncer", "redis")
SERVER_COMMS = {"postgres", "pgbouncer", "redis-server", "initdb"}
PORT_VARS = {"postgres": "DEVENV_POSTGRES_PORT", "pgbouncer": "DEVENV_PGBOUNCER_PORT", "redis": "DEVENV_REDIS_PORT"}
SEEDED_USERS, SEEDED_TASKS, SEED_FILES = 8, 40, 6
EXTRA_USER_ID = "00000000-0000-4000-8000-0000000000aa"


# ---- helpers: processes, state, database -----------------------------------------------------


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _stat(pid: int) -> tuple[str, str] | None:
    """(comm, state) of a pid from /proc, None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    return raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :][:1]


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (reparented servers may linger as zombies)."""
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"


def argv_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def cwd_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def postmasters(pgdata: str) -> list[int]:
    """Live processes named postgres started with this data directory (`-D <pgdata>`)."""
    out = []
    for pid in all_pids():
        stat = _stat(pid)
        if stat and stat[0] == "postgres" and stat[1] != "Z" and pgdata in argv_of(pid):
            out.append(pid)
    return out


def native_dir(project: Any) -> Path:
    return project.root / ".devenv" / project.profile / "native"


def native_state(project: Any) -> dict[str, Any]:
    """The native runtime's record: {service: {"pid": ...}, "_meta": {"pgdata": ...}}."""
    return json.loads((native_dir(project) / "state.json").read_text())


def server_pids(project: Any) -> dict[str, int]:
    """{service: host pid}: from the native state file, or each container's main process."""
    return project.server_pids()


def layout_key(project: Any) -> str | None:
    """The hash devenv puts in the names of this project's directories (/var/lib/devenv, /dev/shm)."""
    link = native_dir(project)
    if not link.exists():
        return None
    match = re.search(r"-([0-9a-f]{10})$", os.path.realpath(link))
    return match.group(1) if match else None


def project_processes(project: Any) -> list[int]:
    """Live server processes that belong to this project: its paths are in their argv or cwd."""
    if project.runtime != "native":
        return project.server_processes()  # the project's running containers
    key = layout_key(project)
    if not key:
        return []
    out = []
    for pid in all_pids():
        stat = _stat(pid)
        if not stat or stat[0] not in SERVER_COMMS or stat[1] == "Z":
            continue
        if any(key in arg for arg in argv_of(pid)) or key in cwd_of(pid):
            out.append(pid)
    return out


def run_dir(project: Any) -> Path:
    """Where the pid files live, as the rendered redis.conf says."""
    conf = (native_dir(project) / "conf" / "redis.conf").read_text()
    match = re.search(r"^pidfile\s+(\S+)/redis\.pid\s*$", conf, re.M)
    assert match, "redis.conf names no pidfile"
    return Path(match.group(1))


def refuses(port: int) -> bool:
    """True when nothing accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def port_of(project: Any, service: str) -> int:
    return int(project.env[PORT_VARS[service]])


def count(project: Any, table: str, where: str = "true") -> int:
    with project.connect() as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


def ledger(project: Any) -> list[tuple[Any, ...]]:
    with project.connect() as conn:
        return conn.execute("SELECT file, checksum, applied_at FROM devenv.applied_files ORDER BY file").fetchall()


def snapshot(project: Any) -> dict[str, Any]:
    return {"users": count(project, "users"), "tasks": count(project, "tasks"), "ledger": ledger(project)}


def insert_user(project: Any, user_id: str = EXTRA_USER_ID, email: str = "extra@taskflow.dev") -> None:
    """Insert a user and commit durably (the ci profile turns synchronous_commit off)."""
    with project.connect() as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute("INSERT INTO users (id, email, password_hash) VALUES (%s, %s, 'x')", (user_id, email))
        conn.commit()


def user_exists(project: Any, user_id: str = EXTRA_USER_ID) -> bool:
    return count(project, "users", f"id = '{user_id}'") == 1


def status_rows(project: Any) -> tuple[int, list[dict[str, Any]]]:
    proc = project.devenv("status", "--json", check=False)
    return proc.returncode, json.loads(proc.stdout)["services"]


def assert_healthy(project: Any) -> None:
    proc = project.devenv("status", check=False)
    assert proc.returncode == 0, f"status exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    for service in SERVICES:
        line = next((l for l in proc.stdout.splitlines() if l.split()[:1] == [service]), "")
        assert "healthy" in line.split(), f"{service} not healthy in status:\n{proc.stdout}"


def stop_pids(pids: list[int]) -> None:
    """End processes this test caused (by pid): SIGTERM, then SIGKILL after a bounded wait."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def sibling(project: Any, root: Path) -> Any:
    """A second throwaway project (same config, its own ports and directories)."""
    root.mkdir(parents=True)
    shutil.copy(project.root / "devenv.yaml", root / "devenv.yaml")
    shutil.copytree(project.root / "seeds", root / "seeds")
    taken = {port_of(project, s) for s in SERVICES}
    env = dict(project.env)
    for var in PORT_VARS.values():
        port = free_port(taken)
        taken.add(port)
        env[var] = str(port)
    return dataclasses.replace(project, root=root, env=env)


def cleanup(project: Any) -> None:
    """`down --volumes`, then end what devenv lost track of (a bug, reported by a test).

    The project's processes are listed first: `down --volumes` removes the tree that names them.
    """
    before = {pid: _stat(pid) for pid in project_processes(project)}
    project.devenv("down", "--volumes", check=False)
    stop_pids([pid for pid, stat in before.items() if alive(pid) and (_stat(pid) or ("",))[0] == (stat or ("",))[0]])


@pytest.fixture
def proj(project: Any) -> Iterator[Any]:
    """`project`, and afterwards no server process of it left, tracked or not."""
    yield project
    cleanup(project)


# ---- 1. idempotence ----------------------------------------------------------------------------


def test_second_up_is_a_no_op(proj: Any) -> None:
    proj.devenv("up")
    pids, applied = server_pids(proj), ledger(proj)
    assert len(applied) == SEED_FILES

    again = proj.devenv("up")
    assert "up to date" in again.stderr or "nothing" in again.stderr, again.stderr
    assert server_pids(proj) == pids
    assert all(alive(pid) for pid in pids.values())
    assert ledger(proj) == applied

    # The full path (no recorded fingerprint) must also change nothing.
    (proj.root / ".devenv" / proj.profile / "state.json").unlink()
    full = proj.devenv("up")
    assert "nothing changed" in full.stderr, full.stderr
    assert "applied" not in full.stderr
    assert server_pids(proj) == pids
    assert ledger(proj) == applied


# ---- 2, 3. data across down/up -----------------------------------------------------------------


def test_data_survives_down_and_up_on_the_durable_profile(proj: Any) -> None:
    proj.profile = "dev"
    proj.devenv("up")
    assert not proj.pgdata_on_tmpfs(), "dev keeps its data on disk"
    insert_user(proj)
    pids = server_pids(proj)

    proj.devenv("down")
    wait_for(lambda: not any(alive(p) for p in pids.values()), 10, "the servers to exit after down")
    for service in SERVICES:
        assert refuses(port_of(proj, service)), f"{service} still answers after down"

    proj.devenv("up")
    assert user_exists(proj)
    assert count(proj, "users") == SEEDED_USERS + 1
    assert count(proj, "tasks") == SEEDED_TASKS


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_a_checkout_cloned_again_at_the_same_path_puts_its_password_on_the_old_data(proj: Any, running: bool) -> None:
    """The checkout is deleted without `down --volumes` (its .devenv/ and secrets go with it) and
    cloned again at the same path: the data outlives it (native: outside the checkout, keyed by
    its path; Docker: the named volume). `up` gives the cluster the new checkout's password, over
    the trusted unix socket, instead of failing to log in for a minute. The data stays."""
    proj.profile = "dev"
    proj.devenv("up")
    insert_user(proj)
    old_password = proj.stack().postgres.password
    if not running:
        proj.devenv("down")
    shutil.rmtree(proj.root / ".devenv")
    again = proj.devenv("up")
    assert proj.stack().postgres.password != old_password, "new secrets, as a new checkout has"
    assert user_exists(proj) and count(proj, "tasks") == SEEDED_TASKS, again.stderr
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == proj.stack().postgres.user
    last = proj.devenv("up").stderr
    assert "up to date" in last or "nothing changed" in last, last


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"postgres_password": 5}'], ids=["corrupt", "list", "number"])
def test_a_bad_secrets_file_blocks_no_down_and_its_hint_keeps_the_data(proj: Any, content: str) -> None:
    """A corrupt or wrongly shaped `.devenv/secrets.json` (issue 15, class 12): `down` still stops
    the stack; other commands say what is wrong (exit 8, no traceback) and how to recover without
    deleting data; following that hint, `up` sets new passwords on the same data."""
    proj.profile = "dev"
    proj.devenv("up")
    insert_user(proj)
    pids = server_pids(proj)
    secrets = proj.root / ".devenv" / "secrets.json"
    secrets.write_text(content)

    refused = proj.devenv("up", check=False)
    assert refused.returncode == 8 and "Traceback" not in refused.stderr, refused.stderr
    assert "secrets.json" in refused.stderr and "hint: " in refused.stderr, refused.stderr
    assert "--volumes" not in refused.stderr and "keeping your data" in refused.stderr, refused.stderr

    down = proj.devenv("down", check=False)
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not any(alive(p) for p in pids.values()), 10, "the servers to exit after down")

    secrets.rename(secrets.with_name("secrets.json.bad"))  # what the hint says
    proj.devenv("up")
    assert user_exists(proj) and count(proj, "tasks") == SEEDED_TASKS
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == proj.stack().postgres.user


def test_cold_up_applies_seed_changes_made_while_down(proj: Any) -> None:
    """A cold `up` skips seeding only when nothing changed (devenv.lifecycle.seeded_and_current):
    a file added while the stack was down is applied, an applied file edited meanwhile refused."""
    proj.profile = "dev"
    proj.devenv("up")
    proj.devenv("down")
    again = proj.devenv("up")
    assert "schema+seed" not in again.stderr, again.stderr
    proj.devenv("down")
    extra = proj.root / "seeds" / "data" / "003_more.sql"
    extra.write_text("INSERT INTO users (id, email, password_hash, created_at) VALUES "
                     "('00000000-0000-4000-8000-0000000000b1', 'judy@taskflow.dev', 'x', '2025-01-01');\n")
    result = proj.devenv("up")
    assert "applied data/003_more.sql" in result.stderr, result.stderr
    assert count(proj, "users") == SEEDED_USERS + 1
    assert len(ledger(proj)) == SEED_FILES + 1
    proj.devenv("down")
    with open(extra, "a") as handle:
        handle.write("-- an edit after the file was applied\n")
    refused = proj.devenv("up", check=False)
    assert refused.returncode == 8 and "003_more.sql" in refused.stderr, refused.stderr


def test_up_stores_the_userlist_secret_on_a_cluster_that_stores_the_password_otherwise(proj: Any) -> None:
    """PgBouncer's userlist holds the password's SCRAM secret and logs in to Postgres with it,
    which works only if Postgres stores that very secret. A cluster made by the image's
    entrypoint from a plain password, or by an older devenv, stores one with a random salt:
    `up` replaces it, and pooled connections work again."""
    proj.devenv("up")
    stack = proj.stack()
    secret = stack.postgres.password_secret
    state_dir = proj.root / ".devenv" / proj.profile
    userlist = (state_dir / "native" / "conf" if proj.runtime == "native" else state_dir) / "userlist.txt"
    userlist = userlist.read_text()
    assert f'"{stack.postgres.user}" "{secret}"' in userlist.splitlines() and stack.postgres.password not in userlist

    def stored() -> str:
        with proj.admin_connect() as conn:  # pg_authid is a superuser's to read
            return conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                                (stack.postgres.user,)).fetchone()[0]

    assert stored() == secret
    with proj.connect(autocommit=True) as conn:  # what initdb does with a plain password: a random salt
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(f"ALTER ROLE {stack.postgres.user} PASSWORD '{stack.postgres.password}'")
    assert stored() != secret
    proj.devenv("down")

    proj.devenv("up")
    assert stored() == secret
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == SEEDED_USERS


@pytest.mark.every_engine
def test_down_volumes_deletes_the_data_and_up_reseeds(proj: Any) -> None:
    proj.devenv("up")
    insert_user(proj)
    assert count(proj, "users") == SEEDED_USERS + 1
    pgdata = proj.pgdata()

    proj.devenv("down", "--volumes")
    assert not proj.pgdata_exists(pgdata)
    if proj.runtime == "docker":  # on every engine: no container and no volume of the stack left
        label = {"label": f"com.docker.compose.project={proj.stack_name}"}
        assert not proj.containers() and not proj.client().volumes.list(filters=label)
    proj.devenv("up")
    assert not user_exists(proj)
    assert count(proj, "users") == SEEDED_USERS
    assert count(proj, "tasks") == SEEDED_TASKS
    assert len(ledger(proj)) == SEED_FILES


# ---- 4. port conflict --------------------------------------------------------------------------


def test_port_held_by_another_program_fails_before_starting_anything(proj: Any) -> None:
    port = port_of(proj, "redis")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = proj.devenv("up", check=False)
    assert result.returncode == 5, result.stderr
    assert str(port) in result.stderr
    assert "DEVENV_REDIS_PORT" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    for service in SERVICES:
        assert refuses(port_of(proj, service)), f"{service} was started despite the conflict"
    assert project_processes(proj) == []


# ---- 5, 6, 7. crashes, stale files, killed `up` ---------------------------------------------------


def test_killed_servers_are_restarted_and_data_kept(proj: Any) -> None:
    if proj.runtime == "docker":
        proj.profile = "dev"  # ci's compose `tmpfs:` dies with its container (/dev/shm natively outlives the server)
    proj.devenv("up")
    insert_user(proj)
    before = server_pids(proj)
    for service in ("postgres", "redis"):
        os.kill(before[service], signal.SIGKILL)
    wait_for(lambda: not alive(before["postgres"]) and not alive(before["redis"]), 10, "the killed servers to die")

    proj.devenv("up")
    after = server_pids(proj)
    assert after["postgres"] != before["postgres"] and alive(after["postgres"])
    assert after["redis"] != before["redis"] and alive(after["redis"])
    assert after["pgbouncer"] == before["pgbouncer"], "pgbouncer was running and needed no restart"
    assert user_exists(proj)
    assert count(proj, "tasks") == SEEDED_TASKS
    assert_healthy(proj)
    with proj.connect(pooled=True) as conn:  # PgBouncer reconnects to the new postmaster
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == SEEDED_USERS + 1
    assert proj.redis().ping() is True


@pytest.mark.native_only(reason="in a container the postmaster is PID 1: SIGKILL ends its backends with it, and backend pids are the container's")
def test_killed_postmaster_with_a_busy_backend_is_restarted(proj: Any) -> None:
    """A backend busy in a query outlives its SIGKILLed postmaster and holds the shared memory."""
    proj.devenv("up")
    busy = proj.connect(autocommit=True)
    busy.execute("SET statement_timeout = '60s'")  # the orphan ends by itself at the latest then
    backend = busy.info.backend_pid
    worker = threading.Thread(target=lambda: _run_quietly(busy, "DO $$ BEGIN LOOP END LOOP; END $$"), daemon=True)
    worker.start()
    with proj.connect(autocommit=True) as conn:
        wait_for(lambda: conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()
                 == ("active",), 10, "the busy query to run")
    postmaster = server_pids(proj)["postgres"]
    os.kill(postmaster, signal.SIGKILL)
    wait_for(lambda: not alive(postmaster), 10, "the killed postmaster to die")
    assert alive(backend), "the busy backend outlives its postmaster (the case under test)"

    result = proj.devenv("up", check=False)
    assert result.returncode == 0, result.stderr
    # devenv commits its own work synchronously even on ci (synchronous_commit off): the
    # database it had just created is still there, so nothing is seeded again.
    assert "schema+seed" not in result.stderr, result.stderr
    assert not alive(backend)
    assert count(proj, "tasks") == SEEDED_TASKS
    assert_healthy(proj)


def _run_quietly(conn: Any, sql: str) -> None:
    try:
        conn.execute(sql)
    except Exception:  # the server goes away under it: that is the point
        pass
    finally:
        conn.close()


@pytest.mark.native_only(reason="the unix sockets in native's run/ directory")
def test_postgres_restart_keeps_pgbouncer_unix_socket(proj: Any) -> None:
    import psycopg

    proj.devenv("up")
    run, pgb_port = run_dir(proj), port_of(proj, "pgbouncer")
    pids = server_pids(proj)
    os.kill(pids["postgres"], signal.SIGKILL)  # at once: devenv's last commits must be durable
    wait_for(lambda: not alive(pids["postgres"]), 10, "the killed postmaster to die")
    assert "schema+seed" not in proj.devenv("up").stderr, "the seeded database was lost with the server"
    assert server_pids(proj)["pgbouncer"] == pids["pgbouncer"]
    assert (run / f".s.PGSQL.{pgb_port}").exists(), f"PgBouncer's socket is gone from {run}"
    urls = proj.stack().urls()
    with psycopg.connect(urls["DATABASE_URL"], host=str(run), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "taskflow"


@pytest.mark.native_only(reason="native's exit detection from its state file")
def test_a_server_left_by_an_earlier_up_is_seen_dying(proj: Any) -> None:
    """`up` waits on servers it did not start itself too: their death must end the wait."""
    from devenv.runtime.native import NativeRuntime

    proj.devenv("up")
    pids = server_pids(proj)
    runtime, stack = NativeRuntime(), proj.stack()
    assert runtime.exit_status(stack, "pgbouncer") is None
    os.kill(pids["pgbouncer"], signal.SIGKILL)
    wait_for(lambda: not alive(pids["pgbouncer"]), 10, "the killed pgbouncer to die")
    assert "exited" in (runtime.exit_status(stack, "pgbouncer") or "")
    assert runtime.exit_status(stack, "redis") is None


def _write_stale_pid_files(proj: Any, pgdata: Path, run: Path, pid: int) -> None:
    owner = pgdata.stat()
    postmaster_pid = f"{pid}\n{pgdata}\n{int(time.time())}\n{port_of(proj, 'postgres')}\n{run}\n127.0.0.1\n  5432001         0\nready   \n"
    (pgdata / "postmaster.pid").write_text(postmaster_pid)
    os.chown(pgdata / "postmaster.pid", owner.st_uid, owner.st_gid)
    for name in ("pgbouncer.pid", "redis.pid"):
        (run / name).write_text(f"{pid}\n")
        os.chown(run / name, owner.st_uid, owner.st_gid)


@pytest.mark.native_only(reason="native's pid files")
def test_stale_pid_files_do_not_block_up(proj: Any) -> None:
    proj.devenv("up")
    pgdata, run = Path(native_state(proj)["_meta"]["pgdata"]), run_dir(proj)
    assert (run / "redis.pid").exists() and (run / "pgbouncer.pid").exists()
    proj.devenv("down")
    assert not (pgdata / "postmaster.pid").exists()

    # A live process that is not a server of ours: this test.
    _write_stale_pid_files(proj, pgdata, run, os.getpid())
    proj.devenv("up")
    assert_healthy(proj)
    assert count(proj, "tasks") == SEEDED_TASKS
    assert len(postmasters(str(pgdata))) == 1


@pytest.mark.native_only(reason="native's pid files")
def test_stale_postmaster_pid_of_another_postgres_leaves_it_alone(proj: Any, tmp_path: Path) -> None:
    proj.devenv("up")
    pgdata, run = Path(native_state(proj)["_meta"]["pgdata"]), run_dir(proj)
    proj.devenv("down")
    other = sibling(proj, tmp_path / "other")
    try:
        other.devenv("up")
        other_postmaster = server_pids(other)["postgres"]
        _write_stale_pid_files(proj, pgdata, run, other_postmaster)

        proj.devenv("up")
        assert_healthy(proj)
        assert alive(other_postmaster), "up stopped another project's postmaster named by a stale postmaster.pid"
        assert_healthy(other)
    finally:
        cleanup(other)


def _stderr_lines(proc: subprocess.Popen[str]) -> "queue.Queue[str | None]":
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _popen_up(project: Any) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "devenv", "up", "--runtime", project.runtime, "--profile", project.profile]
    return subprocess.Popen(argv, cwd=project.root, env=project.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("phase", [
    # The phase is recognised by what `up` says, not by a sleep: ~0.4 s in is initdb, ~1.2 s in
    # is the health wait, then come the schema and seed files.
    pytest.param("initdb"),
    "waiting until healthy",
    "postgres   healthy",  # then the schema and seed files are being applied
])
def test_killed_up_is_recovered(proj: Any, phase: str) -> None:
    first = _popen_up(proj)
    lines = _stderr_lines(first)
    said: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while not any(phase in line for line in said):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"`up` never said {phase!r}:\n{''.join(said)}"
            line = lines.get(timeout=remaining)
            assert line is not None, f"`up` ended before {phase!r}:\n{''.join(said)}"
            said.append(line)
        first.kill()
    finally:
        first.kill()
        first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL

    second = proj.devenv("up", check=False)
    assert second.returncode == 0, f"up after a killed up exited {second.returncode}:\n{second.stderr}"
    assert count(proj, "tasks") == SEEDED_TASKS
    assert len(ledger(proj)) == SEED_FILES
    assert len(proj.postmasters()) == 1
    assert_healthy(proj)
    # Nothing runs untracked: one pgbouncer and one redis-server for the project, the recorded ones.
    pids = server_pids(proj)
    for comm, service in (("pgbouncer", "pgbouncer"), ("redis-server", "redis")):
        mine = [p for p in project_processes(proj) if (_stat(p) or ("",))[0] == comm]
        assert mine == [pids[service]], f"{comm} processes of the project: {mine}, recorded {pids[service]}"


# ---- 8, 9. seeds --------------------------------------------------------------------------------

BROKEN_SEED = (
    "INSERT INTO users (id, email, password_hash) VALUES ('00000000-0000-4000-8000-0000000000bb', 'broken@taskflow.dev', 'x');\n"
    "-- a task for a user who does not exist:\n"
    "INSERT INTO tasks (user_id, title) VALUES ('00000000-0000-4000-8000-0000000000ff', 'orphan');\n"
)
# The failing statement starts on line 2; the error's position is on line 3.
BROKEN_SEED_POSITION = (
    "INSERT INTO users (id, email, password_hash) VALUES ('00000000-0000-4000-8000-0000000000bb', 'broken@taskflow.dev', 'x');\n"
    "INSERT INTO tasks (user_id, title)\n"
    "    VALUES (no_such_function(), 'orphan');\n"
)
FIXED_SEED = BROKEN_SEED.replace("0000000000ff", "0000000000bb")


def test_failing_seed_file_rolls_back_entirely(proj: Any) -> None:
    proj.devenv("up")
    before = snapshot(proj)
    seed = proj.root / "seeds" / "data" / "003_broken.sql"

    for content in (BROKEN_SEED, BROKEN_SEED_POSITION):
        seed.write_text(content)
        result = proj.devenv("up", check=False)
        assert result.returncode == 7, result.stderr
        assert "003_broken.sql:3" in result.stderr, result.stderr
        assert "rolled back" in result.stderr
        assert not user_exists(proj, "00000000-0000-4000-8000-0000000000bb")
        assert snapshot(proj) == before

    seed.write_text(FIXED_SEED)
    fixed = proj.devenv("up")
    assert "data/003_broken.sql" in fixed.stderr
    assert user_exists(proj, "00000000-0000-4000-8000-0000000000bb")
    assert count(proj, "tasks") == SEEDED_TASKS + 1
    assert [row[0] for row in ledger(proj)] == sorted([row[0] for row in before["ledger"]] + ["data/003_broken.sql"])


def test_changed_applied_file_is_refused(proj: Any) -> None:
    proj.devenv("up")
    before = snapshot(proj)
    with open(proj.root / "seeds" / "data" / "002_tasks.sql", "a") as handle:
        handle.write("-- an edit after the file was applied\n")
    result = proj.devenv("up", check=False)
    assert result.returncode == 8, result.stderr
    assert "002_tasks.sql" in result.stderr
    hint = next((line for line in result.stderr.splitlines() if line.startswith("hint:")), "")
    assert "devenv reset --hard" in hint, result.stderr
    assert snapshot(proj) == before


def test_reset_hard_named_by_the_hint_rebuilds_from_the_changed_files(proj: Any) -> None:
    """What the hint of a changed applied file promises: `devenv reset --hard`, then `up` works."""
    import hashlib

    proj.devenv("up")
    insert_user(proj)
    changed = proj.root / "seeds" / "data" / "002_tasks.sql"
    with open(changed, "a") as handle:
        handle.write("-- an edit after the file was applied\n")
    assert proj.devenv("up", check=False).returncode == 8

    proj.devenv("reset", "--hard")
    proj.devenv("up")
    checksums = {row[0]: row[1] for row in ledger(proj)}
    assert checksums["data/002_tasks.sql"] == hashlib.sha256(changed.read_bytes()).hexdigest()
    assert not user_exists(proj), "reset --hard drops the data"
    assert (count(proj, "users"), count(proj, "tasks")) == (SEEDED_USERS, SEEDED_TASKS)


# ---- 10. changed settings -----------------------------------------------------------------------


# Remote: the changed files reach the containers through the API (copies, not bind mounts).
# Podman reads them as dockerd does (bind mounts): not again there (27 s).
@pytest.mark.every_engine(lanes=("remote",))
def test_changed_settings_restart_or_reload_only_their_service(proj: Any) -> None:
    proj.devenv("up")
    start = server_pids(proj)

    # (a) a Redis setting: Redis restarts, the rest stays.
    proj.edit("devenv.yaml", "ci: 128mb}", "ci: 64mb}")
    proj.devenv("up")
    a = server_pids(proj)
    assert a["redis"] != start["redis"]
    assert (a["postgres"], a["pgbouncer"]) == (start["postgres"], start["pgbouncer"])
    assert proj.redis().config_get("maxmemory")["maxmemory"] == str(64 * 1024 * 1024)

    # (b) a Postgres setting a reload applies: same postmaster, new value.
    proj.edit("devenv.yaml", "log_min_duration_statement: {default: 1000,", "log_min_duration_statement: {default: 750,")
    proj.devenv("up")
    assert server_pids(proj) == a
    with proj.connect() as conn:
        assert conn.execute("SHOW log_min_duration_statement").fetchone()[0] == "750ms"

    # (c) a Postgres setting that needs a restart: new postmaster, new value.
    proj.edit("devenv.yaml", "dev: 128MB,", "dev: 64MB,")
    proj.devenv("up")
    c = server_pids(proj)
    assert c["postgres"] != a["postgres"] and not alive(a["postgres"])
    assert (c["pgbouncer"], c["redis"]) == (a["pgbouncer"], a["redis"])
    with proj.connect() as conn:
        assert conn.execute("SHOW shared_buffers").fetchone()[0] == "64MB"
        assert conn.execute("SHOW log_min_duration_statement").fetchone()[0] == "750ms"
    assert_healthy(proj)


# ---- 11. the lock -------------------------------------------------------------------------------


def test_two_concurrent_ups_end_with_one_healthy_stack(proj: Any) -> None:
    procs = [_popen_up(proj) for _ in range(2)]
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        results.append((proc.returncode, err))
    for code, err in results:
        assert code == 0, f"a concurrent up exited {code}:\n{err}"
    assert_healthy(proj)
    assert len(proj.postmasters()) == 1
    assert count(proj, "tasks") == SEEDED_TASKS
    assert len(ledger(proj)) == SEED_FILES


# ---- 12. a server that exits at start -----------------------------------------------------------


def test_server_exiting_at_start_fails_with_its_log(proj: Any) -> None:
    line = next(l for l in (proj.root / "devenv.yaml").read_text().splitlines() if l.strip().startswith("full_page_writes:"))
    proj.edit("devenv.yaml", line + "\n", line + "\n    shared_preload_libraries:   {default: no_such_library}\n")
    result = proj.devenv("up", "--timeout", "20", check=False)
    assert result.returncode == 6, result.stderr
    error = next((l for l in result.stderr.splitlines() if l.startswith("error:")), "")
    assert "postgres" in error and ("exited" in error or "not healthy" in error), result.stderr
    log_lines = [l for l in result.stderr.splitlines() if "no_such_library" in l and not l.startswith("error:")]
    assert log_lines, f"no line of the postgres log in stderr:\n{result.stderr}"


# ---- 13. status ---------------------------------------------------------------------------------


def test_status_json_then_down(proj: Any) -> None:
    proj.devenv("up")
    code, rows = status_rows(proj)
    assert code == 0
    assert [row["service"] for row in rows] == list(SERVICES)
    pids = server_pids(proj)
    for row in rows:
        assert row["health"] == "healthy", row
        assert row["state"] == "running", row
        assert row["port"] == port_of(proj, row["service"])
        assert row["pid"] == pids[row["service"]]

    proj.devenv("down")
    code, rows = status_rows(proj)
    assert code != 0
    assert all(row["health"] != "healthy" for row in rows)


# ---- 14, 15. env and logs (read-only, shared stack) -----------------------------------------------


def _parse_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line.strip())


def test_env_formats_agree_and_connect(running: Any, tmp_path: Path) -> None:
    import psycopg
    import redis

    proj = running("ci")
    expected = proj.stack().urls()
    assert set(expected) == {"DATABASE_URL", "DIRECT_DATABASE_URL", "REDIS_URL"}

    # dotenv (the default) also gives libpq's PG* variables (issue 16): test_conventions.py checks them.
    seen = {"dotenv": {k: v for k, v in _parse_lines(proj.devenv("env").stdout).items() if not k.startswith("PG")}}
    seen["json"] = json.loads(proj.devenv("env", "--format", "json").stdout)
    github_env = tmp_path / "github_env"
    github_env.write_text("EXISTING=1\n")
    dataclasses.replace(proj, env={**proj.env, "GITHUB_ENV": str(github_env)}).devenv("env", "--format", "github")
    written = _parse_lines(github_env.read_text())
    assert written.pop("EXISTING") == "1", "github format must append, not overwrite"
    seen["github"] = written
    script = ('eval "$("$PY" -m devenv env --format shell --profile ci)" && '
              'printf "%s\\n" "DATABASE_URL=$DATABASE_URL" "DIRECT_DATABASE_URL=$DIRECT_DATABASE_URL" "REDIS_URL=$REDIS_URL"')
    shell = subprocess.run(["bash", "-c", script], cwd=proj.root, env={**proj.env, "PY": sys.executable},
                           capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    seen["shell"] = _parse_lines(shell.stdout)
    for fmt, urls in seen.items():
        assert urls == expected, f"--format {fmt}"

    assert f":{port_of(proj, 'pgbouncer')}/" in expected["DATABASE_URL"]
    assert f":{port_of(proj, 'postgres')}/" in expected["DIRECT_DATABASE_URL"]
    for key in ("DATABASE_URL", "DIRECT_DATABASE_URL"):
        with psycopg.connect(expected[key], connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == "taskflow", key
    client = redis.Redis.from_url(expected["REDIS_URL"], socket_timeout=5)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_logs_one_service_and_all(running: Any) -> None:
    proj = running("ci")
    one = proj.devenv("logs", "postgres").stdout
    assert "database system is ready to accept connections" in one
    assert not any(re.match(r"(postgres|pgbouncer|redis)\s+\| ", line) for line in one.splitlines())
    tail = proj.devenv("logs", "postgres", "--tail", "3").stdout.splitlines()
    assert 0 < len(tail) <= 3

    every = proj.devenv("logs").stdout.splitlines()
    assert every
    prefixes = {line.split(" | ", 1)[0].strip() for line in every}
    assert prefixes == set(SERVICES), prefixes
    assert any(l.startswith("postgres") and "ready to accept connections" in l for l in every)
    assert any(l.startswith("redis") and "Ready to accept connections" in l for l in every)
