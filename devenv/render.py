"""Stack -> config files. Nothing else: no processes, no containers.

The same templates serve both runtimes. A `Placement` says where the servers find each
other and their files: inside containers on a compose network (`compose_placement`), or as
local processes on 127.0.0.1 (built by the native runtime). The settings tables are the same.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.errors import ConfigError, StateError
from devenv.config.project import template_dirs
from devenv.config.rules import pg_literal, redis_value
from devenv.config.stack import Stack

CONFIG_FILES = ("postgresql.conf", "pg_hba.conf", "pgbouncer.ini", "userlist.txt", "redis.conf")
COMPOSE_FILE = "docker-compose.yml"
COMPOSE_TEMPLATE = "docker-compose.yml.j2"
# Which rendered files each service reads: a change restarts only that service.
SERVICE_FILES = {
    "postgres": ("postgresql.conf", "pg_hba.conf"),
    "pgbouncer": ("pgbouncer.ini", "userlist.txt"),
    "redis": ("redis.conf",),
}
# Where the official images expect config files (mounted read-only by compose and Docker).
CONTAINER_CONF_DIRS = {"postgres": "/etc/postgresql", "pgbouncer": "/etc/pgbouncer", "redis": "/usr/local/etc/redis"}


@dataclass(frozen=True)
class Placement:
    """Addresses and paths as the servers themselves see them."""

    target: str  # "compose" or "native"
    listen_address: str  # postgres listen_addresses, pgbouncer listen_addr, redis bind
    postgres_host: str  # how PgBouncer reaches Postgres
    postgres_port: int
    pgbouncer_port: int
    redis_port: int
    conf_dirs: dict[str, str]
    redis_dir: str
    run_dir: str | None = None  # unix sockets and pid files (native only)


def compose_placement(stack: Stack) -> Placement:
    """Placement inside containers on the compose network (ports are the container ports)."""
    return Placement(
        target="compose",
        listen_address="*",
        postgres_host="postgres",
        postgres_port=stack.postgres.container_port,
        pgbouncer_port=stack.pgbouncer.container_port,
        redis_port=stack.redis.container_port,
        conf_dirs=dict(CONTAINER_CONF_DIRS),
        redis_dir="/data",
    )


def render_files(stack: Stack, placement: Placement) -> dict[str, str]:
    """Render every config file for a placement; the compose file only for the compose target."""
    import jinja2  # deferred: `devenv --help` must stay fast

    from devenv.db.cache import cache_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs(stack.root)]),
        # Compiling the templates costs more than rendering them: keep the bytecode.
        bytecode_cache=_bytecode_cache(jinja2, cache_dir() / "jinja"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    # Values are quoted for each server's own config lexer (devenv.config.rules): the settings
    # tables' cells cannot end a line or a token early.
    env.filters["pg_literal"] = pg_literal
    env.filters["redis_value"] = lambda value, name: redis_value(name, str(value))
    context = {"stack": stack, "pg": stack.postgres, "pgb": stack.pgbouncer, "redis": stack.redis, "place": placement,
               # syncfs(): PostgreSQL 14+ on Linux (a container's server always is)
               "syncfs": stack.postgres.major >= 14 and (placement.target == "compose" or sys.platform == "linux")}
    names = [f"{name}.j2" for name in CONFIG_FILES]
    if placement.target == "compose":
        names.append(COMPOSE_TEMPLATE)
    files: dict[str, str] = {}
    for name in names:
        if name == COMPOSE_TEMPLATE:  # its labels carry the hashes of the files above
            context["hashes"] = service_hashes(files, stack)
        try:
            template = env.get_template(name)
            files[name.removesuffix(".j2")] = template.render(context)
        except jinja2.TemplateNotFound as exc:
            raise ConfigError(
                f"template {name} not found in {', '.join(map(str, template_dirs(stack.root)))}",
                hint="templates live in templates/ and docker-compose.yml.j2 at the project root.",
            ) from exc
        except jinja2.TemplateError as exc:
            where = f"{getattr(exc, 'filename', None) or name}:{getattr(exc, 'lineno', '?')}"
            raise ConfigError(f"{where}: template error: {exc}", hint="fix the template at that line.") from exc
    return files


def _bytecode_cache(jinja2: Any, directory: Path) -> Any:
    """Jinja's compiled templates, kept in the cache directory: code devenv runs, so only from a
    directory (and its parent) of this user's that nobody else can write to, made 0700."""
    from devenv import safefs

    try:
        for level in (directory.parent, directory):
            if not level.exists():
                level.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(level, 0o700)
    except OSError:
        return None  # read-only home: render without the cache
    if not (safefs.verified_dir(directory.parent) and safefs.verified_dir(directory)):
        return None  # shared: another user could plant bytecode
    return jinja2.FileSystemBytecodeCache(str(directory))


def write_files(files: dict[str, str], out_dir: Path, own: bool = True) -> list[Path]:
    """Write rendered files atomically (never through a link); skip those whose content is
    unchanged. Returns changed paths.

    `own`: out_dir is devenv's own (`.devenv/<profile>/`), made 0700 whatever it was. Else (`render
    --out`) a new directory is made 0700 and an existing one keeps its mode (it may be shared on
    purpose). Files are 0644 in a directory only this user can enter, because containers read them as
    their own uid (PgBouncer runs as 70); in one others can enter they are 0600, as they hold
    passwords.
    """
    from devenv import safefs

    try:
        if not out_dir.is_dir():
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(out_dir, 0o700)
        if own:
            os.chmod(out_dir, 0o700)
        private = not os.stat(out_dir).st_mode & 0o077
    except OSError as exc:
        raise StateError(f"cannot create {out_dir}: {exc.strerror}") from exc
    changed = []
    for name, content in files.items():
        path = out_dir / name
        data = content.encode("utf-8")
        if not path.is_symlink() and path.exists() and path.read_bytes() == data:
            continue
        safefs.write_file(path, data, 0o644 if private else 0o600)
        changed.append(path)
    return changed


def service_hashes(files: dict[str, str], stack: Stack) -> dict[str, str]:
    """A content hash per service over its image and the files it reads."""
    hashes = {}
    for service in stack.services:
        digest = hashlib.sha256(service.image.encode())
        for name in SERVICE_FILES[service.name]:
            digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
        hashes[service.name] = digest.hexdigest()[:16]
    return hashes


def render(stack: Stack, out_dir: Path | None = None) -> list[Path]:
    """`devenv render`: the compose file and config files into `.devenv/<profile>/` (or out_dir)."""
    files = render_files(stack, compose_placement(stack))
    target = out_dir or stack.state_dir
    write_files(files, target, own=out_dir is None)
    written = [target / name for name in files]
    if stack.postgres.ssl:
        from devenv.certs import ensure_certificate, ensure_key_copy

        # The compose file mounts these; without them Docker would create empty directories.
        ensure_certificate(target / "ssl")
        written += [target / "ssl" / "server.crt", target / "ssl" / "server.key", ensure_key_copy(target / "ssl")]
    return written
