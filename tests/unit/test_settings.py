"""Settings validation: image tags, environment overrides, secrets, user-added profiles."""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from devenv.errors import ConfigError
from devenv.config.settings import load_config
from devenv.config.stack import Stack
from devenv.config.resolve import build_stack, postgres_major


def make_stack(project: Path, profile: str = "dev", env: Mapping[str, str] | None = None) -> Stack:
    return build_stack(load_config(project / "devenv.yaml", env or {}), profile)


# --------------------------------------------------------------------------- image -> major


@pytest.mark.parametrize(
    ("image", "major"),
    [
        ("postgres:15", 15),
        ("postgres:16-alpine", 16),
        ("postgres:17.2", 17),
        ("postgres:18-alpine", 18),
        ("registry.local:5000/mirror/postgres:16", 16),
        ("postgres:16.4-bookworm@sha256:" + "a" * 64, 16),
    ],
)
def test_image_tag_selects_the_major_version(project: Path, image: str, major: int) -> None:
    stack = make_stack(project, env={"DEVENV_POSTGRES_IMAGE": image})
    assert stack.postgres.image == image
    assert stack.postgres.major == major
    assert postgres_major(image) == major


def test_image_in_devenv_yaml_selects_the_major_version(project: Path, edit_config: Any) -> None:
    edit_config("  image: postgres:16\n", "  image: postgres:17-alpine\n")
    assert make_stack(project).postgres.major == 17


def test_explicit_major_wins_over_an_unversioned_tag(project: Path, edit_config: Any) -> None:
    edit_config("  image: postgres:16\n", "  image: registry.local:5000/team/pg:latest\n  major: 15\n")
    stack = make_stack(project)
    assert stack.postgres.major == 15
    assert stack.postgres.image == "registry.local:5000/team/pg:latest"


def test_unsupported_major_is_a_config_error(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_stack(project, env={"DEVENV_POSTGRES_IMAGE": "postgres:14"})
    assert "PostgreSQL 14" in info.value.message and "not supported" in info.value.message
    assert "15, 16, 17, 18" in (info.value.hint or "")
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    "image",
    ["postgres", "postgres:latest", "registry.local:5000/postgres", "postgres@sha256:" + "b" * 64],
)
def test_image_without_a_version_tag_is_a_config_error(project: Path, image: str) -> None:
    with pytest.raises(ConfigError, match="cannot tell the PostgreSQL major version") as info:
        make_stack(project, env={"DEVENV_POSTGRES_IMAGE": image})
    assert "postgres.major" in (info.value.hint or "")


# --------------------------------------------------------------------------- environment overrides


def test_port_and_image_overrides_from_the_environment(project: Path) -> None:
    env = {
        "DEVENV_POSTGRES_PORT": "15432",
        "DEVENV_PGBOUNCER_PORT": "16432",
        "DEVENV_REDIS_PORT": "16379",
        "DEVENV_POSTGRES_IMAGE": "postgres:17-alpine",
        "DEVENV_PGBOUNCER_IMAGE": "edoburu/pgbouncer:v1.24.0-p0",
        "DEVENV_REDIS_IMAGE": "redis:7-alpine",
    }
    stack = make_stack(project, env=env)
    assert (stack.postgres.port, stack.pgbouncer.port, stack.redis.port) == (15432, 16432, 16379)
    assert (stack.postgres.image, stack.pgbouncer.image, stack.redis.image) == (
        "postgres:17-alpine",
        "edoburu/pgbouncer:v1.24.0-p0",
        "redis:7-alpine",
    )
    assert stack.postgres.major == 17
    # The servers keep listening on their own ports inside the containers.
    assert (stack.postgres.container_port, stack.pgbouncer.container_port, stack.redis.container_port) == (5432, 6432, 6379)
    urls = stack.urls()
    assert ":16432/taskflow" in urls["DATABASE_URL"] and ":15432/taskflow" in urls["DIRECT_DATABASE_URL"]
    assert urls["REDIS_URL"].endswith(":16379/0")


def test_without_overrides_the_file_values_apply(project: Path) -> None:
    stack = make_stack(project)
    assert (stack.postgres.port, stack.pgbouncer.port, stack.redis.port) == (5432, 6432, 6379)
    assert (stack.postgres.image, stack.pgbouncer.image, stack.redis.image) == (
        "postgres:16",
        "edoburu/pgbouncer:v1.23.1-p3",
        "redis:7",
    )


def test_load_config_reads_os_environ_by_default(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_REDIS_PORT", "16380")
    assert load_config(project / "devenv.yaml").services["redis"].port == 16380


@pytest.mark.parametrize("service", ["POSTGRES", "PGBOUNCER", "REDIS"])
@pytest.mark.parametrize("value", ["abc", "54 32", "-1", "0", "70000", "5432.0"])
def test_a_bad_port_in_the_environment_names_the_variable(project: Path, service: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(project / "devenv.yaml", {f"DEVENV_{service}_PORT": value})
    assert f"DEVENV_{service}_PORT" in info.value.message
    assert repr(value) in info.value.message


def test_two_services_on_one_port_is_a_config_error(project: Path) -> None:
    with pytest.raises(ConfigError, match="two services share a port"):
        make_stack(project, env={"DEVENV_PGBOUNCER_PORT": "5432"})


# --------------------------------------------------------------------------- secrets


def test_secrets_are_generated_once_private_and_stable(project: Path) -> None:
    secrets_file = project / ".devenv" / "secrets.json"
    secrets_file.unlink()
    first = make_stack(project)
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    stored = json.loads(secrets_file.read_text())
    assert sorted(stored) == ["pgbouncer_admin_password", "postgres_admin_password", "postgres_password", "redis_password"]
    assert len(set(stored.values())) == 4
    assert all(len(value) >= 24 for value in stored.values())
    assert first.postgres.admin_password == stored["postgres_admin_password"]
    assert (first.postgres.password, first.pgbouncer.admin_password, first.redis.password) == (
        stored["postgres_password"],
        stored["pgbouncer_admin_password"],
        stored["redis_password"],
    )
    before = secrets_file.read_bytes()
    again = make_stack(project)
    other_profile = make_stack(project, "prod")
    assert secrets_file.read_bytes() == before
    assert again.postgres.password == other_profile.postgres.password == stored["postgres_password"]
    assert again.redis.password == stored["redis_password"]


def test_existing_secrets_are_kept_and_missing_ones_added(project: Path) -> None:
    secrets_file = project / ".devenv" / "secrets.json"
    secrets_file.write_text(json.dumps({"postgres_password": "kept-pw"}))
    stack = make_stack(project)
    stored = json.loads(secrets_file.read_text())
    assert stack.postgres.password == stored["postgres_password"] == "kept-pw"
    assert stored["redis_password"] and stored["pgbouncer_admin_password"]


def test_the_fixture_secrets_are_used_verbatim(project: Path, fixed_secrets: dict[str, str]) -> None:
    stack = make_stack(project)
    assert stack.postgres.password == fixed_secrets["postgres_password"]
    assert stack.pgbouncer.admin_password == fixed_secrets["pgbouncer_admin_password"]
    assert stack.redis.password == fixed_secrets["redis_password"]


# --------------------------------------------------------------------------- profiles


def test_a_profile_added_by_the_user(project: Path, edit_config: Any, run_devenv: Any) -> None:
    edit_config("profiles:\n", "profiles:\n  staging:\n    extends: prod\n    description: like RDS staging\n")
    edit_config("{default: 100,   dev: 20,", "{default: 100,   dev: 20,   staging: 50,")
    edit_config("maxmemory:                  {default: 256mb,", "maxmemory:                  {default: 256mb, staging: 512mb,")
    stack = make_stack(project, "staging")
    assert stack.postgres.settings["max_connections"] == "50"  # its own column
    assert stack.postgres.settings["ssl"] == "on"  # inherited from prod
    assert stack.postgres.settings["shared_buffers"] == "256MB"  # the default column
    assert stack.redis.settings["maxmemory"] == "512mb"
    assert stack.pgbouncer.settings["pool_mode"] == "transaction"
    # Other profiles are unchanged by the new column.
    assert make_stack(project, "prod").postgres.settings["max_connections"] == "100"
    # The CLI knows it too.
    result = run_devenv("settings", "--profile", "staging")
    assert result.returncode == 0, result.stderr
    rows = {cells[1].strip().strip("`"): cells[2].strip() for cells in (line.split("|")[1:-1] for line in result.stdout.splitlines()[2:])}
    assert rows["max_connections"] == "50" and rows["maxmemory"] == "512mb"


def test_settings_diff_marks_the_differing_rows(project: Path, run_devenv: Any) -> None:
    result = run_devenv("settings", "--diff", "dev", "prod")
    assert result.returncode == 0, result.stderr
    marked = {line.split("|")[2].strip().strip("`") for line in result.stdout.splitlines()[2:] if line.rstrip("| ").endswith("*")}
    assert marked == {"max_connections", "shared_buffers", "log_statement", "ssl", "maxmemory"}


def test_a_value_a_profile_does_not_define_in_a_row_is_an_error(project: Path, edit_config: Any) -> None:
    edit_config("wal_level:                  {default: logical}", "wal_level:                  {default: logical, stagng: replica}")
    with pytest.raises(ConfigError, match=r"postgres\.settings\.wal_level\.stagng: unknown key"):
        load_config(project / "devenv.yaml", {})


def test_an_unknown_profile_names_the_known_ones(project: Path) -> None:
    config = load_config(project / "devenv.yaml", {})
    with pytest.raises(ConfigError, match="unknown profile 'staging'") as info:
        build_stack(config, "staging")
    assert "ci, dev, prod, rds" in (info.value.hint or "")


def test_an_extends_cycle_is_a_config_error(project: Path, edit_config: Any) -> None:
    edit_config("  dev:\n    description:", "  dev:\n    extends: ci\n    description:")
    with pytest.raises(ConfigError, match="cycle: "):
        load_config(project / "devenv.yaml", {})


def test_yaml_bare_off_is_written_as_off(project: Path, edit_config: Any) -> None:
    """YAML 1.1 reads a bare `off` as False: booleans and on/off enums still render 'off'."""
    edit_config('fsync:                      {                                             ci: "off"}', "fsync: {ci: off}")
    edit_config('synchronous_commit:         {                                             ci: "off"}', "synchronous_commit: {ci: off}")
    settings = make_stack(project, "ci").postgres.settings
    assert settings["fsync"] == "off"
    assert settings["synchronous_commit"] == "off"


def test_memory_units_are_checked_against_the_catalogue(project: Path, edit_config: Any) -> None:
    edit_config("rds: 64MB}", "rds: 64ms}")
    with pytest.raises(ConfigError) as info:
        make_stack(project, "dev")  # every profile is validated, not only the one asked for
    assert "work_mem" in info.value.message and "(profile 'rds')" in info.value.message
    assert "B, kB, MB, GB, TB" in (info.value.hint or "")


def test_an_unknown_redis_setting_suggests_the_right_one(project: Path, edit_config: Any) -> None:
    edit_config("maxmemory-policy:", "maxmemory-polcy:")
    with pytest.raises(ConfigError, match="did you mean 'maxmemory-policy'"):
        make_stack(project)


def test_an_unknown_pgbouncer_setting_suggests_the_right_one(project: Path, edit_config: Any) -> None:
    edit_config("default_pool_size:", "default_pool_sise:")
    with pytest.raises(ConfigError, match="did you mean 'default_pool_size'"):
        make_stack(project)


def test_devenv_yaml_loads_after_yaml_was_imported_again(project: Path) -> None:
    """pytest's in-process runs (pytester) restore sys.modules: `yaml` is imported anew while
    libyaml's extension keeps the first one's node classes. The file must load all the same."""
    import sys

    import yaml

    first = load_config(project / "devenv.yaml")
    saved = {name: module for name, module in sys.modules.items() if name == "yaml" or name.startswith("yaml.")}
    try:
        for name in saved:
            del sys.modules[name]
        import yaml as again

        assert again.nodes.ScalarNode is not yaml.nodes.ScalarNode  # a second yaml indeed
        assert load_config(project / "devenv.yaml") == first
    finally:
        sys.modules.update(saved)
