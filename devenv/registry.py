"""Every devenv stack on this machine: one small JSON file per (checkout, profile).

Each `up` records its stack here (`record`): the checkout it belongs to, its runtime, its
Docker name, the ports it holds. `devenv ls` and `devenv prune` read the records; `up` reads
them under `locked()` to choose ports no other checkout holds (two `up`s at the same moment
see each other's reservation), and to name the checkout whose stack holds a port.

The records live where only this user writes: /var/lib/devenv/stacks as root, else
$XDG_STATE_HOME/devenv/stacks (~/.local/state/devenv/stacks); DEVENV_REGISTRY_DIR overrides
both (tests). A record that is not this user's own regular file, or whose fields are not of
their types (`_read`), is skipped, never acted on; keys it has beyond Entry's (a newer devenv's)
are ignored. A record is removed by the file it was read from (`Entry.source`).

Imports only the standard library's small modules: the `up` path loads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
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


def native_key(link: Path) -> str:
    """The key of a native stack's directories outside its checkout (/var/lib/devenv/<name>-<key>,
    /dev/shm/devenv-<key>, <tmp>/devenv-<key>): 10 hex digits of a hash of the bytes of its
    `<checkout>/.devenv/<profile>/native` path (devenv.runtime.native's layout; a path need not be UTF-8)."""
    return hashlib.sha256(os.fsencode(link)).hexdigest()[:10]


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
    engine: str = ""  # docker: the engine it was started on (its address); "" in older records
    updated: float = 0.0
    source: Path | None = field(default=None, compare=False, repr=False)  # the file it was read from

    @property
    def key(self) -> str:
        """The record's file name (without .json): one per checkout and profile."""
        return f"{checkout_id(Path(self.checkout))}-{self.profile}"

    @property
    def orphaned(self) -> bool:
        """Its checkout no longer exists (an invalid, non-absolute checkout is never orphaned)."""
        return os.path.isabs(self.checkout) and not Path(self.checkout).is_dir()

    def as_record(self) -> dict[str, Any]:
        """The fields its file holds (RECORD_FIELDS)."""
        return {name: getattr(self, name) for name in RECORD_FIELDS}


# What a record file holds, and the type of each: (required, check).
_STR = (True, lambda v: isinstance(v, str))
_STRS = (False, lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v))
_FIELD_TYPES: dict[str, tuple[bool, Any]] = {
    "checkout": (True, lambda v: isinstance(v, str) and os.path.isabs(v) and os.path.normpath(v) == v and "\0" not in v),
    "config": _STR, "project": _STR,
    "profile": (True, lambda v: isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\0" not in v),
    "runtime": (True, lambda v: v in ("native", "docker")), "name": _STR,
    "ports": (False, lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and type(p) is int and 0 < p < 65536 for k, p in v.items())),
    "data": _STRS, "volumes": _STRS,
    "engine": (False, lambda v: isinstance(v, str) and "\0" not in v and "\n" not in v),
    "updated": (False, lambda v: type(v) in (int, float) and v == v),
}
RECORD_FIELDS = tuple(_FIELD_TYPES)


def _private_dir(path: Path) -> None:
    from devenv.safefs import private_dir

    private_dir(path)


def record(entry: Entry) -> None:
    """Write (or renew) the entry's record, 0600, atomically."""
    from devenv.safefs import write_file

    directory = registry_dir()
    _private_dir(directory)
    entry.updated = time.time()
    path = directory / f"{entry.key}.json"
    write_file(path, json.dumps(entry.as_record(), indent=1, sort_keys=True).encode())
    entry.source = path


def forget(entry: Entry) -> None:
    """Remove the entry's record (after its stack was removed): the file it was read from (its
    name need not match its contents), else the one its checkout and profile name."""
    directory = registry_dir()
    path = entry.source if entry.source is not None and entry.source.parent == directory else directory / f"{entry.key}.json"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def forget_checkout(root: Path, profile: str) -> None:
    """Remove a checkout's record of a profile, if any (`down --volumes`: nothing of it is left)."""
    with contextlib.suppress(FileNotFoundError):
        (registry_dir() / f"{checkout_id(root)}-{profile}.json").unlink()


def _read(path: Path) -> Entry | None:
    """The record in `path`, or None: not this user's own regular file, not JSON, or a field
    missing or of the wrong type (each checked: one bad record must not break `ls` for all)."""
    from devenv.runtime.trust import read_json

    data: dict[str, Any] = read_json(path)
    fields = {}
    for name, (required, check) in _FIELD_TYPES.items():
        if name not in data:
            if required:
                return None
            continue
        if not check(data[name]):
            return None
        fields[name] = data[name]
    entry = Entry(**fields)  # keys beyond these (a newer devenv's) are ignored
    entry.updated = float(entry.updated)
    entry.source = path
    return entry


def entries(skipped: list[str] | None = None) -> list[Entry]:
    """Every valid record, sorted by checkout and profile; the names of the files skipped (not
    ours alone, or invalid) are appended to `skipped` when given."""
    try:
        names = sorted(os.listdir(registry_dir()))
    except OSError:
        return []
    found = []
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            entry = _read(registry_dir() / name)
            if entry is not None:
                found.append(entry)
            elif skipped is not None:
                skipped.append(name)
    return sorted(found, key=lambda e: (e.checkout, e.profile))


def find(root: Path, profile: str) -> Entry | None:
    """This checkout's record of a profile, if any."""
    wanted = f"{checkout_id(root)}-{profile}.json"
    return _read(registry_dir() / wanted)


@contextlib.contextmanager
def locked(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the machine-wide registry lock for the block: one `up` at a time chooses ports."""
    from devenv.errors import StateError
    from devenv.safefs import flock_within

    directory = registry_dir()
    _private_dir(directory)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if not flock_within(fd, timeout, poll=0.01):
            raise StateError(f"another devenv held {directory / LOCK_NAME} for {timeout:.0f}s",
                             hint="wait for the other `devenv up` to finish, then run the command again.")
        yield
    finally:
        os.close(fd)  # releases the lock


__all__ = ["Entry", "RECORD_FIELDS", "checkout_id", "entries", "find", "forget", "forget_checkout", "locked", "native_key", "record",
           "registry_dir"]
