"""Issue 15, classes 3 and 5: files in shared places (safefs), the cache's trust (checksum,
owner, mode), passwords out of argv (`devenv psql`), `render --out` and an existing directory.

Real files, real tar and zstd, real processes; "another user" is `nobody` (root only).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from devenv import safefs
from devenv.db import cache
from devenv.errors import StateError

REPO = Path(__file__).resolve().parents[2]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and another local user (nobody)")
NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---- safefs: directories under predictable names in shared places ----------------------------------


def test_a_new_private_dir_is_0700_and_an_own_one_is_tightened(tmp_path: Path) -> None:
    new = tmp_path / "a" / "b"
    safefs.private_dir(new)
    assert new.is_dir() and _mode(new) == 0o700
    own = tmp_path / "own"
    own.mkdir(mode=0o755)
    safefs.private_dir(own)
    assert _mode(own) == 0o700


def test_a_symlink_at_a_private_dirs_name_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    os.chmod(victim, 0o755)
    link = tmp_path / "devenv-0123456789"
    link.symlink_to(victim)
    with pytest.raises(StateError, match="symlink") as raised:
        safefs.private_dir(link, owner=(NOBODY, NOBODY))
    assert raised.value.hint
    assert _mode(victim) == 0o755 and victim.stat().st_uid == os.geteuid()


@root_only
def test_a_directory_another_user_made_first_is_refused_unchanged(tmp_path: Path) -> None:
    theirs = tmp_path / "devenv-0123456789"
    theirs.mkdir()
    os.chmod(theirs, 0o777)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(StateError, match="belongs to nobody"):
        safefs.private_dir(theirs, owner=(0, 0))
    info = os.lstat(theirs)
    assert (info.st_uid, _mode(theirs)) == (NOBODY, 0o777)


def test_write_file_replaces_a_planted_link_and_never_writes_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "note"
    target.symlink_to(victim)
    safefs.write_file(target, b"hash\n")
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_bytes() == b"hash\n" and _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note", "victim"]  # no temporary file left


@root_only
def test_open_append_goes_around_a_planted_link_and_chowns_only_its_own_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    log = tmp_path / "postgres.log"
    log.symlink_to(victim)
    with safefs.open_append(log, owner=(NOBODY, NOBODY)) as handle:
        handle.write(b"line\n")
    assert victim.read_text() == "precious" and victim.stat().st_uid == 0
    assert not log.is_symlink() and log.read_bytes() == b"line\n" and log.stat().st_uid == NOBODY


# ---- the cache: private, checksummed, verified --------------------------------------------------------


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEVENV_CACHE_DIR", str(tmp_path / "cache"))
    with cache.compressed(cache.archive_path("k" * 16)) as (sink, path):
        sink.write(os.urandom(200_000))
    return path


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_an_archive_is_0600_in_a_0700_directory_with_its_checksum(archive: Path) -> None:
    assert _mode(archive.parent) == 0o700 and _mode(archive) == 0o600
    assert _mode(cache.checksum_path(archive)) == 0o600
    assert cache.untrusted(archive) is None
    cache.verify(archive)
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name, archive.name + ".sha256"]


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
@pytest.mark.parametrize("damage", ["truncated", "one byte changed"])
def test_a_damaged_archive_fails_verification_and_is_quarantined(archive: Path, damage: str) -> None:
    data = bytearray(archive.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(cache.CacheDamaged, match="does not match its checksum"):
        cache.verify(archive)
    said: list[str] = []
    assert cache.usable(archive, said.append) is None
    assert "damaged" in said[0] and "moved aside" in said[0] and "initdb" in said[0]
    assert not archive.exists() and not cache.checksum_path(archive).exists()
    assert [p.name.split(".damaged-")[0] for p in archive.parent.iterdir()] == [archive.name]


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_an_archive_others_can_write_or_without_checksum_is_not_trusted(archive: Path) -> None:
    os.chmod(archive, 0o664)
    assert "only this user can write" in (cache.untrusted(archive) or "")
    os.chmod(archive, 0o600)
    os.chmod(archive.parent, 0o777)
    assert "not this user's alone" in (cache.untrusted(archive) or "")
    os.chmod(archive.parent, 0o700)
    cache.checksum_path(archive).unlink()
    assert "no checksum" in (cache.untrusted(archive) or "")


@root_only
@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_an_archive_another_user_owns_is_not_trusted(archive: Path) -> None:
    os.chown(archive, NOBODY, NOBODY)
    said: list[str] = []
    assert cache.usable(archive, said.append) is None and "not using the cached data" in said[0]
    assert archive.exists(), "not ours: left alone, not quarantined"


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_a_shared_cache_directory_is_not_written_to(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(OSError, match="only this user can write"):
        with cache.compressed(shared / "pgdata-x.tar.zst") as (sink, _):
            sink.write(b"x")
    assert list(shared.iterdir()) == [] and _mode(shared) == 0o777


# ---- processes: unpackers in a group of their own, found and ended by the next `up` -----------------


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_unpackers_left_by_a_killed_up_are_ended_as_a_group(tmp_path: Path) -> None:
    """tar leads a process group with zstd in it: end_unpackers, given only the directory, ends both."""
    from devenv.runtime.procs import process_name

    scratch = tmp_path / "postgres.restore"
    scratch.mkdir()
    fifo = tmp_path / "archive.tar.zst"  # a FIFO nobody writes to: zstd and tar wait on it for ever
    os.mkfifo(fifo)
    procs = cache.start_unpacking(fifo, scratch)
    unzstd, tar = procs
    assert os.getpgid(unzstd.pid) == os.getpgid(tar.pid) == tar.pid != os.getpgrp()
    found = cache.end_unpackers(scratch)
    assert found == [tar.pid]
    tar.wait(5)
    unzstd.wait(5)
    assert process_name(tar.pid) is None and process_name(unzstd.pid) is None


# ---- passwords out of argv; render --out ----------------------------------------------------------------


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(REPO / "devenv.yaml", root / "devenv.yaml")
    shutil.copytree(REPO / "seeds", root / "seeds")
    return root


def _stack(root: Path):  # type: ignore[no-untyped-def]
    from devenv.config.resolve import build_stack
    from devenv.config.settings import load_config

    return build_stack(load_config(root / "devenv.yaml", env=_env()), "dev")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVENV_", "PG"))}
    env.update(extra)
    return env


def test_devenv_psql_passes_the_password_in_the_environment_not_argv(tmp_path: Path) -> None:
    """What psql is started with, as `ps` would show it: a stand-in psql records argv and env."""
    root = _project(tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record"
    fake = bindir / "psql"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"open({str(record)!r}, 'w').write(json.dumps([sys.argv, os.environ.get('PGPASSWORD')]))\n")
    fake.chmod(0o755)
    env = _env(PATH=f"{bindir}:{os.environ['PATH']}")
    for extra in ([], ["--pooled"]):
        proc = subprocess.run([sys.executable, "-m", "devenv", "psql", *extra, "-c", "select 1"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        argv, password = json.loads(record.read_text())
        assert password == _stack(root).postgres.password and password not in " ".join(argv), argv
        assert argv[1].startswith("postgresql://taskflow@127.0.0.1:") and argv[2:] == ["-c", "select 1"], argv


def test_render_out_keeps_an_existing_directorys_mode_and_writes_private_files(tmp_path: Path) -> None:
    root = _project(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    new = tmp_path / "new"
    for out in (shared, new):
        proc = subprocess.run([sys.executable, "-m", "devenv", "render", "--out", str(out)], cwd=root, env=_env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert _mode(shared) == 0o755, "an existing directory keeps its mode"
    files = [p for p in shared.iterdir() if p.is_file()]
    assert files and all(_mode(p) == 0o600 for p in files), {p.name: oct(_mode(p)) for p in files}
    assert _mode(new) == 0o700, "a new directory is private"


def test_a_process_scan_leaves_a_failed_childs_exit_status_to_its_popen() -> None:
    """A restore's tar that failed must read as failed: a /proc scan during the restore (an
    `up` looks for orphans) once reaped it, and Popen.wait then said 0."""
    import time

    from devenv.runtime.procs import scan_processes

    child = subprocess.Popen(["sh", "-c", "exit 3"])
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert child.pid not in scan_processes()
    assert child.wait(5) == 3
