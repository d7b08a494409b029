"""An existing server instead of devenv's own (the pytest plugin's `--devenv-url`): a Stack on it.

A GitHub Actions `services:` Postgres or a shared CI database: devenv starts nothing and
builds its template and the per-worker databases there, as the URL's role (which needs
CREATEDB). The schema and seed come from devenv.yaml when the checkout has one (its profile's
steps), else from `seeds/` under the root. On a shared server names must not collide between
projects and checkouts: every database devenv makes there starts with
`<database>_<checkout id>` (`database_base`), and devenv drops only databases of that shape.

The URL's password never goes into a message: `redact` is what errors and reports show.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

from devenv.config.stack import ExternalServer, Limits, PgBouncer, Postgres, Redis, Stack
from devenv.errors import ConfigError

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class ServerUrl:
    """A postgresql:// URL's parts (libpq's environment fills what it leaves out)."""

    def __init__(self, url: str, env: Mapping[str, str], source: str = "--devenv-url") -> None:
        shown = f"{source}: {redact(url)}"
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(f"{shown}: not a postgresql:// URL",
                              hint="give postgresql://USER@HOST:PORT/DATABASE (the password in PGPASSWORD).")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"{shown}: the port is not a number", hint="fix the URL.") from None
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.host = unquote(parts.hostname or "") or env.get("PGHOST") or "127.0.0.1"
        self.port = port or int(env.get("PGPORT") or 5432)
        self.user = unquote(parts.username or "") or env.get("PGUSER") or ""
        self.password = unquote(parts.password or "") or env.get("PGPASSWORD") or ""
        self.database = unquote(parts.path.lstrip("/")) or env.get("PGDATABASE") or "postgres"
        self.sslmode = query.get("sslmode") or env.get("PGSSLMODE") or "prefer"
        self.sslrootcert = query.get("sslrootcert") or env.get("PGSSLROOTCERT") or ""
        if not self.user:
            raise ConfigError(f"{shown}: no user", hint="name the role: postgresql://USER@HOST:PORT/DATABASE.")
        if self.sslmode not in SSLMODES:
            raise ConfigError(f"{shown}: unknown sslmode '{self.sslmode}'",
                              hint=f"use one of {', '.join(SSLMODES)}.")
        self.shown = redact(url)


class RedisUrl:
    """A redis:// URL's host, port and password (its index is not used: devenv picks them)."""

    def __init__(self, url: str, source: str = "--devenv-redis-url") -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or port == -1:
            raise ConfigError(f"{source}: {redact(url)}: not a redis://HOST:PORT URL",
                              hint="give redis://[:PASSWORD@]HOST:PORT.")
        if parts.scheme == "rediss":
            raise ConfigError(f"{source}: rediss:// (TLS) is not supported", hint="give a redis:// URL.")
        self.host = parts.hostname
        self.port = port or 6379
        self.password = unquote(parts.password or "")


def redact(url: str) -> str:
    """The URL without its password (what messages and reports may show).

    Whatever the URL's shape (an unencoded password may hold `:`, `@`, `/`, `?`, `#`, `%`),
    everything between the user's `:` and the last `@` is hidden, and so is the value of a
    `password=` parameter: shown too much of the host is better than any of the password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    head, at, tail = rest.rpartition("@")
    if at and ":" in head:
        rest = f"{head.partition(':')[0]}:***@{tail}"
    shown = f"{scheme}{sep}{rest}"
    return re.sub(r"(?i)(password=)[^&#]*", r"\1***", shown)


def checkout_key(root: Path) -> str:
    """6 hex naming this checkout on this machine: CI runners share paths, not hostnames."""
    return hashlib.sha256(f"{socket.gethostname()}\0{Path(root).resolve()}".encode()).hexdigest()[:6]


def database_base(name: str, root: Path) -> str:
    """`<database>_<checkout key>`: what every database devenv makes on a shared server starts with."""
    clean = re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_") or "app"
    return f"{clean[:24]}_{checkout_key(root)}"


def server_stack(root: Path, profile: str, url: str, redis_url: str | None, config: Path | None,
                 env: Mapping[str, str], sources: tuple[str, str] = ("--devenv-url", "--devenv-redis-url")) -> Stack:
    """A Stack whose Postgres (and Redis, when given) is an existing server's.

    With `config` (a devenv.yaml) its profile gives the database name and the seed steps;
    without, the project is named after `root` and the seeds are `root/seeds`. Nothing is
    written: no secrets file, no state. `sources`: where the two URLs came from, for messages.
    """
    server = ServerUrl(url, env, sources[0])
    redis = RedisUrl(redis_url, sources[1]) if redis_url else None
    if config is not None:
        from devenv.config.resolve import build_stack
        from devenv.config.secrets import SECRET_NAMES
        from devenv.config.settings import load_config

        base = build_stack(load_config(config, env), profile, secrets={name: "" for name in SECRET_NAMES})
        root = base.root
    else:
        base = Stack(project=_project(root), profile=profile, root=root, ephemeral=True,
                     postgres=Postgres(name="postgres", image="", port=0, settings={}, database=_project(root),
                                       limits=Limits(1 << 30, 1.0)),
                     pgbouncer=PgBouncer(name="pgbouncer", image="", port=0, settings={}),
                     redis=Redis(name="redis", image="", port=0, settings={}))
    postgres = base.postgres.replace(
        port=server.port, settings={}, database=database_base(base.postgres.database, root),
        user=server.user, password=server.password, admin_user=server.user, admin_password=server.password)
    return base.replace(
        postgres=postgres,
        pgbouncer=base.pgbouncer.replace(port=0, admin_password=""),
        redis=base.redis.replace(port=redis.port if redis else 0, password=redis.password if redis else "", settings={}),
        identity="",
        server=ExternalServer(host=server.host, maintenance_db=server.database, sslmode=server.sslmode,
                              sslrootcert=server.sslrootcert, redis_host=redis.host if redis else ""),
    )


def _project(root: Path) -> str:
    return re.sub(r"[^a-z0-9_]", "_", Path(root).resolve().name.lower()).strip("_") or "app"
