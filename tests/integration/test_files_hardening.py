"""Issue 15, classes 3, 5, 13, 14 with real servers: predictable names in /dev/shm taken by
another user, links planted where devenv writes, the password out of psql's argv, damaged or
untrusted cache archives (initdb instead), and `up` killed while restoring or in initdb.

"Another user" is `nobody`; those tests need root (as CI runs them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Project

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and another local user (nobody)")


def _shm_dir(proj: Project) -> Path:
    """The ci profile's predictable tmpfs directory (NativeRuntime.layout)."""
    link = proj.root / ".devenv" / proj.profile / "native"
    return Path("/dev/shm") / f"devenv-{hashlib.sha256(str(link).encode()).hexdigest()[:10]}"


def _lines(proc: Any, prefix: str) -> str:
    return next((line for line in proc.stderr.splitlines() if line.startswith(prefix)), "")


def _tasks(proj: Project) -> int:
    with proj.connect() as conn:
        return conn.execute("SELECT count(*) FROM tasks").fetchone()[0]


# ---- class 3: names in /dev/shm, links planted where devenv writes ----------------------------------


@root_only
@pytest.mark.native_only(reason="the native ci profile's /dev/shm directory")
@pytest.mark.parametrize("planted", ["directory", "symlink"])
def test_a_tmpfs_directory_another_user_made_first_is_refused_untouched(project: Project, tmp_path: Path,
                                                                         planted: str) -> None:
    shm = _shm_dir(project)
    victim = tmp_path / "victim"  # what a link would make root chown and chmod
    victim.mkdir()
    os.chmod(victim, 0o755)
    try:
        if planted == "directory":
            shm.mkdir()
            os.chmod(shm, 0o777)
            os.chown(shm, NOBODY, NOBODY)
        else:
            shm.symlink_to(victim)
            os.lchown(shm, NOBODY, NOBODY)
        proc = project.devenv("up", check=False)
        assert proc.returncode == 8, proc.stderr
        error = _lines(proc, "error:")
        assert str(shm) in error and ("belongs to nobody" in error or "symlink" in error), proc.stderr
        assert _lines(proc, "hint:"), proc.stderr
        assert "Traceback" not in proc.stderr
        info = os.lstat(shm)
        if planted == "directory":
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (NOBODY, 0o777)
            assert list(shm.iterdir()) == []
        else:
            assert stat.S_ISLNK(info.st_mode)
        assert (victim.stat().st_uid, stat.S_IMODE(victim.stat().st_mode)) == (0, 0o755)
        assert list(victim.iterdir()) == []
    finally:
        if shm.is_symlink():
            shm.unlink()
        else:
            shutil.rmtree(shm, ignore_errors=True)


@root_only
@pytest.mark.native_only(reason="the native runtime's log, state and note files")
def test_links_the_server_user_plants_are_never_written_through(project: Project, tmp_path: Path) -> None:
    """The servers' user can write in the directories devenv keeps logs, state and notes in:
    links it plants there must not make root overwrite or chown their targets."""
    project.devenv("up")
    project.devenv("down")
    base = Path(os.path.realpath(project.root / ".devenv" / project.profile / "native"))
    pgdata = Path(project.native_state()["_meta"]["pgdata"])
    planted = {
        base / "log" / "postgres.log": tmp_path / "victim-log",
        base / "log" / "redis.log": tmp_path / "victim-redis-log",
        base / "state.json.tmp": tmp_path / "victim-state",
        pgdata.with_name(pgdata.name + ".password-sha256"): tmp_path / "victim-note",
    }
    for link, victim in planted.items():
        victim.write_text("precious\n")
        os.chmod(victim, 0o644)
        link.unlink(missing_ok=True)
        link.symlink_to(victim)
        os.lchown(link, pwd_uid("postgres"), -1)  # as the servers' user would plant it
    proc = project.devenv("up", check=False)
    assert proc.returncode == 0, proc.stderr
    for link, victim in planted.items():
        info = victim.stat()
        assert victim.read_text() == "precious\n" and (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o644), link
    assert _tasks(project) == 40


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


# ---- class 5: passwords out of argv -----------------------------------------------------------------


def test_devenv_psql_connects_with_the_password_in_its_environment(running: Any) -> None:
    proj = running("dev")
    if shutil.which("psql") is None:
        pytest.skip("no psql client")
    for extra in ((), ("--pooled",)):
        out = proj.devenv("psql", *extra, "-X", "-tAc", "SELECT count(*) FROM tasks")
        assert out.stdout.strip() == "40", out

    # While a real psql runs, no process on the machine shows the password in its argv (what
    # `ps` shows every user).
    password = proj.stack().postgres.password.encode()
    argv = [sys.executable, "-m", "devenv", "psql", "--profile", proj.profile, "-X", "-tAc", "SELECT pg_sleep(2)"]
    with subprocess.Popen(argv, cwd=proj.root, env=proj.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        seen_psql, shown = False, []
        deadline = time.monotonic() + 10
        while child.poll() is None and time.monotonic() < deadline:
            for entry in Path("/proc").iterdir():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                seen_psql = seen_psql or (b"psql\0" in cmdline and b"pg_sleep" in cmdline)
                if password in cmdline:
                    shown.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            time.sleep(0.1)
        child.communicate(timeout=10)
    assert child.returncode == 0
    assert seen_psql, "psql was never seen running: the check above proved nothing"
    assert not shown, shown


# ---- classes 5 and 13: the cache trusted only when private and intact, else initdb ------------------


@pytest.fixture
def cached(project: Project, tmp_path: Path) -> Project:
    project.env["DEVENV_CACHE_DIR"] = str(tmp_path / "cache")
    project.env.pop("DEVENV_NO_CACHE", None)
    return project


def _archive(proj: Project) -> Path:
    [archive] = (Path(proj.env["DEVENV_CACHE_DIR"])).glob("pgdata-*.tar.zst")
    return archive


@pytest.mark.native_only(reason="ci on Docker keeps its data on tmpfs (no cache); test_docker.py covers the volume cache")
@pytest.mark.parametrize("damage", ["truncated", "flipped", "broken with a matching checksum"])
def test_a_damaged_cache_archive_is_quarantined_and_up_runs_initdb(cached: Project, damage: str) -> None:
    proj = cached
    proj.devenv("up")
    archive = _archive(proj)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600 and stat.S_IMODE(archive.parent.stat().st_mode) == 0o700
    proj.devenv("down", "--volumes")
    data = bytearray(archive.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    else:  # written broken: its checksum vouches for it, zstd or tar fails on it
        del data[len(data) // 2:]
        Path(f"{archive}.sha256").write_text(f"{hashlib.sha256(bytes(data)).hexdigest()}  {archive.name}\n")
    archive.write_bytes(bytes(data))
    for attempt in range(2):  # the next `up` too: never an internal error, never the same archive again
        up = proj.devenv("up", check=False)
        assert up.returncode == 0, up.stderr
        if attempt == 0:
            assert "is damaged" in up.stderr and "moved aside" in up.stderr, up.stderr
            assert "postgres   initdb" in up.stderr and "cached the seeded data" in up.stderr, up.stderr
        assert _tasks(proj) == 40
        proj.devenv("down", "--volumes")
    assert len(list(archive.parent.glob("pgdata-*.damaged-*"))) == 1
    assert _archive(proj) == archive  # saved again, whole


@root_only
@pytest.mark.native_only(reason="ci on Docker keeps its data on tmpfs (no cache); test_docker.py covers the volume cache")
@pytest.mark.parametrize("planted", ["group-writable", "another user's"])
def test_a_cache_archive_others_could_have_written_is_not_used(cached: Project, planted: str) -> None:
    proj = cached
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    archive = _archive(proj)
    if planted == "group-writable":
        os.chmod(archive, 0o664)
    else:
        os.chown(archive, NOBODY, NOBODY)
    up = proj.devenv("up")
    assert "not using the cached data" in up.stderr and "postgres   initdb" in up.stderr, up.stderr
    assert "restoring seeded data" not in up.stderr
    assert _tasks(proj) == 40
    assert archive.stat().st_uid == os.geteuid() and stat.S_IMODE(archive.stat().st_mode) == 0o600, "saved anew"


# ---- class 14: `up` killed while restoring or in initdb ------------------------------------------------


def _orphans(proj: Project) -> list[str]:
    """Processes of the project's scratch work still alive: tar, zstd, initdb, or a backend in a
    scratch directory."""
    pgdata = str(_shm_dir(proj) / "postgres")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            comm = (entry / "comm").read_text().strip()
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        named = any(pgdata + ".restore" in a or pgdata + ".initdb" in a for a in argv) \
            or cwd.startswith((pgdata + ".restore", pgdata + ".initdb")) \
            or any(proj.env.get("DEVENV_CACHE_DIR", "\0") in a for a in argv)
        if named and comm in ("tar", "zstd", "initdb", "postgres"):
            found.append(f"{entry.name} {comm} {' '.join(argv)}")
    return found


def _kill_up_after(proj: Project, line_start: str, delay: float) -> bool:
    """Start `up`, SIGKILL it `delay` s after a stderr line starting with `line_start` (or at
    once); whether the line came before it ended."""
    proc = subprocess.Popen([sys.executable, "-m", "devenv", "up", "--runtime", "native", "-p", proj.profile],
                            cwd=proj.root, env=proj.env, stderr=subprocess.PIPE, text=True)
    seen = False
    for line in proc.stderr:  # type: ignore[union-attr]
        if line_start in line:
            seen = True
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stderr.close()  # type: ignore[union-attr]
    return seen


@pytest.mark.native_only(reason="native's own tar, zstd and initdb processes; test_docker.py kills a Docker restore")
@pytest.mark.parametrize("phase", ["restore", "initdb"])
def test_up_killed_while_restoring_or_in_initdb_leaves_nothing_the_next_up_cannot_clear(
        cached: Project, phase: str) -> None:
    proj = cached
    # Enough data that unpacking and initdb take a while: the kill points land inside them.
    proj.edit("devenv.yaml", "\nprofiles:\n", "\nprofiles:\n  killed:\n    extends: ci\n    seed_scale: 20000\n")
    proj.profile = "killed"
    proj.devenv("up", timeout=300)
    tasks = _tasks(proj)
    proj.devenv("down", "--volumes")
    marker = "restoring seeded data" if phase == "restore" else "postgres   initdb"
    left_running = 0
    for i, delay in enumerate((0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.0)):
        if phase == "initdb":  # killed in initdb; the next `up` runs initdb again, or restores
            proj.env["DEVENV_NO_CACHE"] = "1"
        assert _kill_up_after(proj, marker, delay), f"no {marker!r} line"
        left_running += bool(_orphans(proj))
        if i % 2:
            proj.env.pop("DEVENV_NO_CACHE", None)
        up = proj.devenv("up", check=False, timeout=300)
        assert up.returncode == 0, (delay, up.stderr)
        assert "Traceback" not in up.stderr
        assert _tasks(proj) == tasks, delay
        assert _orphans(proj) == [], (delay, _orphans(proj))
        parent = _shm_dir(proj)
        assert sorted(p.name for p in parent.iterdir() if p.name.endswith((".restore", ".initdb"))) == [], delay
        proj.devenv("down", "--volumes")
    assert left_running, "no kill point left a tar, zstd or initdb running: the test missed its window"
