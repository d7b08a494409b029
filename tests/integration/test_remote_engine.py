"""A Docker engine that does not see this machine's files nor share its loopback: the remote lane's
(.ci/remote-engine-up.sh: a dockerd in a network namespace, reached over TCP at 10.213.0.2).

Nothing is bind-mounted there (the configs and keys are copied in through the API), the URLs
name the engine's host, the ports are bound on its address only, and the seeded-data cache
fills and restores through the archive API.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import ENGINE_LANES, Project, make_project, teardown_project, use_runtime


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """A dev-profile project on the remote lane's engine, with a seeded-data cache of its own."""
    use_runtime("remote", monkeypatch)
    proj = make_project(tmp_path / "proj", "remote", profile="dev")
    proj.env["DEVENV_CACHE_DIR"] = str(tmp_path / "cache")
    proj.env.pop("DEVENV_NO_CACHE", None)
    yield proj
    teardown_project(proj)


def _engine_address() -> str:
    return urlsplit(ENGINE_LANES["remote"]).hostname or ""


def test_remote_engine_gets_copies_urls_name_its_host_and_ports_bind_there_only(remote: Project) -> None:
    proj = remote
    address = _engine_address()
    up = json.loads(proj.devenv("up", "--json").stdout)
    for key, url in up["urls"].items():
        assert urlsplit(url).hostname == address, f"{key} names {url}"
    env = dict(line.split("=", 1) for line in proj.devenv("env").stdout.splitlines() if "=" in line)
    assert urlsplit(env["DATABASE_URL"]).hostname == address and env["PGHOST"] == address
    for service in ("postgres", "pgbouncer", "redis"):
        attrs = proj.container(service).attrs
        assert [m for m in attrs["Mounts"] if m["Type"] == "bind"] == [], f"{service} has a bind mount"
        bindings = [b for binds in (attrs["HostConfig"]["PortBindings"] or {}).values() for b in binds]
        assert bindings and all(b["HostIp"] == address for b in bindings), f"{service}: {bindings}"
    # The configs the servers run with are devenv's (copied in, not empty mount points).
    with proj.admin_connect() as conn:
        assert conn.execute("SHOW config_file").fetchone()[0] == "/etc/postgresql/postgresql.conf"
        assert conn.execute("SHOW log_min_duration_statement").fetchone()[0] == "1s"  # devenv.yaml's, not the default
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert proj.redis().ping()
    # The no-op `up` looks at the engine's host, not 127.0.0.1 (and not at this machine's /proc,
    # where the containers' pids mean nothing): a container stopped there is started again.
    assert "nothing to do" in proj.devenv("up").stderr
    assert json.loads((proj.root / ".devenv" / proj.profile / "state.json").read_text())["processes"] == {}
    proj.container("redis").stop()
    again = proj.devenv("up")
    assert "nothing to do" not in again.stderr and proj.redis().ping(), again.stderr


# The cache through the API and `down --volumes` leaving nothing on the engine: the every_engine
# tests test_second_cold_up_restores_the_cache_into_the_volume and test_down_volumes_deletes_the_data_and_up_reseeds in the remote lane.


def test_the_remote_engine_sees_none_of_this_machines_files(remote: Project) -> None:
    """What makes the lane a remote engine: a bind mount of the project's folder (or of the lane's
    own script) gives a container an empty directory there, as it would on another host."""
    client = remote.client()
    for folder in (remote.root, Path(__file__).resolve().parent):
        assert any(folder.iterdir())
        listing = client.containers.run("devenv-test/postgres:15", ["ls", "-A", "/probe"], entrypoint=[],
                                        volumes={str(folder): {"bind": "/probe", "mode": "ro"}}, remove=True)
        assert listing.decode().split() == [], f"the remote engine sees {folder}: {listing!r}"


def test_ssh_engine_that_ssh_cannot_reach_is_a_dependency_error_with_ssh_s_reason(tmp_path: Path) -> None:
    # ssh:// engines are reached through OpenSSH (tests/integration/test_ssh_engine.py); a host
    # ssh cannot reach says so, whatever lanes this machine has.
    proj = make_project(tmp_path / "proj", "native")
    proj.env.update({"DOCKER_HOST": "ssh://nobody@devenv-no-such-host.invalid"})
    proc = proj.devenv("up", "--runtime", "docker", check=False)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr  # DependencyError
    assert "devenv-no-such-host.invalid" in proc.stderr and "Could not resolve hostname" in proc.stderr
    assert "hint:" in proc.stderr


@pytest.mark.xdist_group("docker-engine")  # its stack runs on this machine's dockerd
def test_files_mode_switch_on_a_local_engine_recreates_with_copies_then_mounts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_runtime("docker", monkeypatch)
    proj = make_project(tmp_path / "proj", "docker", profile="ci")
    try:
        proj.env["DEVENV_DOCKER_FILES"] = "copy"
        proj.devenv("up")
        mounts = {m["Type"] for m in proj.container("postgres").attrs["Mounts"]}
        assert "bind" not in mounts and proj.stack().host == "127.0.0.1"  # a local engine stays on 127.0.0.1
        with proj.connect() as conn:
            assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
        proj.env["DEVENV_DOCKER_FILES"] = "mount"
        second = proj.devenv("up")
        assert "nothing changed" not in second.stderr
        assert "bind" in {m["Type"] for m in proj.container("postgres").attrs["Mounts"]}
        proj.env["DEVENV_DOCKER_FILES"] = "sideways"
        bad = proj.devenv("up", check=False)
        assert bad.returncode == 3 and "DEVENV_DOCKER_FILES" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        teardown_project(proj)


def test_an_override_the_engine_host_does_not_have_is_named_and_unset_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEVENV_HOST_OVERRIDE naming an address the engine's host lacks (this machine's end of the
    link): exit 4 naming the address and the variable, not 'did not start, see the logs'; the
    next `up` without it publishes on the engine's own address."""
    use_runtime("remote", monkeypatch)
    proj = make_project(tmp_path / "proj", "remote", profile="ci")
    try:
        proj.env["DEVENV_HOST_OVERRIDE"] = "10.213.0.1"
        bad = proj.devenv("up", check=False)
        assert bad.returncode == 4 and "Traceback" not in bad.stderr, bad.stderr
        assert "cannot be published on 10.213.0.1" in bad.stderr and "DEVENV_HOST_OVERRIDE" in bad.stderr, bad.stderr
        del proj.env["DEVENV_HOST_OVERRIDE"]
        proj.devenv("up")
        with proj.connect() as conn:
            assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
        assert proj.stack().host == _engine_address()
    finally:
        teardown_project(proj)


def test_a_failed_first_up_on_a_remote_engine_is_found_there_by_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first `up` on the remote engine fails (its Postgres port is taken there) after creating
    containers: `down --volumes` without DOCKER_HOST removes them and their volumes there, not
    on the engine it would find now (they stayed, and nothing recorded them)."""
    use_runtime("remote", monkeypatch)
    proj = make_project(tmp_path / "proj", "remote", profile="ci")
    client = proj.client()
    squatter = client.containers.run("devenv-test/redis:7", ["sleep", "300"], entrypoint=[], detach=True,
                                     ports={"6379/tcp": (_engine_address(), int(proj.env["DEVENV_POSTGRES_PORT"]))})
    try:
        failed = proj.devenv("up", check=False)
        assert failed.returncode == 5, failed.stderr
        assert proj.containers(), "the failed up left containers on the engine"
        squatter.remove(force=True)
        local = {k: v for k, v in proj.env.items() if k != "DOCKER_HOST"}
        proj.env = local
        proj.devenv("down", "--volumes", "--runtime", "auto")
        label = {"label": f"com.docker.compose.project={proj.stack_name}"}
        assert client.containers.list(all=True, filters=label) == []
        assert client.volumes.list(filters=label) == []
    finally:
        with contextlib.suppress(Exception):
            squatter.remove(force=True)
        proj.env["DOCKER_HOST"] = ENGINE_LANES["remote"]
        teardown_project(proj)
