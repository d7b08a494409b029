"""devenv.cache.save: what goes into a seeded-data archive (real tar and zstd, files made here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devenv import cache

SEGMENTS = ("000000010000000000000001", "000000010000000000000002", "000000010000000000000003")


@pytest.fixture
def pgdata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DEVENV_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for name in ("PG_VERSION", "base/1/1259", "global/pg_control", "postmaster.pid", "log/postgresql.log",
                 *(f"pg_wal/{segment}" for segment in SEGMENTS), "pg_wal/archive_status/.keep"):
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
def test_only_the_wal_segment_the_cluster_starts_from_travels(pgdata: Path) -> None:
    archive = cache.save(pgdata, "k1", keep_wal=SEGMENTS[1])
    names = members(archive)
    assert {n for n in names if n.startswith("./pg_wal/0")} == {f"./pg_wal/{SEGMENTS[1]}"}
    assert {"./PG_VERSION", "./base/1/1259", "./global/pg_control", "./pg_wal/archive_status"} <= names
    assert not {"./postmaster.pid", "./log"} & names, "per-server files stay behind"


@pytest.mark.skipif(shutil.which("zstd") is None or shutil.which("tar") is None, reason="needs tar and zstd")
def test_without_the_start_segment_every_segment_travels(pgdata: Path) -> None:
    names = members(cache.save(pgdata, "k2"))
    assert {n for n in names if n.startswith("./pg_wal/0")} == {f"./pg_wal/{s}" for s in SEGMENTS}
