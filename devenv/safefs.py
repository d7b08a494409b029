"""Files and directories in places other users can write to (/dev/shm, /tmp, a shared cache).

Root runs devenv in CI: a directory another local user made in advance, or a symlink planted
where devenv writes, must never make it chown, chmod or overwrite anything but its own files.
Directories are made with mkdir (which never follows a link) or verified with lstat and opened
with O_NOFOLLOW before any fchown/fchmod; files are written under a fresh O_EXCL name and
renamed into place, so a link at the target is replaced, never followed.

Imports only os, stat and pathlib: the native `up` path loads it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO, Iterator

from devenv.errors import StateError


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return f"uid {uid}"


def private_dir(path: Path, owner: tuple[int, int] | None = None, trusted: tuple[int, ...] = (), mode: int = 0o700) -> None:
    """Make `path` a directory of ours with `mode` (0700: private), owned by `owner` (uid, gid) if given.

    A new directory is made by mkdir. An existing one must be a real directory (not a link)
    owned by this process's user, `owner`'s or one in `trusted`: anything else is refused with
    a StateError, and nothing is changed. Its mode and owner are set through a descriptor
    opened without following links, so no rename in between redirects them.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    allowed = {os.geteuid(), *trusted, *((owner[0],) if owner else ())}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        kind = "a symlink" if path.is_symlink() else "not a directory"
        raise StateError(f"refusing to use {path}: it is {kind} ({exc.strerror})",
                         hint=f"someone else made it; remove {path} (or find out who made it) and run the command again.") from None
    try:
        info = os.fstat(fd)
        if info.st_uid not in allowed:
            raise StateError(
                f"refusing to use {path}: it belongs to {_owner_name(info.st_uid)}, not to devenv's user",
                hint=f"another user made it first (the name is predictable); remove {path} and run the command again.")
        if owner is not None and (info.st_uid, info.st_gid) != owner:
            os.fchown(fd, *owner)
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def verified_dir(path: Path, trusted: tuple[int, ...] = ()) -> bool:
    """Whether `path` is a real directory (no link) owned by this process's user (or one in
    `trusted`) that nobody else can write to."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid in (os.geteuid(), *trusted)
            and not info.st_mode & 0o022)


def verified_file(path: Path) -> bool:
    """Whether `path` is a regular file (no link) owned by this process's user that nobody else
    can write to."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def write_file(path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Write `path` whole or not at all, never through a link: a fresh O_EXCL|O_NOFOLLOW name
    beside it, `mode` and `owner` set on the descriptor, then renamed over the target."""
    tmp = _fresh(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def open_append(path: Path, owner: tuple[int, int] | None = None, mode: int = 0o600) -> Iterator[IO[bytes]]:
    """`path` opened to append (created `mode` if missing), never through a link: a link planted
    there is removed (its target untouched) and a new file made. `owner` is set on the
    descriptor, so a link swapped in later changes nothing."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, mode)
    except OSError:
        if not path.is_symlink():
            raise
        path.unlink()  # removing a link never touches what it points to
        fd = os.open(path, flags | os.O_EXCL, mode)
    handle = os.fdopen(fd, "ab")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StateError(f"refusing to write {path}: it is not a regular file", hint=f"remove {path} and run again.")
        if owner is not None:
            os.fchown(fd, *owner)
        yield handle
    finally:
        handle.close()


def flock_within(fd: int | IO[str], timeout: float, poll: float) -> bool:
    """Take an exclusive flock on `fd`, trying every `poll` seconds for up to `timeout`; False if
    another holder kept it that long. The kernel drops a flock when its holder dies."""
    import fcntl
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)


def _fresh(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def read_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a (log) file, reading at most its last 64 KiB; "" when unreadable."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 65536))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


__all__ = ["flock_within", "open_append", "private_dir", "read_tail", "verified_dir", "verified_file", "write_file"]
