"""`Stack`: the one model the renderer, both runtimes and the health checks read (devenv.config.resolve
builds it from the Config and a profile).

Nothing downstream re-derives a port, a password, an image or a setting.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from devenv.config.project import STATE_DIR_NAME
from devenv.record import Factory, Record

# Ports the servers listen on inside their containers; the host ports are in the model.
SERVICES = ("postgres", "pgbouncer", "redis")  # every stack's, in start order
CONTAINER_PORTS = {"postgres": 5432, "pgbouncer": 6432, "redis": 6379}


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
    configured_port: int = 0  # devenv.yaml's port (or the default); `port` may be a remembered one
    pinned_by: str = ""  # why the port must not move: "DEVENV_<S>_PORT" or "pin_port"; "" = it may

    @property
    def container_port(self) -> int:
        """The port the server listens on inside its container."""
        return CONTAINER_PORTS[self.name]


class Postgres(Service):
    """PostgreSQL: the settings are validated against the major version's catalogue.

    Two roles: `user`, the application's (what URLs, tests and users get: no superuser, owns
    its databases), and `admin_user`, devenv's own superuser (the cluster's bootstrap role),
    which only devenv's cluster-level work uses (devenv.clients.connect's `admin=True`).
    """

    major: int = 16
    database: str = "taskflow"
    user: str = "taskflow"
    password: str = ""
    admin_user: str = "devenv_admin"
    admin_password: str = ""
    limits: Limits = Factory(lambda: Limits(1 << 30, 1.0))

    @property
    def password_secret(self) -> str:
        """The password as the SCRAM secret the role stores and PgBouncer's userlist holds."""
        from devenv.clients.pgwire import scram_secret

        return scram_secret(self.user, self.password)

    @property
    def admin_password_secret(self) -> str:
        """The admin role's password as a SCRAM secret (how initdb and the image store it)."""
        from devenv.clients.pgwire import scram_secret

        return scram_secret(self.admin_user, self.admin_password)

    @property
    def roles_secret(self) -> str:
        """What the password note of a cluster records: both roles' secrets and the role layout
        (an older devenv's note, of the application role alone, never matches)."""
        return f"roles-v2\0{self.admin_user}\0{self.admin_password_secret}\0{self.user}\0{self.password_secret}"

    @property
    def ssl(self) -> bool:
        """Whether the profile turns TLS on: then devenv generates a local certificate, and
        Postgres and PgBouncer require TLS on TCP (as RDS's rds.force_ssl)."""
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


class Step(Record):
    """One step of devenv.yaml's `schema:` or `seed:` list, in the order they run.

    `sql`: apply the folder's `*.sql` files (`path`, relative to the project root) with the
    ledger; `run`: run `argv` (no shell) from the project root against the database being
    built, keyed by the content of `inputs` (files or folders, relative to the project root).
    `index` is the step's 1-based place in its part, as messages name it ("schema step 1").
    """

    part: str  # "schema" or "seed"
    kind: str  # "sql" or "run"
    index: int = 1
    path: str = ""  # sql: the folder
    argv: tuple[str, ...] = ()  # run: the command
    inputs: tuple[str, ...] = ()  # run: what keys it
    # Where devenv.yaml gave it (the file and the step's key path, e.g. `schema.0`): a missing
    # input or folder is found when the steps are needed (devenv.db.stepkeys.check_inputs),
    # not while parsing, so that `down`, `env`... work on a branch without the migrations.
    source: str = ""
    keypath: str = ""

    @property
    def command(self) -> str:
        """The command as one shell-quoted line (for messages and the ledger)."""
        import shlex

        return shlex.join(self.argv)

    @property
    def label(self) -> str:
        """How messages name it: `schema step 1 (alembic upgrade head)`, `seed step 1 (sql seeds/data)`."""
        what = self.command if self.kind == "run" else f"sql {self.path}"
        return f"{self.part} step {self.index} ({what})"


# devenv.yaml without `schema:` / `seed:`: the SQL files of seeds/schema, then seeds/data.
DEFAULT_STEPS = (Step("schema", "sql", 1, "seeds/schema"), Step("seed", "sql", 1, "seeds/data"))

class ExternalServer(Record):
    """An existing server the pytest plugin uses instead of starting any (`--devenv-url`):
    where it is and how to reach it. The URL's role does everything (the Stack's postgres
    user and admin_user are both that role); there is no PgBouncer, and Redis only if given."""

    host: str
    maintenance_db: str = "postgres"  # the URL's database: where CREATE/DROP DATABASE run
    sslmode: str = "prefer"  # libpq's, from the URL
    sslrootcert: str = ""
    redis_host: str = ""  # "" = no Redis given (--devenv-redis-url)

    @property
    def tls(self) -> bool | str:
        """What devenv's own driver does: True (TLS required), "prefer" or False."""
        if self.sslmode in ("require", "verify-ca", "verify-full"):
            return True
        return "prefer" if self.sslmode in ("prefer", "allow") else False


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
    env_file: str = ""  # devenv.yaml's `env_file:`, relative to root ("" when off)
    # The stack's name on this machine (devenv.config.identity): `{project}-{profile}-{checkout id}`,
    # or `{project}-{profile}` for a checkout whose Docker stack predates the id. "" = the latter.
    identity: str = ""
    steps: tuple[Step, ...] = DEFAULT_STEPS  # devenv.yaml's `schema:` then `seed:` steps
    # Where this machine reaches the published ports and the address they bind on; "" = 127.0.0.1
    # (native, an engine of this machine). A remote engine's (devenv.runtime.engine.reach): set by
    # the Docker runtime's identify, kept in identity.json for the commands after `up`.
    reach_host: str = ""
    bind_ip: str = ""

    server: ExternalServer | None = None  # an existing server (the pytest plugin's --devenv-url); None = devenv's own

    @property
    def host(self) -> str:
        """Where this machine reaches Postgres (and PgBouncer and Redis): 127.0.0.1, a remote
        engine's host, or an existing server."""
        return self.server.host if self.server else (self.reach_host or "127.0.0.1")

    @property
    def bind_address(self) -> str:
        """The address the published ports bind on: 127.0.0.1, or a remote engine host's."""
        return self.bind_ip or "127.0.0.1"

    @property
    def maintenance_database(self) -> str:
        """The database devenv's cluster-level sessions (CREATE/DROP DATABASE) open."""
        return self.server.maintenance_db if self.server else "postgres"

    @property
    def has_pgbouncer(self) -> bool:
        """Whether a PgBouncer pools this stack's databases (not on an existing server)."""
        return self.server is None

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
        """The stack's name: the Compose project, and so every container, network and volume
        name on Docker; one per checkout and profile (see `identity`)."""
        return self.identity or self.base_name

    @property
    def base_name(self) -> str:
        """`{project}-{profile}`: what names were before they carried the checkout (native
        keeps it in its directories' names)."""
        return f"{self.project}-{self.profile}"

    def urls(self, database: str | None = None, redis_db: int = 0, host: str | None = None) -> dict[str, str]:
        """Connection URLs as an application uses them (for another database/Redis index if given).

        DATABASE_URL goes through PgBouncer (transaction pooling); DIRECT_DATABASE_URL reaches
        Postgres itself, for LISTEN/NOTIFY, migrations and other session features. With ssl on
        both require TLS (the servers refuse TCP without it), so both say sslmode=require.
        """
        pg, pgb, redis = self.postgres, self.pgbouncer, self.redis
        user, password = quote(pg.user, safe=""), quote(pg.password, safe="")
        if self.server is not None:
            return self._server_urls(database, redis_db)
        ssl = "?sslmode=require" if pg.ssl else ""
        host = _netloc(host or self.host)
        pooled_db = database or pgb.database
        return {
            "DATABASE_URL": f"postgresql://{user}:{password}@{host}:{pgb.port}/{pooled_db}{ssl}",
            "DIRECT_DATABASE_URL": f"postgresql://{user}:{password}@{host}:{pg.port}/{database or pg.database}{ssl}",
            "REDIS_URL": f"redis://:{quote(redis.password, safe='')}@{host}:{redis.port}/{redis_db}",
        }

    def _server_urls(self, database: str | None, redis_db: int) -> dict[str, str]:
        """An existing server's URLs: no PgBouncer, so DATABASE_URL is direct too; REDIS_URL
        only when a Redis was given."""
        from urllib.parse import urlencode

        pg, server = self.postgres, self.server
        assert server is not None
        auth = f"{quote(pg.user, safe='')}:{quote(pg.password, safe='')}@" if pg.password else f"{quote(pg.user, safe='')}@"
        query = {"sslmode": server.sslmode, **({"sslrootcert": server.sslrootcert} if server.sslrootcert else {})}
        direct = f"postgresql://{auth}{_netloc(server.host)}:{pg.port}/{quote(database or pg.database, safe='')}?{urlencode(query)}"
        urls = {"DATABASE_URL": direct, "DIRECT_DATABASE_URL": direct}
        if server.redis_host:
            password = f":{quote(self.redis.password, safe='')}@" if self.redis.password else ""
            urls["REDIS_URL"] = f"redis://{password}{_netloc(server.redis_host)}:{self.redis.port}/{redis_db}"
        return urls

    def libpq_env(self) -> dict[str, str]:
        """libpq's variables for a direct session to Postgres (`psql` with no arguments, any
        libpq or psycopg client): PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, and
        PGSSLMODE=require when the profile has ssl on."""
        pg = self.postgres
        env = {"PGHOST": self.host, "PGPORT": str(pg.port), "PGUSER": pg.user, "PGDATABASE": pg.database,
               "PGPASSWORD": pg.password}
        if self.server is not None:
            env["PGSSLMODE"] = self.server.sslmode
        elif pg.ssl:
            env["PGSSLMODE"] = "require"
        return env

    def env(self) -> dict[str, str]:
        """What `devenv env` (dotenv, shell) and the env_file block give: the URLs, then libpq's."""
        return {**self.urls(), **self.libpq_env()}


def _netloc(host: str) -> str:
    """A host as a URL carries it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host
