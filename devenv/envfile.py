"""devenv.yaml's `env_file:`: a marked block of the stack's variables in a dotenv file.

Every `up` (the no-op one too) keeps one block in the file, between `# >>> devenv` and
`# <<< devenv` lines, with the URLs and libpq's PG* variables of the profile that ran last.
Every other byte of the file stays as it was: its lines, its line endings (CRLF files get a
CRLF block), a missing final newline. The file is written only when the block differs, whole
or not at all, never through a link, mode 0600 (it holds passwords).

Imports only os, re, stat and pathlib (and devenv.safefs to write): the no-op `up` loads it.
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


def dotenv_value(value: str) -> str:
    """`value` as a dotenv line writes it: bare when every loader reads it back as written, in
    single quotes (no escapes, no `$` expansion) otherwise, in double quotes if it holds one."""
    if _BARE.fullmatch(value):
        return value
    if "'" not in value and "\n" not in value and "\r" not in value:
        return f"'{value}'"
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')  # `$` stays: python-dotenv expands only ${NAME}
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def dotenv_lines(values: Mapping[str, str]) -> list[str]:
    """`NAME=value` lines, quoted where needed (`devenv env --format dotenv` and the block)."""
    return [f"{name}={dotenv_value(value)}" for name, value in values.items()]


def block(profile: str, values: Mapping[str, str]) -> str:
    """The block's text, lines joined by "\\n", without a final newline."""
    head = f"{BEGIN} (profile {profile}): written by `devenv up`; edit devenv.yaml, not this block"
    return "\n".join([head, *dotenv_lines(values), END])


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
    start = next((i for i, line in enumerate(lines) if line.startswith(BEGIN.encode())), None)
    newline = _ending(lines[start if start is not None else 0]) if lines else b"\n"
    newline = newline or b"\n"
    new = newline.join(text.encode("utf-8").split(b"\n"))
    if start is None:
        if not data:
            return new + newline
        if data.endswith(b"\n"):
            return data + new + newline
        return data + newline + new  # the file ended without a newline: so does it now
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith(END.encode())), None)
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
        if line.startswith(BEGIN.encode()):
            inside = True
        elif line.startswith(END.encode()):
            inside = False
        elif not inside:
            match = re.match(rb"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
            if match and match.group(1).decode() in names:
                found.append((number, match.group(1).decode()))
    return found


def _read(path: Path) -> tuple[bytes, os.stat_result | None]:
    """The file's bytes and stat (b"", None when missing); StateError for a link or a non-file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a FIFO must not block `up`
    except FileNotFoundError:
        return b"", None
    except OSError as exc:
        if path.is_symlink():
            raise StateError(f"refusing to write env_file {path}: it is a symbolic link",
                             hint="devenv writes the env file itself, never through a link: point `env_file:` "
                             "in devenv.yaml at the real file, or remove the link.") from None
        raise StateError(f"cannot read env_file {path}: {exc.strerror}",
                         hint="check the file's permissions, or point `env_file:` in devenv.yaml elsewhere.") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"refusing to write env_file {path}: it is not a regular file",
                             hint="point `env_file:` in devenv.yaml at a file (e.g. .env), or remove what is there.")
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise StateError(f"env_file {path} is larger than {MAX_BYTES >> 20} MiB; not a dotenv file",
                         hint="point `env_file:` in devenv.yaml at your dotenv file (e.g. .env).")
    return data, info


def sync(path: Path, text: str, say: Callable[[str], None] = lambda line: None) -> bool:
    """Make `path` hold the block `text`, mode 0600; True when it was written (else untouched).

    Written atomically under a fresh name (devenv.safefs.write_file), so a link planted there
    is refused above and never followed; root keeps the file's owner (or the directory's).
    """
    from devenv.safefs import write_file

    data, info = _read(path)
    new = splice(data, text, path)
    mode = stat.S_IMODE(info.st_mode) if info is not None else None
    if new == data and mode == 0o600:
        return False
    try:
        if info is None:
            path.parent.mkdir(parents=True, exist_ok=True)  # `env_file: config/.env` in a fresh checkout
        owner = None
        if os.geteuid() == 0:  # root in someone's checkout: the file stays theirs
            source = info if info is not None else os.stat(path.parent)
            owner = (source.st_uid, source.st_gid)
        write_file(path, new, 0o600, owner)
    except OSError as exc:
        raise StateError(f"cannot write env_file {path}: {exc.strerror or exc}",
                         hint="check that its directory is writable, or point `env_file:` in devenv.yaml elsewhere.") from None
    if mode is not None and mode != 0o600:
        say(f"{path}: mode {mode:04o} -> 0600, as it now holds PGPASSWORD")
    if new != data:
        names = [line.partition("=")[0] for line in text.splitlines()[1:-1]]
        say(f"{path}: wrote devenv's block ({text.partition('(')[2].partition(')')[0]})")
        for number, name in shadowed(new, names):
            say(f"warning: {path}:{number} sets {name} outside devenv's block; loaders differ in which one wins")
    return True


__all__ = ["BEGIN", "END", "block", "dotenv_lines", "dotenv_value", "shadowed", "splice", "sync"]
