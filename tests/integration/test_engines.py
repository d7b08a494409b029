"""Podman as an engine of its own (issue 18): found without DOCKER_HOST, told apart from Docker,
and a Podman whose networks have no DNS named at once by `up` and `doctor`.

The podman lane of the conftest runs the stack checks (every_engine) with DOCKER_HOST on
Podman's socket; here `--runtime podman` finds that socket by itself. The Podman without DNS
is real: a second API service of the same Podman (same images, same storage) whose netavark
finds no aardvark-dns (its own helper directory holds netavark only) and keeps its networks in
a directory and an address pool of its own, so the first service's networks are untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import Project, make_project, teardown_project, use_runtime

NETAVARK = ("/usr/lib/podman/netavark", "/usr/libexec/podman/netavark")


@pytest.fixture
def podman_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """A project on the podman lane (skipped, or failed in CI, when Podman's socket is not there)."""
    proj = make_project(tmp_path / "proj", use_runtime("podman", monkeypatch), profile="ci")
    yield proj
    teardown_project(proj)


def _without_engine_hints(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("DOCKER_HOST", "CONTAINER_HOST", "DOCKER_CONTEXT")}


def test_runtime_podman_finds_podmans_socket_by_itself(podman_project: Project) -> None:
    proj = podman_project
    proj.env = _without_engine_hints(proj.env)  # neither DOCKER_HOST nor CONTAINER_HOST: found by itself
    up = proj.devenv("up", "--runtime", "podman")
    assert "Podman 4." in up.stderr and "podman.sock" in up.stderr, up.stderr
    # The containers are Podman's (asked on its socket), and the pool answers: PgBouncer found postgres.
    assert {c.labels["com.docker.compose.service"] for c in proj.containers()} == {"postgres", "pgbouncer", "redis"}
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] > 0
    doctor = proj.devenv("doctor", "--runtime", "podman")
    assert "ok    engine: Podman 4." in doctor.stdout and "Docker API 1.41, rootful" in doctor.stdout, doctor.stdout
    assert "ok    engine dns: containers find each other by name" in doctor.stdout
    assert "FAIL" not in doctor.stdout, doctor.stdout  # conmon holds the published ports: this stack's
    # A second copy on dockerd is refused, naming where the stack runs (it would orphan this one).
    second = proj.devenv("up", "--runtime", "docker", check=False)
    assert second.returncode == 8 and "is up on the docker runtime (engine unix:///run/podman/podman.sock)" \
        in second.stderr and "devenv down" in second.stderr, second.stderr
    from tests.integration.conftest import docker_client

    label = {"label": f"com.docker.compose.project={proj.stack_name}"}
    assert docker_client("unix:///var/run/docker.sock").containers.list(all=True, filters=label) == []
    # So is a `down` there: it would stop nothing and forget the stack that runs on Podman.
    stray = proj.devenv("down", "--runtime", "docker", check=False)
    assert stray.returncode == 8 and "nothing would stop there" in stray.stderr \
        and "DOCKER_HOST=unix:///run/podman/podman.sock" in stray.stderr, stray.stderr
    assert len(proj.containers()) == 3 and all(c.status == "running" for c in proj.containers())
    # `ls` asks each engine a stack was started on, not only the one devenv would use now
    # (dockerd's default socket here): the stack runs, on Podman.
    listed = json.loads(subprocess.run([sys.executable, "-m", "devenv", "ls", "--json"], cwd=proj.root, env=proj.env,
                                       capture_output=True, text=True, check=True, timeout=60).stdout)
    ours = [s for s in listed if s["checkout"] == str(proj.root.resolve())]
    assert len(ours) == 1 and ours[0]["state"] == "running", ours
    assert ours[0]["engine"] == "unix:///run/podman/podman.sock", ours
    # Later commands without --runtime (auto) find the stack on Podman, not on dockerd (which also
    # runs here): `up` recorded the engine it started it on.
    status = proj.devenv("status", "--json", "--runtime", "auto")
    assert all(s["state"] == "running" for s in json.loads(status.stdout)["services"]), status.stdout
    down = proj.devenv("down", "--volumes", "--runtime", "auto")
    assert "postgres" in down.stderr + down.stdout
    assert not proj.containers()


@pytest.fixture
def podman_without_dns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """CONTAINER_HOST of a Podman API service whose netavark has no aardvark-dns beside it."""
    use_runtime("podman", monkeypatch)  # the same Podman, its images loaded
    netavark = next((p for p in NETAVARK if os.path.exists(p)), None)
    if netavark is None or shutil.which("podman") is None:
        pytest.skip("needs podman and netavark")
    base = Path(f"/tmp/devenv-nodns-{os.getpid()}-{tmp_path.name[-12:]}")  # short: a unix socket path
    (base / "helpers").mkdir(parents=True)
    (base / "networks").mkdir()
    os.symlink(netavark, base / "helpers" / "netavark")
    conf = base / "containers.conf"
    conf.write_text(
        "[containers]\ndefault_ulimits = []\n\n"
        f'[network]\nnetwork_backend = "netavark"\nnetwork_config_dir = "{base / "networks"}"\n'
        'default_subnet_pools = [{"base" = "10.251.0.0/16", "size" = 24}]\n\n'
        f'[engine]\nhelper_binaries_dir = ["{base / "helpers"}"]\n')
    sock = base / "podman.sock"
    env = {**_without_engine_hints(dict(os.environ)), "CONTAINERS_CONF": str(conf)}
    with open(base / "service.log", "wb") as log:
        service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sock.exists(), (base / "service.log").read_text()
        yield f"unix://{sock}"
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
        shutil.rmtree(base, ignore_errors=True)


def test_podman_without_dns_is_named_by_doctor_and_by_up_at_once(tmp_path: Path, podman_without_dns: str) -> None:
    proj = make_project(tmp_path / "proj", "podman", profile="ci")
    proj.env = {**_without_engine_hints(proj.env), "CONTAINER_HOST": podman_without_dns}
    try:
        doctor = proj.devenv("doctor", "--runtime", "podman", check=False)
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        line = next(line for line in doctor.stdout.splitlines() if line.startswith("FAIL  engine dns:"))
        assert "aardvark-dns" in line and "apt-get install aardvark-dns" in line, line
        # `up` says the same as soon as PgBouncer fails to resolve postgres, not after the 60 s timeout.
        started = time.monotonic()
        up = proj.devenv("up", "--runtime", "podman", check=False)
        assert up.returncode == 4, up.stderr
        assert "error: PgBouncer cannot reach postgres by name" in up.stderr and "aardvark-dns" in up.stderr, up.stderr
        assert "hint: install aardvark-dns" in up.stderr and "Traceback" not in up.stderr
        assert time.monotonic() - started < 45, "named after the health timeout, not at once"
    finally:
        proj.devenv("down", "--volumes", "--runtime", "podman", check=False)


def test_down_on_another_runtime_than_the_stacks_is_refused(tmp_path: Path) -> None:
    """A native stack and `down --runtime docker`: nothing would stop, and the stack that runs
    would be forgotten (state.json cleared): exit 8, the servers keep running."""
    proj = make_project(tmp_path / "proj", "native")
    try:
        proj.devenv("up")
        stray = proj.devenv("down", "--runtime", "docker", check=False)
        assert stray.returncode == 8, stray.stderr
        assert "is up on the native runtime" in stray.stderr and "leave out --runtime" in stray.stderr, stray.stderr
        with proj.connect() as conn:
            assert conn.execute("SELECT 1").fetchone()[0] == 1
        assert (proj.root / ".devenv" / proj.profile / "state.json").exists()
        proj.devenv("down")  # where it runs: stopped
    finally:
        teardown_project(proj)


@pytest.mark.xdist_group("docker-engine")  # its stack runs on this machine's dockerd
def test_a_recorded_engine_that_does_not_answer_is_named_not_taken_for_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stack whose recorded engine does not answer (a dropped network, an ssh agent gone, a
    Podman socket stopped): `down` and `status` say so (exit 4), never stop nothing and forget
    the stack, nor report on another engine or fall back to native. Deleting state.json, as the
    hint says, is how to forget an engine gone for good."""
    proj = make_project(tmp_path / "proj", use_runtime("docker", monkeypatch))
    try:
        proj.devenv("up")
        state = proj.root / ".devenv" / proj.profile / "state.json"
        data = json.loads(state.read_text())
        assert data["runtime"] == "docker" and data["engine"]
        data["engine"] = f"unix://{tmp_path}/gone.sock"  # as if started on an engine that is not answering
        state.write_text(json.dumps(data))
        for argv in (("down", "--volumes", "--runtime", "docker"), ("down", "--runtime", "auto"),
                     ("status", "--runtime", "auto")):
            refused = proj.devenv(*argv, check=False)
            assert refused.returncode == 4 and "gone.sock, which does not answer" in refused.stderr, (argv, refused.stderr)
            assert str(state) in refused.stderr and "Traceback" not in refused.stderr
            assert state.exists() and len(proj.containers(running_only=True)) == 3
        state.unlink()  # gone for good: forgotten
        proj.devenv("down", "--volumes", "--runtime", "docker")
        assert not proj.containers()
    finally:
        teardown_project(proj)


def test_prune_removes_an_orphaned_podman_stack_there_while_dockerd_is_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout deleted while its stack ran on Podman: `prune` (dockerd being the engine devenv
    would use now) finds it on the engine it was started on and removes its containers and
    volumes there, then its record; before, the record went and the containers stayed."""
    from tests.integration.conftest import docker_teardown

    proj = make_project(tmp_path / "proj", use_runtime("podman", monkeypatch), profile="dev")
    project, stack = proj.project_name, proj.stack_name
    label = {"label": f"com.docker.compose.project={stack}"}
    try:
        proj.devenv("up")
        assert len(proj.client().containers.list(all=True, filters=label)) == 3
        shutil.rmtree(proj.root)
        done = subprocess.run([sys.executable, "-m", "devenv", "prune", "--yes", str(proj.root)], cwd=tmp_path,
                              env=_without_engine_hints(proj.env),  # the default engine: dockerd's socket
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert proj.client().containers.list(all=True, filters=label) == []
        assert proj.client().volumes.list(filters=label) == []
    finally:
        docker_teardown(project, proj.docker_host)
