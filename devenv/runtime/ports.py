"""The stack's host ports: free or not before a start, and which program holds one (both runtimes, doctor)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from devenv.errors import ConfigError, PortInUseError
from devenv.runtime.procs import process_name

if TYPE_CHECKING:
    from devenv.config.stack import Stack


def check_ports_free(stack: Stack, services: list[str], run_user: str | None = None) -> None:
    """Fail before anything starts when a port the stack needs is held by another program
    (PortInUseError), or is one its servers may not bind (ConfigError): below
    net.ipv4.ip_unprivileged_port_start when they run as the unprivileged `run_user` (devenv as
    root), or refused to this process itself."""
    lowest = unprivileged_port_start() if run_user else 0
    for service in services:
        port = getattr(stack, service).port
        if port < lowest:
            raise privileged_port(service, port, f"the servers run as the unprivileged user '{run_user}', "
                                  f"who may bind only ports from {lowest} up")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise privileged_port(service, port, f"binding it is not permitted ({exc.strerror})") from exc
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise port_in_use(service, port) from exc


def unprivileged_port_start() -> int:
    """The lowest port an unprivileged process may bind (Linux's sysctl; 1024 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 1024


def privileged_port(service: str, port: int, why: str) -> ConfigError:
    """The error for a port the stack's server could not bind, and what to do instead."""
    return ConfigError(f"port {port} for {service} cannot be used: {why}",
                       hint=f"give {service} a port from 1024 up: DEVENV_{service.upper()}_PORT=<port> devenv up "
                       f"(or the ports of devenv.yaml)")


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
