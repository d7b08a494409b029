"""What keys a `run:` step: its command line and the content of its `inputs`.

A folder counts with everything under it (relative path + content hash), symbolic links
followed (`migrations/versions -> ../shared_versions` counts), each folder once (a link loop
ends there), except what tools write beside their sources: `__pycache__`, `*.pyc`/`*.pyo`, and
the VCS folders (`.git`, `.hg`, `.svn`). Dot-named files count: Alembic applies
`versions/.005_x.py` too. Only regular files are read; a FIFO, socket or device counts by its
name and kind, never opened (reading a FIFO would hang). Standard library only: the
`devenv reset` path computes the template's name from these.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # no import at run time: the no-op `up` lists inputs through here (devenv.state)
    from devenv.config.stack import Stack, Step

RUN_LEDGER_PREFIX = "run:"  # a run step's row in the ledger: `run:<part>:<n>:<command>`
VCS_FOLDERS = frozenset({".git", ".hg", ".svn"})


def ignored(name: str) -> bool:
    """Names a walk of an input folder skips: what tools write beside the sources."""
    return name == "__pycache__" or name in VCS_FOLDERS or name.endswith((".pyc", ".pyo"))


def walk(root: Path | str, inputs: tuple[str, ...] | list[str]) -> Iterator[tuple[str, str, os.stat_result | None]]:
    """(relative posix path, path, stat or None when missing) of each input and of everything
    under an input folder, in a stable order: links followed, each folder (st_dev, st_ino)
    entered once, so that a link loop (`ln -s . migrations/loop`) ends at once."""
    seen: set[tuple[int, int]] = set()
    for given in inputs:
        path = os.path.join(root, given)
        try:
            st: os.stat_result | None = os.stat(path)
        except (OSError, ValueError):
            st = None
        yield given, path, st
        if st is not None and stat.S_ISDIR(st.st_mode):
            yield from _below(path, "" if given in ("", ".") else given.rstrip("/") + "/", st, seen)


def _below(folder: str, prefix: str, st: os.stat_result, seen: set[tuple[int, int]]) -> Iterator[tuple[str, str, os.stat_result | None]]:
    if (st.st_dev, st.st_ino) in seen:
        return
    seen.add((st.st_dev, st.st_ino))
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return  # unreadable: its own stat (yielded by the caller) still counts
    for entry in entries:
        if ignored(entry.name):
            continue
        try:
            found: os.stat_result | None = entry.stat()  # through a link
        except OSError:  # a dangling link, or gone since the listing
            found = None
        yield prefix + entry.name, entry.path, found
        if found is not None and stat.S_ISDIR(found.st_mode):
            yield from _below(entry.path, prefix + entry.name + "/", found, seen)


def input_files(root: Path, inputs: tuple[str, ...] | list[str]) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every file the inputs name (not the folders), in a
    stable order; a missing input yields itself (its hash then says so)."""
    for relative, path, st in walk(root, inputs):
        if st is None or not stat.S_ISDIR(st.st_mode):
            yield relative, Path(path)


def _kind(mode: int) -> bytes:
    for test, name in ((stat.S_ISFIFO, b"<fifo>"), (stat.S_ISSOCK, b"<socket>"), (stat.S_ISCHR, b"<char device>"),
                       (stat.S_ISBLK, b"<block device>")):
        if test(mode):
            return name
    return b"<not a file>"


def _content(path: str, st: os.stat_result | None) -> bytes:
    """What a file contributes: its content's hash; anything else its kind, never opened."""
    if st is None:
        return b"<missing>"
    if not stat.S_ISREG(st.st_mode):
        return _kind(st.st_mode)
    try:  # O_NONBLOCK: swapped for a FIFO since the stat, it must not hang either
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:  # gone since devenv.yaml was read (or not readable): a key of its own
        return b"<missing>"
    with open(fd, "rb") as handle:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):
            return _kind(now.st_mode)
        return hashlib.sha256(handle.read()).hexdigest().encode()


def run_key(root: Path, step: Step) -> str:
    """The content hash of a `run:` step: the command's words and its inputs' files."""
    digest = hashlib.sha256(b"run\0")
    for word in step.argv:
        digest.update(word.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(b"\0")
    for relative, path, st in walk(root, step.inputs):
        if st is not None and stat.S_ISDIR(st.st_mode):
            continue  # a folder counts by what is in it
        digest.update(relative.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(_content(path, st))
        digest.update(b"\0")
    return digest.hexdigest()


def check_inputs(stack: Stack) -> None:
    """ConfigError (exit 3, naming devenv.yaml's line) when an input or `sql:` folder devenv.yaml
    names is missing. What needs the steps calls it (the template's key, `up`); parsing does
    not, so that `down`, `env`, `psql` work on a branch without the migrations. A few stats."""
    for step in stack.steps:
        if not step.source:  # the defaults: a missing seeds/ folder holds no files
            continue
        for given in ((step.path,) if step.kind == "sql" else step.inputs):
            if not os.path.exists(os.path.join(stack.root, given)):
                raise _missing(step, given)


def _missing(step: Step, given: str) -> Exception:
    """The ConfigError for a step's missing input or `sql:` folder, naming devenv.yaml's line."""
    from devenv.config.settings import line_of
    from devenv.errors import ConfigError

    folder = step.kind == "sql"
    keypath = f"{step.keypath}.{'sql' if folder else 'inputs'}"
    try:
        line = line_of(Path(step.source).read_text(encoding="utf-8"), keypath)
    except (OSError, ValueError):
        line = None
    where = f"{step.source}:{line}" if line else step.source
    what = f"{given!r} is missing" if folder else f"input {given!r} is missing"
    return ConfigError(f"{where}: {keypath}: {step.part} step {step.index}: {what}",
                       hint="create it, or fix the path in devenv.yaml (relative to the project directory); "
                       "without it `devenv down`, `env`, `psql` and `logs` still work.")


def ledger_name(step: Step) -> str:
    """A run step's row in the ledger (`devenv.applied_files.file`): `run:schema:1:alembic upgrade head`."""
    return f"{RUN_LEDGER_PREFIX}{step.part}:{step.index}:{step.command}"


def run_steps(stack: Stack, part: str | None = None) -> list[Step]:
    """The stack's `run:` steps (of one part if given), in order."""
    return [step for step in stack.steps if step.kind == "run" and part in (None, step.part)]


def recorded_inputs(stack: Stack) -> dict[str, Any]:
    """What the no-op `up`'s fingerprint must read besides the default seed folders
    (devenv.state.input_files): the other `sql:` folders and every `run:` step's inputs."""
    return {"sql": sorted({step.path for step in stack.steps if step.kind == "sql"} - {"seeds/schema", "seeds/data"}),
            "inputs": [given for step in stack.steps if step.kind == "run" for given in step.inputs]}


def stat_signature(stack: Stack) -> tuple[tuple[Any, ...], ...]:
    """(path, mtime, size, inode) of every file and folder the template's key reads (each sql
    folder's `.sql` files, each run step's inputs, walked afresh as run_key walks them: a new
    migration file counts, behind a link too): what a cached key is checked against between
    resets. One scandir per folder, no hashing: ~1 ms for 200 migration files."""
    out: list[tuple[Any, ...]] = []
    for step in stack.steps:
        if step.kind == "sql":
            _scan(str(stack.root / step.path), out)
        else:
            for _, path, st in walk(stack.root, step.inputs):
                out.append((path,) if st is None else (path, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _scan(folder: str, out: list[tuple[Any, ...]]) -> None:
    """A sql folder's `.sql` files (not recursive, as seed_files reads them)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        out.append((folder,))
        return
    for entry in entries:
        if not entry.name.endswith(".sql"):
            continue
        try:
            st = entry.stat()
        except OSError:
            out.append((entry.path,))
            continue
        out.append((entry.path, st.st_mtime_ns, st.st_size, st.st_ino))
