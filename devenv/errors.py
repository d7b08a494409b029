"""One exception hierarchy; the CLI maps each class to a message and an exit code.

Exit codes (documented in the README):
    1  unexpected internal error
    2  usage error (click)
    3  ConfigError       devenv.yaml, a profile, a setting, an environment variable
    4  DependencyError   a binary, a package or the Docker engine is missing
    5  PortInUseError    a port is held by another program
    6  HealthCheckError  a service did not become healthy in time, or exited
    7  SchemaError       a schema or seed file failed (the database is left as it was)
    8  StateError        the stack's state is inconsistent (lock held, applied file changed)
"""

from __future__ import annotations


class DevenvError(Exception):
    """Base of every error devenv reports to a user: a message plus a hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(DevenvError):
    """A command-line argument that cannot be used as given (e.g. a FILE that is a symlink)."""

    exit_code = 2


class ConfigError(DevenvError):
    """devenv.yaml, a profile, a setting or an environment override is invalid."""

    exit_code = 3


class DependencyError(DevenvError):
    """A binary, a Python package or the Docker engine is not available."""

    exit_code = 4


class PortInUseError(DevenvError):
    """A port the stack needs is held by another program."""

    exit_code = 5


class HealthCheckError(DevenvError):
    """A service did not pass its health checks before the deadline, or exited."""

    exit_code = 6

    def __init__(self, message: str, hint: str | None = None, log_tail: str = "") -> None:
        super().__init__(message, hint)
        self.log_tail = log_tail


class SchemaError(DevenvError):
    """A schema or seed file could not be applied; its transaction was rolled back."""

    exit_code = 7


class StateError(DevenvError):
    """The stack's recorded state conflicts with what was asked (lock held, changed file)."""

    exit_code = 8


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C is (sigterm_as_interrupt), so that
    every cleanup runs; the CLI exits 143 (128 + SIGTERM) where Ctrl-C exits 130."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def sigterm_as_interrupt() -> None:
    """From now on SIGTERM raises Terminated in the main thread, as Ctrl-C raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)


def byte_position(data: bytes, offset: int) -> tuple[int, int]:
    """(line, column), both from 1, of byte `offset` in `data`: where an error names a bad byte."""
    return data.count(b"\n", 0, offset) + 1, offset - (data.rfind(b"\n", 0, offset) + 1) + 1
