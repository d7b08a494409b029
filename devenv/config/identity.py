"""What a checkout remembers of its own stack, in `.devenv/<profile>/`: its name and its ports.

Several checkouts of one repository (git worktrees, a review copy) run side by side, so a
stack's Docker names and host ports cannot come from devenv.yaml alone:

- `identity.json`: the stack's name, `{project}-{profile}-{checkout id}` (devenv.registry's id
  of the checkout's resolved path), or `{project}-{profile}` for the checkout that already had
  a Docker stack under that name before names carried the id (decided once by the Docker
  runtime, see devenv.runtime.dockername). The record names its checkout: a copy (`cp -r`)
  finds another path in it and takes a name of its own.
- `ports.json`: the ports `up` chose when a configured one was taken (devenv.runtime.ports.
  reserve_ports); each is kept while devenv.yaml's port for that service stays the same.

Both are inputs of the Stack (devenv.config.resolve) and of the no-op `up`'s fingerprint
(devenv.state.input_files). Standard library only: the `reset` path may load this.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

IDENTITY_FILE = "identity.json"
PORTS_FILE = "ports.json"
# In .devenv/<profile>/: which password the Docker data volume's superuser has (devenv.runtime.plan
# has_password); a checkout that has it made a Docker data volume.
VOLUME_PASSWORD_NOTE = "docker-volume-password"


def checkout_id(root: Path) -> str:
    """The checkout's short id (devenv.registry.checkout_id)."""
    from devenv.registry import checkout_id as registry_id

    return registry_id(root)


def _read(path: Path) -> dict[str, Any]:
    """A small JSON object, or {} when missing, unreadable or of another shape."""
    try:
        # Never through a link, and a FIFO planted there must not hang every command.
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return {}
            data = json.loads(handle.read(1 << 16))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def own_name(project: str, profile: str, root: Path) -> str:
    """The name a checkout's stack takes when it had none: `{project}-{profile}-{id}`."""
    return f"{project}-{profile}-{checkout_id(root)}"


def recorded_name(state_dir: Path, root: Path, project: str) -> str | None:
    """The name this checkout's identity record gives, if the record is this checkout's (its
    path, its project), else None."""
    import re

    record = _read(state_dir / IDENTITY_FILE)
    name = record.get("name")
    if (record.get("checkout") == str(Path(root).resolve()) and record.get("project") == project
            and isinstance(name, str) and re.fullmatch(rf"{re.escape(project)}-[a-z0-9_-]{{1,40}}", name)):
        return name  # a name Docker and the compose file take as one word (never a damaged record's)
    return None


def stack_name(state_dir: Path, root: Path, project: str, profile: str) -> str:
    """The stack's name: the recorded one; without a record, `{project}-{profile}` when this
    checkout made a Docker data volume before names carried the id (its password note, in
    `.devenv/<profile>/`, says so: the Docker runtime confirms it at the next `up`); else its own."""
    name = recorded_name(state_dir, root, project)
    if name is not None:
        return name
    if not (state_dir / IDENTITY_FILE).exists() and (state_dir / VOLUME_PASSWORD_NOTE).exists():
        return f"{project}-{profile}"  # a copy has the other's record: never this
    return own_name(project, profile, root)


def record_name(state_dir: Path, root: Path, project: str, name: str) -> None:
    """Keep the stack's name for this checkout (0600, atomic)."""
    from devenv.safefs import write_file

    state_dir.mkdir(parents=True, exist_ok=True)
    body = {"checkout": str(Path(root).resolve()), "project": project, "name": name}
    write_file(state_dir / IDENTITY_FILE, json.dumps(body, indent=1, sort_keys=True).encode())


def recorded_reach(state_dir: Path, root: Path) -> tuple[str, str]:
    """(host, bind ip) of a remote engine's published ports as this checkout's record keeps
    them (record_reach), ("", "") for 127.0.0.1 or no record; ("", "127.0.0.1") over ssh://
    (published on the remote's loopback, forwarded to this machine's)."""
    import ipaddress
    import re

    record = _read(state_dir / IDENTITY_FILE)
    host, ip = record.get("reach_host"), record.get("bind_ip")
    if record.get("checkout") != str(Path(root).resolve()) or not isinstance(host, str) or not isinstance(ip, str) \
            or not re.fullmatch(r"[A-Za-z0-9_.:-]{0,253}", host):
        return "", ""
    try:
        return host, str(ipaddress.IPv4Address(ip))
    except ValueError:
        return "", ""


def record_reach(state_dir: Path, root: Path, host: str, ip: str) -> None:
    """Keep where the stack's ports are reached in its identity record (the commands after
    `up` build the Stack from it); written only when it changes, and only into a record."""
    from devenv.safefs import write_file

    record = _read(state_dir / IDENTITY_FILE)
    if not record or recorded_reach(state_dir, root) == (host, ip):
        return
    record.update(reach_host=host, bind_ip=ip)
    write_file(state_dir / IDENTITY_FILE, json.dumps(record, indent=1, sort_keys=True).encode())


def remembered_ports(state_dir: Path) -> dict[str, tuple[int, int]]:
    """service -> (port, the configured port it replaced), as `ports.json` keeps them."""
    out = {}
    for service, entry in _read(state_dir / PORTS_FILE).items():
        if isinstance(entry, dict):
            port, configured = entry.get("port"), entry.get("configured")
            if type(port) is int and type(configured) is int and 0 < port < 65536:
                out[service] = (port, configured)
    return out


def remember_ports(state_dir: Path, ports: dict[str, tuple[int, int]]) -> None:
    """Write `ports.json` (service -> (port, configured)); removed when it would be empty."""
    from devenv.safefs import write_file

    path = state_dir / PORTS_FILE
    if not ports:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    body = {service: {"port": port, "configured": configured} for service, (port, configured) in sorted(ports.items())}
    write_file(path, json.dumps(body, indent=1, sort_keys=True).encode())


__all__ = ["IDENTITY_FILE", "PORTS_FILE", "VOLUME_PASSWORD_NOTE", "own_name", "record_name", "record_reach",
           "recorded_name", "recorded_reach", "remember_ports", "remembered_ports", "stack_name"]
