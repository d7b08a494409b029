"""devenv.yaml's `env_file:`: a marked block of the stack's variables in a dotenv file.

Every `up` (the no-op one too) keeps one block in the file, between `# >>> devenv` and
`# <<< devenv` lines, with the URLs and libpq's PG* variables of the profile that ran last.
Every other byte of the file stays as it was: its lines, its line endings (CRLF files get a
CRLF block), a missing final newline. The file is written only when the block differs, whole
or not at all, never through a link, mode 0600 (it holds passwords). The path is devenv.yaml's,
relative to the project root, and walked from there a component at a time without following
links (openat with O_NOFOLLOW), so no link in the checkout (a cloned repository may hold one)
takes the write outside it: root in CI must never splice a block into /etc/passwd.

Imports only os, re, stat and pathlib: the no-op `up` loads it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Callable, Mapping

from devenv.errors import StateError

BEGIN = "# >>> devenv"
END = "# <<< devenv"
MAX_BYTES = 1 << 20  # a dotenv file is a few lines; a megabyte is not one
# Values a dotenv loader (python-dotenv, docker compose, Node's dotenv) reads back as written.
_BARE = re.compile(r"[A-Za-z0-9_./:@%?=&+,~-]*")
# The loaders agree on little else: in single quotes python-dotenv decodes \\ and \' (compose
# and Node do not); in double quotes compose expands `$` and all of them decode some escapes.
_SINGLE_UNSAFE = frozenset("'\\\n\r")
_DOUBLE_UNSAFE = frozenset('"\\$\n\r')


def dotenv_value(value: str) -> str:
    """`value` as a dotenv line writes it, read back as written by every loader: bare, else in
    single quotes, else (it holds a `'`) in double quotes. A value none of them can carry
    (a backslash, a newline, a `'` beside a `$` or `"`) is refused: devenv writes none today."""
    if _BARE.fullmatch(value):
        return value
    if not _SINGLE_UNSAFE & set(value):
        return f"'{value}'"
    if not _DOUBLE_UNSAFE & set(value):
        return f'"{value}"'
    raise StateError(f"cannot write {value!r} in a dotenv file: loaders read it differently "
                     "(a backslash, a newline, or a ' beside a $ or \")",
                     hint="use names and passwords of letters, digits and ._~- in devenv.yaml.")


def dotenv_lines(values: Mapping[str, str]) -> list[str]:
    """`NAME=value` lines, quoted where needed (`devenv env --format dotenv` and the block)."""
    return [f"{name}={dotenv_value(value)}" for name, value in values.items()]


def block(profile: str, values: Mapping[str, str]) -> str:
    """The block's text, lines joined by "\\n", without a final newline."""
    head = f"{BEGIN} (profile {profile}): written by `devenv up`; edit devenv.yaml, not this block"
    return "\n".join([head, *dotenv_lines(values), END])


def is_begin(line: bytes) -> bool:
    """Whether `line` opens devenv's block: `# >>> devenv` alone or followed by ` (`; trailing
    whitespace and CR allowed. A user's `# >>> devenvironment notes` is not it."""
    line = line.rstrip()
    return line == BEGIN.encode() or line.startswith(BEGIN.encode() + b" (")


def is_end(line: bytes) -> bool:
    """Whether `line` closes devenv's block: `# <<< devenv` exactly (trailing whitespace, CR allowed)."""
    return line.rstrip() == END.encode()


def _lines(data: bytes) -> list[bytes]:
    """The file's lines, each with its ending (b"\\n" or b"\\r\\n"; the last may have none)."""
    parts = data.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _ending(line: bytes) -> bytes:
    return b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""


def splice(data: bytes, text: str, path: Path) -> bytes:
    """`data` with its devenv block replaced by `text` (or `text` appended), nothing else changed.

    The block takes the line ending of the block it replaces (else of the file's first line);
    an appended block after a last line without a newline ends without one, as the file did.
    """
    lines = _lines(data)
    starts = [i for i, line in enumerate(lines) if is_begin(line)]
    if len(starts) > 1:  # a merge kept two: loaders would read either, so neither is safe to keep
        numbers = ", ".join(str(i + 1) for i in starts)
        raise StateError(f"{path}: devenv's block is there {len(starts)} times (lines {numbers}); a file holds one",
                         hint=f"delete every devenv block (from `{BEGIN}` to `{END}`) but one, or all of them; "
                         "`devenv up` then writes it again, leaving the rest of the file alone.")
    start = starts[0] if starts else None
    newline = _ending(lines[start if start is not None else 0]) if lines else b"\n"
    newline = newline or b"\n"
    new = newline.join(text.encode("utf-8").split(b"\n"))
    if start is None:
        if not data:
            return new + newline
        if data.endswith(b"\n"):
            return data + new + newline
        return data + newline + new  # the file ended without a newline: so does it now
    end = next((j for j in range(start + 1, len(lines)) if is_end(lines[j])), None)
    if end is None:
        raise StateError(f"{path}:{start + 1}: devenv's block has no end line `{END}`",
                         hint=f"put `{END}` back after the block's last variable (or delete the block's lines); "
                         "`devenv up` then writes it again, leaving the rest of the file alone.")
    return b"".join(lines[:start]) + new + _ending(lines[end]) + b"".join(lines[end + 1:])


def shadowed(data: bytes, names: list[str]) -> list[tuple[int, str]]:
    """(line, name) of each line outside the block that sets one of `names` too."""
    found: list[tuple[int, str]] = []
    inside = False
    for number, line in enumerate(_lines(data), 1):
        if is_begin(line):
            inside = True
        elif is_end(line):
            inside = False
        elif not inside:
            match = re.match(rb"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
            if match and match.group(1).decode() in names:
                found.append((number, match.group(1).decode()))
    return found


def relative_parts(rel: str) -> list[str] | None:
    """`rel`'s components when it is a path inside the project (relative, no `..`, a file name
    last); else None. state.json's record is checked with it too: never trusted as written."""
    if not isinstance(rel, str) or not rel or "\0" in rel or rel.startswith("/") or rel.endswith("/"):
        return None
    parts = [part for part in rel.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return parts


def _link_error(shown: str) -> StateError:
    return StateError(f"refusing to write env_file: {shown} is a symbolic link",
                      hint="devenv writes the env file only inside the project, never through a link: point "
                      "`env_file:` in devenv.yaml at a real file in a real directory, or remove the link.")


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _open_parent(root: Path, parts: list[str]) -> int:
    """A descriptor of the env file's directory, walked from `root` a component at a time
    without following a link (missing ones made, owned as their parent when root makes them)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for depth, part in enumerate(parts):
            shown = str(root.joinpath(*parts[:depth + 1]))
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            try:
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:  # `env_file: config/.env` in a fresh checkout
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)  # never follows a link planted meanwhile
                    except FileExistsError:
                        pass
                    child = os.open(part, flags, dir_fd=fd)
                    if os.geteuid() == 0:  # root in someone's checkout: the directory stays theirs
                        parent = os.fstat(fd)
                        try:
                            os.fchown(child, parent.st_uid, parent.st_gid)
                        except OSError:
                            os.close(child)
                            raise
            except OSError as exc:
                if _is_link(part, fd):
                    raise _link_error(shown) from None
                raise StateError(f"cannot write env_file: {shown}: {exc.strerror}",
                                 hint="make it a directory, or point `env_file:` in devenv.yaml elsewhere.") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read(name: str, dir_fd: int, path: Path) -> tuple[bytes, os.stat_result | None]:
    """The file's bytes and stat (b"", None when missing); StateError for a link or a non-file."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)  # a FIFO must not block `up`
    except FileNotFoundError:
        return b"", None
    except OSError as exc:
        if _is_link(name, dir_fd):
            raise _link_error(str(path)) from None
        raise StateError(f"cannot read env_file {path}: {exc.strerror}",
                         hint="check the file's permissions, or point `env_file:` in devenv.yaml elsewhere.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # before reading: a directory would raise IsADirectoryError
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise StateError(f"refusing to write env_file {path}: it is {kind}",
                             hint="point `env_file:` in devenv.yaml at a file (e.g. .env), or remove what is there.")
        data = os.read(fd, MAX_BYTES + 1)
        while data and len(data) <= MAX_BYTES:
            more = os.read(fd, MAX_BYTES + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise StateError(f"env_file {path} is larger than {MAX_BYTES >> 20} MiB; not a dotenv file",
                         hint="point `env_file:` in devenv.yaml at your dotenv file (e.g. .env).")
    return data, info


def _write(name: str, dir_fd: int, data: bytes, owner: tuple[int, int] | None) -> None:
    """`name` in `dir_fd` written whole or not at all: a fresh O_EXCL|O_NOFOLLOW name beside it,
    0600 and `owner` set on the descriptor, renamed over it (a link there is replaced, not followed)."""
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, 0o600)  # the umask may have narrowed it
            handle.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def sync(root: Path, rel: str, text: str, say: Callable[[str], None] = lambda line: None) -> bool:
    """Make `rel` (devenv.yaml's `env_file:`, inside `root`) hold the block `text`, mode 0600;
    True when it was written (else untouched). StateError (exit 8), nothing written, for a path
    outside the project, a link anywhere on it, or something there that is not a file."""
    parts = relative_parts(rel)
    path = root.joinpath(*(parts or [str(rel)]))
    if parts is None:
        raise StateError(f"refusing to write env_file {rel!r}: it is not a path inside the project {root}",
                         hint="write a path relative to the project directory in devenv.yaml, e.g. `env_file: .env`.")
    try:
        dir_fd = _open_parent(root, parts[:-1])
    except OSError as exc:
        raise StateError(f"cannot write env_file {path}: {exc.strerror or exc}",
                         hint="check that its directory is writable, or point `env_file:` in devenv.yaml elsewhere.") from None
    try:
        name = parts[-1]
        data, info = _read(name, dir_fd, path)
        new = splice(data, text, path)
        mode = stat.S_IMODE(info.st_mode) if info is not None else None
        if new == data and mode == 0o600:
            return False
        owner = None
        if os.geteuid() == 0:  # root in someone's checkout: the file stays theirs
            source = info if info is not None else os.fstat(dir_fd)
            owner = (source.st_uid, source.st_gid)
        try:
            _write(name, dir_fd, new, owner)
        except OSError as exc:
            raise StateError(f"cannot write env_file {path}: {exc.strerror or exc}",
                             hint="check that its directory is writable, or point `env_file:` in devenv.yaml elsewhere.") from None
    finally:
        os.close(dir_fd)
    if mode is not None and mode != 0o600:
        say(f"{path}: mode {mode:04o} -> 0600, as it now holds PGPASSWORD")
    if new != data:
        names = [line.partition("=")[0] for line in text.splitlines()[1:-1]]
        say(f"{path}: wrote devenv's block ({text.partition('(')[2].partition(')')[0]})")
        for number, name in shadowed(new, names):
            say(f"warning: {path}:{number} sets {name} outside devenv's block; loaders differ in which one wins")
    return True


__all__ = ["BEGIN", "END", "block", "dotenv_lines", "dotenv_value", "is_begin", "is_end", "relative_parts", "shadowed",
           "splice", "sync"]
