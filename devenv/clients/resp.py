"""Redis's protocol (RESP2) over a plain socket, where importing redis-py would cost more than the
work itself: health checks during `up`, `devenv reset` from the CLI, `status` and `doctor`.

`Connection.call` pipelines commands and reads every reply: simple strings, integers, bulk
strings, arrays and errors (returned as `ReplyError`, not raised, so that one refused command
in a pipeline does not hide the others' replies). Sessions open through devenv.clients.connect.
"""

from __future__ import annotations

import socket
from typing import IO, Any


class ReplyError(Exception):
    """An error reply ('-ERR ...') from Redis."""


def encode(commands: list[list[str]]) -> bytes:
    """Commands as RESP arrays of bulk strings."""
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_reply(reader: IO[bytes]) -> Any:
    """One RESP2 reply: simple string, error (returned, not raised), integer, bulk string or array."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"Redis closed the connection mid-reply ({line[:80]!r})")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode(errors="replace")
    if kind == b"-":
        return ReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("Redis closed the connection mid-reply")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [read_reply(reader) for _ in range(count)]
    raise ConnectionError(f"unexpected Redis reply {line[:80]!r}")


class Connection:
    """One Redis session over TCP. Use as a context manager: the socket is closed on exit."""

    def __init__(self, host: str, port: int, timeout: float = 2.0) -> None:
        # A bytes host skips the idna codec getaddrinfo would import for a str (~5 ms at start-up).
        self._sock = socket.create_connection((host.encode(), port), timeout=timeout)
        self._reader = self._sock.makefile("rb")

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        self._reader.close()
        self._sock.close()

    def call(self, *commands: list[str]) -> list[Any]:
        """Send the commands in one write; their replies, in order (errors as ReplyError)."""
        self._sock.sendall(encode(list(commands)))
        return [read_reply(self._reader) for _ in commands]
