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
from devenv.runtime.compose import compose_specs, load_compose
from devenv.runtime.docker import PullProgress, pull_error
from devenv.runtime.engine import Endpoint, find_endpoint
from devenv.settings import load_config
from devenv.stack import build_stack


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
from devenv.runtime import AutoRuntime
from devenv.settings import load_config
from devenv.stack import build_stack
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
           if leftover_socket else "no Docker engine found")
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
    from devenv.runtime.docker import COMPOSE_FILE, DockerRuntime

    stack = build_stack(load_config(project / "devenv.yaml", {}), profile)
    files = render_files(stack, compose_placement(stack))
    parsed = load_compose(files[COMPOSE_FILE])
    runtime = DockerRuntime(env={})
    runtime._remember_render(stack, tmp_path, files, parsed)
    remembered = runtime._parsed(tmp_path, files[COMPOSE_FILE])
    compose_file = tmp_path / COMPOSE_FILE
    expected = compose_specs(parsed, compose_file, "1.41", env={})
    again = compose_specs(remembered, compose_file, "1.41", env={})
    assert {s: spec.config_hash for s, spec in again.items()} == {s: spec.config_hash for s, spec in expected.items()}
    assert {s: spec.body for s, spec in again.items()} == {s: spec.body for s, spec in expected.items()}
    edited = files[COMPOSE_FILE].replace(f"image: {stack.postgres.image}", "image: postgres:99", 1)
    assert edited != files[COMPOSE_FILE]
    assert runtime._parsed(tmp_path, edited)["services"]["postgres"]["image"] == "postgres:99", "another text is parsed anew"
