"""`devenv prune`: remove the stacks whose checkout no longer exists, and nothing else.

A record is not proof (a copied or corrupt one may name another stack's things), so what goes is
what provably belongs to the record's checkout and profile:
- Docker: its containers (of its Compose project and its checkout), and the project's network
  and volumes by the Compose project label, unless another stack that is not pruned has the same
  name (two checkouts under a legacy `{project}-{profile}` name): then only its containers.
  A stack without a record (Docker's labels only) goes only with `--unrecorded`, and only on a
  local engine: on a shared or remote one its working directory is another machine's path.
- Native: of the directories its record lists, only those devenv's native runtime derives for its
  checkout and profile outside the checkout: /var/lib/devenv/<project>-<profile>-...-<key>,
  /dev/shm/devenv-<key>, <tmp>/devenv-<key>, where <key> is the hash of
  `<checkout>/.devenv/<profile>/native` (devenv.registry.native_key), and that no record of a
  living checkout lists; its servers that still run under those (the pids in their state.json,
  or processes whose working directory or command line lies in one), stopped; then those
  directories, deleted without following links (devenv.runtime.trust.remove_within).
- Then its record in the registry: the file it was read from.

`plan` decides and says what would go (`--dry-run` stops there); `execute` removes it, under
the registry's lock and after checking again that the checkout is still gone.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from devenv import registry
from devenv.runtime.procs import parent_pid
from devenv.stacks import COMPOSE_PROJECT, PROGRAMS, Stack, checkout_gone, printable, working_checkout

# Where devenv makes a native stack's directories outside its checkout (devenv.runtime.native's
# layout): (parent, the names it gives them there; the key is 10 hex digits of a hash).
OWN_PLACES = ((Path("/var/lib/devenv"), r".+-[0-9a-f]{10}"), (Path("/dev/shm"), r"devenv-[0-9a-f]{10}"),
              (Path(tempfile.gettempdir()), r"devenv-[0-9a-f]{10}"))
STOP_SIGNALS = {"postgres": signal.SIGINT, "pgbouncer": signal.SIGINT, "redis": signal.SIGTERM}
STOP_WAIT = 15.0  # seconds for a server to stop before SIGKILL (as `devenv down`)


@dataclass
class Removal:
    """What pruning one orphaned stack removes."""

    stack: Stack
    containers: dict[str, str] = field(default_factory=dict)  # id -> name
    volumes: list[str] = field(default_factory=list)
    network: bool = False  # the Compose project's network(s), by label
    processes: dict[int, str] = field(default_factory=dict)  # pid -> service
    places: list[str] = field(default_factory=list)  # native: the directories proven its own
    directories: dict[str, int] = field(default_factory=dict)  # those that exist -> bytes on disk
    kept: list[str] = field(default_factory=list)  # what stays, and why
    blind: bool = False  # Docker: no engine answered, what it has is unknown (nothing done, the record stays)

    def lines(self, size: Callable[[float], str]) -> list[str]:
        """What goes, for people: a heading line (whose stack, its data's size), then one
        indented line per kind."""
        e = self.stack.entry
        what = (f"{printable(e.checkout)} is gone (moved or deleted): the stack it left, project {printable(e.project)},"
                f" profile {printable(e.profile)} ({e.runtime}, {printable(e.name)})")
        if self.directories:
            what += f": {size(sum(self.directories.values()))} of data"
        elif e.runtime == "docker" and self.volumes and self.stack.data_bytes:
            what += f": {size(self.stack.data_bytes)} of data"
        if not self.stack.recorded:
            what += " [unrecorded: found by Docker's labels only]"
        out = [what]
        if self.containers:
            out.append(f"  containers: {', '.join(sorted(self.containers.values()))}")
        if self.network:
            out.append(f"  network of Compose project {e.name}")
        if self.volumes:
            out.append(f"  volumes: {', '.join(self.volumes)}")
        if self.processes:
            out.append("  servers still running: " + ", ".join(f"{s} (pid {p})" for p, s in sorted(self.processes.items())))
        if self.directories:
            out.append("  directories: " + ", ".join(f"{printable(p)} ({size(n)})" for p, n in self.directories.items()))
        out += [f"  kept: {printable(reason)}" for reason in self.kept]
        if self.stack.recorded:
            out.append("  its record in the registry")
        return out


def plan(stacks: list[Stack], engine_listed: bool, only: list[str] | None = None, unrecorded: bool = False,
         notes: list[str] | None = None) -> list[Removal]:
    """A Removal for each orphaned stack (of the checkouts in `only`, when given); `engine_listed`:
    whether the Docker engine answered `gather` (else a Docker stack's containers are unknown).
    Stacks without a record only with `unrecorded`, and only on a local engine; a line per one
    left out goes to `notes`."""
    wanted = [os.path.normpath(os.path.abspath(p)) for p in only] if only else None
    chosen = []
    for stack in stacks:
        if not stack.orphaned:
            continue
        if wanted is not None and os.path.normpath(stack.entry.checkout) not in wanted:
            continue
        if not stack.recorded and not (unrecorded and stack.local):
            if notes is not None:
                why = "the engine is not this machine's" if unrecorded else "pass --unrecorded to remove it"
                notes.append(f"note: {printable(stack.entry.name)} of {printable(stack.entry.checkout)} (no record, Docker's"
                             f" labels only) is not pruned: {why}")
            continue
        chosen.append(stack)
    out = []
    for stack in chosen:
        removal = Removal(stack)
        if stack.entry.runtime == "docker":
            _plan_docker(removal, stacks, chosen, engine_listed)
        else:
            _plan_native(removal, stacks)
        out.append(removal)
    return out


def _plan_docker(removal: Removal, stacks: list[Stack], chosen: list[Stack], engine_listed: bool) -> None:
    stack = removal.stack
    if not (engine_listed and stack.listed):  # its engine (the one it was started on) did not answer
        removal.blind = True
        where = f" at {stack.entry.engine}" if stack.entry.engine else ""
        removal.kept.append(f"its containers and volumes, if any: no Docker engine answered{where} (the record stays)")
        return
    for container in stack.containers:
        name = (container.get("Names") or ["/" + str(container.get("Id", ""))[:12]])[0].lstrip("/")
        if _made_for(container.get("Labels") or {}, stack.entry.checkout):
            removal.containers[str(container["Id"])] = name
        else:  # devenv labels every container with its checkout: one without it is not provably this stack's
            removal.kept.append(f"container {name}: its labels do not name {stack.entry.checkout}")
    # Another stack of that name that stays (living, or not pruned now) keeps the project's volumes.
    sharing = [s for s in stacks if s is not stack and s.entry.name == stack.entry.name and s not in chosen]
    if sharing:
        removal.kept.append(f"the volumes and network of {stack.entry.name}: {sharing[0].entry.checkout or 'another stack'}"
                            " uses that name too")
        return
    removal.volumes = sorted(str(v["Name"]) for v in stack.volume_info if v.get("Name"))
    removal.network = True


def _plan_native(removal: Removal, stacks: list[Stack]) -> None:
    from devenv.stacks import tree_size

    entry = removal.stack.entry
    # What a living checkout uses: its record's directories, and where its `.devenv/<profile>/native` links
    # (a copy of the gone checkout, not up since, still links to the gone one's).
    alive = [s.entry for s in stacks if not s.orphaned and s.entry.runtime == "native"]
    living = {os.path.realpath(p) for e in alive for p in e.data}
    living |= {os.path.realpath(Path(e.checkout) / ".devenv" / e.profile / "native") for e in alive}
    for path in entry.data:
        if not belongs(path, entry):
            if os.path.lexists(path):
                removal.kept.append(f"{path}: not a directory devenv makes outside a checkout for this checkout and profile")
        elif os.path.realpath(path) in living:
            removal.kept.append(f"{path}: the record of a checkout that exists lists it too")
        else:
            removal.places.append(path)
    removal.directories = {p: tree_size([p]) for p in removal.places if os.path.lexists(p)}
    removal.processes = native_servers(removal.places)


def belongs(path: str, entry: registry.Entry) -> bool:
    """Whether `path` is one of the directories devenv's native runtime makes outside the checkout
    for the record's checkout and profile: its name carries the key derived from them (and, in
    /var/lib/devenv, its project and profile), and it is such a directory (own_directory)."""
    key = registry.native_key(Path(entry.checkout) / ".devenv" / entry.profile / "native")
    name = os.path.basename(path)
    if not own_directory(path):
        return False
    if Path(path).parent.resolve() == OWN_PLACES[0][0].resolve():  # /var/lib/devenv/<stack name>-<key>
        return name.startswith(f"{entry.project}-{entry.profile}-") and name.endswith(f"-{key}")
    return name == f"devenv-{key}"


def own_directory(path: str) -> bool:
    """Whether `path` is a directory devenv makes for a native stack outside any checkout:
    /var/lib/devenv/<stack>-<key>, /dev/shm/devenv-<key> or <tmp>/devenv-<key> (not the
    registry), spelled plainly (absolute, no `..`); its parent's links resolved, itself not a link."""
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        return False
    candidate = Path(path)
    try:
        parent = candidate.parent.resolve(strict=True)
    except OSError:
        return False
    if os.path.islink(path) or candidate.name in ("", ".", "..") or parent / candidate.name == registry.registry_dir().resolve():
        return False
    return any(parent == root.resolve() and re.fullmatch(pattern, candidate.name) for root, pattern in OWN_PLACES)


def native_servers(places: list[str]) -> dict[int, str]:
    """pid -> service of the live servers of a native stack whose directories are `places`: the
    pids its state.json names, and processes whose working directory or an argument lies in one
    of them (a deleted directory too). For Postgres only the postmaster: its backends follow it."""
    from devenv.runtime.procs import scan_processes
    from devenv.runtime.trust import read_json

    roots = [os.path.normpath(p) for p in places]
    table = scan_processes()
    by_program = {program: service for service, program in PROGRAMS.items()}
    found: dict[int, str] = {}
    for place in places:
        for service, record in read_json(Path(place) / "state.json").items():
            pid = record.get("pid") if isinstance(record, dict) else None
            if type(pid) is int and table.get(pid) == PROGRAMS.get(service) and _lies_in(pid, roots):
                found[pid] = service
    for pid, comm in table.items():
        if comm in by_program and pid not in found and _lies_in(pid, roots):
            found[pid] = by_program[comm]
    postgres = {pid for pid, service in found.items() if service == "postgres"}
    for pid in postgres:
        parent = parent_pid(pid)
        if parent in postgres:
            del found[pid]  # a backend: it ends with its postmaster
    return found


def _lies_in(pid: int, roots: list[str]) -> bool:
    """Whether a process works in, or names in its argv, a path inside one of `roots`."""
    paths = []
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        paths.append(cwd[: -len(" (deleted)")] if cwd.endswith(" (deleted)") else cwd)
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read().decode(errors="replace").split("\0")
    except OSError:
        args = []
    for arg in args:
        paths.append(arg.partition("=")[2] if arg.startswith("config_file=") else arg)
    return any(path and (path == root or path.startswith(root + os.sep)) for path in paths for root in roots)


# ---- removing -----------------------------------------------------------------------------------


def execute(removal: Removal, say: Callable[[str], None]) -> bool:
    """Remove what `removal` lists, then the stack's record; False (nothing done) when its
    checkout has come back meanwhile. Under the registry's lock, so no `up` records it meanwhile."""
    entry = removal.stack.entry
    with registry.locked():
        if not checkout_gone(entry.checkout):
            say(f"{printable(entry.checkout)} exists again: its stack is kept")
            return False
        if entry.runtime == "docker":
            if removal.blind:
                return False  # no engine: nothing known, the record stays for a later prune
            _remove_docker(removal)
        else:
            stop_servers(native_servers(removal.places))  # found again: what runs under its own directories now
            _remove_directories(list(removal.directories))
        if removal.stack.recorded:
            registry.forget(entry)
    return True


def stop_servers(processes: dict[int, str]) -> None:
    """Stop each server as `devenv down` does (its stop signal, then SIGKILL to its group)."""
    from devenv.errors import StateError
    from devenv.runtime.procs import kill_group, send_signal, wait_gone

    for pid, service in processes.items():
        try:
            send_signal(pid, STOP_SIGNALS[service])
        except PermissionError:
            raise StateError(f"{service} (pid {pid}) of a pruned stack is another user's: not stopped",
                             hint="stop it as that user (or root), then run `devenv prune` again.") from None
    for pid in processes:
        if not wait_gone(pid, STOP_WAIT):
            kill_group(pid, signal.SIGKILL)
            wait_gone(pid, 5)


def _remove_directories(directories: list[str]) -> None:
    from devenv.runtime.trust import remove_within

    for path in directories:
        if own_directory(path):  # checked again: nothing was swapped in meanwhile
            remove_within(Path(path), [Path(path).parent.resolve() / Path(path).name])


def _made_for(labels: dict[str, str], checkout: str) -> bool:
    """Whether a container's Compose working directory is `<checkout>/.devenv/<profile>`."""
    found = working_checkout(labels)
    return found is not None and os.path.normpath(found) == os.path.normpath(checkout)


def _remove_docker(removal: Removal) -> None:
    from devenv.runtime.dockerapi import connect, quietly, remove, stop, stop_timeout
    from devenv.runtime.engine import Endpoint, find_endpoint, no_engine_error

    endpoint = find_endpoint()
    recorded = removal.stack.entry.engine  # the engine `ls` listed it on: where it was started
    if recorded and (endpoint is None or endpoint.host != recorded):
        endpoint = Endpoint(recorded, "the engine the stack was started on")
    if endpoint is None:
        raise no_engine_error(os.environ)
    client = connect(endpoint)
    name = removal.stack.entry.name
    label = {"label": f"{COMPOSE_PROJECT}={name}"}
    checkout = removal.stack.entry.checkout
    for container in client.containers.list(all=True, filters=label):
        if container.id in removal.containers and _made_for(container.labels, checkout):  # checked again
            if container.status in ("running", "paused", "restarting"):
                stop(container, stop_timeout(container))
            remove(container)
    if removal.network:
        for network in client.networks.list(filters=label):
            quietly(network.remove)
    for volume in client.volumes.list(filters=label):
        if volume.name in removal.volumes:
            quietly(lambda: volume.remove(force=True))
    if endpoint.host.startswith("ssh://"):  # its ports' forwards go, and the master with the last stack's
        from devenv.runtime import sshtunnel

        sshtunnel.release(endpoint.host, os.environ, name)


__all__ = ["Removal", "belongs", "execute", "native_servers", "own_directory", "plan", "stop_servers"]
