"""AutoRuntime (`--runtime auto`): the runtime a stack already runs on; else Docker when an engine
answers a ping and has the images (or can pull them); else native.

Where there is no engine (no DOCKER_HOST, no Docker context, no socket, or a local socket nobody
answers on) it decides with devenv.runtime.engine alone: neither the docker SDK nor the Docker
runtime loads.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from devenv.errors import DependencyError

if TYPE_CHECKING:
    from devenv.runtime.base import Progress, Runtime, ServiceState, UpResult
    from devenv.runtime.docker import DockerRuntime
    from devenv.config.stack import Stack

Say = Callable[[str], None]


class AutoRuntime:
    """`--runtime auto`: resolves to native or docker for a stack on first use, then delegates."""

    def __init__(self, say: Say = lambda line: None, env: Mapping[str, str] | None = None) -> None:
        self.say = say
        self.env = dict(os.environ if env is None else env)
        self._chosen: Runtime | None = None
        # Docker chosen by a ping alone: whether its images are here (or pullable) is still open.
        self._unchecked: DockerRuntime | None = None

    @property
    def name(self) -> str:  # type: ignore[override]
        """The chosen runtime's name ("auto" until one is chosen)."""
        return self._chosen.name if self._chosen is not None else "auto"

    def resolve(self, stack: Stack) -> Runtime:
        """The runtime this stack is recorded on; else Docker if an engine answers; else native."""
        if self._chosen is not None:
            return self._chosen
        from devenv.state import read_state

        state = read_state(stack.state_dir)
        recorded = state.get("runtime")
        if recorded == "native":
            from devenv.runtime.native import NativeRuntime

            self._chosen = NativeRuntime()  # it runs there: use it as it is
            self.say("runtime: native (the stack is running there)")
            return self._chosen
        # The engine the stack was started on (`--runtime podman`, a DOCKER_HOST of that shell), if
        # it still answers; else the engine found as usual.
        engine = state.get("engine") if recorded == "docker" and isinstance(state.get("engine"), str) else ""
        docker = self._docker(engine)
        if isinstance(docker, str) and engine:
            # Not another engine, nor native: the stack runs there, and a command elsewhere would
            # find nothing (`down` would forget it, `status` say "not started").
            raise recorded_engine_error(stack, engine, docker)
        if not isinstance(docker, str):
            self._unchecked = None if recorded == "docker" else docker
            self.say(f"runtime: docker ({'the stack is running there' if recorded == 'docker' else 'engine'} at "
                     f"{docker.endpoint().shown}, from {docker.endpoint().origin})")
            self._chosen = docker
            return docker
        self._chosen = self._native(docker)
        return self._chosen

    def _docker(self, recorded: str = "") -> DockerRuntime | str:
        """A DockerRuntime whose engine answered a ping, or why there is none. `recorded`: the
        engine a stack was started on (state.json's `engine`), tried instead of looking."""
        from devenv.runtime.engine import PING_TIMEOUT, Endpoint, engine_unreachable, find_endpoint, unix_http_get

        try:
            endpoint = find_endpoint(self.env)
            if recorded and (endpoint is None or endpoint.host != recorded):  # as found, TLS and all, if the same
                endpoint = Endpoint(recorded, "the engine the stack was started on")
        except DependencyError as exc:
            return exc.message
        if endpoint is None:
            from devenv.runtime.engines import find_podman

            endpoint = find_podman(self.env)  # no Docker engine: Podman's, when its API socket is there
        if endpoint is None:
            return "no Docker or Podman engine found"
        if endpoint.host.startswith("unix://"):
            # A socket left by a stopped engine is the usual answer here: found without the
            # Docker runtime or the SDK (~250 ms to import).
            try:
                status, _, body = unix_http_get(endpoint.host[len("unix://"):], "/_ping", timeout=PING_TIMEOUT)
            except Exception as exc:  # refused, timed out, not HTTP
                return engine_unreachable(endpoint, exc).message
            if status != 200 or body.strip() != b"OK":
                return engine_unreachable(endpoint, RuntimeError(f"/_ping answered HTTP {status}")).message
        from devenv.runtime.docker import DockerRuntime
        from devenv.runtime.dockerapi import API_TIMEOUT, connect

        try:
            client = connect(endpoint, timeout=PING_TIMEOUT, env=self.env)
        except DependencyError as exc:
            return exc.message
        client.api.timeout = API_TIMEOUT  # the ping had to be quick; pulls and stops need not be
        return DockerRuntime(env=self.env, endpoint=endpoint, client=client)

    def _native(self, why: str) -> Runtime:
        from devenv.runtime.native import NativeRuntime

        self.say(f"runtime: native (local processes; {why})")
        return NativeRuntime()

    def _for_up(self, stack: Stack, progress: Progress) -> Runtime:
        """As `resolve`, and when Docker was picked by a ping: its images present or pullable, else native."""
        runtime = self.resolve(stack)
        docker, self._unchecked = self._unchecked, None
        if docker is None:
            return runtime
        try:
            docker.ensure_images(stack, progress)
        except DependencyError as exc:
            from devenv.runtime.native import NativeRuntime

            native = NativeRuntime()
            try:
                native.binaries(stack)
            except DependencyError:
                raise exc from None  # neither works: the Docker error says what to do
            self.say(f"runtime: native instead of docker: {exc.message}")
            self._chosen = native
            return native
        return runtime

    # ---- the Runtime interface, delegated ------------------------------------------------------

    def engine_address(self) -> str:
        """The chosen runtime's engine ("" before one is chosen)."""
        return self._chosen.engine_address() if self._chosen is not None else ""

    def identify(self, stack: Stack) -> Stack:
        """The stack's name on the chosen runtime (choosing it, images included, if not done yet)."""
        return self._for_up(stack, self.say).identify(stack)

    def describe(self, stack: Stack) -> str:
        """The chosen runtime's description (choosing it, images included, if not done yet)."""
        return self._for_up(stack, self.say).describe(stack)

    def up(self, stack: Stack, progress: Progress, use_cache: bool = False) -> UpResult:
        """Start the stack on the chosen runtime."""
        return self._for_up(stack, progress).up(stack, progress, use_cache=use_cache)

    def save_cache(self, stack: Stack, key: str, progress: Progress) -> None:
        """The chosen runtime's seeded-data cache."""
        self.resolve(stack).save_cache(stack, key, progress)

    def pg_tool(self, stack: Stack, tool: str) -> list[str]:
        """A PostgreSQL client program of the server's version, from the chosen runtime."""
        return self.resolve(stack).pg_tool(stack, tool)

    def down(self, stack: Stack, volumes: bool = False) -> list[str]:
        """Stop the stack where it runs; with nothing recorded, wherever it left something."""
        from devenv.state import read_state

        if read_state(stack.state_dir).get("runtime") in ("native", "docker"):
            return self.resolve(stack).down(stack, volumes=volumes)
        stopped: list[str] = []
        if (stack.state_dir / "native").exists():  # a native tree: data of an earlier native `up`
            from devenv.runtime.native import NativeRuntime

            stopped += NativeRuntime().down(stack, volumes=volumes)
        docker = self._docker()
        if not isinstance(docker, str):
            stopped += [s for s in docker.down(stack, volumes=volumes) if s not in stopped]
        return stopped

    def stop_started(self, stack: Stack) -> list[str]:
        """After a failed `up`: what the chosen runtime started, stopped."""
        return self._chosen.stop_started(stack) if self._chosen is not None else []

    def states(self, stack: Stack) -> list[ServiceState]:
        """Each service's state on the chosen runtime."""
        return self.resolve(stack).states(stack)

    def footprint(self, stack: Stack) -> list[str]:
        """Where the chosen runtime keeps the stack's data."""
        return self.resolve(stack).footprint(stack)

    def exit_status(self, stack: Stack, service: str) -> str | None:
        """Why a service is gone, on the chosen runtime."""
        return self.resolve(stack).exit_status(stack, service)

    def started(self, stack: Stack, service: str) -> bool:
        """Whether the service's start is done, on the chosen runtime."""
        return self.resolve(stack).started(stack, service)

    def log_tail(self, stack: Stack, service: str, lines: int = 20) -> str:
        """The last lines of a service's log, on the chosen runtime."""
        return self.resolve(stack).log_tail(stack, service, lines)

    def follow_logs(self, stack: Stack, service: str | None, follow: bool) -> Iterator[str]:
        """Log lines on the chosen runtime."""
        return self.resolve(stack).follow_logs(stack, service, follow)


__all__ = ["AutoRuntime"]


def engine_silence(address: str, env: Mapping[str, str] | None = None) -> str:
    """Why the engine at `address` (a stack's recorded engine) does not answer a ping; "" when it does."""
    found = AutoRuntime(env=env)._docker(address)
    return found if isinstance(found, str) else ""


def recorded_engine_error(stack: Stack, engine: str, why: str) -> DependencyError:
    """The error for a stack whose recorded engine (state.json) does not answer."""
    from devenv.config.external import redact
    from devenv.state import STATE_FILE

    return DependencyError(
        f"profile {stack.profile} of this checkout was started on the engine at {redact(engine)}, which does not "
        f"answer: {why}",
        hint=f"bring that engine back (started; for ssh://, the ssh agent, config and network it was started with), "
             f"then run the command again; if it is gone for good, delete {stack.state_dir / STATE_FILE} (devenv then "
             f"forgets the stack there) and run it again.")

