"""A few Redis commands over a plain socket (RESP), where importing redis-py would cost more
than the work itself: health checks during `up`, and `devenv reset` from the CLI."""

from __future__ import annotations

import socket


def encode(commands: list[list[str]]) -> bytes:
    """Commands as RESP arrays of bulk strings."""
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def exchange(port: int, commands: list[list[str]], timeout: float = 2.0, host: str = "127.0.0.1") -> list[str]:
    """Send commands to Redis; return one reply line per command ('+OK', ':3', '-ERR ...').

    Only for commands whose replies are single lines (status, integer, error).
    """
    # A bytes host skips the idna codec getaddrinfo would import for a str (~5 ms at start-up).
    with socket.create_connection((host.encode(), port), timeout=timeout) as sock:
        sock.sendall(encode(commands))
        data = b""
        while data.count(b"\r\n") < len(commands):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = data.decode(errors="replace").split("\r\n")[: len(commands)]
    if len(lines) < len(commands) or any(not line for line in lines):
        raise ConnectionError(f"Redis closed the connection after {data[:200]!r}")
    return lines
