"""Config + profile -> `Stack`: every profile's settings validated, the secrets and ports bound;
and the copy of it kept between one-shot commands.

`load_stack_cached` is what every command on one profile (and `devenv reset`'s click-free fast
path) loads its Stack with: importing PyYAML, parsing and validating every profile costs more
than the reset, so the validated Stack is kept in `.devenv/<profile>/stack.json`. This module is
on the `reset` path: the parser, the catalogue and dataclasses load only where a Stack is built
(see devenv/record.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.config.identity import recorded_reach, remembered_ports, stack_name
from devenv.config.project import STATE_DIR_NAME, state_dir
from devenv.config.stack import PgBouncer, Postgres, Redis, Stack
from devenv.errors import ConfigError, StateError

if TYPE_CHECKING:
    from devenv.config.settings import Config


def postgres_major(image: str, explicit: int | None = None) -> int:
    """The PostgreSQL major version an image tag names ('postgres:16-alpine' -> 16)."""
    from devenv.config import pgcatalog

    if explicit is not None:
        major = explicit
    else:
        tag = image.rsplit("/", 1)[-1].partition("@")[0]
        match = re.search(r":(\d+)(?:[.\-]|$)", tag)
        if not match:
            raise ConfigError(
                f"cannot tell the PostgreSQL major version from image '{image}'",
                hint="use a tag that starts with the version (postgres:16, postgres:16.4-alpine) "
                "or set postgres.major in devenv.yaml.",
            )
        major = int(match.group(1))
    if major not in pgcatalog.SUPPORTED_MAJORS:
        raise ConfigError(
            f"PostgreSQL {major} (image '{image}') is not supported",
            hint=f"use one of {', '.join(map(str, pgcatalog.SUPPORTED_MAJORS))}.",
        )
    return major


def build_stack(config: Config, profile: str, secrets: dict[str, str] | None = None) -> Stack:
    """Resolve one profile into a Stack; every profile's settings are validated first.

    The passwords come from `.devenv/secrets.json` (made on first use) unless `secrets` gives
    them: `down` passes empty ones when that file is unusable, since stopping needs none.
    """
    config.profile(profile)  # unknown profile -> ConfigError naming the known ones
    pg_conf = config.services["postgres"]
    major = postgres_major(pg_conf.image, pg_conf.options.get("major"))
    # Validate every column, not just the chosen one: a typo in `prod` should not wait for prod.
    for service in ("postgres", "pgbouncer", "redis"):
        refuse_managed(config, service)
    columns = {name: validate_postgres(config, name, major) for name in config.profiles}
    named = {(service, name): validate_named(config, service, name)
             for service in ("pgbouncer", "redis") for name in config.profiles}
    from devenv.config.secrets import load_or_create_secrets

    if secrets is None:
        secrets = load_or_create_secrets(config.root / STATE_DIR_NAME)
    limits = config.limits_for(profile)
    pgb_conf, redis_conf = config.services["pgbouncer"], config.services["redis"]
    ports = bound_ports(config, profile)
    postgres = Postgres(
        name="postgres",
        image=pg_conf.image,
        port=ports["postgres"],
        configured_port=pg_conf.configured_port,
        pinned_by=pg_conf.pinned_by,
        settings=columns[profile],
        major=major,
        database=pg_conf.options.get("database", "taskflow"),
        user=pg_conf.options.get("user", "taskflow"),
        password=secrets["postgres_password"],
        admin_password=secrets["postgres_admin_password"],
        limits=limits,
    )
    if postgres.user in (postgres.admin_user, pgb_conf.options.get("admin_user", "pgbouncer_admin")):
        raise ConfigError(
            f"postgres.user '{postgres.user}' is a role devenv keeps for itself",
            hint=f"name the application's role otherwise ('{postgres.admin_user}' is devenv's superuser).",
        )
    pgbouncer = PgBouncer(
        name="pgbouncer",
        image=pgb_conf.image,
        port=ports["pgbouncer"],
        configured_port=pgb_conf.configured_port,
        pinned_by=pgb_conf.pinned_by,
        settings=named[("pgbouncer", profile)],
        database=pgb_conf.options.get("database", postgres.database),
        admin_user=pgb_conf.options.get("admin_user", "pgbouncer_admin"),
        admin_password=secrets["pgbouncer_admin_password"],
    )
    redis = Redis(
        name="redis",
        image=redis_conf.image,
        port=ports["redis"],
        configured_port=redis_conf.configured_port,
        pinned_by=redis_conf.pinned_by,
        settings=named[("redis", profile)],
        password=secrets["redis_password"],
    )
    if len(set(ports.values())) != 3:
        raise ConfigError(
            f"two services share a port: {ports}",
            hint="give each a distinct port (DEVENV_POSTGRES_PORT, DEVENV_PGBOUNCER_PORT, DEVENV_REDIS_PORT).",
        )
    reach_host, bind_ip = recorded_reach(state_dir(config.root, profile), config.root)  # a remote engine's
    return Stack(
        project=config.project,
        profile=profile,
        root=config.root,
        ephemeral=_ephemeral(config, profile),
        postgres=postgres,
        pgbouncer=pgbouncer,
        redis=redis,
        warnings=tuple(memory_warnings(postgres)),
        seed_scale=next((config.profiles[p].seed_scale for p in config.lineage(profile) if config.profiles[p].seed_scale), 0),
        env_file=config.env_file or "",
        identity=stack_name(state_dir(config.root, profile), config.root, config.project, profile),
        steps=config.steps,
        reach_host=reach_host,
        bind_ip=bind_ip,
    )


def bound_ports(config: Config, profile: str) -> dict[str, int]:
    """Each service's host port: DEVENV_<S>_PORT, else the one `up` chose for this checkout when
    devenv.yaml's was taken (`.devenv/<profile>/ports.json`, while devenv.yaml's port for the
    service is unchanged and it is not pinned), else devenv.yaml's."""
    remembered = remembered_ports(state_dir(config.root, profile))
    ports = {}
    for name, service in config.services.items():
        port, configured = remembered.get(name, (0, 0))
        usable = not service.pinned_by and configured == service.configured_port and port
        ports[name] = port if usable else service.port
    if len(set(ports.values())) != len(ports):  # devenv.yaml moved onto a remembered port: its ports
        return {name: service.port for name, service in config.services.items()}
    return ports


def _where(config: Config, service: str, name: str) -> str:
    """`devenv.yaml:LINE` of a settings row (for messages)."""
    from devenv.config.settings import line_of

    line = line_of(config.path.read_text(encoding="utf-8"), f"{service}.settings.{name}")
    return f"{config.path}:{line}" if line else str(config.path)


def refuse_managed(config: Config, service: str) -> None:
    """A settings row must not override what devenv manages (addresses, auth, files, TLS...)."""
    from devenv.config.rules import managed_reason

    for name in config.services[service].rows:
        reason = managed_reason(service, name)
        if reason is not None:
            raise ConfigError(
                f"{_where(config, service, name)}: {service}.settings.{name}: '{name}' is managed by devenv: {reason}",
                hint=f"remove the `{name}` row; devenv sets it itself (see `devenv render` for the files it writes).",
            )


def _check_value(config: Config, service: str, name: str, profile: str, value: str) -> str:
    from devenv.config.rules import value_problem

    problem = value_problem(service, name, value)
    if problem is not None:
        raise ConfigError(
            f"{_where(config, service, name)}: {service}.settings.{name} (profile '{profile}'): "
            f"{value!r} cannot be written: {problem[0]}",
            hint=problem[1],
        )
    return value


def validate_postgres(config: Config, profile: str, major: int) -> dict[str, str]:
    """One profile's postgres column, each value checked and normalised for postgresql.conf."""
    from devenv.config import pgcatalog

    out: dict[str, str] = {}
    for name, value in config.column("postgres", profile).items():
        where = f"{config.path}: postgres.settings.{name} (profile '{profile}')"
        try:
            out[name] = _check_value(config, "postgres", name, profile, pgcatalog.normalize(name, value, major, where))
        except ConfigError as exc:
            if exc.message.startswith(f"{config.path}: "):  # pgcatalog's: add the line
                exc.message = exc.message.replace(f"{config.path}", _where(config, "postgres", name), 1)
                exc.args = (exc.message,)
            raise
    return out


def validate_named(config: Config, service: str, profile: str) -> dict[str, str]:
    """PgBouncer and Redis settings: a name the server knows, a value its config lexer reads
    back exactly; returns the column as config text."""
    from devenv.catalog import known_settings
    from devenv.config.settings import did_you_mean

    known = known_settings(service)
    out: dict[str, str] = {}
    for name, value in config.column(service, profile).items():
        if name not in known:
            raise ConfigError(
                f"{_where(config, service, name)}: {service}.settings.{name}: "
                f"'{name}' is not a {service} setting{did_you_mean(name, known)}",
                hint=f"fix the spelling; the {service} documentation lists its settings.",
            )
        out[name] = _check_value(config, service, name, profile, _plain(value, yes_no=service == "redis"))
    return out


def memory_warnings(postgres: Postgres) -> list[str]:
    """Warn when shared_buffers plus per-connection work memory cannot fit the memory limit."""
    from devenv.config import pgcatalog

    def size(name: str, fallback: int) -> int:
        value = postgres.settings.get(name)
        return (pgcatalog.to_bytes(value, postgres.major, name) if value else None) or fallback

    shared = size("shared_buffers", 128 << 20)
    work = size("work_mem", 4 << 20)
    maintenance = size("maintenance_work_mem", 64 << 20)
    need = shared + maintenance + postgres.max_connections * work
    limit = postgres.limits.memory_bytes
    if need <= limit:
        return []
    mib = lambda n: f"{n / (1 << 20):.0f} MiB"  # noqa: E731
    return [
        f"postgres settings may not fit the {mib(limit)} memory limit: shared_buffers {mib(shared)} + "
        f"maintenance_work_mem {mib(maintenance)} + max_connections {postgres.max_connections} x work_mem "
        f"{mib(work)} = {mib(need)}; raise the profile's limits.memory or lower these settings"
    ]


def _ephemeral(config: Config, profile: str) -> bool:
    return any(config.profiles[name].ephemeral for name in config.lineage(profile))


def _plain(value: object, yes_no: bool = False) -> str:
    """A PgBouncer/Redis value as config text (YAML may have read `yes` as True)."""
    if isinstance(value, bool):
        return ("yes" if value else "no") if yes_no else ("1" if value else "0")
    return str(value)


STACK_CACHE = "stack.json"


def load_stack_cached(config: str | os.PathLike[str] | None, profile: str, need_secrets: bool = True) -> Stack:
    """The Stack of a profile, as `devenv.yaml` gives it, kept in `.devenv/<profile>/stack.json`.

    For one-shot commands that need only the model (`devenv reset`): importing PyYAML, parsing
    and validating every profile costs more than the reset. The copy is used while the inputs
    of `up` hash the same (state.fingerprint: devenv.yaml, the secrets, templates, seed files,
    DEVENV_* variables and devenv's version); otherwise the Stack is built and the copy renewed.
    Without `need_secrets` (`down`), an unusable secrets.json gives a Stack without passwords,
    not kept.
    """
    import json

    from devenv.config.project import find_config, state_dir
    from devenv.state import fingerprint

    path = find_config(config)
    cache = state_dir(path.parent, profile) / STACK_CACHE
    key = fingerprint(path.parent, path, profile, {"stack": STACK_CACHE})
    try:
        recorded = json.loads(cache.read_text(encoding="utf-8"))
        if recorded.get("fingerprint") == key:
            return _stack_from_dict(recorded["stack"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing, unreadable or of another shape: build it
    from devenv.config.settings import load_config
    from devenv.config.resolve import build_stack
    from devenv.config.secrets import SECRET_NAMES

    loaded = load_config(path)
    try:
        stack = build_stack(loaded, profile)
    except StateError:  # secrets.json is unusable (its error says how to recover)
        if need_secrets:
            raise
        return build_stack(loaded, profile, secrets=dict.fromkeys(SECRET_NAMES, ""))
    from devenv.db.stepkeys import recorded_inputs
    from devenv.state import note_inputs

    note_inputs(state_dir(path.parent, profile), recorded_inputs(stack))  # the steps' inputs: hashed below
    key = fingerprint(path.parent, path, profile, {"stack": STACK_CACHE})  # building it may have created secrets.json
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{STACK_CACHE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the passwords
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"fingerprint": key, "stack": stack.as_dict()}, handle, default=str)
    os.replace(tmp, cache)
    return stack


def _stack_from_dict(data: dict[str, Any]) -> Stack:
    from devenv.config.stack import DEFAULT_STEPS, Limits, PgBouncer, Postgres, Redis, Stack, Step

    postgres = dict(data["postgres"], limits=Limits(**data["postgres"]["limits"]))
    steps = tuple(Step(**dict(step, argv=tuple(step["argv"]), inputs=tuple(step["inputs"])))
                  for step in data["steps"]) if "steps" in data else DEFAULT_STEPS
    return Stack(**dict(data, root=Path(data["root"]), warnings=tuple(data["warnings"]), postgres=Postgres(**postgres),
                        pgbouncer=PgBouncer(**data["pgbouncer"]), redis=Redis(**data["redis"]), steps=steps))
