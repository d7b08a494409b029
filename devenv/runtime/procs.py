"""Local processes as /proc shows them: the one parse of /proc/<pid>/stat, scans, signals, waits.

devenv.state imports this on the no-op `up` path, so it imports only os, time and pathlib: no
subprocess, no dataclasses.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import subprocess


def read_stat(pid: int) -> tuple[str, str] | None:
    """(program name, state letter) of a pid from /proc/<pid>/stat; None when it cannot be read
    (the pid is gone, or there is no procfs)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    # The name is in parentheses and may hold spaces and parentheses itself: cut at the last ")".
    return stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :][:1]


def _stat_number(pid: int, index: int) -> int | None:
    """A numeric field of /proc/<pid>/stat, counted from the state field (0) after the name,
    which may hold spaces and parentheses itself; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
        return int(stat[stat.rindex(")") + 2:].split()[index])
    except (OSError, ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When a pid started (clock ticks since boot, /proc/<pid>/stat field 22): with the pid it
    names one process, never a later one given the same pid. None when it cannot be read."""
    return _stat_number(pid, 19)


def parent_pid(pid: int) -> int | None:
    """A pid's parent (/proc/<pid>/stat field 4); None when it cannot be read."""
    return _stat_number(pid, 1)


def process_name(pid: int) -> str | None:
    """The program a pid runs, None if gone or a zombie (guards against pid reuse).

    A zombie child of this process is reaped. Without procfs (macOS) a pid that signal 0
    reaches is "unknown".
    """
    found = read_stat(pid)
    if found is None:
        if not Path("/proc/self").exists():  # no procfs: fall back to signal 0
            try:
                os.kill(pid, 0)
                return "unknown"
            except OSError:
                return None
        return None
    name, state = found
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child: reap it
        except ChildProcessError:
            pass
        return None
    return name


def working_dir(pid: int) -> Path | None:
    """A process's working directory (Linux), None when it cannot be read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def scan_processes() -> dict[int, str]:
    """Pid -> program name of every live process (empty without procfs).

    Zombies are left out but not reaped: one may be a child whose exit status its Popen still
    has to read (a restore's tar: reaped here, its failure would read as success).
    """
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            found = read_stat(int(entry))
            if found is not None and found[1] != "Z":
                table[int(entry)] = found[0]
    return table


def processes_in(table: Mapping[int, str], name: str, directory: Path) -> list[int]:
    """Pids in `table` named `name` whose working directory is `directory` (Linux)."""
    return [pid for pid, comm in table.items() if comm == name and working_dir(pid) == directory]


def processes_with_arg(table: Mapping[int, str], name: str, arg: str) -> list[int]:
    """Pids in `table` named `name` with `arg` in their command line (Linux)."""
    found = []
    for pid in (pid for pid, comm in table.items() if comm == name):
        try:
            if arg.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def send_signal(pid: int, sig: int) -> None:
    """Signal a pid; one that is already gone is not an error."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_group(pid: int, sig: int) -> None:
    """Signal a server and every process it started (they share its session's group)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        send_signal(pid, sig)


def wait_gone(pid: int, timeout: float, child: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait until the pid has exited (`child`: our own Popen of it, polled instead); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.pid == pid:
            if child.poll() is not None:
                return True
        elif process_name(pid) is None:
            return True
        time.sleep(0.01)
    return False


def kill_and_wait(pids: list[int], sig: int, timeout: float = 5) -> None:
    """Signal each pid and wait (up to `timeout` each) for it to be gone."""
    for pid in pids:
        send_signal(pid, sig)
        wait_gone(pid, timeout)


def end_writers(table: Mapping[int, str], directory: Path) -> list[int]:
    """End what a killed `up` left writing into a scratch `directory`: processes that name it
    in their argv (initdb, tar) or work in it (initdb's bootstrap backend), each with its whole
    process group (devenv starts them in one of their own: zstd goes with tar, the backend with
    initdb). SIGKILL, then waited for; returns the pids found."""
    import signal

    arg = f"{directory}\0"  # the whole argument: not a longer name that starts the same
    pids = [pid for name in ("initdb", "tar") for pid in processes_with_arg(table, name, arg)]
    pids += processes_in(table, "postgres", directory)
    own = os.getpgrp()
    for pid in pids:
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if group in (own, 0, 1):
            send_signal(pid, signal.SIGKILL)
        else:
            kill_group(group, signal.SIGKILL)
    for pid in pids:
        wait_gone(pid, 5)
    return pids
def own_processes(service: str, table: Mapping[int, str], layout: Any) -> list[int]:
    """Live processes of a native stack's `service`, found without its state file (`layout`: the
    native runtime's Layout): the postmaster named by postmaster.pid in its data directory and
    running there; PgBouncer with its pgbouncer.ini on the command line; Redis running in its
    Redis directory (it rewrites its command line, but stays in its `dir`). The one its pid file
    names comes first."""
    if service == "postgres":
        try:
            pid = int((layout.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [pid] if process_name(pid) == "postgres" and working_dir(pid) == layout.pgdata.resolve() else []
    if service == "pgbouncer":
        pids = processes_with_arg(table, "pgbouncer", str(layout.conf / "pgbouncer.ini"))
    else:
        pids = processes_in(table, "redis-server", layout.redis_dir.resolve())
    try:
        noted = int((layout.run / f"{service}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        noted = 0
    return sorted(pids, key=lambda pid: pid != noted)
