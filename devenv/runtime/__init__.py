"""Runtimes: one interface (base.Runtime), implemented by containers (docker), local processes
(native), and `auto` (devenv.runtime.auto), which picks one of them per stack.

devenv.cli (for RUNTIME_NAMES) and devenv.state import modules of this package: it imports
nothing else at load time; each runtime loads when it is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from devenv.errors import ConfigError
from devenv.runtime.plan import RUNTIME_NAMES

if TYPE_CHECKING:
    from devenv.runtime.base import Runtime


def get_runtime(name: str, say: Callable[[str], None] = lambda line: None) -> Runtime:
    """The runtime by name; `auto` picks one per stack and says which."""
    if name == "native":
        from devenv.runtime.native import NativeRuntime

        return NativeRuntime()
    if name == "docker":
        from devenv.runtime.docker import DockerRuntime

        return DockerRuntime()
    if name == "podman":  # the Docker runtime, on Podman's Docker-compatible API socket
        import os

        from devenv.runtime.docker import DockerRuntime
        from devenv.runtime.engines import find_podman, no_podman_error

        endpoint = find_podman(os.environ)
        if endpoint is None:
            raise no_podman_error(os.environ)
        return DockerRuntime(endpoint=endpoint)
    if name == "auto":
        from devenv.runtime.auto import AutoRuntime

        return AutoRuntime(say)
    raise ConfigError(f"unknown runtime '{name}'", hint=f"choose one of: {', '.join(RUNTIME_NAMES)}.")


__all__ = ["RUNTIME_NAMES", "get_runtime"]
