"""Config + profile -> `Stack`: the one model the renderer, both runtimes and the health checks read.

Nothing downstream re-derives a port, a password, an image or a setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from devenv.errors import ConfigError
from devenv.project import STATE_DIR_NAME
from devenv.record import Factory, Record

if TYPE_CHECKING:
    # Imported where a Stack is built: one read back from stack.json needs neither the
    # parser nor the catalogue (~9 ms).
    from devenv.settings import Config

# Ports the servers listen on inside their containers; the host ports are in the model.
CONTAINER_PORTS = {"postgres": 5432, "pgbouncer": 6432, "redis": 6379}
_PGBOUNCER_KNOWN = None  # filled lazily from the catalogue


class Limits(Record):
    """Container resource limits; also the budget the memory warning checks against."""

    memory_bytes: int
    cpus: float


class Service(Record):
    """What every service has: an image, a published port and its settings column."""

    name: str
    image: str
    port: int
    settings: dict[str, str]

    @property
    def container_port(self) -> int:
        """The port the server listens on inside its container."""
        return CONTAINER_PORTS[self.name]


class Postgres(Service):
    """PostgreSQL: the settings are validated against the major version's catalogue."""

    major: int = 16
    database: str = "taskflow"
    user: str = "taskflow"
    password: str = ""
    limits: Limits = Factory(lambda: Limits(1 << 30, 1.0))

    @property
    def password_secret(self) -> str:
        """The password as the SCRAM secret the role stores and PgBouncer's userlist holds."""
        from devenv.clients.pgwire import scram_secret

        return scram_secret(self.user, self.password)

    @property
    def ssl(self) -> bool:
        """Whether the profile turns TLS on (then devenv generates a local certificate)."""
        return self.settings.get("ssl") == "on"

    @property
    def volume_path(self) -> str:
        """Where the data volume mounts in the official image (18 moved it up a level)."""
        return "/var/lib/postgresql" if self.major >= 18 else "/var/lib/postgresql/data"

    @property
    def pgdata(self) -> str:
        """PGDATA inside the official image for this major version."""
        return f"/var/lib/postgresql/{self.major}/docker" if self.major >= 18 else "/var/lib/postgresql/data"

    @property
    def max_connections(self) -> int:
        """max_connections as this profile sets it (PostgreSQL's default 100 otherwise)."""
        return int(self.settings.get("max_connections", "100"))

    @property
    def readiness_limit(self) -> int:
        """CON-003's readiness threshold, 90 of 100 connections, scaled to the profile."""
        return max(1, self.max_connections * 9 // 10)


class PgBouncer(Service):
    """PgBouncer in front of Postgres; its admin console user lives only in userlist.txt."""

    database: str = "taskflow"
    admin_user: str = "pgbouncer_admin"
    admin_password: str = ""

    @property
    def admin_secret(self) -> str:
        """The admin console's password as a SCRAM secret, for the userlist."""
        from devenv.clients.pgwire import scram_secret

        return scram_secret(self.admin_user, self.admin_password)


class Redis(Service):
    """Redis with a password (protected mode refuses outside clients otherwise)."""

    password: str = ""


class Stack(Record):
    """The whole stack for one project and profile."""

    project: str
    profile: str
    root: Path
    ephemeral: bool
    postgres: Postgres
    pgbouncer: PgBouncer
    redis: Redis
    warnings: tuple[str, ...] = ()
    seed_scale: int = 0  # generated tasks on top of the seed files (profile option)

    @property
    def services(self) -> tuple[Service, ...]:
        """The services in start order (PgBouncer after the Postgres it pools)."""
        return (self.postgres, self.pgbouncer, self.redis)

    @property
    def state_dir(self) -> Path:
        """`.devenv/<profile>/`: rendered files and, for native, data, logs and sockets."""
        return self.root / STATE_DIR_NAME / self.profile

    @property
    def name(self) -> str:
        """Compose project name / Docker label: one per project and profile."""
        return f"{self.project}-{self.profile}"

    def urls(self, database: str | None = None, redis_db: int = 0, host: str = "127.0.0.1") -> dict[str, str]:
        """Connection URLs as an application uses them (for another database/Redis index if given).

        DATABASE_URL goes through PgBouncer (transaction pooling); DIRECT_DATABASE_URL reaches
        Postgres itself, for LISTEN/NOTIFY, migrations and other session features.
        """
        pg, pgb, redis = self.postgres, self.pgbouncer, self.redis
        user, password = quote(pg.user, safe=""), quote(pg.password, safe="")
        ssl = "?sslmode=require" if pg.ssl else ""
        pooled_db = database or pgb.database
        return {
            "DATABASE_URL": f"postgresql://{user}:{password}@{host}:{pgb.port}/{pooled_db}",
            "DIRECT_DATABASE_URL": f"postgresql://{user}:{password}@{host}:{pg.port}/{database or pg.database}{ssl}",
            "REDIS_URL": f"redis://:{quote(redis.password, safe='')}@{host}:{redis.port}/{redis_db}",
        }


def postgres_major(image: str, explicit: int | None = None) -> int:
    """The PostgreSQL major version an image tag names ('postgres:16-alpine' -> 16)."""
    from devenv import pgcatalog

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


def build_stack(config: Config, profile: str) -> Stack:
    """Resolve one profile into a Stack; every profile's settings are validated first."""
    config.profile(profile)  # unknown profile -> ConfigError naming the known ones
    pg_conf = config.services["postgres"]
    major = postgres_major(pg_conf.image, pg_conf.options.get("major"))
    # Validate every column, not just the chosen one: a typo in `prod` should not wait for prod.
    columns = {name: validate_postgres(config, name, major) for name in config.profiles}
    for name in config.profiles:
        validate_named(config, "pgbouncer", name)
        validate_named(config, "redis", name)
    from devenv.secrets import load_or_create_secrets

    secrets = load_or_create_secrets(config.root / STATE_DIR_NAME)
    limits = config.limits_for(profile)
    pgb_conf, redis_conf = config.services["pgbouncer"], config.services["redis"]
    postgres = Postgres(
        name="postgres",
        image=pg_conf.image,
        port=pg_conf.port,
        settings=columns[profile],
        major=major,
        database=pg_conf.options.get("database", "taskflow"),
        user=pg_conf.options.get("user", "taskflow"),
        password=secrets["postgres_password"],
        limits=limits,
    )
    pgbouncer = PgBouncer(
        name="pgbouncer",
        image=pgb_conf.image,
        port=pgb_conf.port,
        settings={k: _plain(v) for k, v in config.column("pgbouncer", profile).items()},
        database=pgb_conf.options.get("database", postgres.database),
        admin_user=pgb_conf.options.get("admin_user", "pgbouncer_admin"),
        admin_password=secrets["pgbouncer_admin_password"],
    )
    redis = Redis(
        name="redis",
        image=redis_conf.image,
        port=redis_conf.port,
        settings={k: _plain(v, yes_no=True) for k, v in config.column("redis", profile).items()},
        password=secrets["redis_password"],
    )
    ports = {"postgres": postgres.port, "pgbouncer": pgbouncer.port, "redis": redis.port}
    if len(set(ports.values())) != 3:
        raise ConfigError(
            f"two services share a port: {ports}",
            hint="give each a distinct port (DEVENV_POSTGRES_PORT, DEVENV_PGBOUNCER_PORT, DEVENV_REDIS_PORT).",
        )
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
    )


def validate_postgres(config: Config, profile: str, major: int) -> dict[str, str]:
    """One profile's postgres column, each value checked and normalised for postgresql.conf."""
    from devenv import pgcatalog
    from devenv.settings import _line_of

    text = config.path.read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for name, value in config.column("postgres", profile).items():
        where = f"{config.path}: postgres.settings.{name} (profile '{profile}')"
        try:
            out[name] = pgcatalog.normalize(name, value, major, where)
        except ConfigError as exc:
            line = _line_of(text, f"postgres.settings.{name}")
            if line:
                exc.message = exc.message.replace(f"{config.path}:", f"{config.path}:{line}:", 1)
                exc.args = (exc.message,)
            raise
    return out


def validate_named(config: Config, service: str, profile: str) -> None:
    """PgBouncer and Redis settings: the name must be one the server knows."""
    from devenv.catalog import known_settings
    from devenv.settings import _did_you_mean, _line_of

    known = known_settings(service)
    for name in config.column(service, profile):
        if name not in known:
            line = _line_of(config.path.read_text(encoding="utf-8"), f"{service}.settings.{name}")
            where = f"{config.path}:{line}" if line else str(config.path)
            raise ConfigError(
                f"{where}: {service}.settings.{name}: '{name}' is not a {service} setting{_did_you_mean(name, known)}",
                hint=f"fix the spelling; the {service} documentation lists its settings.",
            )


def memory_warnings(postgres: Postgres) -> list[str]:
    """Warn when shared_buffers plus per-connection work memory cannot fit the memory limit."""
    from devenv import pgcatalog

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
