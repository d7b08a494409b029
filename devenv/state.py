"""What `devenv up` recorded: a fingerprint of its inputs, the runtime, the URLs; and the lock.

A second `up` whose inputs hash the same and whose servers still run returns at once,
without parsing YAML, rendering templates or importing a database driver.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterator

from devenv import __version__
from devenv.errors import StateError
from devenv.config.identity import IDENTITY_FILE, PORTS_FILE
from devenv.config.project import template_dirs

STATE_FILE = "state.json"
INPUTS_FILE = "inputs.json"  # the steps' inputs the no-op `up` hashes (note_inputs)
# One empty file per process (named by its pid) that may create scratch databases (a Janitor):
# removed when it exits normally, so a file whose process is gone means one was killed and may
# have left scratch databases behind. The no-op `up` looks here (a directory listing, no
# session) and takes the full path, which sweeps them, when it finds one.
SCRATCH_OWNERS = "scratch-owners"
_owner_noted: set[tuple[int, str]] = set()
# One note per PgBouncer PAUSE in progress (devenv.clients.pgbouncer.Console.paused): its owner.
PAUSES_DIR = "paused"
# Environment variables that change the stack (profile and config are part of the path).
_IGNORED_ENV = {"DEVENV_DEBUG", "DEVENV_PROFILE", "DEVENV_CONFIG", "DEVENV_CACHE_DIR", "DEVENV_REGISTRY_DIR"}


def input_files(root: Path, config_path: Path, profile: str | None = None) -> list[Path]:
    """Every file whose content shapes the running stack (of `profile`: also the name and the
    ports this checkout remembers, devenv.config.identity)."""
    files = [config_path, root / ".devenv" / "secrets.json"]
    if profile is not None:
        files += [root / ".devenv" / profile / IDENTITY_FILE, root / ".devenv" / profile / PORTS_FILE]
    for directory in template_dirs(root):
        files += sorted(directory.glob("*.j2"))
    for part in ("schema", "data"):
        files += sorted((root / "seeds" / part).glob("*.sql"))
    if profile is not None:
        files += _step_inputs(root, root / ".devenv" / profile / INPUTS_FILE)
    return files


def _step_inputs(root: Path, record: Path) -> list[Path]:
    """The files of devenv.yaml's other `sql:` folders and `run:` inputs, as the last stack built
    listed them (note_inputs): devenv.yaml itself is hashed too, so a changed list is seen."""
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
        folders, inputs = list(recorded["sql"]), list(recorded["inputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return [record]  # hashed as missing or as it is
    from devenv.db.stepkeys import input_files as walk

    files = [record]
    for folder in folders:
        files += sorted((root / str(folder)).glob("*.sql"))
    return files + [path for _, path in walk(root, [str(given) for given in inputs])]


def note_inputs(state_dir: Path, inputs: dict[str, Any]) -> None:
    """Record what the no-op `up` must hash besides the defaults (devenv.db.stepkeys.recorded_inputs);
    written only when it changed."""
    from devenv.safefs import write_file

    data = json.dumps(inputs, sort_keys=True).encode("utf-8")
    path = state_dir / INPUTS_FILE
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    write_file(path, data)


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def fingerprint(root: Path, config_path: Path, profile: str, options: dict[str, Any]) -> str:
    """Hash of the inputs of `up`: files, DEVENV_* variables, options and devenv's version."""
    digest = hashlib.sha256(f"{__version__}\0{profile}\0".encode())
    for path in input_files(root, config_path, profile):
        digest.update(os.fsencode(path) + b"\0")  # a name that is not UTF-8 is seed_files' to name
        try:
            with open(path, "rb", opener=_nonblocking) as handle:  # a FIFO must not block the no-op `up`
                digest.update(handle.read() if stat.S_ISREG(os.fstat(handle.fileno()).st_mode) else b"<not a file>")
        except OSError:
            digest.update(b"<missing>")
    env = {k: v for k, v in os.environ.items() if k.startswith("DEVENV_") and k not in _IGNORED_ENV}
    digest.update(json.dumps([env, options], sort_keys=True).encode())
    return digest.hexdigest()


def read_state(state_dir: Path) -> dict[str, Any]:
    """The recorded state of a profile, or {} when there is none or it is damaged (the full `up`
    then finds out what runs and records it again)."""
    try:
        data = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, not UTF-8 or not JSON: as if none
        return {}
    return data if isinstance(data, dict) else {}  # of another shape: as if none


def write_state(state_dir: Path, data: dict[str, Any]) -> None:
    """Record the state atomically; 0600 because it holds the connection URLs."""
    from devenv.safefs import write_file  # a fresh name, never through a planted link

    state_dir.mkdir(parents=True, exist_ok=True)
    write_file(state_dir / STATE_FILE, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))


def clear_state(state_dir: Path) -> None:
    """Forget the recorded state (after `down`)."""
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def processes_alive(processes: dict[str, list[Any]]) -> bool:
    """Whether every recorded (pid, program name) still runs; False where /proc cannot tell."""
    from devenv.runtime.procs import read_stat  # here: `devenv reset` imports this module, never this function

    if not processes or not isinstance(processes, dict):
        return False
    for entry in processes.values():
        try:
            pid, name = entry
            found = read_stat(int(pid))
        except (TypeError, ValueError):  # a damaged state.json
            return False
        if found is None or found[0] != name or found[1] == "Z":
            return False
    return True


@contextlib.contextmanager
def locked(state_dir: Path, timeout: float = 300.0, on_wait: Any = None) -> Iterator[None]:
    """Hold the profile's lock so that two `devenv up`/`down` never race.

    The kernel drops a flock when its holder dies, so a killed `up` never leaves it stuck.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "lock"
    # Read-write, created if missing; not "a+", whose writes go to the end: the note is written
    # over in place, since truncating it to nothing first costs ~0.15 ms on ext4 (every reset).
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another devenv"
            if on_wait:
                on_wait(f"waiting for {holder} to finish (lock {path})")
            from devenv.safefs import flock_within

            if not flock_within(handle, timeout, poll=0.05):
                raise StateError(f"{holder} still holds {path} after {timeout:.0f}s",
                                 hint="wait for it to finish; if it hangs, stop that process.")
        handle.seek(0)
        handle.write(f"devenv pid {os.getpid()}")
        handle.truncate()  # what a longer note left after this one
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def note_password(path: Path, secret: str) -> None:
    """Keep a digest of the password secret a cluster's superuser was given, at `path`: data
    can outlive the checkout whose secrets made it (see password_noted)."""
    from devenv.safefs import write_file  # beside data in /dev/shm: never through a planted link

    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, (hashlib.sha256(secret.encode()).hexdigest() + "\n").encode())


def password_noted(path: Path, secret: str) -> bool:
    """Whether the note at `path` says the cluster has this secret; no note (an older devenv,
    a restore in progress or killed) is a no: setting the same password again is harmless."""
    try:
        return path.read_text(encoding="utf-8").strip() == hashlib.sha256(secret.encode()).hexdigest()
    except (OSError, ValueError):  # ValueError: not UTF-8
        return False


def note_scratch_owner(state_dir: Path) -> None:
    """Record this process as one that may create scratch databases, until it exits normally."""
    pid = os.getpid()
    if (pid, str(state_dir)) in _owner_noted:
        return
    directory = state_dir / SCRATCH_OWNERS
    path = directory / str(pid)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    except OSError:
        return  # a read-only checkout: the full `up` still sweeps whatever it finds
    _owner_noted.add((pid, str(state_dir)))

    def forget() -> None:
        if os.getpid() == pid:  # not in a forked child, whose exit says nothing of this process
            with contextlib.suppress(OSError):
                path.unlink()

    atexit.register(forget)


def dead_scratch_owners(state_dir: Path) -> list[int]:
    """Processes recorded by note_scratch_owner that are gone without exiting normally (killed)."""
    try:
        names = os.listdir(state_dir / SCRATCH_OWNERS)
    except OSError:
        return []
    dead = []
    for name in names:
        if name.isdigit():
            try:
                os.kill(int(name), 0)
            except ProcessLookupError:
                dead.append(int(name))
            except OSError:
                pass  # another user's process: alive
    return dead


def forget_scratch_owners(state_dir: Path, pids: list[int]) -> None:
    """Drop the records of killed processes once their scratch databases have been swept."""
    for pid in pids:
        with contextlib.suppress(OSError):
            (state_dir / SCRATCH_OWNERS / str(pid)).unlink()
def note_pause(state_dir: Path, database: str) -> Path:
    """Record, before a PgBouncer PAUSE of `database`, that this process (pid and start time)
    owns it: if the process dies inside the pause, the next command finds the note (pause_notes)
    and RESUMEs the database. Removed after RESUME (clear_pause)."""
    from devenv.runtime.procs import start_time

    directory = state_dir / PAUSES_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    note = {"database": database, "pid": os.getpid(), "start": start_time(os.getpid())}
    for attempt in range(1000):
        path = directory / f"{os.getpid()}-{attempt}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(note, handle)
        return path
    raise StateError(f"too many pause notes in {directory}", hint=f"remove {directory} and run again.")


def clear_pause(path: Path) -> None:
    """The pause a note recorded is over (RESUMEd, or PgBouncer is gone with it)."""
    path.unlink(missing_ok=True)


def pause_notes(state_dir: Path) -> list[tuple[Path, str, int, bool]]:
    """(note, database, owner pid, whether the owner still runs) of each PAUSE noted in a profile.

    Costs one listdir when there is none: the no-op `up` and every reset look."""
    directory = state_dir / PAUSES_DIR
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    from devenv.runtime.procs import start_time

    found = []
    for name in sorted(names):
        path = directory / name
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
            database, pid, start = str(note["database"]), int(note["pid"]), note.get("start")
        except (OSError, ValueError, TypeError, KeyError):
            path.unlink(missing_ok=True)  # half written by a killed process: it paused nothing yet
            continue
        now = start_time(pid)
        alive = now is not None and (start is None or now == start)
        if now is None and not Path("/proc/self").exists():  # no procfs: signal 0 tells
            try:
                os.kill(pid, 0)
                alive = True
            except PermissionError:
                alive = True
            except OSError:
                alive = False
        found.append((path, database, pid, alive))
    return found


def restore_login_note(state_dir: Path) -> Path:
    """Present while a cache save may have left its one-time superuser login (RESTORE_ROLE) on
    the live cluster: the next full `up` drops it (ensure_roles) and removes the note."""
    return state_dir / "restore-login-pending"
