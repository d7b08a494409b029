"""The Compose-to-API translator (devenv.runtime.compose): the rendered compose file -> create bodies.

Pure: no engine, no SDK. tests/integration/test_docker.py compares `docker inspect` with the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.errors import ConfigError
from devenv.clients.pgwire import scram_secret
from devenv.render import compose_placement, render_files
from devenv.runtime.compose import COMPOSE_CONFIG_HASH, DEVENV_HASH, compose_specs, load_compose
from devenv.config.settings import load_config
from devenv.config.resolve import build_stack


def rendered_compose(project: Path, profile: str) -> dict:
    stack = build_stack(load_config(project / "devenv.yaml", {}), profile)
    return load_compose(render_files(stack, compose_placement(stack))["docker-compose.yml"])


def specs_for(project: Path, profile: str, api: str = "1.41", **kwargs):  # type: ignore[no-untyped-def]
    compose_file = project / ".devenv" / profile / "docker-compose.yml"
    return compose_specs(rendered_compose(project, profile), compose_file, api, env={}, **kwargs)


def test_prod_postgres_body_is_the_compose_service(project: Path) -> None:
    from devenv.config.identity import record_name

    record_name(project / ".devenv" / "prod", project, "taskflow", "taskflow-prod")  # as a pre-id checkout's
    spec = specs_for(project, "prod", image_ids={"postgres:16": "sha256:abc"})["postgres"]
    body, host = spec.body, spec.body["HostConfig"]
    state = project / ".devenv" / "prod"
    assert spec.name == "taskflow-prod-postgres-1"
    assert body["Image"] == "postgres:16"
    # The command: the first start's initdb (a shell script), then the image's entrypoint with postgres
    assert body["Cmd"][:2] == ["sh", "-c"] and "Entrypoint" not in body
    assert body["Cmd"][3:] == ["devenv-first-start", "postgres", "-c", "config_file=/etc/postgresql/postgresql.conf"]
    # The password as its SCRAM secret, Compose's $$ escapes undone (initdb stores it as is).
    # The bootstrap superuser is devenv's admin role, not the application's.
    secret = scram_secret("devenv_admin", "pg-admin-test-pw")
    assert "$" in secret
    assert set(body["Env"]) == {"POSTGRES_USER=devenv_admin", f"POSTGRES_PASSWORD={secret}", "POSTGRES_DB=taskflow",
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
        "Test": ["CMD", "pg_isready", "-h", "127.0.0.1", "-p", "5432", "-U", "devenv_admin", "-d", "taskflow"],
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


def test_postgres_command_runs_initdb_then_the_images_entrypoint(project: Path) -> None:
    """The first start's initdb without the image's temporary server: a shell script that sh
    parses, Compose's $$ undone, run by the image's own entrypoint (which passes `sh` through as
    root) and handing over to it with postgres's command."""
    import subprocess

    dev, ci = (specs_for(project, profile)["postgres"].body for profile in ("dev", "ci"))
    for body in (dev, ci):
        sh, flag, script, name, *command = body["Cmd"]
        assert (sh, flag, name) == ("sh", "-c", "devenv-first-start") and command[0] == "postgres"
        assert "Entrypoint" not in body, "the image's entrypoint stays"
        assert "$$" not in script and '[ ! -s "$PGDATA/PG_VERSION" ]' in script
        assert script.rstrip().endswith('exec docker-entrypoint.sh "$@"')
        subprocess.run(["sh", "-n", "-c", script], check=True)  # it parses
    # tmpfs (ci) has nothing to sync to; a volume's initdb syncs as the image's does
    assert "--no-sync" in ci["Cmd"][2] and "--no-sync" not in dev["Cmd"][2]


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


def test_prod_pgbouncer_mounts_the_certificate_and_its_own_key_copy(project: Path) -> None:
    """TLS is required on TCP in prod, PgBouncer included: it serves Postgres's certificate with
    a copy of the key that devenv hands to PgBouncer's image user (Postgres's is 0600, its own)."""
    spec = specs_for(project, "prod", image_ids={"postgres:16": "sha256:abc"})["pgbouncer"]
    state = project / ".devenv" / "prod"
    mounts = spec.body["HostConfig"]["Mounts"]
    assert {"Type": "bind", "Source": str(state / "ssl" / "server.crt"), "Target": "/etc/pgbouncer/server.crt",
            "ReadOnly": True} in mounts
    assert {"Type": "bind", "Source": str(state / "ssl" / "pgbouncer.key"), "Target": "/etc/pgbouncer/server.key",
            "ReadOnly": True} in mounts
    dev = specs_for(project, "dev", image_ids={"postgres:16": "sha256:abc"})["pgbouncer"]
    assert not any("ssl" in m["Source"] for m in dev.body["HostConfig"]["Mounts"])
