"""Cold start from a cache: a compressed snapshot of a seeded PostgreSQL data directory.

The first `up` of a given setup (PostgreSQL version, rendered settings, schema, seed) saves
the seeded data directory as `pgdata-<key>.tar.zst` in the cache directory; the next cold
`up` anywhere with the same key restores it instead of running initdb, schema and seed.
A CI cache step keeps that directory between runs (see docs/ci.md).

Passwords are not part of the key: every checkout generates its own, so after a restore
the superuser's password is set again over the unix socket (trusted locally).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from devenv.stack import Stack

CACHE_FORMAT = 1  # bump when what a cached data directory must contain changes


def cache_dir() -> Path:
    """DEVENV_CACHE_DIR, else the platform's user cache directory."""
    explicit = os.environ.get("DEVENV_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "devenv"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "devenv"


def data_key(stack: Stack, pg_version: str, initdb_args: list[str]) -> str:
    """What a seeded data directory depends on, hashed."""
    from devenv.janitor import template_key

    major = int(pg_version.split(".")[0])
    parts = {
        "format": CACHE_FORMAT,
        "postgres": pg_version,  # the full version: collations can change between builds
        "platform": [sys.platform, platform.machine()],
        "initdb": initdb_args,
        "settings": stack.postgres.settings,
        "database": stack.postgres.database,
        "template": template_key(stack.root / "seeds", major, stack.seed_scale),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def archive_path(key: str) -> Path:
    """Where the snapshot for a key lives in the cache."""
    return cache_dir() / f"pgdata-{key}.tar.zst"


def save(pgdata: Path, key: str, keep_wal: str | None = None) -> Path:
    """Archive a stopped, cleanly shut down data directory into the cache (atomically).

    `keep_wal`: the one WAL segment the cluster starts from, when known; the others are left out.
    """
    target = archive_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # Per-server files that must not travel: the pid file and the log of the old server.
    excludes = ["./postmaster.pid", "./postmaster.opts", "./log"]
    if keep_wal:
        excludes += [f"./pg_wal/{seg.name}" for seg in (pgdata / "pg_wal").iterdir()
                     if len(seg.name) == 24 and seg.name != keep_wal]
    zstd = shutil.which("zstd")
    if zstd:
        with open(tmp, "wb") as out:
            tar = subprocess.Popen(["tar", "-C", str(pgdata), *(f"--exclude={e}" for e in excludes), "-cf", "-", "."],
                                   stdout=subprocess.PIPE)
            subprocess.run([zstd, "-1", "-T0", "-q", "-c"], stdin=tar.stdout, stdout=out, check=True)
            tar.stdout.close()  # type: ignore[union-attr]
            if tar.wait() != 0:
                raise OSError(f"tar of {pgdata} failed")
    else:  # no zstd binary: gzip through Python, slower but everywhere
        tmp = tmp.with_suffix(".gz.tmp")
        with tarfile.open(tmp, "w:gz", compresslevel=1) as archive:
            archive.add(pgdata, arcname=".", filter=lambda info: None if info.name in excludes else info)
        target = target.with_suffix(".gz")
    os.replace(tmp, target)
    return target


def find(key: str) -> Path | None:
    """The cached snapshot for a key, if any."""
    for candidate in (archive_path(key), archive_path(key).with_suffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


class Restore:
    """An extraction of a cached snapshot running in the background (tar and zstd on another core).

    Started as early as possible in `up`, joined just before Postgres starts: the Python work
    in between (imports, rendering) overlaps with it.
    """

    def __init__(self, archive: Path, pgdata: Path) -> None:
        self.archive, self.pgdata = archive, pgdata
        self.started = time.perf_counter()
        self.scratch = pgdata.with_name(pgdata.name + ".restore")
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        self._procs: list[subprocess.Popen[bytes]] = []
        if archive.suffix == ".zst":
            zstd = shutil.which("zstd")
            if zstd is None:
                raise OSError("zstd is needed to read the cached data directory")
            unzstd = subprocess.Popen([zstd, "-d", "-q", "-c", str(archive)], stdout=subprocess.PIPE)
            tar = subprocess.Popen(["tar", "-C", str(self.scratch), "-xf", "-"], stdin=unzstd.stdout)
            unzstd.stdout.close()  # type: ignore[union-attr]  (tar holds the pipe now)
            self._procs = [unzstd, tar]

    def finish(self, owner: tuple[int, int] | None) -> float:
        """Wait for the extraction, fix owners, move it into place; returns seconds since start."""
        try:
            if self._procs:
                if any(proc.wait() != 0 for proc in self._procs):
                    raise OSError(f"{self.archive} is corrupt or unreadable")
            else:
                with tarfile.open(self.archive, "r:gz") as tar:
                    tar.extractall(self.scratch, filter="tar")
            first = next(self.scratch.iterdir(), self.scratch)
            if owner is not None and (first.stat().st_uid, first.stat().st_gid) != owner:
                # tar as root restores owners by name; walk only when the names differ here.
                for root, dirs, files in os.walk(self.scratch):
                    for name in [*dirs, *files]:
                        os.chown(os.path.join(root, name), *owner)
            if owner is not None:
                os.chown(self.scratch, *owner)
            os.chmod(self.scratch, 0o700)  # postgres refuses a data directory others can read
            os.replace(self.scratch, self.pgdata)
        except BaseException:
            for proc in self._procs:
                proc.kill()
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        return time.perf_counter() - self.started
