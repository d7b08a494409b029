"""The one interface both runtimes implement; commands and the health module use only this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from devenv.config.stack import Stack

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServiceState:
    """What a runtime knows of one service without talking to it."""

    name: str
    running: bool
    port: int  # the host port it listens on when running (as it was started), else the stack's
    pid: int | None = None  # the server's host pid, when the runtime knows it
    process_name: str = ""  # the program that pid runs (to tell it from a reused pid)
    detail: str = ""  # e.g. "exited 1", a container id


@dataclass
class UpResult:
    """What `Runtime.up` changed: services started, restarted or reloaded, and notes."""

    started: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)
    fresh_database: bool = False  # the data directory/volume was just initialised
    from_cache: bool = False  # ... from a cached seeded snapshot instead of initdb
    cache_key: str = ""  # the key a fresh seeded data directory would be cached under
    roles_pending: bool = False  # a new cluster, new passwords or a migration: `up` runs roles.ensure_roles
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was started, restarted or reloaded."""
        return bool(self.started or self.restarted or self.reloaded)


class Runtime(Protocol):
    """Runs the three services of a Stack: as local processes or as containers.

    Every caller uses only these; a runtime for which one does not apply implements it as a
    no-op (e.g. save_cache) rather than leaving it out.
    """

    name: str

    def resolve(self, stack: Stack) -> Runtime:
        """The runtime that runs this stack: a concrete runtime is itself; `auto` chooses one."""
        ...

    def identify(self, stack: Stack) -> Stack:
        """The stack under the name it has on this runtime (`up` asks first). Native: as it is.
        Docker: the name this checkout's record gives; without one, decided once (the name of
        a stack this checkout made before names carried the checkout id, else its own) and
        recorded in `.devenv/<profile>/identity.json` (devenv.config.identity)."""
        ...

    def describe(self, stack: Stack) -> str:
        """What runs the stack, said once per `up`: the engine and images, or the binaries."""
        ...

    def engine_address(self) -> str:
        """The container engine this runtime talks to (`unix:///run/podman/podman.sock`,
        `tcp://10.0.0.5:2375`), recorded by `up` so that `auto` finds the stack there again
        (a stack started with `--runtime podman`); "" for local processes."""
        ...

    def up(self, stack: Stack, progress: Progress, use_cache: bool = False) -> UpResult:
        """Start what is not running; restart or reload what changed; leave the rest alone.

        `use_cache`: a new data directory may come from the seeded-data cache, and a new
        cluster's result names the key to save it under (`UpResult.cache_key`, see save_cache).
        """
        ...

    def save_cache(self, stack: Stack, key: str, progress: Progress) -> None:
        """Keep the freshly seeded data directory in the cache under `key` (after `up` gave the
        key and seeding is done); failures are only reported through `progress`."""
        ...

    def down(self, stack: Stack, volumes: bool = False) -> list[str]:
        """Stop every service (data kept unless `volumes`); return what was stopped."""
        ...

    def stop_started(self, stack: Stack) -> list[str]:
        """After a failed `up`: stop the servers that this object's `up` started (not those it
        found running, nor those it restarted), data kept; return what was stopped."""
        ...

    def states(self, stack: Stack) -> list[ServiceState]:
        """Each service's process/container state."""
        ...

    def footprint(self, stack: Stack) -> list[str]:
        """Where the stack's data lives besides its checkout, for the machine's registry
        (devenv.registry): native, the directories devenv made for it; Docker, its volumes."""
        ...

    def exit_status(self, stack: Stack, service: str) -> str | None:
        """Why a service is gone ("exited 1") if it stopped after `up`, else None."""
        ...

    def started(self, stack: Stack, service: str) -> bool:
        """Whether the service's start (if `up` left one in progress) has completed, so that
        probing it now tells something (see health.wait_until_healthy's `started`)."""
        ...

    def log_tail(self, stack: Stack, service: str, lines: int = 20) -> str:
        """The last lines of a service's log."""
        ...

    def follow_logs(self, stack: Stack, service: str | None, follow: bool) -> Iterator[str]:
        """Log lines of one or all services; with `follow`, keep yielding new ones."""
        ...

    def pg_tool(self, stack: Stack, tool: str) -> list[str]:
        """The argv prefix that runs a PostgreSQL client program (`pg_dump`, `pg_restore`) of
        the running server's major version, connected to the stack's server.

        The prefix names the program and its connection options (host, port, user), as seen
        from wherever it runs; the caller appends the program's other options and
        `--dbname=NAME`, passes the password and SSL mode in the environment (PGPASSWORD,
        PGSSLMODE, which a container runtime forwards, e.g. `docker exec -e PGPASSWORD`),
        and streams archives through stdin/stdout (no host paths).
        """
        ...
