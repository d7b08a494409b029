"""The stack's host ports: free or not before a start, and which program holds one (both runtimes, doctor)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.errors import PortInUseError
from devenv.runtime.procs import process_name

if TYPE_CHECKING:
    from devenv.config.stack import Stack


def check_ports_free(stack: Stack, services: list[str]) -> None:
    """Fail before anything starts when another program holds a port the stack needs."""
    for service in services:
        port = getattr(stack, service).port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise port_in_use(service, port) from exc


def port_in_use(service: str, port: int, detail: str = "") -> PortInUseError:
    """The error for a port another program holds: that program when /proc names it, and what to do."""
    holder = port_holder(port)
    return PortInUseError(
        f"port {port} for {service} is already in use{f' by {holder}' if holder else ''}"
        + (f" ({detail})" if detail else ""),
        hint=f"stop that program, or give {service} another port: DEVENV_{service.upper()}_PORT=<port> devenv up",
    )


def port_holder(port: int) -> str | None:
    """'pid 123 (postgres)' for the process listening on a TCP port, when /proc can tell."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)
                for row in handle:
                    fields = row.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                        inodes.add(fields[9])
        except (OSError, StopIteration):
            continue
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return f"pid {proc.name} ({process_name(int(proc.name)) or '?'})"
        except OSError:
            continue
    return "another process"
