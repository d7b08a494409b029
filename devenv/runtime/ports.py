"""The stack's host ports: free or not before a start, and which program holds one (both runtimes, doctor);
which ports `up` takes when another checkout's stack or another program holds the configured
ones (reserve_ports, under the machine's registry lock), and which checkout's stack holds a port."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Mapping

from devenv.errors import ConfigError, PortInUseError
from devenv.runtime.procs import process_name

if TYPE_CHECKING:
    from devenv.config.stack import Stack
    from devenv.registry import Entry


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
                raise port_in_use(service, port, stack=stack) from exc


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


def port_in_use(service: str, port: int, detail: str = "", stack: Stack | None = None) -> PortInUseError:
    """The error for a port another program holds: another checkout's devenv stack when the
    machine's registry says so (`stack`: this one, never named), else the program /proc names,
    and what to do."""
    other = stack_holding(port, stack)
    pinned_by = getattr(stack, service).pinned_by if stack is not None else ""
    unpin = (f", or unset {pinned_by} so that devenv chooses a free port" if pinned_by.startswith("DEVENV_")
             else f", or remove `pin_port` from {service} in devenv.yaml so that devenv chooses a free port"
             if pinned_by else "")
    if other is not None:
        return PortInUseError(f"port {port} for {service} is held by {describe_entry(other)}"
                              + (f" ({detail})" if detail else ""),
                              hint=f"stop it there (`devenv down` in {other.checkout}){unpin}.")
    holder = port_holder(port)
    return PortInUseError(
        f"port {port} for {service} is already in use{f' by {holder}' if holder else ''}"
        + (f" ({detail})" if detail else ""),
        hint=f"stop that program{unpin}" if unpin else
        f"stop that program, or give {service} another port: DEVENV_{service.upper()}_PORT=<port> devenv up",
    )


def describe_entry(entry: Entry) -> str:
    """'the devenv stack of /path (profile dev, native)': how messages name another checkout's stack."""
    return f"the devenv stack of {entry.checkout} (profile {entry.profile}, {entry.runtime})"


def stack_holding(port: int, stack: Stack | None = None) -> Entry | None:
    """Another stack on this machine whose registry record holds `port` (not `stack`'s own
    record, nor one whose checkout is gone)."""
    from devenv import registry

    own = f"{registry.checkout_id(stack.root)}-{stack.profile}" if stack is not None else None
    try:
        found = registry.entries()
    except OSError:  # an unreadable registry names nobody
        return None
    return next((e for e in found if e.key != own and port in e.ports.values() and not e.orphaned), None)


def choose_port(wanted: int, start: int, unavailable: Callable[[int], str | None],
                avoid: Collection[int] = ()) -> tuple[int, str | None]:
    """The port a service that may move gets: `wanted` unless `unavailable(wanted)` says why
    not (or another service of the stack has it: `avoid`); else the first port from `start`
    (devenv.yaml's) upward that is neither. Returns (port, why `wanted` was not taken)."""
    why = "wanted by another service of this stack" if wanted in avoid else unavailable(wanted)
    if why is None:
        return wanted, None
    for port in range(max(start, 1024), 65536):
        if port != wanted and port not in avoid and unavailable(port) is None:
            return port, why
    raise PortInUseError(f"port {wanted} is {why}, and no free port was found from {start} up",
                         hint="stop some of the programs listening on this machine's ports, or `devenv ls` "
                         "and `devenv down` stacks you do not need.")


def bindable(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (a bind test, as the servers will bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def reserve_ports(stack: Stack, runtime: str, running: Mapping[str, int], say: Callable[[str], None]) -> Stack:
    """Settle the stack's host ports before `up` starts anything, and reserve them.

    Under the machine-wide registry lock (two `up`s at once never pick the same port): each
    service keeps the port it runs on (`running`: service -> port); else its wanted port
    (DEVENV_<S>_PORT, the one remembered in ports.json, devenv.yaml's) unless another
    checkout's stack reserves it (its registry record, its checkout still there) or another
    program holds it: then, unless pinned, the first free port from devenv.yaml's upward,
    said in one line and remembered for this checkout. A pinned port on which another
    checkout's stack runs is an error naming that checkout; one another program holds is left
    to the runtime's check (it may be this stack's own server that a killed `up` left). This
    checkout's record (its ports, on `runtime`) is written before the lock is released.
    """
    from devenv import registry
    from devenv.config.identity import remember_ports, remembered_ports
    from devenv.config.project import CONFIG_NAME

    with registry.locked():
        own_key = f"{registry.checkout_id(stack.root)}-{stack.profile}"
        others = [e for e in registry.entries() if e.key != own_key and not e.orphaned]
        reserved = {port: e for e in others for port in e.ports.values()}
        remembered = remembered_ports(stack.state_dir)

        def unavailable(port: int) -> str | None:
            if port in reserved:
                return f"held by {describe_entry(reserved[port])}"
            return None if bindable(port) else "in use"  # who holds it: only said of the wanted port

        chosen: dict[str, int] = {}
        for service in stack.services:
            name, wanted = service.name, service.port
            if not service.pinned_by:
                port, configured = remembered.get(name, (0, 0))
                wanted = port if port and configured == service.configured_port else service.configured_port
            if running.get(name) == wanted:
                chosen[name] = wanted
                continue
            if service.pinned_by:
                if wanted in reserved and not bindable(wanted):  # another checkout's stack runs on it
                    raise port_in_use(name, wanted, stack=stack)  # before this record claims it too
                chosen[name] = wanted
                continue
            avoid = {*chosen.values(), *(s.port for s in stack.services if s.name not in chosen and s.name != name)}
            chosen[name], why = choose_port(wanted, service.configured_port, unavailable, avoid)
            if why is not None:
                holder = port_holder(wanted) if why == "in use" else None
                say(f"{name}: port {wanted} is {why}{f' by {holder}' if holder else ''}; "
                    f"using {chosen[name]}, kept for this checkout")
            if chosen[name] == service.configured_port:
                remembered.pop(name, None)
            else:
                remembered[name] = (chosen[name], service.configured_port)
        remember_ports(stack.state_dir, remembered)
        previous = registry.find(stack.root, stack.profile)
        registry.record(registry.Entry(
            checkout=str(stack.root.resolve()), config=str(stack.root.resolve() / CONFIG_NAME),
            project=stack.project, profile=stack.profile, runtime=runtime,
            name=stack.name, ports=chosen, data=previous.data if previous else [],
            volumes=previous.volumes if previous else []))
    return stack.replace(**{s.name: s.replace(port=chosen[s.name]) for s in stack.services})


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
