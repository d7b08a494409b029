"""DOCKER_HOST=ssh://: the remote lane's dockerd reached through OpenSSH (devenv.runtime.sshtunnel).

The lane is .ci/remote-ssh-up.sh's sshd in the remote engine's network namespace, reached as
`devenv-remote-ssh` through the client config it writes ($DEVENV_TEST_SSH_CONFIG, which devenv
is given as DEVENV_SSH_CONFIG). The engine's API and the stack's ports go through one SSH
master; the containers publish on the remote's 127.0.0.1 and the URLs name this machine's
127.0.0.1 with the same ports. The test inspects the engine over its TCP address (the remote
lane's), never through devenv's tunnel. Skipped on a developer's machine without the lane;
a failure in CI, where it is expected.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import Project, make_project, teardown_project, use_runtime

SSH_HOST = os.environ.get("DEVENV_TEST_SSH_DOCKER_HOST", "")
SSH_CONFIG = os.environ.get("DEVENV_TEST_SSH_CONFIG", "")
LANE_DIR = Path(SSH_CONFIG).parent if SSH_CONFIG else Path("/nonexistent")


def _lane_missing() -> str:
    if not SSH_HOST or not SSH_CONFIG:
        return "DEVENV_TEST_SSH_DOCKER_HOST/DEVENV_TEST_SSH_CONFIG are not set (bash .ci/remote-ssh-up.sh, then " \
               "source .ci/remote-ssh.env)"
    probe = subprocess.run(["ssh", "-F", SSH_CONFIG, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                            urlsplit(SSH_HOST).hostname or "", "true"], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=20, check=False)
    return "" if probe.returncode == 0 else f"the ssh lane does not answer: {probe.stderr.strip()}"


@pytest.fixture
def ssh_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """A project on the remote lane's engine, with DOCKER_HOST=ssh://devenv-remote-ssh."""
    use_runtime("remote", monkeypatch)  # the engine itself, and the test images on it
    missing = _lane_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"ssh lane unavailable in CI: {missing}")
        pytest.skip(f"ssh lane unavailable: {missing}")
    proj = make_project(tmp_path / "proj", "remote", profile="dev")
    proj.env.update(DOCKER_HOST=SSH_HOST, DEVENV_SSH_CONFIG=SSH_CONFIG)
    yield proj
    teardown_project(proj)


def _master(proj: Project) -> int | None:
    from devenv.runtime.sshtunnel import master_pid

    return master_pid(SSH_HOST, proj.env)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _ended(pid: int, within: float = 5.0) -> bool:
    """Whether a process is gone (or a zombie awaiting its reaper) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat[stat.rindex(")") + 2:].startswith("Z"):
            return True
        time.sleep(0.05)
    return False


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


def test_stack_over_ssh_forwards_its_ports_survives_a_dead_master_and_down_leaves_nothing(ssh_project: Project) -> None:
    proj = ssh_project
    up = proj.devenv("up")
    stack = proj.stack()
    ports = [stack.postgres.port, stack.pgbouncer.port, stack.redis.port]
    urls = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    for key, url in urls.items():
        assert urlsplit(url).hostname == "127.0.0.1", f"{key} names {url}"
    assert {urlsplit(url).port for url in urls.values()} == set(ports)
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    assert proj.redis().ping()
    # On the engine: copies, no bind mount; ports published on the remote's 127.0.0.1 only.
    for service in ("postgres", "pgbouncer", "redis"):
        attrs = proj.container(service).attrs
        assert [m for m in attrs["Mounts"] if m["Type"] == "bind"] == [], f"{service} has a bind mount"
        bindings = [b for binds in (attrs["HostConfig"]["PortBindings"] or {}).values() for b in binds]
        assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings), f"{service}: {bindings}"
        assert str(getattr(stack, service).port) in {b["HostPort"] for b in bindings}
    # This machine's ends are the master's listeners.
    master = _master(proj)
    assert master is not None
    assert all(_answers(port) for port in ports)
    # The no-op `up` cannot see a stack behind the forwards (this machine's ends accept whatever
    # runs there, and the containers' pids are the remote's): every `up` asks the engine, and
    # starts again a container stopped there.
    proj.container("redis").stop()
    again = proj.devenv("up")
    assert "nothing to do" not in again.stderr and proj.redis().ping(), again.stderr
    doctor = proj.devenv("doctor", check=False)  # this machine's ends are the master's, and that is fine
    assert doctor.returncode == 0 and doctor.stdout.count("forwarded here over SSH") == 3, doctor.stdout

    # reset, and a dump through `docker exec` over the forwarded API socket.
    with proj.connect(autocommit=True) as conn:
        conn.execute("DELETE FROM tasks")
    proj.devenv("reset")
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    dump = proj.root / "db.dump"
    proj.devenv("dump", "--runtime", "docker", str(dump))
    assert dump.read_bytes()[:5] == b"PGDMP"

    # A dead master (a reboot, a dropped link): the no-op `up`'s look at the ports fails, so it
    # does a real `up`, which starts the master again with the stack's forwards.
    _kill(master)
    assert not any(_answers(port) for port in ports)
    again = proj.devenv("up")
    assert "nothing to do" not in again.stderr
    restarted = _master(proj)
    assert restarted not in (None, master)
    assert all(_answers(port) for port in ports)
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    # Any command that talks to the engine does the same (status here), forwards included.
    _kill(restarted)
    assert "postgres" in proj.devenv("status").stdout
    assert _master(proj) not in (None, restarted)
    assert all(_answers(port) for port in ports)
    assert proj.redis().ping()

    # down --volumes: nothing on the engine, no forward, no master.
    from devenv.runtime.sshtunnel import paths

    last = _master(proj)
    proj.devenv("down", "--volumes")
    client = proj.client()  # the engine over TCP, not through the tunnel
    label = {"label": f"com.docker.compose.project={proj.stack_name}"}
    assert client.containers.list(all=True, filters=label) == []
    assert client.volumes.list(filters=label) == []
    assert _master(proj) is None and not paths(SSH_HOST).control.exists()
    assert not any(_answers(port) for port in ports)
    assert last is not None and _ended(last)


def test_a_port_taken_here_is_the_usual_port_error(ssh_project: Project) -> None:
    proj = ssh_project
    taken = int(proj.env["DEVENV_REDIS_PORT"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        failed = proj.devenv("up", check=False)
    assert failed.returncode == 5, failed.stderr
    assert f"port {taken} for redis" in failed.stderr and "hint:" in failed.stderr and "Traceback" not in failed.stderr
    assert "DEVENV_REDIS_PORT" in failed.stderr  # how to move it, as for any taken port
    assert _master(proj) is None  # a master no stack forwards through ends with the command that started it
    proj.devenv("up")  # once the port is free, the same stack comes up
    assert _answers(taken)


def test_with_a_host_override_the_ports_are_published_there_and_nothing_is_forwarded(ssh_project: Project) -> None:
    proj = ssh_project
    proj.env["DEVENV_HOST_OVERRIDE"] = "10.213.0.2"  # the lane's namespace, which this machine reaches
    up = proj.devenv("up")
    urls = [line.split("=", 1)[1] for line in up.stdout.splitlines() if "=" in line]
    assert urls and all(urlsplit(url).hostname == "10.213.0.2" for url in urls)
    bindings = [b for binds in (proj.container("postgres").attrs["HostConfig"]["PortBindings"] or {}).values()
                for b in binds]
    assert bindings and all(b["HostIp"] == "10.213.0.2" for b in bindings)
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    stack = proj.stack()
    assert not _answers(stack.postgres.port)  # nothing on this machine's 127.0.0.1
    assert _master(proj) is None  # the API's master ends with each command: no stack forwards through it


def _lane_config(tmp_path: Path, name: str, **changes: str) -> str:
    """An ssh config with one alias like the lane's, some options changed."""
    options = {"HostName": "10.213.0.2", "User": "root", "IdentityFile": str(LANE_DIR / "client_ed25519"),
               "IdentitiesOnly": "yes", "UserKnownHostsFile": str(LANE_DIR / "known_hosts"),
               "GlobalKnownHostsFile": "/dev/null", "HostKeyAlias": "devenv-remote-ssh",
               "StrictHostKeyChecking": "yes", "SetEnv": f"DOCKER_HOST=unix://{LANE_DIR.parent}/docker.sock",
               "ConnectTimeout": "5", **changes}
    config = tmp_path / f"{name}.config"
    config.write_text(f"Host {name}\n" + "".join(f"    {key} {value}\n" for key, value in options.items()))
    config.chmod(0o600)
    return str(config)


def test_ssh_failures_are_dependency_errors_naming_the_host_and_ssh_s_reason(ssh_project: Project, tmp_path: Path) -> None:
    proj = ssh_project
    stranger = tmp_path / "stranger_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    (tmp_path / "empty_known_hosts").write_text("")
    cases = {
        "devenv-no-such-host.invalid": (None, "Could not resolve hostname"),
        "devenv-ssh-stranger": (_lane_config(tmp_path, "devenv-ssh-stranger", IdentityFile=str(stranger)),
                                "Permission denied"),
        "devenv-ssh-unknown-key": (_lane_config(tmp_path, "devenv-ssh-unknown-key",
                                                UserKnownHostsFile=str(tmp_path / "empty_known_hosts")),
                                   "Host key verification failed"),
        "devenv-ssh-no-engine": (_lane_config(tmp_path, "devenv-ssh-no-engine",
                                              SetEnv=f"DOCKER_HOST=unix://{LANE_DIR}/none.sock"),
                                 "no Docker engine socket at unix://"),
    }
    for host, (config, reason) in cases.items():
        env = {**proj.env, "DOCKER_HOST": f"ssh://{host}"}
        if config:
            env["DEVENV_SSH_CONFIG"] = config
        failed = _devenv(proj, env, "up")
        assert failed.returncode == 4, f"{host}: {failed.returncode} {failed.stderr}"
        assert "error: " in failed.stderr and "hint:" in failed.stderr and "Traceback" not in failed.stderr, failed.stderr
        assert host in failed.stderr and reason in failed.stderr, failed.stderr
        from devenv.runtime.sshtunnel import master_pid

        assert master_pid(f"ssh://{host}", env) is None  # no master left for nothing
    assert proj.containers() == []  # nothing was started anywhere


def _devenv(proj: Project, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "devenv", *args, "--runtime", "docker", "--profile", proj.profile],
                          cwd=proj.root, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_prune_of_an_orphaned_ssh_stack_releases_its_forwards_and_the_master(ssh_project: Project, tmp_path: Path) -> None:
    """A checkout deleted while its stack ran over SSH: `prune` removes the containers and also
    this machine's forwards of its ports, and the master that only it kept open."""
    import shutil
    import sys

    proj = ssh_project
    proj.devenv("up")
    stack = proj.stack()
    ports = [stack.postgres.port, stack.pgbouncer.port, stack.redis.port]
    assert _master(proj) is not None and all(_answers(port) for port in ports)
    config = (proj.root / "devenv.yaml").read_text()
    shutil.rmtree(proj.root)
    try:
        done = subprocess.run([sys.executable, "-m", "devenv", "prune", "--yes", str(proj.root)], cwd=tmp_path,
                              env=proj.env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert proj.client().containers.list(all=True, filters={"label": f"com.docker.compose.project={stack.name}"}) == []
        assert _master(proj) is None and not any(_answers(port) for port in ports)
    finally:
        proj.root.mkdir()  # for the fixture's `down` (nothing left to stop)
        (proj.root / "devenv.yaml").write_text(config)


def test_a_port_taken_while_the_master_was_down_is_an_error_not_half_a_tunnel(ssh_project: Project) -> None:
    """The master died, and another program took one of the stack's ports meanwhile: the next
    command names the port (exit 5) and leaves no master, rather than forwarding the other ports
    and letting a client give its password to that program (Redis's AUTH, sent by `status`)."""
    proj = ssh_project
    proj.devenv("up")
    stack = proj.stack()
    _kill(_master(proj))
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", stack.redis.port))
        squatter.listen()
        squatter.settimeout(0.5)
        for command in ("status", "reset", "psql"):  # psql and reset open sessions without the engine
            refused = proj.devenv(command, check=False)
            assert refused.returncode == 5 and f"port {stack.redis.port} for redis" in refused.stderr, \
                (command, refused.stderr)
            assert _master(proj) is None
        with pytest.raises(socket.timeout):
            squatter.accept()  # nothing of devenv's came to it
    assert "postgres" in proj.devenv("status").stdout  # the port free again: all forwarded
    assert _master(proj) is not None and proj.redis().ping()


def test_a_stale_recorded_engine_socket_is_asked_again(ssh_project: Project) -> None:
    """The remote engine's socket is asked once and recorded; when the remote's DOCKER_HOST moved
    (here: a record naming a socket that is not there), a restarted master asks again."""
    import json

    from devenv.runtime.sshtunnel import paths

    proj = ssh_project
    proj.devenv("up")
    _kill(_master(proj))
    record_file = paths(SSH_HOST).record
    record = json.loads(record_file.read_text())
    record["socket"] = "unix:///nonexistent/docker.sock"
    record_file.write_text(json.dumps(record))
    status = proj.devenv("status", "--json")
    assert all(s["state"] == "running" for s in json.loads(status.stdout)["services"]), status.stdout
    assert json.loads(record_file.read_text())["socket"] != "unix:///nonexistent/docker.sock"


def test_a_cold_up_from_the_cache_sets_the_passwords_through_the_forwards(ssh_project: Project, tmp_path: Path) -> None:
    """The restored cluster's first session (the archive's one-time login) reaches it through
    this machine's end of the forwarded port: no `docker exec` on the engine over SSH either."""
    from tests.integration.conftest import docker_client

    proj = ssh_project
    proj.env["DEVENV_CACHE_DIR"] = str(tmp_path / "cache")
    proj.env.pop("DEVENV_NO_CACHE", None)
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    since = time.time() - 1
    up = proj.devenv("up")
    assert "restoring seeded data" in up.stderr, up.stderr
    events = docker_client().events(since=int(since), until=int(time.time()) + 1, decode=True,  # the same engine, over TCP
                                    filters={"type": "container", "container": f"{proj.stack_name}-postgres-1"})
    execs = [e.get("Action", "") for e in events if str(e.get("Action", "")).startswith("exec_create: sh")]
    assert execs == [], execs
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
