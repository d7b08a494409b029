"""devenv.db.cache: what a copy of a running data directory takes (real tar and zstd, files made here).

cache.save_live itself needs a server: tests/integration/test_ci_and_cache.py runs it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devenv.db import cache


@pytest.fixture
def pgdata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEVENV_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for name in ("PG_VERSION", "base/1/1259", "base/1/pg_internal.init", "base/pgsql_tmp/pgsql_tmp1.0",
                 "global/pg_control", "postmaster.pid", "postmaster.opts", "log/postgresql.log",
                 "pg_wal/000000010000000000000001", "pg_wal/archive_status/000000010000000000000001.done",
                 "pg_stat_tmp/global.stat", "pg_subtrans/0000", "pg_notify/0000"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"x" * 64)
    return data


def members(archive: Path) -> set[str]:
    if archive.suffix == ".zst":
        listing = subprocess.run(f"zstd -dc '{archive}' | tar -t", shell=True, capture_output=True, text=True, check=True)
    else:
        listing = subprocess.run(["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True)
    return {name.rstrip("/") for name in listing.stdout.split()}


@pytest.mark.skipif(shutil.which("zstd") is None or shutil.which("tar") is None, reason="needs tar and zstd")
def test_a_running_clusters_state_stays_behind_and_a_second_tar_continues_the_archive(pgdata: Path, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "backup_label").write_text("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
    (pgdata / "base" / "1" / "2600").write_bytes(bytes(8192))  # a member ending in zero blocks, as empty pages do
    with cache.compressed(cache.archive_path("k1")) as (sink, target):
        written = cache._tar_into(sink, pgdata, ["."], cache._LIVE_EXCLUDES)
        written += cache._tar_into(sink, extra, ["./backup_label"],
                                   extra_args=["-C", str(pgdata), "./pg_wal/000000010000000000000001"])
        sink.write(cache.end_of_archive(written))
    names = members(target)  # tar reads on after the first tar's members: one archive
    size = len(subprocess.run(["zstd", "-dc", str(target)], capture_output=True, check=True).stdout)
    # Whole records, as GNU tar writes them: a `tar -x` reading it from zstd reads all of it, so
    # zstd never writes into a closed pipe (SIGPIPE: "corrupt or unreadable").
    assert size % 10240 == 0, size
    assert {"./PG_VERSION", "./base/1/1259", "./base/1/2600", "./global/pg_control", "./backup_label",
            "./pg_wal/000000010000000000000001"} <= names
    # The directories stay (postgres wants them), their runtime contents do not.
    assert {"./pg_wal", "./pg_wal/archive_status", "./pg_stat_tmp", "./pg_subtrans", "./pg_notify"} <= names
    assert not {n for n in names if n.startswith(("./pg_wal/archive_status/", "./pg_stat_tmp/", "./pg_subtrans/",
                                                   "./pg_notify/", "./log"))}
    assert not {"./postmaster.pid", "./postmaster.opts", "./base/1/pg_internal.init",
                "./base/pgsql_tmp/pgsql_tmp1.0"} & names
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(f"zstd -dc '{target}' | tar -x -C '{unpacked}'", shell=True, check=True)
    assert (unpacked / "base" / "1" / "2600").read_bytes() == bytes(8192)
    assert (unpacked / "backup_label").read_text().startswith("START WAL LOCATION")


def test_an_interrupted_archive_leaves_nothing_in_the_cache(pgdata: Path) -> None:
    with pytest.raises(RuntimeError), cache.compressed(cache.archive_path("k2")) as (sink, target):
        cache._tar_into(sink, pgdata, ["."], cache._LIVE_EXCLUDES)
        raise RuntimeError("pg_backup_stop failed")
    assert not target.exists() and not list(target.parent.iterdir()), "no archive, no temporary file"


@pytest.mark.parametrize("written", [0, 512, 9216, 10240, 123 * 512])
def test_the_end_of_archive_fills_the_last_record(written: int) -> None:
    end = cache.end_of_archive(written)
    assert end == bytes(len(end)) and len(end) >= 1024 and (written + len(end)) % 10240 == 0


@pytest.mark.skipif(shutil.which("zstd") is None or shutil.which("tar") is None, reason="needs tar and zstd")
def test_bytes_past_the_end_of_archive_are_no_failure_but_a_cut_archive_is(pgdata: Path, tmp_path: Path) -> None:
    """tar stops at the end-of-archive blocks; zstd then dies of SIGPIPE writing what follows
    (here 4 MB of zeros). That is not an unreadable archive; a truncated one is."""
    (pgdata / "base" / "1" / "16384").write_bytes(bytes(range(256)) * 512)  # 128 kB: most of the archive
    whole = subprocess.run(["tar", "-C", str(pgdata), "-cf", "-", "."], capture_output=True, check=True).stdout
    for name, data in (("padded", whole + bytes(4 << 20)), ("cut", whole[: len(whole) // 2])):  # cut in that file
        (tmp_path / f"{name}.tar").write_bytes(data)
        subprocess.run(["zstd", "-q", "-1", str(tmp_path / f"{name}.tar")], check=True)
        (tmp_path / name).mkdir()
    archive = tmp_path / "padded.tar.zst"
    cache.wait_unpacked(cache.start_unpacking(archive, tmp_path / "padded"), archive)
    assert (tmp_path / "padded" / "PG_VERSION").is_file()
    with pytest.raises(OSError, match="corrupt or unreadable"):
        cache.wait_unpacked(cache.start_unpacking(tmp_path / "cut.tar.zst", tmp_path / "cut"), tmp_path / "cut.tar.zst")


def test_the_one_time_login_is_kept_private_beside_its_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached Docker cluster's one-time login: written 0600 into a cache directory made 0700,
    one sidecar for the .zst and .gz names; read only when nobody else can read or write it;
    gone with a quarantined archive."""
    import os
    import stat

    monkeypatch.setenv("DEVENV_CACHE_DIR", str(tmp_path / "cache"))
    archive = cache.archive_path("0123456789abcdef")
    password = cache.new_login()
    cache.write_login(archive, password)
    login = cache.login_path(archive)
    assert login == cache.login_path(archive.with_suffix(".gz")) == tmp_path / "cache" / "pgdata-0123456789abcdef.login"
    assert stat.S_IMODE(login.stat().st_mode) == 0o600 and stat.S_IMODE(archive.parent.stat().st_mode) == 0o700
    assert len(password) >= 32 and cache.read_login(archive) == password != cache.new_login()
    login.chmod(0o640)
    assert cache.read_login(archive) is None, "readable by its group: not used"
    login.chmod(0o600)
    archive.write_bytes(b"x")
    cache.quarantine(archive)
    assert not login.exists() and cache.read_login(archive) is None
    os.chmod(archive.parent, 0o777)
    with pytest.raises(OSError):
        cache.write_login(archive, password)  # a directory others can write to holds no secret of devenv's
