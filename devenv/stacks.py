"""`devenv ls`: every devenv stack on this machine, with its state and the size of its data.

Two sources: the machine's registry (devenv.registry, one record per checkout and profile,
written by every `up`), and the Docker engine, for stacks that have no record (made before the
registry existed, or by another user of the engine), found by devenv's labels. The engine is
asked only when one is configured and answers at once, in two list calls (containers, volumes)
spoken over its unix socket by a few lines of socket code, each within ENGINE_TIMEOUT overall
and MAX_ANSWER bytes: the docker SDK's import costs more than the whole listing. Without an
engine `ls` says nothing of Docker. An invalid record is skipped, with one note on stderr.

State: native, the pids in the stack's state.json (none: stopped, whatever holds its ports);
Docker, its containers' states. Data size: native, its directories walked without following
links; Docker, its volumes' directories when this process can read them (root, local engine),
else unknown. Nothing here writes or removes (devenv.prune does).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from devenv import registry
from devenv.registry import Entry

if TYPE_CHECKING:
    from devenv.runtime.engine import Endpoint

SERVICES = ("postgres", "pgbouncer", "redis")  # devenv.config.stack.SERVICES, without its import
PROGRAMS = {"postgres": "postgres", "pgbouncer": "pgbouncer", "redis": "redis-server"}
ENGINE_TIMEOUT = 2.0  # seconds for each request, all of it: `ls` must not hang on an engine that does not answer
MAX_ANSWER = 64 << 20  # bytes of an engine's answer: more is not an engine's list of devenv's things
# The labels devenv's containers and volumes carry (devenv.runtime.compose).
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"
COMPOSE_WORKING_DIR = "com.docker.compose.project.working_dir"
DEVENV_PROJECT = "dev.devenv.project"
DEVENV_PROFILE = "dev.devenv.profile"
STATE_DIR_NAME = ".devenv"
# The keys of each object `devenv ls --json` prints (documented in the README).
JSON_KEYS = ("checkout", "config", "project", "profile", "runtime", "engine", "name", "ports", "state", "orphaned",
             "services", "data_bytes", "data", "volumes", "recorded", "updated")


class Stack:
    """One stack as `ls` shows it: its record (or what Docker's labels say), what runs, its size."""

    def __init__(self, entry: Entry, recorded: bool = True, checkout_known: bool = True) -> None:
        self.entry = entry
        self.recorded = recorded  # from the registry; else found by Docker's labels only
        self.checkout_known = checkout_known  # a Docker stack whose containers are gone: unknown
        self.services: dict[str, bool] = {}  # service -> running; empty when unknown
        self.data_bytes: int | None = None
        self.containers: list[dict[str, Any]] = []  # Docker: the engine's list entries
        self.volume_info: list[dict[str, Any]] = []  # Docker: the engine's volume entries
        self.local = False  # Docker: listed by an engine on this machine's unix socket
        self.listed = False  # Docker: its engine answered (else what it has there is unknown)

    @property
    def orphaned(self) -> bool:
        """Its checkout is known (an absolute path) and no longer exists (a Docker stack's: on this
        machine's disk, which says nothing of another machine's path on a shared engine)."""
        return self.checkout_known and os.path.isabs(self.entry.checkout) and checkout_gone(self.entry.checkout)

    @property
    def state(self) -> str:
        """orphaned, running, partial (some services run), stopped, or unknown (Docker: no engine)."""
        if self.orphaned:
            return "orphaned"
        return running_state(self.services)

    def as_json(self) -> dict[str, Any]:
        """The object `ls --json` prints for it (keys: JSON_KEYS)."""
        e = self.entry
        return {
            "checkout": e.checkout if self.checkout_known else None, "config": e.config or None,
            "project": e.project, "profile": e.profile, "runtime": e.runtime, "engine": e.engine or None,
            "name": e.name,
            "ports": dict(e.ports), "state": self.state, "orphaned": self.orphaned,
            "services": dict(self.services), "data_bytes": self.data_bytes, "data": list(e.data),
            "volumes": list(e.volumes), "recorded": self.recorded, "updated": e.updated or None,
        }


def running_state(services: dict[str, bool]) -> str:
    """running (every service), partial (some), stopped (none), unknown (no engine to ask)."""
    if not services:
        return "unknown"
    up = sum(services.values())
    return "running" if up == len(services) else "partial" if up else "stopped"


def checkout_gone(checkout: str) -> bool:
    """Whether a checkout directory does not exist (a path we may not look into counts as there)."""
    try:
        return not stat.S_ISDIR(os.stat(checkout).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


# ---- gathering ----------------------------------------------------------------------------------


def gather(warn: Callable[[str], None] = lambda line: None, sizes: bool = True) -> tuple[list[Stack], bool]:
    """Every stack on this machine: the registry's, then Docker's unrecorded ones; with states and
    (unless `sizes` is False) data sizes; and whether a Docker engine answered. `warn` gets one
    line when an engine is expected (a Docker record, DOCKER_HOST, a context) and fails."""
    skipped: list[str] = []
    stacks = [Stack(entry) for entry in registry.entries(skipped)]
    if skipped:
        warn(f"note: {len(skipped)} record(s) in {printable(str(registry.registry_dir()))} skipped (invalid, or not"
             f" this user's own file): {printable(', '.join(skipped[:3]))}{' ...' if len(skipped) > 3 else ''}")
    from devenv.runtime.engine import Endpoint

    # Each engine a Docker stack was started on (Podman's socket, a remote host), and the one
    # devenv would use now (older records, and the stacks only an engine knows of).
    current = current_endpoint(warn, needed=any(s.entry.runtime == "docker" for s in stacks))
    engines: dict[str, Endpoint] = {current.host: current} if current is not None else {}
    for stack in stacks:
        if stack.entry.runtime == "docker" and stack.entry.engine and stack.entry.engine not in engines:
            engines[stack.entry.engine] = Endpoint(stack.entry.engine, "the engine the stack was started on")
    answered = False
    for host, endpoint in engines.items():
        listing = docker_listing(warn, endpoint, needed=endpoint is not current or any(
            s.entry.runtime == "docker" and not s.entry.engine for s in stacks))
        if listing is None:
            continue
        answered = True
        containers, volumes, local = listing
        mine = [s for s in stacks if s.entry.runtime == "docker" and (s.entry.engine or getattr(current, "host", "")) == host]
        found = attach_docker(mine, containers, volumes)
        for stack in found:
            stack.entry.engine = host
        for stack in mine + found:
            stack.listed, stack.local = True, local
        stacks += found
    for stack in stacks:
        if stack.entry.runtime == "native":
            stack.services = native_services(stack.entry)
            stack.data_bytes = tree_size(own_places(stack.entry)) if sizes else None
        elif stack.listed:
            stack.services = docker_services(stack.containers)
            stack.data_bytes = volumes_size(stack.volume_info, stack.local) if sizes else None
    return stacks, answered


def native_services(entry: Entry) -> dict[str, bool]:
    """service -> running, from the pids in the stack's state.json (each checked to run the
    service's program, not a reused pid); without a state file (`down --volumes`, never up)
    nothing of it runs: whatever answers on its ports is not its servers."""
    from devenv.runtime.procs import process_name
    from devenv.runtime.trust import read_json

    for place in own_places(entry):
        state = read_json(Path(place) / "state.json")
        if state:
            return {service: _alive(state.get(service), service, process_name) for service in SERVICES}
    return {service: False for service in SERVICES}


def own_places(entry: Entry) -> list[str]:
    """Of the directories a native record lists, those named as devenv's native runtime names its
    checkout and profile's: `<checkout>/.devenv/<profile>/native`, or a name carrying the key
    derived from it (devenv.registry.native_key). A record naming another stack's directory, or
    /usr, shows neither that stack's state nor its size (devenv.prune checks more to delete)."""
    link = Path(entry.checkout) / STATE_DIR_NAME / entry.profile / "native"
    key = registry.native_key(link)
    out = []
    for path in entry.data:
        name = os.path.basename(path)
        if path == str(link) or name == f"devenv-{key}" or (
                name.startswith(f"{entry.project}-{entry.profile}-") and name.endswith(f"-{key}")):
            out.append(path)
    return out


def _alive(record: Any, service: str, process_name: Callable[[int], str | None]) -> bool:
    pid = record.get("pid") if isinstance(record, dict) else None
    return type(pid) is int and pid > 0 and process_name(pid) == PROGRAMS[service]


def docker_services(containers: list[dict[str, Any]]) -> dict[str, bool]:
    """service -> running, from the engine's container list entries of one stack."""
    out = {service: False for service in SERVICES}
    for container in containers:
        labels = container.get("Labels") or {}
        service = labels.get(COMPOSE_SERVICE)
        if service in out and labels.get(COMPOSE_ONEOFF, "False") == "False":
            out[service] = out[service] or container.get("State") == "running"
    return out


def tree_size(paths: Iterable[str]) -> int:
    """Bytes on disk under the directories (os.scandir, links never followed, each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [p for p in paths]
    while stack:
        path = stack.pop()
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        total += info.st_blocks * 512
        if not stat.S_ISDIR(info.st_mode):
            continue
        try:
            with os.scandir(path) as found:
                for item in found:
                    try:
                        if item.is_dir(follow_symlinks=False):
                            stack.append(item.path)
                            continue
                        child = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (child.st_dev, child.st_ino) not in seen:
                        if child.st_nlink > 1:
                            seen.add((child.st_dev, child.st_ino))
                        total += child.st_blocks * 512
        except OSError:
            continue
    return total


def volumes_size(volumes: list[dict[str, Any]], local: bool) -> int | None:
    """The bytes of a Docker stack's volumes, when their directories are readable here (root, a
    local engine); None (unknown) otherwise. Never `docker system df`: it sizes everything."""
    if not volumes:
        return 0
    mounts = [str(v.get("Mountpoint") or "") for v in volumes]
    if not local or os.geteuid() != 0 or not all(m and os.path.isdir(m) for m in mounts):
        return None
    return tree_size(mounts)


# ---- Docker ---------------------------------------------------------------------------------------


def current_endpoint(warn: Callable[[str], None], needed: bool = False) -> Endpoint | None:
    """The engine devenv would use now; None when none is configured (or, with one line to
    `warn` when some record is a Docker one, a Docker context that names none)."""
    from devenv.errors import DevenvError
    from devenv.runtime.engine import find_endpoint

    try:
        return find_endpoint()
    except DevenvError as exc:  # a Docker context that names no engine
        if needed:
            warn(f"note: Docker stacks not listed: {exc.message}")
        return None


def docker_listing(warn: Callable[[str], None], endpoint: Endpoint | None = None, needed: bool = False
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool] | None:
    """(containers, volumes, local) carrying devenv's labels, from the engine at `endpoint` (by
    default the one devenv would use now); None when there is none, or (one line to `warn` when a
    record is expected there, or the engine was named explicitly) when it does not answer within
    ENGINE_TIMEOUT. `local`: an engine on this machine's unix socket, whose volume directories
    are this machine's."""
    from devenv.errors import DevenvError

    endpoint = endpoint or current_endpoint(warn, needed)
    if endpoint is None:
        return None
    filters = json.dumps({"label": [DEVENV_PROJECT]})
    try:
        if endpoint.host.startswith("unix://"):
            containers = _unix_get(endpoint.host[len("unix://"):], f"/containers/json?all=1&filters={_quote(filters)}")
            volumes = _unix_get(endpoint.host[len("unix://"):], f"/volumes?filters={_quote(filters)}")
            return list(containers or []), list((volumes or {}).get("Volumes") or []), True
        containers, volumes = _within(ENGINE_TIMEOUT, lambda: _sdk_listing(endpoint))
        return containers, volumes, False
    except (OSError, ValueError, DevenvError) as exc:
        if needed or endpoint.origin != "the default socket":
            reason = exc.message if isinstance(exc, DevenvError) else (str(exc) or type(exc).__name__)
            warn(f"note: Docker stacks not listed: no answer from {endpoint.shown} ({reason})")
        return None
    except Exception as exc:  # noqa: BLE001  (the SDK's own errors: the listing goes on without Docker)
        warn(f"note: Docker stacks not listed: {endpoint.shown}: {exc}")
        return None


def _sdk_listing(endpoint: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from devenv.runtime.dockerapi import connect

    client = connect(endpoint, timeout=ENGINE_TIMEOUT)
    containers = client.api.containers(all=True, filters={"label": DEVENV_PROJECT})
    volumes = client.api.volumes(filters={"label": DEVENV_PROJECT}).get("Volumes") or []
    return list(containers), list(volumes)


def _within(seconds: float, work: Callable[[], Any]) -> Any:
    """`work()`'s result if it ends within `seconds` overall (the SDK's timeout is per read: an
    engine dripping its answer would hold it for ever), else TimeoutError; left to a daemon thread."""
    import threading

    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["value"] = work()
        except BaseException as exc:  # noqa: BLE001  (raised again in the caller's thread)
            done["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no whole answer within {seconds:.0f}s")
    if "error" in done:
        raise done["error"]
    return done["value"]


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _unix_get(path: str, url: str) -> Any:
    """GET `url` from the engine's unix socket as HTTP/1.0 (no chunks; the engine closes when
    done) and parse the JSON body: a few lines of socket code instead of http.client's import.
    The whole answer within ENGINE_TIMEOUT (not each read: a dripping answer would never end)
    and MAX_ANSWER bytes, else TimeoutError or ValueError."""
    import socket
    import time

    deadline = time.monotonic() + ENGINE_TIMEOUT
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ENGINE_TIMEOUT)
        sock.connect(path)
        sock.sendall(f"GET {url} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        chunks, received = [], 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole answer within {ENGINE_TIMEOUT:.0f}s")
            sock.settimeout(left)
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            received += len(chunk)
            if received > MAX_ANSWER:
                raise ValueError(f"an answer over {MAX_ANSWER >> 20} MB")
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"{url.split('?')[0]} answered {b' '.join(status[1:]).decode(errors='replace') or 'nothing'}")
    return json.loads(body)


def working_checkout(labels: dict[str, str]) -> str | None:
    """The checkout a container's Compose working directory (`<checkout>/.devenv/<profile>`) names."""
    working_dir = labels.get(COMPOSE_WORKING_DIR)
    if not working_dir:
        return None
    path = Path(working_dir)
    return str(path.parent.parent) if path.parent.name == STATE_DIR_NAME else None


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b) or os.path.realpath(a) == os.path.realpath(b)


def attach_docker(stacks: list[Stack], containers: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> list[Stack]:
    """Give each recorded Docker stack its containers and volumes; return the stacks that only the
    engine knows (no record): one per Compose project and checkout."""
    recorded = [s for s in stacks if s.entry.runtime == "docker"]
    unrecorded: dict[tuple[str, str | None], Stack] = {}
    for container in containers:
        labels = container.get("Labels") or {}
        project = labels.get(COMPOSE_PROJECT)
        if not project:
            continue
        checkout = working_checkout(labels)
        owner = next((s for s in recorded if s.entry.name == project
                      and (checkout is None or _same_path(checkout, s.entry.checkout))), None)
        if owner is None:
            owner = unrecorded.get((project, checkout))
        if owner is None:
            owner = unrecorded[(project, checkout)] = _unrecorded(project, checkout, labels)
        owner.containers.append(container)
        if not owner.recorded:
            _add_ports(owner.entry, labels.get(COMPOSE_SERVICE), container.get("Ports") or [])
    for volume in volumes:
        labels = volume.get("Labels") or {}
        project = labels.get(COMPOSE_PROJECT)
        if not project:
            continue
        owners = [s for s in recorded if s.entry.name == project]
        owners = owners or [s for (name, _), s in unrecorded.items() if name == project]
        if not owners:  # volumes only (its containers removed by `down`): where from, nobody says
            owners = [unrecorded.setdefault((project, None), _unrecorded(project, None, labels))]
        # A name two checkouts share (legacy names): each lists the volume.
        for owner in owners:
            owner.volume_info.append(volume)
            if not owner.recorded and volume.get("Name") not in owner.entry.volumes:
                owner.entry.volumes.append(str(volume.get("Name")))
    return sorted(unrecorded.values(), key=lambda s: (s.entry.checkout, s.entry.name))


def _unrecorded(project: str, checkout: str | None, labels: dict[str, str]) -> Stack:
    entry = Entry(checkout=checkout or "", config=str(Path(checkout) / "devenv.yaml") if checkout else "",
                  project=labels.get(DEVENV_PROJECT, project), profile=labels.get(DEVENV_PROFILE, "?"),
                  runtime="docker", name=project)
    found = Stack(entry, recorded=False, checkout_known=checkout is not None)
    found.listed = True  # an engine's listing is where it was found
    return found


def _add_ports(entry: Entry, service: str | None, ports: list[dict[str, Any]]) -> None:
    published = [p.get("PublicPort") for p in ports if p.get("PublicPort")]
    if service in SERVICES and published:
        entry.ports[service] = int(published[0])


# ---- the output ---------------------------------------------------------------------------------


def show(as_json: bool, out: Callable[[str], None], say: Callable[[str], None]) -> None:
    """`devenv ls [--json]`: the table (or the JSON array) to `out`, notes to `say`. Shared by
    the click command and devenv.cli.entry's click-free fast path."""
    from devenv.humanize import size

    found, _ = gather(warn=say)
    if as_json:
        out(json.dumps([stack.as_json() for stack in found], indent=2))
    elif not found:
        say("no devenv stacks on this machine (`devenv up` makes one)")
    else:
        for line in table(found, size):
            out(line)



def table(stacks: list[Stack], size: Callable[[float], str]) -> list[str]:
    """`devenv ls`'s lines: a header, then one line per stack."""
    rows: list[tuple[str, ...]] = [("CHECKOUT", "PROFILE", "RUNTIME", "PORTS (PG,BOUNCER,REDIS)", "STATE", "DATA")]
    for stack in stacks:
        e = stack.entry
        ports = ",".join(str(e.ports.get(s, "-")) for s in SERVICES)
        state = stack.state
        if state == "orphaned" and any(stack.services.values()):
            state += f" ({running_state(stack.services)})"  # servers still run: `devenv prune` stops them
        checkout = e.checkout if stack.checkout_known else f"? ({e.name}, no container left)"
        if not stack.recorded and stack.checkout_known:
            checkout += " (unrecorded)"
        rows.append(tuple(map(printable, (checkout, e.profile, e.runtime, ports, state,
                                          "?" if stack.data_bytes is None else size(stack.data_bytes)))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def printable(text: str) -> str:
    """`text` on one line for a terminal: control characters escaped (a newline in a path must not
    fake a row), and bytes that are not UTF-8 (a path's, kept as surrogates) as \\xNN."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif "\udc80" <= char <= "\udcff":
            out.append(f"\\x{ord(char) - 0xdc00:02x}")
        else:
            out.append(char.encode("unicode_escape", errors="backslashreplace").decode("ascii"))
    return "".join(out)


__all__ = ["JSON_KEYS", "Stack", "attach_docker", "checkout_gone", "docker_listing", "gather", "own_places", "printable", "show",
           "table", "tree_size"]
