"""The Docker runtime against a real engine: what only Docker has.

The containers devenv starts are compared with the rendered docker-compose.yml (parsed here,
independently of devenv's own translation), Compose's labels, TLS in a container, images that
are missing, an engine that is not there, a health check that never passes, a first start
that fails half way, leftovers of an interrupted `up`, and `--runtime auto`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.integration.conftest import Project, docker_client, make_project, teardown_project, use_runtime

SERVICES = ("postgres", "pgbouncer", "redis")


@pytest.fixture(params=["docker", "podman", "remote"])
def runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here is about the docker runtime only (overrides the conftest's parametrization);
    the podman and remote lanes run those marked every_engine."""
    return use_runtime(request.param, monkeypatch)


@pytest.fixture
def dev_project(tmp_path: Path, runtime: str) -> Iterator[Project]:
    """A fresh project on the durable dev profile (a named data volume)."""
    proj = make_project(tmp_path / "proj", runtime, profile="dev")
    yield proj
    teardown_project(proj)


def _next_up_recovers(proj: Any, marker: Path, note: Path) -> None:
    """After a killed restore: the next `up` serves the seeded data, clears the marker, notes the
    password and leaves no tar or zstd running; then the stack goes for the next kill point."""
    proj.devenv("up")
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    assert not marker.exists() and note.exists()
    assert not _unpackers(proj.root.parent / "cache", proj.project_name), "a killed restore's tar or zstd still runs"
    proj.devenv("down", "--volumes")


def _unpackers(cache_dir: Path, project_name: str) -> list[str]:
    """tar or zstd processes reading an archive of `cache_dir` or writing into a volume of the project."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            comm = (entry / "comm").read_text().strip() if entry.name.isdigit() else ""
            argv = (entry / "cmdline").read_bytes().decode(errors="replace") if comm in ("tar", "zstd") else ""
        except OSError:
            continue
        if str(cache_dir) in argv or f"/volumes/{project_name}-" in argv:
            found.append(f"{entry.name} {argv}")
    return found


def _stderr_error(result: Any) -> str:
    return next((line for line in result.stderr.splitlines() if line.startswith("error:")), "")


def _hint(result: Any) -> str:
    return next((line for line in result.stderr.splitlines() if line.startswith("hint:")), "")


# ---- the containers are the rendered compose file ---------------------------------------------------

_NS = {"h": 3600e9, "m": 60e9, "s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1}


def _ns(text: str) -> int:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", str(text))
    assert parts, f"not a duration: {text}"
    return int(sum(float(n) * _NS[u] for n, u in parts))


def _size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", str(text).lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


def _api_at_least(version: str, wanted: str) -> bool:
    return tuple(map(int, version.split("."))) >= tuple(map(int, wanted.split(".")))


@pytest.mark.parametrize("profile", ["dev", "prod", "ci"])
def test_containers_match_the_rendered_compose_file(running: Any, profile: str, tmp_path: Path) -> None:
    """Image, command, environment, ports, mounts, health check, limits, stop signal, labels, network."""
    proj = running(profile)
    state_dir = proj.root / ".devenv" / profile
    compose_path = state_dir / "docker-compose.yml"
    # The file is what `devenv render` writes, byte for byte.
    proj.devenv("render", "--out", str(tmp_path / "rendered"))
    assert compose_path.read_text() == (tmp_path / "rendered" / "docker-compose.yml").read_text()

    compose = yaml.safe_load(compose_path.read_text())
    api_version = docker_client().api.api_version
    containers = {c.labels["com.docker.compose.service"]: c for c in proj.containers()}
    assert set(containers) == set(compose["services"]), "one container per compose service, nothing else"

    for service, svc in compose["services"].items():
        container = containers[service]
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        where = f"{profile}/{service}"
        assert container.name == f"{compose['name']}-{service}-1", where
        assert container.attrs["State"]["Running"], where
        assert config["Image"] == svc["image"], where
        assert config["Cmd"] == [word.replace("$$", "$") for word in svc["command"]], where
        env = dict(item.split("=", 1) for item in config["Env"])
        for key, value in svc.get("environment", {}).items():
            # The file holds no variables: Compose's only interpolation here is $$ -> $.
            assert env.get(key) == str(value).replace("$$", "$"), f"{where}: environment {key}"
        if "entrypoint" in svc:  # Postgres's first-start initdb, then the image's own entrypoint
            assert config["Entrypoint"] == [word.replace("$$", "$") for word in svc["entrypoint"]], where

        expected_ports = {}
        for port in svc["ports"]:
            ip, published, target = port.split(":")
            expected_ports[f"{target}/tcp"] = [{"HostIp": ip, "HostPort": published}]
        assert host["PortBindings"] == expected_ports, where
        assert all(ip == "127.0.0.1" for ip, *_ in (p.split(":") for p in svc["ports"]))

        declared = compose.get("volumes", {})
        expected_mounts = set()
        for entry in svc.get("volumes", []):
            source, target, *mode = entry.split(":")
            read_only = "ro" in mode
            if source.startswith("."):
                expected_mounts.add(("bind", str((state_dir / source).resolve()), target, not read_only))
            else:
                expected_mounts.add(("volume", declared[source]["name"], target, not read_only))
        image_volumes = set((docker_client().images.get(config["Image"]).attrs["Config"].get("Volumes") or {}))
        seen_mounts = set()
        for mount in container.attrs["Mounts"]:
            key = ("bind", mount["Source"], mount["Destination"], mount["RW"]) if mount["Type"] == "bind" else (
                "volume", mount["Name"], mount["Destination"], mount["RW"])
            if key not in expected_mounts:
                # Only what Compose would add too: an anonymous volume for the image's own VOLUME.
                assert mount["Type"] == "volume" and mount["Destination"] in image_volumes, f"{where}: extra {mount}"
                continue
            seen_mounts.add(key)
        assert seen_mounts == expected_mounts, where
        assert set(host.get("Tmpfs") or {}) == set(svc.get("tmpfs", [])), where
        for bind in (m for m in expected_mounts if m[0] == "bind"):
            assert Path(bind[1]).is_file(), f"{where}: mounted file {bind[1]} is missing"

        check, health = config["Healthcheck"], svc["healthcheck"]
        assert check["Test"] == [part.replace("$$", "$") for part in health["test"]], where
        assert check["Interval"] == _ns(health["interval"]), where
        assert check["Timeout"] == _ns(health["timeout"]), where
        assert check["StartPeriod"] == _ns(health["start_period"]), where
        assert check["Retries"] == health["retries"], where
        if _api_at_least(api_version, "1.44"):
            assert check["StartInterval"] == _ns(health["start_interval"]), where
        else:  # this engine rejects it; the compose file keeps it for current Docker
            assert "StartInterval" not in check and "start_interval" in health, where

        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert host["Memory"] == (_size(limits["memory"]) if "memory" in limits else 0), where
        assert host["NanoCpus"] == (int(float(limits["cpus"]) * 1e9) if "cpus" in limits else 0), where
        if "stop_signal" in svc:
            assert config["StopSignal"] == svc["stop_signal"], where
        if "stop_grace_period" in svc:
            assert config["StopTimeout"] == _ns(svc["stop_grace_period"]) // 10**9, where

        for key, value in svc["labels"].items():
            assert config["Labels"].get(key) == str(value), f"{where}: label {key}"
        network = f"{compose['name']}_default"
        assert service in container.attrs["NetworkSettings"]["Networks"][network]["Aliases"], where


def test_compose_labels_make_it_a_compose_project(running: Any) -> None:
    """What `docker compose -p <name> ps` filters on and shows: project, service, oneoff, number, files."""
    proj = running("dev")
    client = docker_client()
    name = proj.stack_name
    listed = client.containers.list(filters={"label": [f"com.docker.compose.project={name}",
                                                       "com.docker.compose.oneoff=False"]})
    assert sorted(c.labels["com.docker.compose.service"] for c in listed) == sorted(SERVICES)
    state_dir = proj.root / ".devenv" / "dev"
    compose = yaml.safe_load((state_dir / "docker-compose.yml").read_text())
    for container in listed:
        labels = container.labels
        assert labels["com.docker.compose.container-number"] == "1"
        assert Path(labels["com.docker.compose.project.working_dir"]) == state_dir.absolute()
        assert Path(labels["com.docker.compose.project.config_files"]) == (state_dir / "docker-compose.yml").absolute()
        assert re.fullmatch(r"[0-9a-f]{64}", labels["com.docker.compose.config-hash"])
        assert labels["com.docker.compose.image"] == client.images.get(container.attrs["Config"]["Image"]).id
        assert labels["dev.devenv.project"] == proj.project_name and labels["dev.devenv.profile"] == "dev"
    assert listed[0].labels["com.docker.compose.project"] == compose["name"]
    pgbouncer = next(c for c in listed if c.labels["com.docker.compose.service"] == "pgbouncer")
    assert pgbouncer.labels["com.docker.compose.depends_on"] == "postgres:service_healthy:false"
    networks = client.networks.list(filters={"label": f"com.docker.compose.project={name}"})
    assert [n.name for n in networks] == [f"{name}_default"]
    assert networks[0].attrs["Labels"]["com.docker.compose.network"] == "default"
    volumes = {v.name: v.attrs["Labels"] for v in client.volumes.list(filters={"label": f"com.docker.compose.project={name}"})}
    assert set(volumes) == {f"{name}-pgdata", f"{name}-redisdata"}
    assert volumes[f"{name}-pgdata"]["com.docker.compose.volume"] == "pgdata"


def test_prod_runs_tls_with_the_key_owned_by_the_containers_postgres(running: Any) -> None:
    proj = running("prod")
    with proj.connect() as conn:  # DIRECT_DATABASE_URL carries sslmode=require on prod
        assert conn.execute("SHOW ssl").fetchone()[0] == "on"
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
    container = proj.container("postgres")
    owner = container.exec_run(["stat", "-c", "%U %a", "/etc/postgresql/server.key"]).output.decode().strip()
    assert owner == "postgres 600"
    # The host copy the compose file mounts is the same file, never readable by others.
    key = proj.root / ".devenv" / "prod" / "ssl" / "server.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # PgBouncer requires TLS too, with its own copy of the key, owned by its image's user.
    pgbouncer = proj.container("pgbouncer")
    user = pgbouncer.exec_run(["id", "-u"]).output.decode().strip()
    owner = pgbouncer.exec_run(["stat", "-c", "%u %a", "/etc/pgbouncer/server.key"]).output.decode().strip()
    assert owner == f"{user} 600"
    with proj.connect(pooled=True) as conn:  # DATABASE_URL carries sslmode=require too
        assert conn.pgconn.ssl_in_use
    copy = proj.root / ".devenv" / "prod" / "ssl" / "pgbouncer.key"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and copy.read_bytes() == key.read_bytes()


# ---- failures: engine, images, health, initialisation -----------------------------------------------


def test_engine_not_reachable_names_the_socket(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj", "native", profile="dev")  # no engine is needed for this one
    proj.env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    result = proj.devenv("up", "--runtime", "docker", check=False)
    assert result.returncode == 4, result.stderr
    error = _stderr_error(result)
    assert "unix:///nonexistent/docker.sock" in error and "DOCKER_HOST" in error, result.stderr
    assert "does not exist" in error
    assert "--runtime native" in _hint(result)
    status = proj.devenv("status", "--runtime", "docker", check=False)
    assert status.returncode == 4 and "unix:///nonexistent/docker.sock" in status.stderr


def test_missing_image_that_cannot_be_pulled(project: Project) -> None:
    project.env["DEVENV_REDIS_IMAGE"] = "devenv-test/nope:1"
    result = project.devenv("up", check=False)
    assert result.returncode == 4, result.stderr
    error, hint = _stderr_error(result), _hint(result)
    assert "devenv-test/nope:1" in error and "redis" in error and "could not be pulled" in error, result.stderr
    assert "pulling devenv-test/nope:1" in result.stderr
    assert "DEVENV_REDIS_IMAGE" in hint and "--runtime native" in hint and "docker load" in hint
    assert project.containers() == [], "nothing may start when an image is missing"


@pytest.fixture
def silent_redis_image(runtime: str) -> Iterator[str]:
    """A redis image whose server never starts: its entrypoint only sleeps (made by docker commit)."""
    client = docker_client()
    base = client.containers.create(os.environ.get("DEVENV_REDIS_IMAGE", "redis:7"))
    try:
        client.api.commit(base.id, repository="devenv-test/redis-silent", tag="test", changes=[
            'ENTRYPOINT ["sh", "-c", "echo devenv-test: this redis never answers; exec sleep 3600", "--"]'])
    finally:
        base.remove(force=True, v=True)
    yield "devenv-test/redis-silent:test"
    # The project's container of it goes first (its teardown comes later): else the image stays, dangling.
    for container in client.containers.list(all=True, filters={"ancestor": "devenv-test/redis-silent:test"}):
        container.remove(force=True, v=True)
    client.images.remove("devenv-test/redis-silent:test", force=True)


def test_health_check_that_never_passes_times_out_with_logs_and_health_output(project: Project, silent_redis_image: str) -> None:
    project.env["DEVENV_REDIS_IMAGE"] = silent_redis_image
    result = project.devenv("up", "--timeout", "5", check=False)
    assert result.returncode == 6, result.stderr
    error = _stderr_error(result)
    assert error.startswith("error: redis not healthy after 5s"), result.stderr
    assert "devenv-test: this redis never answers" in result.stderr, "the container's log tail"
    health = next((line for line in result.stderr.splitlines() if "Docker health check" in line), "")
    assert "Could not connect to Redis" in health or "Connection refused" in health, result.stderr
    assert "devenv logs redis" in _hint(result)


# ---- cold start from the cache: restored into the named volume -----------------------------------------


@pytest.fixture
def cached_dev_project(dev_project: Project, tmp_path: Path) -> Project:
    """The dev profile (its data in a named volume, which the cache fills) with its own cache."""
    dev_project.env["DEVENV_CACHE_DIR"] = str(tmp_path / "cache")
    dev_project.env.pop("DEVENV_NO_CACHE", None)
    return dev_project


@pytest.mark.every_engine
def test_second_cold_up_restores_the_cache_into_the_volume(cached_dev_project: Project) -> None:
    """A second checkout's cold `up` restores the cache; the restored cluster's first session,
    over the published port as the archive's one-time login, gives both roles this checkout's
    passwords and drops that login: no `docker exec`, no secret in the logs or the environment."""
    import time

    proj = cached_dev_project
    first = proj.devenv("up")
    assert "postgres   initdb" in first.stderr and "cached the seeded data" in first.stderr, first.stderr
    archives = list((proj.root.parent / "cache").glob("pgdata-*.tar.zst"))
    assert len(archives) == 1
    login = archives[0].with_name(archives[0].name.removesuffix(".tar.zst") + ".login")
    assert stat.S_IMODE(login.stat().st_mode) == 0o600, "the one-time login is readable only where the cache is"
    assert _restore_roles(proj) == [], "the live cluster never keeps the one-time login"
    # A base backup of the running server (the volume's directory is here): not restarted for it.
    # A remote engine's volume is not here: its data is read through the API from the stopped
    # container, which then starts again (test_remote_engine.py checks that cache).
    started = proj.container("postgres").attrs["State"]["StartedAt"][:26]  # ISO, to microseconds, UTC
    saved = datetime.datetime.fromtimestamp(archives[0].stat().st_mtime, tz=datetime.timezone.utc)
    if proj.engine != "remote":
        assert started < saved.strftime("%Y-%m-%dT%H:%M:%S.%f"), (started, saved)
    with proj.connect() as conn:
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('later@x', 'x')")
        conn.commit()
    proj.devenv("down", "--volumes")

    # Another checkout of the same setup: its own secrets, the same cache.
    shutil.rmtree(proj.root / ".devenv")
    since = time.time() - 1
    second = proj.devenv("up")
    assert "restoring seeded data" in second.stderr, second.stderr
    execs, actions = _postgres_execs(proj, since)
    assert "start" in actions and execs == [], actions
    assert _restore_roles(proj) == [], "the one-time login is dropped by the session that used it"
    with proj.admin_connect() as conn:  # its first start synced the restored files in one syncfs()
        assert conn.execute("SHOW recovery_init_sync_method").fetchone()[0] == "syncfs"
    pg = proj.stack().postgres
    logs = proj.devenv("logs", "postgres").stdout
    env = " ".join(proj.container("postgres").attrs["Config"]["Env"])
    for value in (login.read_text().strip(), pg.password, pg.password_secret, pg.admin_password, pg.admin_password_secret):
        assert value not in logs, [line for line in logs.splitlines() if value in line]
    for value in (login.read_text().strip(), pg.password, pg.admin_password):  # (POSTGRES_PASSWORD, initdb's, is as it was)
        assert value not in env
    assert "postgres   initdb" not in second.stderr and "schema+seed" not in second.stderr, second.stderr
    assert "restoring seeded data" not in proj.devenv("logs", "postgres").stdout
    assert "Skipping initialization" in proj.devenv("logs", "postgres").stdout, "the entrypoint found the data"
    assert proj.pgdata() == f"volume:{proj.stack_name}-pgdata"
    with proj.connect() as conn:  # the seeded state, with this checkout's password
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 8
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    assert not (proj.root / ".devenv" / "dev" / "docker-restore-pending").exists()
    proj.devenv("reset")  # the restored template serves resets
    proj.devenv("down")
    proj.devenv("up")  # and the restored volume is an ordinary one afterwards
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


def _postgres_execs(proj: Project, since: float) -> tuple[list[str], list[str]]:
    """The `docker exec`s the engine ran in the stack's postgres container since `since` (its
    events; not those of Docker's health check), and all its events' actions."""
    import time

    events = docker_client().events(since=int(since), until=int(time.time()) + 1, decode=True,
                                    filters={"type": "container", "container": f"{proj.stack_name}-postgres-1"})
    actions = [str(event.get("Action") or event.get("status") or "") for event in events]
    health = " ".join(proj.container("postgres").attrs["Config"]["Healthcheck"]["Test"][1:])  # Docker's own
    return [a for a in actions if a.startswith("exec_create") and health not in a], actions


def _restore_roles(proj: Project) -> list[str]:
    with proj.admin_connect() as conn:
        return [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'devenv_%%' "
                                           "AND rolname <> %s ORDER BY 1", (proj.stack().postgres.admin_user,))]


def test_a_cold_up_from_the_cache_makes_only_the_engine_calls_it_needs(cached_dev_project: Project,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request devenv sends the engine during a cold `up` from the cache (in this process,
    through the runtime's client): no `docker exec`, one listing of the project's containers,
    each image, network and volume looked up once."""
    from collections import Counter

    from devenv import lifecycle
    from devenv.runtime.docker import DockerRuntime

    proj = cached_dev_project
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    for name, value in proj.env.items():
        monkeypatch.setenv(name, value)
    runtime = DockerRuntime(env=proj.env)
    api = runtime.client().api  # connected: GET /version, which negotiates the API version, and no ping
    send, calls = api.send, []

    def counted(request: Any, **kwargs: Any) -> Any:
        calls.append(f"{request.method} {request.path_url.split('?')[0].removeprefix(f'/v{api.api_version}')}")
        return send(request, **kwargs)

    monkeypatch.setattr(api, "send", counted)
    said: list[str] = []
    lifecycle.up(proj.stack(), runtime, say=said.append)
    assert any("restoring seeded data" in line for line in said), said
    assert not [c for c in calls if "/exec" in c], calls
    counts = Counter(calls)
    assert counts["GET /containers/json"] == 1, calls  # states()'s listing serves the plan too
    assert [c for c in calls if "/networks" in c] == [f"GET /networks/{proj.stack_name}_default", "POST /networks/create"]
    assert counts[f"GET /volumes/{proj.stack_name}-pgdata"] == 1, calls  # its directory: from its creation
    assert not [c for c, n in counts.items() if n > 1 and c.startswith(("GET /images", "GET /volumes", "GET /networks"))]
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


def test_an_archive_without_its_one_time_login_gets_the_passwords_through_docker_exec(
        cached_dev_project: Project) -> None:
    """A cache entry an older devenv saved (no one-time login beside it), or one whose login is
    refused: the unix socket's way (`docker exec`) still sets the passwords, and drops that login."""
    import time

    proj = cached_dev_project
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    [login] = (proj.root.parent / "cache").glob("pgdata-*.login")
    for content in ("", "not-the-password\n"):
        if content:
            login.write_text(content)
            login.chmod(0o600)
        else:
            saved = login.read_bytes()
            login.unlink()
        since = time.time() - 1
        proj.devenv("up")
        execs, _ = _postgres_execs(proj, since)
        assert len(execs) == 1, execs
        with proj.connect(pooled=True) as conn:
            assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
        assert _restore_roles(proj) == []
        proj.devenv("down", "--volumes")
        if not content:
            login.write_bytes(saved)
            login.chmod(0o600)


def test_without_the_volumes_directory_the_cache_fills_through_the_archive_api(
        cached_dev_project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote engine, or devenv not root: the volume's directory is not here. save_cache then
    stops the container, reads its data directory through the engine's archive API and starts
    it again; a cold `up` restores that archive like the other."""
    from devenv.runtime.docker import DockerRuntime

    proj = cached_dev_project
    proj.devenv("up")
    [archive] = (proj.root.parent / "cache").glob("pgdata-*.tar.zst")
    key = archive.name.removeprefix("pgdata-").removesuffix(".tar.zst")
    archive.unlink()
    monkeypatch.setenv("DEVENV_CACHE_DIR", proj.env["DEVENV_CACHE_DIR"])
    monkeypatch.setattr(DockerRuntime, "_local_data_dir", lambda self, stack, spec: None)  # the one branch forced
    said: list[str] = []
    before = proj.container("postgres").attrs["State"]["StartedAt"]
    DockerRuntime(env=proj.env).save_cache(proj.stack(), key, said.append)
    assert archive.is_file() and "cached the seeded data" in said[-1], said
    assert proj.container("postgres").attrs["State"]["StartedAt"] > before, "stopped for the copy and started again"
    proj.devenv("down", "--volumes")
    again = proj.devenv("up")
    assert "restoring seeded data" in again.stderr and "postgres   initdb" not in again.stderr, again.stderr
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


def test_a_changed_seed_file_misses_the_docker_cache(cached_dev_project: Project) -> None:
    proj = cached_dev_project
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    tasks = proj.root / "seeds" / "data" / "002_tasks.sql"
    tasks.write_text(tasks.read_text().replace("Fix rounding error in invoice totals", "Fix rounding in invoice totals"))
    again = proj.devenv("up")
    assert "postgres   initdb" in again.stderr and "restoring seeded data" not in again.stderr, again.stderr
    assert len(list((proj.root.parent / "cache").glob("pgdata-*.tar.zst"))) == 2
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks WHERE title = 'Fix rounding in invoice totals'").fetchone()[0] == 1


def test_an_interrupted_restore_is_redone_and_gets_this_checkouts_password(cached_dev_project: Project) -> None:
    """Killed while restoring, the half-filled volume is discarded; killed after, the password is still set."""
    import signal
    import subprocess
    import sys

    proj = cached_dev_project
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    marker = proj.root / ".devenv" / "dev" / "docker-restore-pending"
    note = proj.root / ".devenv" / "dev" / "docker-volume-password"  # which password the volume has
    import time

    # Killed at the start of the restore, inside it (the tar and zstd unpacking into the volume
    # outlive the kill: in a group of their own, the next `up` ends them), and after it.
    for kill_on, delay in (("restoring seeded data", 0.0), ("restoring seeded data", 0.4), ("restored in", 0.0)):
        proc = subprocess.Popen([sys.executable, "-m", "devenv", "up", "--runtime", "docker", "-p", proj.profile],
                                cwd=proj.root, env=proj.env, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:  # type: ignore[union-attr]
            if kill_on in line:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        if delay:  # the restore may have ended in the meantime: either way the next `up` copes
            _next_up_recovers(proj, marker, note)
            continue
        # What the next `up` goes by: a half-filled volume is marked; a restored one has no note
        # of this checkout's password yet. (The unpacking tar and zstd, in a group of their own,
        # may outlive the kill: the next `up` ends them.)
        assert marker.exists() if kill_on == "restoring seeded data" else not marker.exists(), kill_on
        assert not note.exists(), kill_on
        _next_up_recovers(proj, marker, note)


@pytest.mark.parametrize("damage", ["truncated", "broken with a matching checksum"])
def test_a_damaged_cache_archive_is_quarantined_and_the_volume_initialised(cached_dev_project: Project,
                                                                          damage: str) -> None:
    """Issue 15, class 13: a truncated archive (its checksum says so before the restore) or one
    written broken (the unpack fails) never fails every cold `up`: it is moved aside, initdb runs."""
    import hashlib

    proj = cached_dev_project
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    [archive] = (proj.root.parent / "cache").glob("pgdata-*.tar.zst")
    data = archive.read_bytes()[: archive.stat().st_size // 2]
    archive.write_bytes(data)
    if damage != "truncated":
        Path(f"{archive}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {archive.name}\n")
    up = proj.devenv("up", check=False)
    assert "is damaged" in up.stderr and "moved aside" in up.stderr, up.stderr
    assert "Traceback" not in up.stderr
    if damage == "truncated":
        assert up.returncode == 0 and "initdb" in up.stderr, up.stderr
    else:  # found only while unpacking into the volume: this `up` fails, the next one recovers
        assert up.returncode == 8 and "run `devenv up` again" in up.stderr, up.stderr
        up = proj.devenv("up")
        assert "initdb" in up.stderr, up.stderr
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    assert len(list(archive.parent.glob("pgdata-*.damaged-*"))) == 1
    assert archive.exists(), "saved again, whole"


def test_the_ci_profile_on_tmpfs_neither_saves_nor_restores(project: Project, tmp_path: Path) -> None:
    project.env["DEVENV_CACHE_DIR"] = str(tmp_path / "cache")
    project.env.pop("DEVENV_NO_CACHE", None)
    first = project.devenv("up")
    assert "cached the seeded data" not in first.stderr
    assert not list((tmp_path / "cache").glob("pgdata-*.tar.zst"))


# ---- lifecycle details only Docker has ----------------------------------------------------------------


def test_leftovers_of_an_interrupted_up_are_found_by_label(project: Project) -> None:
    project.devenv("up")
    client = docker_client()
    name = project.stack_name
    redis = project.container("redis")
    redis.remove(force=True, v=True)  # as if `up` died between removing and creating it
    image = project.container("postgres").attrs["Config"]["Image"]
    stray = client.containers.create(image, ["sleep", "60"], entrypoint=[], name=f"{name}-worker-1", labels={
        "com.docker.compose.project": name, "com.docker.compose.service": "worker",
        "com.docker.compose.oneoff": "False", "dev.devenv.project": project.project_name})
    helper = client.containers.create(image, ["true"], entrypoint=[], name=f"{name}-postgres-tls", labels={
        "com.docker.compose.project": name, "com.docker.compose.service": "postgres",
        "com.docker.compose.oneoff": "True", "dev.devenv.project": project.project_name})
    before = {s: project.container(s).id for s in ("postgres", "pgbouncer")}

    result = project.devenv("up")
    assert f"removed leftover container {stray.name}" in result.stderr
    assert f"removed leftover container {helper.name}" in result.stderr
    assert sorted(c.name for c in project.containers()) == sorted(f"{name}-{s}-1" for s in SERVICES)
    assert {s: project.container(s).id for s in ("postgres", "pgbouncer")} == before
    assert project.redis().ping() is True


def test_a_created_but_never_started_container_is_started(project: Project) -> None:
    """An `up` killed between creating a container and starting it: the next `up` starts that one."""
    from devenv.runtime.compose import compose_specs, load_compose

    project.devenv("up")
    client = docker_client()
    project.container("redis").remove(force=True, v=True)
    state_dir = (project.root / ".devenv" / project.profile).absolute()
    images = {s.image: client.images.get(s.image).id for s in project.stack().services}
    specs = compose_specs(load_compose((state_dir / "docker-compose.yml").read_text()), state_dir / "docker-compose.yml",
                          client.api.api_version, images, env=project.env)
    created = client.api.create_container_from_config(specs["redis"].body, name=specs["redis"].name)["Id"]
    assert project.container("redis").status == "created"

    result = project.devenv("up")
    assert "starting redis;" in result.stderr, result.stderr
    assert project.container("redis").id == created, "the created container was started, not replaced"
    assert project.container("redis").status == "running"
    assert project.redis().ping() is True


def test_auto_picks_docker_when_the_engine_answers_and_follows_the_stack(project: Project) -> None:
    up = project.devenv("up", "--runtime", "auto")
    assert "runtime: docker (engine at " in up.stderr, up.stderr
    assert "ready on docker" in up.stderr
    status = project.devenv("status", "--json", "--runtime", "auto")
    rows = json.loads(status.stdout)["services"]
    assert [r["pid"] for r in rows] == [project.server_pids()[s] for s in SERVICES]
    down = project.devenv("down", "--runtime", "auto")
    assert "stopped postgres, pgbouncer, redis" in down.stderr
    assert project.containers() == []


def test_auto_falls_back_to_native_when_no_engine_answers(tmp_path: Path) -> None:
    if shutil.which("pgbouncer", path="/usr/sbin:/usr/bin") is None:
        pytest.skip("the native runtime is not installed")
    proj = make_project(tmp_path / "proj", "native", profile="ci")
    proj.env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    try:
        up = proj.devenv("up", "--runtime", "auto", "--no-seed")
        said = next(l for l in up.stderr.splitlines() if l.startswith("runtime:"))
        assert said.startswith("runtime: native (local processes; no Docker engine answers at unix:///nonexistent/docker.sock")
        assert "ready on native" in up.stderr
        # Recorded: the next commands follow the stack to native, whatever the engine does.
        other = dataclasses.replace(proj, env={k: v for k, v in proj.env.items() if k != "DOCKER_HOST"})
        assert other.devenv("status", "--runtime", "auto").returncode == 0
    finally:
        proj.devenv("down", "--volumes", "--runtime", "auto", check=False)
