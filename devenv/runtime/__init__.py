"""Runtimes: one interface (base.Runtime), implemented by local processes (native)."""

from __future__ import annotations

from typing import Callable

from devenv.errors import ConfigError
from devenv.runtime.base import Runtime

RUNTIME_NAMES = ("auto", "native")


def get_runtime(name: str, say: Callable[[str], None] = lambda line: None) -> Runtime:
    """The runtime by name; `auto` picks one and says which."""
    if name in ("auto", "native"):
        from devenv.runtime.native import NativeRuntime

        if name == "auto":
            say("runtime: native (local processes)")
        return NativeRuntime()
    raise ConfigError(f"unknown runtime '{name}'", hint=f"choose one of: {', '.join(RUNTIME_NAMES)}.")
