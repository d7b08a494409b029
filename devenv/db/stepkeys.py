"""What keys a `run:` step: its command line and the content of its `inputs`.

A folder counts with every file under it (sorted relative path + content hash), except what
tools write beside their sources: `__pycache__`, `*.pyc`/`*.pyo` and dot-names (running Alembic
writes `migrations/__pycache__`, which must not change the key). Standard library only: the
`devenv reset` path computes the template's name from these.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # no import at run time: the no-op `up` lists inputs through here (devenv.state)
    from devenv.config.stack import Stack, Step

RUN_LEDGER_PREFIX = "run:"  # a run step's row in the ledger: `run:<part>:<n>:<command>`


def ignored(name: str) -> bool:
    """Names a walk of an input folder skips: caches and hidden files tools write there."""
    return name.startswith(".") or name == "__pycache__" or name.endswith((".pyc", ".pyo"))


def input_files(root: Path, inputs: tuple[str, ...] | list[str]) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every file the inputs name, in a stable order; a missing
    input yields itself (its hash then says so)."""
    for given in inputs:
        path = root / given
        if not path.is_dir():
            yield given, path
            continue
        found: list[tuple[str, Path]] = []
        for folder, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not ignored(d))
            for name in names:
                if not ignored(name):
                    full = Path(folder) / name
                    found.append((full.relative_to(root).as_posix(), full))
        yield from sorted(found)


def run_key(root: Path, step: Step) -> str:
    """The content hash of a `run:` step: the command's words and its inputs' files."""
    digest = hashlib.sha256(b"run\0")
    for word in step.argv:
        digest.update(word.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(b"\0")
    for relative, path in input_files(root, step.inputs):
        digest.update(relative.encode("utf-8", "surrogateescape") + b"\0")
        try:
            digest.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
        except OSError:  # gone since devenv.yaml was read (or not readable): a key of its own
            digest.update(b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()


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
    folder's `.sql` files, each run step's inputs, walked afresh: a new migration file counts):
    what a cached key is checked against between resets. One scandir per folder, no hashing:
    ~1 ms for 200 migration files."""
    out: list[tuple[Any, ...]] = []
    for step in stack.steps:
        if step.kind == "sql":
            _scan(str(stack.root / step.path), out, lambda name: not name.endswith(".sql"), recurse=False)
        else:
            for given in step.inputs:
                path = str(stack.root / given)
                try:
                    st = os.stat(path)
                except OSError:
                    out.append((path,))
                    continue
                out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
                if os.path.isdir(path):
                    _scan(path, out, ignored)
    return tuple(out)


def _scan(folder: str, out: list[tuple[Any, ...]], skip: Any, recurse: bool = True) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        out.append((folder,))
        return
    for entry in entries:
        if skip(entry.name):  # sql folders: what is not a .sql file; inputs: caches and dot-names
            continue
        try:
            st = entry.stat()
        except OSError:
            out.append((entry.path,))
            continue
        out.append((entry.path, st.st_mtime_ns, st.st_size, st.st_ino))
        if recurse and entry.is_dir():
            _scan(entry.path, out, skip)
