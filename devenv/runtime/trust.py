"""What root may trust of the native runtime's files: only what no other user can write.

As root, the servers run as an unprivileged user (`postgres`): anything that user can write
(its data directory, run/, a file it planted) must never steer what root does next. So the
per-stack directory and its conf/, log/ and data/ are root's (0711: the server user may pass
through, not write), state.json is read only if it is root's own regular file, a cached binary
path only if root owns it and no group or other may write it or its directory, and
`down --volumes` deletes only inside devenv's own directories, checked after resolving links.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Iterable

from devenv import safefs


def make_dir(path: Path, owner: tuple[int, int] | None, trusted: tuple[int, ...] = ()) -> None:
    """Create `path` (and parents), or take over an existing one that is a real directory of
    this user's, `owner`'s or one in `trusted` (safefs.private_dir: never through a link, never
    another user's, who could have made it first under a predictable name in /dev/shm or /tmp).

    As root: `owner` None makes it root's, mode 0711 (the server user passes through but cannot
    create, replace or list); an `owner` gets a 0700 directory of its own. Not as root: 0700.
    """
    if os.geteuid() != 0:
        safefs.private_dir(path)
    elif owner is None:
        safefs.private_dir(path, (0, 0), trusted=trusted, mode=0o711)
    else:
        safefs.private_dir(path, owner, mode=0o700)


def writable_by_others(info: os.stat_result) -> bool:
    """Whether someone other than root (as root) or this user could change the file or directory."""
    return info.st_uid != os.geteuid() or bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path` if it is a regular file only this user can write (not a link);
    else {}: a file the server user planted is ignored, never acted on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        # Its owner, not its directory's: the server user can rename files in a directory of an
        # older devenv's that it owned, but not make one root's (nor hard-link one: protected_hardlinks).
        if not stat.S_ISREG(info.st_mode) or writable_by_others(info):
            return {}
        try:
            data = json.loads(handle.read(16 << 20))
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            return {}
    return data if isinstance(data, dict) else {}


def read_small(path: Path, limit: int = 4096) -> str:
    """The start of a regular file, never through a link or from a FIFO (which would hang)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return handle.read(limit).decode(errors="replace")


def trusted_program(path: str) -> bool:
    """As root: whether `path` (links resolved) and its directory are root's and not writable by
    group or others, so that no other user could have put it there. Always True otherwise."""
    if os.geteuid() != 0:
        return True
    try:
        real = Path(os.path.realpath(path))
        return all(not writable_by_others(os.stat(p)) for p in (real, real.parent))
    except OSError:
        return False


def remove_within(path: Path, roots: Iterable[Path]) -> bool:
    """Delete `path` only if, its parent's links resolved, it lies inside one of `roots` (or is
    one); a symbolic link is removed itself, never followed. False when refused or absent."""
    try:
        resolved = path.parent.resolve(strict=True) / path.name
    except OSError:
        return False
    allowed = [root.resolve() for root in roots]
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        return False
    try:
        info = os.lstat(resolved)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(resolved, ignore_errors=True)  # fd-based on Linux: links inside are not followed
    else:
        resolved.unlink(missing_ok=True)
    return True
