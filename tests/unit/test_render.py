"""Rendered files: golden copies, every value of the settings tables, and the compose file."""

from __future__ import annotations

import configparser
import difflib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import devenv
from devenv.render import compose_placement, render_files
from devenv.config.settings import load_config
from devenv.config.stack import Stack
from devenv.config.resolve import build_stack

REPO_ROOT = Path(devenv.__file__).resolve().parents[1]
GOLDEN_DIR = Path(__file__).parent / "golden"
RENDERED = ("docker-compose.yml", "postgresql.conf", "pg_hba.conf", "pgbouncer.ini", "userlist.txt", "redis.conf")
# Read at import: the `project` fixture clears every DEVENV_* variable before a test runs.
UPDATE_GOLDEN = os.environ.get("DEVENV_UPDATE_GOLDEN") == "1"
PROFILES = ("dev", "prod", "ci", "rds")

# --- the seeds' tables, written out by hand (not read from devenv.yaml) ---
# CON-003 "Configuration" rows that no column of "Development vs Production" overrides.
CON003_SHARED = {"work_mem": "4MB", "maintenance_work_mem": "64MB", "wal_level": "logical", "log_min_duration_statement": "1000"}
# CON-003 "Development vs Production".
CON003_DEV = {"max_connections": "20", "shared_buffers": "128MB", "log_statement": "all", "ssl": "off"}
CON003_PROD = {"max_connections": "100", "shared_buffers": "256MB", "log_statement": "ddl", "ssl": "on"}
# devenv.yaml's `ci` profile: durability off on top of dev.
CI_DURABILITY_OFF = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
# Database Infrastructure doc, "Key Parameter Overrides" (the RDS parameter group).
RDS_PARAMETER_GROUP = {
    "shared_buffers": "2GB",
    "effective_cache_size": "6GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "max_connections": "200",
    "log_min_duration_statement": "500",
}
EXPECTED_POSTGRES = {
    "dev": {**CON003_SHARED, **CON003_DEV},
    "prod": {**CON003_SHARED, **CON003_PROD},
    "ci": {**CON003_SHARED, **CON003_DEV, **CI_DURABILITY_OFF},
    "rds": {**CON003_SHARED, **CON003_PROD, **RDS_PARAMETER_GROUP},
}
EXPECTED_REDIS_MAXMEMORY = {"dev": "256mb", "prod": "1gb", "ci": "128mb", "rds": "1gb"}
# Lines of postgresql.conf that say where the server listens and finds files (not table rows).
PLACEMENT_SETTINGS = {"listen_addresses", "port", "hba_file", "ssl_cert_file", "ssl_key_file", "recovery_init_sync_method"}


def make_stack(project: Path, profile: str, env: Mapping[str, str] | None = None) -> Stack:
    """devenv.yaml of the project -> Stack, with only the given environment overrides."""
    return build_stack(load_config(project / "devenv.yaml", env or {}), profile)


def render(project: Path, profile: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The files `devenv render` writes, as text."""
    stack = make_stack(project, profile, env)
    return render_files(stack, compose_placement(stack))


def compose(project: Path, profile: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(render(project, profile, env)["docker-compose.yml"])


_PG_LINE = re.compile(r"^\s*([a-z_][a-z0-9_.]*)\s*=\s*('(?:[^']|'')*'|[^\s#']+)\s*(?:#.*)?$")


def parse_postgresql_conf(text: str) -> dict[str, str]:
    """`name = 'value'` lines -> {name: value}; comments and blank lines skipped, duplicates refused."""
    settings: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PG_LINE.match(line)
        assert match, f"postgresql.conf line {number} is not `name = value`: {line!r}"
        name, raw = match.group(1), match.group(2)
        value = raw[1:-1].replace("''", "'") if raw.startswith("'") else raw
        assert name not in settings, f"postgresql.conf sets {name} twice"
        settings[name] = value
    return settings


def parse_redis_conf(text: str) -> dict[str, str]:
    """`directive value...` lines -> {directive: value}."""
    directives: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            assert name not in directives, f"redis.conf sets {name} twice"
            directives[name] = value
    return directives


def parse_pgbouncer_ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"), strict=True)
    parser.optionxform = str  # keep names as written
    parser.read_string(text)
    return parser


# --------------------------------------------------------------------------- golden files


def keep_legacy_name(project: Path, profile: str) -> None:
    """Give the project's stack the name `taskflow-<profile>` (the golden files' name), as a
    checkout whose Docker stack predates the checkout id has it recorded."""
    from devenv.config.identity import record_name

    record_name(project / ".devenv" / profile, project, "taskflow", f"taskflow-{profile}")


@pytest.mark.parametrize("profile", ["dev", "prod"])
def test_rendered_files_match_golden(project: Path, profile: str) -> None:
    keep_legacy_name(project, profile)
    files = render(project, profile)
    assert sorted(files) == sorted(RENDERED)
    golden = GOLDEN_DIR / profile
    if UPDATE_GOLDEN:
        golden.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (golden / name).write_bytes(content.encode("utf-8"))
        message = f"DEVENV_UPDATE_GOLDEN=1: rewrote {len(files)} golden files in {golden}; review them with git diff"
        print(message)
        warnings.warn(message, stacklevel=1)
        return
    assert sorted(p.name for p in golden.iterdir()) == sorted(RENDERED), f"{golden} holds other files"
    for name, content in files.items():
        expected = (golden / name).read_bytes()
        actual = content.encode("utf-8")
        if actual != expected:
            diff = "".join(
                difflib.unified_diff(
                    expected.decode("utf-8").splitlines(keepends=True),
                    content.splitlines(keepends=True),
                    f"golden/{profile}/{name}",
                    f"rendered {name}",
                )
            )
            pytest.fail(f"{name} differs from golden/{profile}/{name} (DEVENV_UPDATE_GOLDEN=1 regenerates):\n{diff}")


@pytest.mark.parametrize("profile", ["dev", "prod"])
def test_cli_render_writes_the_golden_bytes(project: Path, profile: str, run_devenv: Any) -> None:
    """`devenv render --out` writes exactly what the golden files hold (encoding, newlines)."""
    if UPDATE_GOLDEN:
        pytest.skip("golden files are being regenerated")
    keep_legacy_name(project, profile)
    out = project / "out"
    result = run_devenv("render", "--profile", profile, "--out", str(out))
    assert result.returncode == 0, result.stderr
    certificate = ["server.crt", "server.key", "pgbouncer.key"] if profile == "prod" else []  # ssl = on
    assert sorted(Path(line).name for line in result.stdout.split()) == sorted([*RENDERED, *certificate])
    for name in RENDERED:
        assert (out / name).read_bytes() == (GOLDEN_DIR / profile / name).read_bytes(), name
    assert (out.stat().st_mode & 0o777) == 0o700, "the rendered dir holds passwords: it must be private"
    if certificate:  # PgBouncer's copy of the key: the same key, as private
        key, copy = out / "ssl" / "server.key", out / "ssl" / "pgbouncer.key"
        assert copy.read_bytes() == key.read_bytes() and (copy.stat().st_mode & 0o777) == 0o600


# --------------------------------------------------------------------------- the seeds' values


@pytest.mark.parametrize("profile", PROFILES)
def test_postgresql_conf_has_the_seed_values(project: Path, profile: str) -> None:
    settings = parse_postgresql_conf(render(project, profile)["postgresql.conf"])
    expected = EXPECTED_POSTGRES[profile]
    table_rows = {name: value for name, value in settings.items() if name not in PLACEMENT_SETTINGS}
    assert table_rows == expected
    assert settings["listen_addresses"] == "*"
    assert settings["port"] == "5432"


def test_the_first_start_after_a_restore_syncs_with_syncfs_where_postgres_has_it(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restored (or crashed) data directory is synced before recovery: syncfs() of its
    filesystem, not an fsync() per file; PostgreSQL 14+ on Linux only (elsewhere the value is refused)."""
    import dataclasses
    import sys

    from devenv.render import compose_placement, render_files

    stack = make_stack(project, "dev")
    native_placement = lambda stack: dataclasses.replace(compose_placement(stack), target="native")  # noqa: E731
    for placement in (compose_placement(stack), native_placement(stack)):
        assert parse_postgresql_conf(render_files(stack, placement)["postgresql.conf"])[
            "recovery_init_sync_method"] == "syncfs"
    monkeypatch.setattr(sys, "platform", "darwin")
    native = native_placement(stack)
    assert "recovery_init_sync_method" not in parse_postgresql_conf(render_files(stack, native)["postgresql.conf"])
    assert parse_postgresql_conf(render_files(stack, compose_placement(stack))["postgresql.conf"])[
        "recovery_init_sync_method"] == "syncfs", "a container's server runs on Linux"
    monkeypatch.setattr(sys, "platform", "linux")
    old = stack.replace(postgres=stack.postgres.replace(major=13))
    assert "recovery_init_sync_method" not in parse_postgresql_conf(
        render_files(old, compose_placement(old))["postgresql.conf"])


@pytest.mark.parametrize("profile", PROFILES)
def test_stack_holds_the_same_values_it_renders(project: Path, profile: str) -> None:
    stack = make_stack(project, profile)
    assert stack.postgres.settings == EXPECTED_POSTGRES[profile]
    assert stack.postgres.ssl is (EXPECTED_POSTGRES[profile]["ssl"] == "on")
    assert stack.ephemeral is (profile == "ci")


def test_dev_and_prod_differ_exactly_in_con003_columns(project: Path) -> None:
    dev = parse_postgresql_conf(render(project, "dev")["postgresql.conf"])
    prod = parse_postgresql_conf(render(project, "prod")["postgresql.conf"])
    differing = {name for name in set(dev) | set(prod) if dev.get(name) != prod.get(name)}
    assert differing == set(CON003_DEV) | {"ssl_cert_file", "ssl_key_file"}


def test_ssl_profiles_point_at_certificate_files(project: Path) -> None:
    prod = parse_postgresql_conf(render(project, "prod")["postgresql.conf"])
    assert prod["ssl_cert_file"].endswith("/server.crt")
    assert prod["ssl_key_file"].endswith("/server.key")
    dev = parse_postgresql_conf(render(project, "dev")["postgresql.conf"])
    assert "ssl_cert_file" not in dev and "ssl_key_file" not in dev


def test_rds_profile_warns_that_it_exceeds_the_memory_limit(project: Path) -> None:
    stack = make_stack(project, "rds")
    assert len(stack.warnings) == 1
    warning = stack.warnings[0]
    assert "1024 MiB memory limit" in warning
    assert "shared_buffers 2048 MiB" in warning
    assert "max_connections 200" in warning


@pytest.mark.parametrize("profile", ["dev", "prod", "ci"])
def test_profiles_within_the_limit_do_not_warn(project: Path, profile: str) -> None:
    assert make_stack(project, profile).warnings == ()


@pytest.mark.parametrize("profile", PROFILES)
def test_pgbouncer_ini_has_the_seed_values(project: Path, profile: str, fixed_secrets: dict[str, str]) -> None:
    files = render(project, profile)
    ini = parse_pgbouncer_ini(files["pgbouncer.ini"])
    section = ini["pgbouncer"]
    assert section["pool_mode"] == "transaction"
    assert section["default_pool_size"] == "20"
    assert section["max_client_conn"] == "100"
    assert section["listen_port"] == "6432"
    assert section["listen_addr"] == "0.0.0.0"
    assert section["auth_type"] == "scram-sha-256"
    assert section["admin_users"] == "pgbouncer_admin"
    assert ini["databases"]["taskflow"] == "host=postgres port=5432 dbname=taskflow"
    # userlist.txt: both users PgBouncer authenticates, each with the SCRAM secret of its
    # generated password (the same string Postgres stores: PgBouncer logs in with it).
    lines = [line.split(" ") for line in files["userlist.txt"].splitlines()]
    assert [user for user, _ in lines] == ['"taskflow"', '"pgbouncer_admin"']
    for (_, secret), password in zip(lines, (fixed_secrets["postgres_password"], fixed_secrets["pgbouncer_admin_password"])):
        assert_scram_secret_of(secret.strip('"'), password)
    # Two fields a line, and neither plain password anywhere in the file (the loop's `password`
    # was only the last one).
    assert all(len(line) == 2 for line in lines)
    for password in (fixed_secrets["postgres_password"], fixed_secrets["pgbouncer_admin_password"]):
        assert password not in files["userlist.txt"]


def assert_scram_secret_of(secret: str, password: str) -> None:
    """`secret` is Postgres's SCRAM-SHA-256 form of `password` (RFC 5803's layout)."""
    import base64
    import hashlib
    import hmac

    scheme, rest = secret.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = (base64.b64decode(part) for part in keys.split(":"))
    assert scheme == "SCRAM-SHA-256" and int(iterations) >= 4096
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    assert stored_key == hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    assert server_key == hmac.digest(salted, b"Server Key", "sha256")


@pytest.mark.parametrize("profile", PROFILES)
def test_redis_conf_has_the_seed_values(project: Path, profile: str, fixed_secrets: dict[str, str]) -> None:
    conf = parse_redis_conf(render(project, profile)["redis.conf"])
    assert conf["maxmemory-policy"] == "allkeys-lru"
    assert conf["maxmemory"] == EXPECTED_REDIS_MAXMEMORY[profile]
    assert conf["port"] == "6379"
    assert conf["bind"] == "0.0.0.0"
    assert conf["protected-mode"] == "yes"
    # The one user's password, and no right to reconfigure the server or its users.
    rules = conf["user"].split()
    assert rules[:2] == ["default", "on"] and f">{fixed_secrets['redis_password']}" in rules
    assert {"-config|set", "-config|rewrite", "-acl|setuser", "-module"} <= set(rules)
    assert "requirepass" not in conf
    if profile == "ci":
        assert conf["save"] == '""' and conf["appendonly"] == "no"
    else:
        assert conf["save"] != '""'


def test_pg_hba_requires_passwords_over_tcp(project: Path) -> None:
    rules = [line.split() for line in render(project, "dev")["pg_hba.conf"].splitlines() if line and not line.startswith("#")]
    assert ["host", "all", "all", "all", "scram-sha-256"] in rules
    assert not [rule for rule in rules if rule[0].startswith("host") and rule[-1] in ("trust", "password", "md5")]


# --------------------------------------------------------------------------- compose file


def _compose_spec_path() -> Path:
    if os.environ.get("COMPOSE_SPEC_JSON"):
        return Path(os.environ["COMPOSE_SPEC_JSON"])
    return Path(devenv.__file__).resolve().parents[1].parent / "shared" / "compose-spec.json"


@pytest.fixture(scope="session")
def compose_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    path = _compose_spec_path()
    if not path.is_file():
        pytest.skip(f"Compose Specification schema not found at {path} (set COMPOSE_SPEC_JSON)")
    schema = json.loads(path.read_text(encoding="utf-8"))
    # The spec declares "$schema": "https://json-schema.org/draft-07/schema" without the
    # trailing '#', which validator_for() does not recognise: name draft 7 explicitly.
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_file_validates_against_the_compose_spec(project: Path, profile: str, compose_validator: Any) -> None:
    errors = sorted(compose_validator.iter_errors(compose(project, profile)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_validator_rejects_a_misspelled_key(project: Path, compose_validator: Any) -> None:
    """The schema check has teeth: a typo in a service key is an error."""
    data = compose(project, "dev")
    data["services"]["postgres"]["helthcheck"] = data["services"]["postgres"].pop("healthcheck")
    assert not compose_validator.is_valid(data)


def _published(port: Any) -> tuple[str, int, int]:
    """A `ports:` entry -> (host_ip, published, target), short or long syntax."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), int(port["published"]), int(port["target"])
    parts = str(port).split(":")
    assert len(parts) == 3, f"port {port!r} does not name a host address"
    return parts[0], int(parts[1]), int(parts[2])


@pytest.mark.parametrize("profile", PROFILES)
def test_published_ports_are_bound_to_localhost(project: Path, profile: str) -> None:
    services = compose(project, profile)["services"]
    published = {name: [_published(p) for p in body.get("ports", [])] for name, body in services.items()}
    assert published == {
        "postgres": [("127.0.0.1", 5432, 5432)],
        "pgbouncer": [("127.0.0.1", 6432, 6432)],
        "redis": [("127.0.0.1", 6379, 6379)],
    }


def test_published_ports_follow_the_environment_overrides(project: Path) -> None:
    env = {"DEVENV_POSTGRES_PORT": "15432", "DEVENV_PGBOUNCER_PORT": "16432", "DEVENV_REDIS_PORT": "16379"}
    services = compose(project, "dev", env)["services"]
    assert [_published(p) for p in services["postgres"]["ports"]] == [("127.0.0.1", 15432, 5432)]
    assert [_published(p) for p in services["pgbouncer"]["ports"]] == [("127.0.0.1", 16432, 6432)]
    assert [_published(p) for p in services["redis"]["ports"]] == [("127.0.0.1", 16379, 6379)]


def _named_volumes(service: Mapping[str, Any]) -> dict[str, str]:
    """Short-syntax volumes whose source is a name (not ./path) -> {target: name}."""
    named = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        if not source.startswith((".", "/")):
            named[target] = source
    return named


@pytest.mark.parametrize(
    ("image", "volume_path"),
    [("postgres:16", "/var/lib/postgresql/data"), ("postgres:18", "/var/lib/postgresql")],
)
def test_postgres_data_is_a_named_volume_where_the_image_expects_it(project: Path, image: str, volume_path: str) -> None:
    data = compose(project, "dev", {"DEVENV_POSTGRES_IMAGE": image})
    postgres = data["services"]["postgres"]
    assert postgres["image"] == image
    assert _named_volumes(postgres) == {volume_path: "pgdata"}
    assert "pgdata" in data["volumes"]
    pgdata = postgres["environment"]["PGDATA"]
    assert pgdata == volume_path or pgdata.startswith(volume_path + "/")
    assert "tmpfs" not in postgres
    assert _named_volumes(data["services"]["redis"]) == {"/data": "redisdata"}


@pytest.mark.parametrize(
    ("image", "volume_path"),
    [("postgres:16", "/var/lib/postgresql/data"), ("postgres:18", "/var/lib/postgresql")],
)
def test_ci_profile_keeps_data_on_tmpfs(project: Path, image: str, volume_path: str) -> None:
    data = compose(project, "ci", {"DEVENV_POSTGRES_IMAGE": image})
    postgres = data["services"]["postgres"]
    assert postgres["tmpfs"] == [volume_path]
    assert _named_volumes(postgres) == {}
    assert _named_volumes(data["services"]["redis"]) == {}
    assert not data.get("volumes")


def test_healthchecks(project: Path) -> None:
    services = compose(project, "dev")["services"]
    pg = services["postgres"]["healthcheck"]["test"]
    assert pg[:2] == ["CMD", "pg_isready"]
    assert pg[pg.index("-h") + 1] == "127.0.0.1", "over TCP: the socket answers during the image's init"
    assert pg[pg.index("-U") + 1] == "devenv_admin" and pg[pg.index("-d") + 1] == "taskflow"

    redis = services["redis"]["healthcheck"]["test"]
    assert redis[0] == "CMD-SHELL"
    # `$$` is compose's escape for `$`; the output must equal PONG exactly (NOAUTH also exits 0).
    assert re.fullmatch(r'test "\$\$\(redis-cli -h 127\.0\.0\.1 -p 6379 ping\)" = PONG', redis[1]), redis[1]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == "redis-test-pw"

    pgb = services["pgbouncer"]["healthcheck"]["test"]
    assert pgb[:2] == ["CMD", "psql"]
    assert pgb[pgb.index("-d") + 1] == "pgbouncer"
    assert pgb[pgb.index("-U") + 1] == "pgbouncer_admin"
    assert pgb[-1] == "SHOW VERSION"
    assert services["pgbouncer"]["environment"]["PGPASSWORD"] == "pgb-test-pw"

    for name, body in services.items():
        assert body["healthcheck"].get("start_interval"), f"{name} has no start_interval"


def test_service_ordering_and_stop_signals(project: Path) -> None:
    services = compose(project, "dev")["services"]
    assert services["pgbouncer"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["pgbouncer"]["stop_signal"] == "SIGINT"
    assert services["postgres"]["stop_signal"] == "SIGINT"


@pytest.mark.parametrize("profile", PROFILES)
def test_config_files_are_mounted_read_only_where_the_commands_read_them(project: Path, profile: str) -> None:
    files = render(project, profile)
    services = yaml.safe_load(files["docker-compose.yml"])["services"]
    mounts: dict[str, dict[str, str]] = {}
    for name, body in services.items():
        mounts[name] = {}
        for entry in body.get("volumes", []):
            if str(entry).startswith("./"):
                assert str(entry).endswith(":ro"), f"{name}: {entry} is not read-only"
                source, target, _ = str(entry).split(":")
                mounts[name][target] = source
    # Each server is pointed at the mounted copy of its rendered file.
    command = services["postgres"]["command"]
    assert command[-3:] == ["postgres", "-c", "config_file=/etc/postgresql/postgresql.conf"]
    assert mounts["postgres"]["/etc/postgresql/postgresql.conf"] == "./postgresql.conf"
    hba = parse_postgresql_conf(files["postgresql.conf"])["hba_file"]
    assert mounts["postgres"][hba] == "./pg_hba.conf"
    assert mounts["pgbouncer"][services["pgbouncer"]["command"][-1]] == "./pgbouncer.ini"
    auth_file = parse_pgbouncer_ini(files["pgbouncer.ini"])["pgbouncer"]["auth_file"]
    assert mounts["pgbouncer"][auth_file] == "./userlist.txt"
    assert mounts["redis"][services["redis"]["command"][-1]] == "./redis.conf"


@pytest.mark.parametrize("profile", ["dev", "prod"])
def test_every_bind_mount_source_is_written_by_render(project: Path, profile: str, run_devenv: Any) -> None:
    out = project / "out"
    result = run_devenv("render", "--profile", profile, "--out", str(out))
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load((out / "docker-compose.yml").read_text())["services"]
    sources = {str(e).split(":")[0] for body in services.values() for e in body.get("volumes", []) if str(e).startswith("./")}
    missing = sorted(s for s in sources if not (out / s).is_file())
    assert not missing, f"mounted but not rendered: {missing}"


@pytest.mark.parametrize("profile", PROFILES)
def test_postgres_resource_limits_follow_con003(project: Path, profile: str) -> None:
    limits = compose(project, profile)["services"]["postgres"]["deploy"]["resources"]["limits"]
    assert limits["memory"] == "1024M"
    assert float(limits["cpus"]) == 1.0


def test_profile_limits_override_the_service_limits(project: Path, edit_config: Any) -> None:
    edit_config(
        "    description: the production RDS parameter group, to reproduce production plans on a big machine\n",
        "    description: the production RDS parameter group, to reproduce production plans on a big machine\n"
        "    limits: {memory: 16g, cpus: 4}\n",
    )
    stack = make_stack(project, "rds")
    assert stack.warnings == (), "16 GiB holds the RDS settings"
    limits = compose(project, "rds")["services"]["postgres"]["deploy"]["resources"]["limits"]
    assert limits["memory"] == "16384M" and float(limits["cpus"]) == 4.0
    assert compose(project, "prod")["services"]["postgres"]["deploy"]["resources"]["limits"]["memory"] == "1024M"


# --------------------------------------------------------------------------- no hard-coded passwords


def test_no_fixed_password_in_devenv_yaml_or_templates(fixed_secrets: dict[str, str]) -> None:
    sources = [REPO_ROOT / "devenv.yaml", REPO_ROOT / "docker-compose.yml.j2", *sorted((REPO_ROOT / "templates").glob("*.j2"))]
    assert len(sources) == 7
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for name, password in fixed_secrets.items():
            assert password not in text, f"{path.name} contains {name}"


@pytest.mark.parametrize("profile", ["dev", "prod"])
def test_every_password_in_the_rendered_files_comes_from_secrets_json(
    project: Path, profile: str, fixed_secrets: dict[str, str]
) -> None:
    """Render with two sets of secrets: with passwords (and their SCRAM secrets) masked and hashes
    dropped, the files are equal."""
    from devenv.clients.pgwire import scram_secret

    users = {"postgres_password": "taskflow", "pgbouncer_admin_password": "pgbouncer_admin",
             "postgres_admin_password": "devenv_admin"}

    def masked(secrets: dict[str, str]) -> dict[str, str]:
        (project / ".devenv" / "secrets.json").write_text(json.dumps(secrets), encoding="utf-8")
        files = render(project, profile)
        out = {}
        for name, text in files.items():
            for key, password in secrets.items():
                if key in users:
                    secret = scram_secret(users[key], password)
                    text = text.replace(secret.replace("$", "$$"), f"<{key}>").replace(secret, f"<{key}>")
                text = text.replace(password, f"<{key}>")
            out[name] = re.sub(r'(dev\.devenv\.config-hash: )"[0-9a-f]+"', r"\1<hash>", text)
        return out

    other = {key: f"other-{value}-x9" for key, value in fixed_secrets.items()}
    first, second = masked(fixed_secrets), masked(other)
    assert first == second
    for key in fixed_secrets:
        assert any(f"<{key}>" in text for text in first.values()), f"{key} is used nowhere"
