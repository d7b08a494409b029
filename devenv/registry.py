"""Every devenv stack on this machine: one small JSON file per (checkout, profile).

Each `up` records its stack here (`record`): the checkout it belongs to, its runtime, its
Docker name, the ports it holds. `devenv ls` and `devenv prune` read the records; `up` reads
them under `locked()` to choose ports no other checkout holds (two `up`s at the same moment
see each other's reservation), and to name the checkout whose stack holds a port.

The records live where only this user writes: /var/lib/devenv/stacks as root, else
$XDG_STATE_HOME/devenv/stacks (~/.local/state/devenv/stacks); DEVENV_REGISTRY_DIR overrides
both (tests). A record that is not this user's own regular file is ignored, never acted on.

Imports only the standard library's small modules: the `up` path loads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

LOCK_NAME = ".lock"
# How long `locked()` waits for another devenv choosing its ports (a few ms each).
LOCK_TIMEOUT = 60.0


def registry_dir() -> Path:
    """Where this user's records are (not created here)."""
    explicit = os.environ.get("DEVENV_REGISTRY_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/devenv/stacks")
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "devenv" / "stacks"


def checkout_id(root: Path) -> str:
    """A short stable id of a checkout: its resolved path, hashed (6 hex digits)."""
    return hashlib.sha256(os.fsencode(Path(root).resolve())).hexdigest()[:6]


@dataclass
class Entry:
    """One stack of one checkout, as its last `up` recorded it."""

    checkout: str  # the checkout's resolved path (the directory of its devenv.yaml)
    config: str  # its devenv.yaml
    project: str
    profile: str
    runtime: str  # "native" or "docker"
    name: str  # the stack's name: the Docker Compose project on Docker
    ports: dict[str, int] = field(default_factory=dict)  # service -> host port it holds
    data: list[str] = field(default_factory=list)  # native: directories holding its data and state
    volumes: list[str] = field(default_factory=list)  # docker: its named volumes
    updated: float = 0.0

    @property
    def key(self) -> str:
        """The record's file name (without .json): one per checkout and profile."""
        return f"{checkout_id(Path(self.checkout))}-{self.profile}"

    @property
    def orphaned(self) -> bool:
        """Its checkout no longer exists."""
        return not Path(self.checkout).is_dir()


def _private_dir(path: Path) -> None:
    from devenv.safefs import private_dir

    private_dir(path)


def record(entry: Entry) -> None:
    """Write (or renew) the entry's record, 0600, atomically."""
    from devenv.safefs import write_file

    directory = registry_dir()
    _private_dir(directory)
    entry.updated = time.time()
    write_file(directory / f"{entry.key}.json", json.dumps(asdict(entry), indent=1, sort_keys=True).encode())


def forget(entry: Entry) -> None:
    """Remove the entry's record (after its stack was removed)."""
    with contextlib.suppress(FileNotFoundError):
        (registry_dir() / f"{entry.key}.json").unlink()


def _read(path: Path) -> Entry | None:
    from devenv.runtime.trust import read_json

    data: dict[str, Any] = read_json(path)
    try:
        entry = Entry(**data)
    except TypeError:  # of another shape (another devenv version's): skipped
        return None
    if not (isinstance(entry.ports, dict) and all(isinstance(p, int) for p in entry.ports.values())):
        return None
    return entry


def entries() -> list[Entry]:
    """Every readable record, sorted by checkout and profile."""
    try:
        names = sorted(os.listdir(registry_dir()))
    except OSError:
        return []
    found = [_read(registry_dir() / name) for name in names if name.endswith(".json") and not name.startswith(".")]
    return sorted((e for e in found if e is not None), key=lambda e: (e.checkout, e.profile))


def find(root: Path, profile: str) -> Entry | None:
    """This checkout's record of a profile, if any."""
    wanted = f"{checkout_id(root)}-{profile}.json"
    return _read(registry_dir() / wanted)


@contextlib.contextmanager
def locked(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the machine-wide registry lock for the block: one `up` at a time chooses ports."""
    from devenv.errors import StateError

    directory = registry_dir()
    _private_dir(directory)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StateError(f"another devenv held {directory / LOCK_NAME} for {timeout:.0f}s",
                                     hint="wait for the other `devenv up` to finish, then run the command again.") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


__all__ = ["Entry", "checkout_id", "entries", "find", "forget", "locked", "record", "registry_dir"]
