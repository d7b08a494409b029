"""The Docker runtime's engine-free parts: engine discovery, pull progress, the render record.

No engine is contacted here; tests/integration/test_docker.py runs the real thing. The
compose file -> create bodies translation is tested in test_compose.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.errors import DependencyError
from devenv.render import compose_placement, render_files
from devenv.runtime.compose import COMPOSE_CONFIG_HASH, DEVENV_HASH, compose_specs, load_compose
from devenv.runtime.dockerapi import PullProgress, pull_error
from devenv.runtime.engine import Endpoint, find_endpoint
from devenv.config.settings import load_config
from devenv.config.resolve import build_stack


# ---- the engine: where it is ---------------------------------------------------------------------------


def test_docker_host_wins(tmp_path: Path) -> None:
    endpoint = find_endpoint({"DOCKER_HOST": "tcp://engine:2376", "DOCKER_TLS_VERIFY": "1", "HOME": str(tmp_path)})
    assert endpoint == Endpoint("tcp://engine:2376", "DOCKER_HOST", str(tmp_path / ".docker"), True)


def _context(config_dir: Path, name: str, host: str) -> None:
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}))


def test_current_context_from_config_json(tmp_path: Path) -> None:
    config_dir = tmp_path / ".docker"
    _context(config_dir, "colima", "unix:///home/me/.colima/default/docker.sock")
    (config_dir / "config.json").write_text(json.dumps({"currentContext": "colima"}))
    endpoint = find_endpoint({"HOME": str(tmp_path)}, sockets=[])
    assert endpoint is not None
    assert (endpoint.host, endpoint.origin) == ("unix:///home/me/.colima/default/docker.sock", "Docker context 'colima'")
    # DOCKER_CONTEXT overrides config.json; a context that does not exist is an error naming it.
    with pytest.raises(DependencyError, match="Docker context 'gone'"):
        find_endpoint({"HOME": str(tmp_path), "DOCKER_CONTEXT": "gone"}, sockets=[])
    assert find_endpoint({"HOME": str(tmp_path), "DOCKER_CONTEXT": "default"}, sockets=[]) is None


def test_default_socket_only_when_it_exists(tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"
    assert find_endpoint({"HOME": str(tmp_path)}, sockets=[sock]) is None
    sock.touch()
    assert find_endpoint({"HOME": str(tmp_path)}, sockets=[sock]) == Endpoint(f"unix://{sock}", "the default socket")


@pytest.mark.parametrize("leftover_socket", [False, True], ids=["no socket", "stopped engine's socket"])
def test_auto_without_any_engine_picks_native_without_importing_docker(
        project: Path, tmp_path: Path, leftover_socket: bool) -> None:
    """`--runtime auto` on a machine with no engine: decided from files alone (or one refused
    connect to a socket a stopped engine left), neither the SDK nor the Docker runtime loaded."""
    sock_path = tmp_path / "none.sock"
    if leftover_socket:
        import socket

        with socket.socket(socket.AF_UNIX) as left:
            left.bind(str(sock_path))  # bound, never listening: connecting is refused
    probe = f"""
import sys, json
import devenv.runtime.engine as d
d.default_sockets = lambda env: [d.Path({str(sock_path)!r})]
import devenv.runtime.engines as e
e.podman_sockets = lambda env: []  # no Podman either (this machine may run one)
from devenv.runtime.auto import AutoRuntime
from devenv.config.settings import load_config
from devenv.config.resolve import build_stack
said = []
auto = AutoRuntime(said.append, env={{"HOME": {str(tmp_path)!r}}})
chosen = auto.resolve(build_stack(load_config(d.Path({str(project / 'devenv.yaml')!r}), {{}}), "dev"))
print(json.dumps({{"chosen": chosen.name, "said": said, "docker": "docker" in sys.modules,
                  "runtime module": "devenv.runtime.docker" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=project)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    why = (f"no Docker engine answers at unix://{sock_path} (from the default socket): connection refused"
           if leftover_socket else "no Docker or Podman engine found")
    assert report == {"chosen": "native", "said": [f"runtime: native (local processes; {why})"],
                      "docker": False, "runtime module": False}


# ---- images ----------------------------------------------------------------------------------------------


def test_pull_progress_reports_layers_and_bytes() -> None:
    lines: list[str] = []
    report = PullProgress("postgres   postgres:16", lines.append, interval=3600)
    events = [
        {"status": "Pulling from library/postgres", "id": "16"},
        {"status": "Pulling fs layer", "id": "aaa"},
        {"status": "Pulling fs layer", "id": "bbb"},
        {"status": "Already exists", "id": "ccc"},
        {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 1_000_000, "total": 30_000_000}},
        {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 30_000_000, "total": 30_000_000}},
        {"status": "Download complete", "id": "aaa"},
        {"status": "Downloading", "id": "bbb", "progressDetail": {"current": 500, "total": 2_000_000}},
        {"status": "Extracting", "id": "aaa", "progressDetail": {"current": 30_000_000, "total": 30_000_000}},
        {"status": "Pull complete", "id": "aaa"},
    ]
    for event in events:
        report.feed(event)
    assert lines == ["postgres   postgres:16: layer ccc already exists", "postgres   postgres:16: layer aaa download complete (30.0 MB)"]
    assert report.summary() == "2/3 layers, 30.0 MB of 32.0 MB"


def test_pull_error_says_what_to_do_offline() -> None:
    error = pull_error("redis", "redis:7", "dial tcp: lookup registry-1.docker.io: no such host")
    assert error.exit_code == 4
    assert "redis:7" in error.message and "no such host" in error.message
    assert "DEVENV_REDIS_IMAGE" in error.hint and "--runtime native" in error.hint and "docker load" in error.hint


@pytest.mark.parametrize("profile", ["dev", "ci", "prod"])
def test_the_remembered_compose_file_gives_the_same_containers(project: Path, profile: str, tmp_path: Path) -> None:
    """`up` reads the parsed compose file back from its render record (no PyYAML): the specs,
    config hashes included (a differing one recreates the container), must be those of a parse."""
    from devenv.render import COMPOSE_FILE
    from devenv.runtime.dockerfiles import parsed, remember_render

    stack = build_stack(load_config(project / "devenv.yaml", {}), profile)
    files = render_files(stack, compose_placement(stack))
    loaded = load_compose(files[COMPOSE_FILE])
    remember_render(stack, tmp_path, files, loaded)
    remembered = parsed(tmp_path, files[COMPOSE_FILE])
    compose_file = tmp_path / COMPOSE_FILE
    expected = compose_specs(loaded, compose_file, "1.41", env={})
    again = compose_specs(remembered, compose_file, "1.41", env={})
    assert {s: spec.config_hash for s, spec in again.items()} == {s: spec.config_hash for s, spec in expected.items()}
    assert {s: spec.body for s, spec in again.items()} == {s: spec.body for s, spec in expected.items()}
    edited = files[COMPOSE_FILE].replace(f"image: {stack.postgres.image}", "image: postgres:99", 1)
    assert edited != files[COMPOSE_FILE]
    assert parsed(tmp_path, edited)["services"]["postgres"]["image"] == "postgres:99", "another text is parsed anew"


# ---- the plan of `up` (observed containers -> actions), without an engine -----------------------------


class FakeContainer:
    """What DockerRuntime._plan reads of a container: name, status, labels, port bindings, files."""

    def __init__(self, spec, status: str = "running", files: dict[str, str] | None = None,  # type: ignore[no-untyped-def]
                 labels: dict[str, str] | None = None) -> None:
        self.name, self.status, self.id = spec.name, status, f"id-{spec.service}"
        self.labels = {**spec.body["Labels"], **(labels or {})}
        self.attrs = {"HostConfig": {"PortBindings": spec.body["HostConfig"].get("PortBindings")}}
        self.files = {spec.mounts[name]: text for name, text in (files or {}).items()}

    def get_archive(self, path: str):  # type: ignore[no-untyped-def]
        import io
        import tarfile

        from docker.errors import NotFound

        if path not in self.files:
            raise NotFound(path)
        data, buffer = self.files[path].encode(), io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(Path(path).name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return [buffer.getvalue()], {}


def observed(project: Path, current: dict | None = None):  # type: ignore[no-untyped-def]
    from devenv.runtime.docker import Observed

    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    files = render_files(stack, compose_placement(stack))
    out_dir = stack.state_dir.absolute()
    specs = compose_specs(load_compose(files["docker-compose.yml"]), out_dir / "docker-compose.yml", "1.41", env={})
    seen = Observed(out_dir, files, {}, specs, {})
    seen.current.update({service: make(specs[service]) for service, make in (current or {}).items()})
    return stack, seen


def test_the_plan_creates_what_is_missing_and_leaves_what_is_current(project: Path) -> None:
    from devenv.runtime.docker import DockerRuntime

    stack, seen = observed(project)
    plan = DockerRuntime(env={})._plan(stack, seen)
    assert plan.actions == {"postgres": "create", "pgbouncer": "create", "redis": "create"}
    assert plan.to_bind == ["postgres", "pgbouncer", "redis"] and plan.reload_files == {}

    stack, seen = observed(project, {s: FakeContainer for s in ("postgres", "pgbouncer", "redis")})
    plan = DockerRuntime(env={})._plan(stack, seen)
    assert plan.actions == {} and plan.to_bind == [] and plan.starting == []


def test_the_plan_recreates_a_changed_definition_and_starts_a_stopped_container(project: Path) -> None:
    from devenv.runtime.docker import DockerRuntime

    stack, seen = observed(project, {
        "postgres": FakeContainer,
        "pgbouncer": lambda spec: FakeContainer(spec, status="exited"),
        "redis": lambda spec: FakeContainer(spec, labels={COMPOSE_CONFIG_HASH: "old"}),
    })
    plan = DockerRuntime(env={})._plan(stack, seen)
    assert plan.actions == {"pgbouncer": "start", "redis": "recreate"}
    assert plan.to_bind == ["pgbouncer"], "a running container that keeps its ports needs none freed"
    assert plan.starting == ["pgbouncer", "redis"]


def test_the_plan_reloads_postgres_only_when_a_sighup_applies_the_change(project: Path) -> None:
    """A reloadable postgresql.conf change is written in place and reloaded; a changed PgBouncer
    file beside it still recreates PgBouncer; a restart-only change recreates Postgres."""
    from devenv.runtime.docker import DockerRuntime

    stack, _ = observed(project)
    files = render_files(stack, compose_placement(stack))
    new_conf = files["postgresql.conf"]
    for old_conf, action in ((new_conf.replace("work_mem = '4MB'", "work_mem = '8MB'", 1), "reload"),
                             (new_conf.replace("shared_buffers = '128MB'", "shared_buffers = '256MB'", 1), "recreate")):
        assert old_conf != new_conf
        seen_files = {"postgresql.conf": old_conf, "pg_hba.conf": files["pg_hba.conf"]}
        stack.state_dir.mkdir(parents=True, exist_ok=True)
        (stack.state_dir / "postgresql.conf").write_text(old_conf)  # the host file the container mounts
        stack, seen = observed(project, {
            "postgres": lambda spec: FakeContainer(spec, files=seen_files, labels={DEVENV_HASH: "old"}),
            "pgbouncer": lambda spec: FakeContainer(spec, labels={DEVENV_HASH: "old"}),
            "redis": FakeContainer,
        })
        plan = DockerRuntime(env={})._plan(stack, seen)
        assert plan.actions == {"postgres": action, "pgbouncer": "recreate"}, action
        assert plan.reload_files == ({"postgresql.conf": new_conf} if action == "reload" else {})
