"""The Python API: what the pytest plugin uses, and anyone scripting tests.

    import devenv

    env = devenv.Devenv.load(profile="ci")      # reads devenv.yaml (nearest upwards)
    env.up()                                    # idempotent
    with env.connect() as conn: ...             # psycopg, direct; env.connect(pooled=True)
    env.reset()                                 # back to the freshly seeded state, ~10 ms
    conn = devenv.connect()                     # a connection to the running dev stack
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping

from devenv.config.stack import Stack

if TYPE_CHECKING:
    import psycopg
    import redis

    from devenv.db.janitor import Janitor, ResetResult
    from devenv.lifecycle import UpReport


class Devenv:
    """A handle on one project's stack for one profile."""

    def __init__(self, stack: Stack, runtime: str = "auto") -> None:
        self.stack = stack
        self.runtime_name = runtime
        self._janitor: Janitor | None = None
        self._redis_clients: dict[int, Any] = {}

    @classmethod
    def load(
        cls,
        config: str | os.PathLike[str] | None = None,
        profile: str | None = None,
        runtime: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> "Devenv":
        """Read devenv.yaml (given, DEVENV_CONFIG, or the nearest upwards) for a profile."""
        from devenv.config.project import find_config
        from devenv.config.settings import load_config
        from devenv.config.resolve import build_stack

        env = os.environ if env is None else env
        path = find_config(config or env.get("DEVENV_CONFIG"), cwd=cwd)
        stack = build_stack(load_config(path, env), profile or env.get("DEVENV_PROFILE", "dev"))
        return cls(stack, runtime or env.get("DEVENV_RUNTIME", "auto"))

    @classmethod
    def on_server(cls, url: str, root: Path, profile: str = "ci", redis_url: str | None = None,
                  config: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                  sources: tuple[str, str] = ("--devenv-url", "--devenv-redis-url")) -> "Devenv":
        """A handle on an existing server (a CI `services:` Postgres, a shared database): devenv
        starts nothing there and builds its template and databases as the URL's role (which
        needs CREATEDB). `config`: a devenv.yaml for the schema and seed (else `root/seeds`);
        `sources`: where `url` and `redis_url` came from, as errors name them."""
        from devenv.config.external import server_stack

        env = os.environ if env is None else env
        stack = server_stack(Path(root), profile, url, redis_url, Path(config) if config else None, env, sources)
        return cls(stack, "external")

    @property
    def external(self) -> bool:
        """Whether this handle is on an existing server (Devenv.on_server): no up, no down."""
        return self.stack.server is not None

    def prepare(self) -> str:
        """On an existing server: check the role may create databases, then build the template
        if missing (what `up` does on devenv's own stack). The template's name."""
        from devenv.errors import ConfigError

        attributes = self.janitor.role_attributes()
        if not (attributes["rolcreatedb"] or attributes["rolsuper"]):
            user = self.stack.postgres.user
            raise ConfigError(
                f"role '{user}' on {self.stack.host}:{self.stack.postgres.port} may not create databases "
                "(devenv builds a template and a database per test worker there)",
                hint=f"as a superuser: ALTER ROLE \"{user}\" CREATEDB; or pass another role in --devenv-url.")
        return self.janitor.ensure_template()

    @property
    def janitor(self) -> "Janitor":
        """The template/reset machinery, with its connections kept open between resets."""
        from devenv.db.janitor import Janitor

        if self._janitor is None:
            self._janitor = Janitor(self.stack)
        return self._janitor

    def up(self, timeout: float = 60.0, seed: bool = True, say: Callable[[str], None] | None = None) -> "UpReport":
        """Bring the stack up and seeded (idempotent)."""
        from devenv import lifecycle
        from devenv.runtime import get_runtime

        say = say or (lambda line: None)
        report = lifecycle.up(self.stack, get_runtime(self.runtime_name, say=say), timeout=timeout, seed=seed, say=say)
        if report.stack is not None and report.stack != self.stack:  # `up` moved a port (or named the stack)
            self.close()  # connections kept on the old ports
            self.stack = report.stack
        return report

    def down(self, volumes: bool = False) -> list[str]:
        """Stop the stack (data kept unless `volumes`)."""
        from devenv import lifecycle
        from devenv.runtime import get_runtime

        self.close()
        return lifecycle.down(self.stack, get_runtime(self.runtime_name), volumes=volumes)

    def is_healthy(self) -> bool:
        """Whether all three services answer their health checks right now."""
        from devenv import health

        return all(health.check_once(checks) is None for checks in health.stack_checks(self.stack).values())

    def reset(self, database: str | None = None, hard: bool = False, strategy: str = "auto",
              redis_db: int | None = 0, known_sessions: Collection[int] = ()) -> "ResetResult":
        """Put a database (default: the working one) and a Redis index back to the seeded state,
        under the profile's lock (devenv.db.reset), over this handle's open connections.

        `known_sessions`: backend pids of your own direct connections to the database (psycopg's
        `conn.info.backend_pid`; a pooled one's is PgBouncer's and matches none), kept open
        across resets: with no other session on it, PgBouncer has no server connection there to
        renew, and the reset skips asking it (~0.5 ms)."""
        from devenv.db.reset import reset

        result = reset(self.stack, database, hard=hard, strategy=strategy, redis_db=redis_db, janitor=self.janitor,
                       known_sessions=known_sessions)
        assert result is not None  # only in_place_only or redis_only leave the database
        return result

    def create_database(self, name: str) -> bool:
        """A database of this name cloned from the seeded template (kept if it exists)."""
        return self.janitor.create(name)

    def urls(self, database: str | None = None, redis_db: int = 0) -> dict[str, str]:
        """DATABASE_URL (pooled), DIRECT_DATABASE_URL and REDIS_URL."""
        return self.stack.urls(database, redis_db)

    def connect(self, database: str | None = None, pooled: bool = False, **kwargs: Any) -> "psycopg.Connection[Any]":
        """A psycopg connection, direct to Postgres or through PgBouncer (keyword arguments go to
        psycopg.connect)."""
        from devenv.clients import connect

        return connect.psycopg_postgres(self.stack, database, pooled=pooled, application_name=None, **kwargs)

    def redis(self, db: int = 0) -> "redis.Redis":
        """A redis-py client on one database index, with the password."""
        from devenv.clients import connect

        if db not in self._redis_clients:
            self._redis_clients[db] = connect.redis_py(self.stack, db)
        return self._redis_clients[db]

    def close(self) -> None:
        """Close the connections this handle keeps (the stack keeps running)."""
        if self._janitor is not None:
            self._janitor.close()
            self._janitor = None
        for client in self._redis_clients.values():
            client.close()
        self._redis_clients.clear()

    def __enter__(self) -> "Devenv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(profile: str | None = None, pooled: bool = False, database: str | None = None,
            config: str | None = None, **kwargs: Any) -> "psycopg.Connection[Any]":
    """A psycopg connection to a running stack: `devenv.connect()` in a REPL or a script."""
    return Devenv.load(config=config, profile=profile).connect(database, pooled=pooled, **kwargs)
