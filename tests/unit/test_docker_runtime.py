"""The Docker runtime's engine-free parts: compose file -> create bodies, engine discovery, pull progress.

No engine is contacted here; tests/integration/test_docker.py runs the real thing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devenv.errors import ConfigError, DependencyError
from devenv.clients.pgwire import scram_secret
from devenv.render import compose_placement, render_files
from devenv.runtime.docker import (
    COMPOSE_CONFIG_HASH,
    DEVENV_HASH,
    Endpoint,
    PullProgress,
    compose_specs,
    find_endpoint,
    load_compose,
    pull_error,
)
from devenv.config.settings import load_config
from devenv.config.resolve import build_stack


def rendered_compose(project: Path, profile: str) -> dict:
    stack = build_stack(load_config(project / "devenv.yaml", {}), profile)
    return load_compose(render_files(stack, compose_placement(stack))["docker-compose.yml"])


def specs_for(project: Path, profile: str, api: str = "1.41", **kwargs):  # type: ignore[no-untyped-def]
    compose_file = project / ".devenv" / profile / "docker-compose.yml"
    return compose_specs(rendered_compose(project, profile), compose_file, api, env={}, **kwargs)


def test_prod_postgres_body_is_the_compose_service(project: Path) -> None:
    spec = specs_for(project, "prod", image_ids={"postgres:16": "sha256:abc"})["postgres"]
    body, host = spec.body, spec.body["HostConfig"]
    state = project / ".devenv" / "prod"
    assert spec.name == "taskflow-prod-postgres-1"
    assert body["Image"] == "postgres:16"
    assert body["Cmd"] == ["postgres", "-c", "config_file=/etc/postgresql/postgresql.conf"]
    # The password as its SCRAM secret, Compose's $$ escapes undone (initdb stores it as is).
    secret = scram_secret("taskflow", "pg-test-pw")
    assert "$" in secret
    assert set(body["Env"]) == {"POSTGRES_USER=taskflow", f"POSTGRES_PASSWORD={secret}", "POSTGRES_DB=taskflow",
                                "PGDATA=/var/lib/postgresql/data"}
    assert body["ExposedPorts"] == {"5432/tcp": {}}
    assert host["PortBindings"] == {"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5432"}]}
    assert host["Mounts"] == [
        {"Type": "volume", "Source": "taskflow-prod-pgdata", "Target": "/var/lib/postgresql/data", "ReadOnly": False},
        {"Type": "bind", "Source": str(state / "postgresql.conf"), "Target": "/etc/postgresql/postgresql.conf", "ReadOnly": True},
        {"Type": "bind", "Source": str(state / "pg_hba.conf"), "Target": "/etc/postgresql/pg_hba.conf", "ReadOnly": True},
        {"Type": "bind", "Source": str(state / "ssl" / "server.crt"), "Target": "/etc/postgresql/server.crt", "ReadOnly": True},
        {"Type": "bind", "Source": str(state / "ssl" / "server.key"), "Target": "/etc/postgresql/server.key", "ReadOnly": True},
    ]
    assert spec.volumes == {"taskflow-prod-pgdata": {"com.docker.compose.project": "taskflow-prod",
                                                     "com.docker.compose.volume": "pgdata"}}
    assert host["Memory"] == 1 << 30 and host["NanoCpus"] == 1_000_000_000
    assert host["NetworkMode"] == "taskflow-prod_default"
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"taskflow-prod_default": {"Aliases": ["postgres", spec.name]}}}
    assert body["StopSignal"] == "SIGINT" and body["StopTimeout"] == 30
    assert body["Healthcheck"] == {
        "Test": ["CMD", "pg_isready", "-h", "127.0.0.1", "-p", "5432", "-U", "taskflow", "-d", "taskflow"],
        "Interval": 2_000_000_000, "Timeout": 3_000_000_000, "StartPeriod": 60_000_000_000, "Retries": 30,
    }
    labels = body["Labels"]
    assert labels["com.docker.compose.project"] == "taskflow-prod"
    assert labels["com.docker.compose.service"] == "postgres"
    assert labels["com.docker.compose.oneoff"] == "False"
    assert labels["com.docker.compose.container-number"] == "1"
    assert labels["com.docker.compose.project.working_dir"] == str(state)
    assert labels["com.docker.compose.project.config_files"] == str(state / "docker-compose.yml")
    assert labels["com.docker.compose.image"] == "sha256:abc"
    assert labels["dev.devenv.service"] == "postgres" and labels[DEVENV_HASH] == spec.files_hash
    assert labels[COMPOSE_CONFIG_HASH] == spec.config_hash


def test_start_interval_only_for_engines_that_take_it(project: Path) -> None:
    old = specs_for(project, "dev", "1.41")["redis"].body["Healthcheck"]
    new = specs_for(project, "dev", "1.44")["redis"].body["Healthcheck"]
    assert "StartInterval" not in old
    assert new["StartInterval"] == 100_000_000
    assert {k: v for k, v in new.items() if k != "StartInterval"} == old


def test_compose_escapes_are_undone_like_compose(project: Path) -> None:
    test = specs_for(project, "dev")["redis"].body["Healthcheck"]["Test"]
    assert test == ["CMD-SHELL", 'test "$(redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG']


def test_ci_keeps_postgres_data_on_tmpfs_and_no_volumes(project: Path) -> None:
    specs = specs_for(project, "ci")
    assert specs["postgres"].body["HostConfig"]["Tmpfs"] == {"/var/lib/postgresql/data": ""}
    assert all(not spec.volumes for spec in specs.values())
    assert specs["pgbouncer"].body["Labels"]["com.docker.compose.depends_on"] == "postgres:service_healthy:false"


def test_config_hash_ignores_the_files_hash_but_not_the_definition(project: Path) -> None:
    compose = rendered_compose(project, "dev")
    compose_file = project / ".devenv" / "dev" / "docker-compose.yml"
    base = compose_specs(compose, compose_file, "1.41", env={})["redis"]
    compose["services"]["redis"]["labels"]["dev.devenv.config-hash"] = "0" * 16
    files_only = compose_specs(compose, compose_file, "1.41", env={})["redis"]
    assert files_only.config_hash == base.config_hash and files_only.files_hash != base.files_hash
    compose["services"]["redis"]["ports"] = ["127.0.0.1:7000:6379"]
    assert compose_specs(compose, compose_file, "1.41", env={})["redis"].config_hash != base.config_hash


@pytest.mark.parametrize("key", ["networks", "restart", "privileged"])
def test_a_compose_key_devenv_does_not_translate_is_an_error(project: Path, key: str) -> None:
    compose = rendered_compose(project, "dev")
    if key == "networks":
        compose["networks"] = {"default": {}}
    else:
        compose["services"]["redis"][key] = "always" if key == "restart" else True
    with pytest.raises(ConfigError, match=key):
        compose_specs(compose, project / "docker-compose.yml", "1.41", env={})


def test_durations_sizes_and_variables(project: Path) -> None:
    compose = rendered_compose(project, "dev")
    svc = compose["services"]["redis"]
    svc["healthcheck"]["interval"] = "1m30s"
    svc["stop_grace_period"] = "1500ms"
    svc["deploy"] = {"resources": {"limits": {"memory": "512m", "cpus": "0.5"}}}
    svc["environment"]["FROM_ENV"] = "${DEVENV_TEST_VALUE:-fallback}-$${LITERAL}"
    body = compose_specs(compose, project / "docker-compose.yml", "1.41", env={"DEVENV_TEST_VALUE": "x"})["redis"].body
    assert body["Healthcheck"]["Interval"] == 90_000_000_000
    assert body["StopTimeout"] == 2
    assert body["HostConfig"]["Memory"] == 512 << 20 and body["HostConfig"]["NanoCpus"] == 500_000_000
    assert "FROM_ENV=x-${LITERAL}" in body["Env"]
    svc["healthcheck"]["interval"] = "soon"
    with pytest.raises(ConfigError, match="not a duration"):
        compose_specs(compose, project / "docker-compose.yml", "1.41", env={})


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
