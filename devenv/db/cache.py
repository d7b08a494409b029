"""Cold start from a cache: a compressed snapshot of a seeded PostgreSQL data directory.

The first `up` of a given setup (PostgreSQL version, rendered settings, schema, seed) saves
the seeded data directory as `pgdata-<key>.tar.zst` in the cache directory; the next cold
`up` anywhere with the same key restores it instead of running initdb, schema and seed.
A CI cache step keeps that directory between runs (see docs/ci.md).

Passwords are not part of the key: every checkout generates its own, so after a restore
the superuser's password is set again over the unix socket (trusted locally).
"""

from __future__ import annotations

import contextlib
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
from typing import IO, TYPE_CHECKING, Iterator

from devenv.config.stack import Stack

if TYPE_CHECKING:
    from devenv.clients import pgwire

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
    from devenv.db.template import template_key

    major = int(pg_version.split(".")[0])
    parts = {
        "format": CACHE_FORMAT,
        "postgres": pg_version,  # the full version: collations can change between builds
        "platform": [sys.platform, platform.machine()],
        "initdb": initdb_args,
        "settings": stack.postgres.settings,
        "database": stack.postgres.database,
        # The role layout: an older devenv's archive (the application role its superuser) must
        # never come back into this one's (devenv.db.roles).
        "roles": ["admin-bootstrap-v2", stack.postgres.admin_user, stack.postgres.user],
        "template": template_key(stack.root / "seeds", major, stack.seed_scale),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def archive_path(key: str) -> Path:
    """Where the snapshot for a key lives in the cache."""
    return cache_dir() / f"pgdata-{key}.tar.zst"


# Not copied from a running cluster (pg_basebackup leaves them out too): one server's runtime
# state (the directories stay, empty; the WAL needed is added after the copy) and files that
# must not travel. GNU tar patterns, on names as `tar -C PGDATA .` gives them.
_LIVE_EXCLUDES = (
    "./postmaster.pid", "./postmaster.opts", "./current_logfiles", "./backup_label", "./tablespace_map", "./log",
    "./pg_wal/0*", "./pg_wal/archive_status/*", "pg_internal.init", "pgsql_tmp*",
    *(f"./{name}/*" for name in ("pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
                                 "pg_stat_tmp", "pg_subtrans")),
)
# Files of a running server change, shrink or go while tar reads them: WAL replay from the
# backup's start fixes what it copied, so say nothing (tar still exits 1 for "files differ").
_LIVE_TAR_QUIET = ("--ignore-failed-read", "--warning=no-file-changed", "--warning=no-file-removed",
                   "--warning=no-file-shrank")


def save_live(pgdata: Path, key: str, conn: "pgwire.Connection") -> Path:
    """Archive the data directory of a running cluster into the cache (atomically): a base backup.

    pg_backup_start (an immediate checkpoint), the files, pg_backup_stop, then the backup_label
    it returns and the WAL from the backup's start to its end, in the same archive: the restored
    copy recovers to a consistent state at its first start. Unlike stopping the server for a
    clean copy, it keeps running: stopping, starting and waiting for it again cost more than the
    copy, most of all in a container. `conn`: a superuser session, held for the backup.
    """
    import re
    import tempfile

    from devenv.clients import pgwire

    conn.query("SELECT pg_catalog.pg_backup_start('devenv cache', true)")
    with compressed(archive_path(key)) as (sink, target):
        quiet = _LIVE_TAR_QUIET if _gnu_tar() else ()  # bsdtar (macOS) has no such options
        written = _tar_into(sink, pgdata, ["."], _LIVE_EXCLUDES, ok=(0, 1), quiet=quiet)
        [(label, tablespace_map, stop_wal)] = conn.query(
            "SELECT labelfile, spcmapfile, pg_catalog.pg_walfile_name(lsn) FROM pg_catalog.pg_backup_stop(false)")
        start_wal = re.search(r"^START WAL LOCATION: .*\(file ([0-9A-F]{24})\)$", label, re.M)
        if start_wal is None:
            raise pgwire.PgError(f"pg_backup_stop returned a backup label devenv cannot read: {label!r}")
        segments = sorted(f"./pg_wal/{p.name}" for p in (pgdata / "pg_wal").iterdir()
                          if len(p.name) == 24 and start_wal.group(1) <= p.name <= stop_wal)
        if not segments or segments[0] != f"./pg_wal/{start_wal.group(1)}":
            raise OSError(f"the WAL the backup needs from {start_wal.group(1)} on is not in {pgdata / 'pg_wal'}")
        owner = pgdata.stat()
        with tempfile.TemporaryDirectory() as extra:
            names = []
            for name, text in (("backup_label", label), ("tablespace_map", tablespace_map)):
                if text:
                    path = Path(extra, name)
                    path.write_text(text)
                    os.chown(path, owner.st_uid, owner.st_gid)  # the server reads and renames it
                    path.chmod(0o600)
                    names.append(f"./{name}")
            written += _tar_into(sink, Path(extra), names, extra_args=["-C", str(pgdata), *segments])
        sink.write(end_of_archive(written))
    return target


def _tar_into(sink: IO[bytes], directory: Path, members: list[str], excludes: tuple[str, ...] = (),
              ok: tuple[int, ...] = (0,), quiet: tuple[str, ...] = (), extra_args: list[str] | None = None) -> int:
    """The members of a GNU tar of `members` (relative to `directory`), written to `sink` without
    the end-of-archive blocks: more members may follow (see `end_of_archive`). Returns the bytes written."""
    argv = ["tar", "--numeric-owner", *quiet, "-C", str(directory), *(f"--exclude={e}" for e in excludes),
            "-cf", "-", *members, *(extra_args or [])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    members_only = _TarMembers(sink)
    try:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        _widen_pipe(fd)
        for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
            members_only.feed(chunk)
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
        code = proc.wait()
    if code not in ok:
        raise OSError(f"tar of {directory} failed (exit status {code})")
    if not members_only.ended:
        raise OSError(f"tar of {directory} has no end-of-archive block")
    return members_only.written


def _gnu_tar() -> bool:
    """Whether `tar` is GNU tar (Linux) rather than bsdtar (macOS)."""
    try:
        return "GNU tar" in subprocess.run(["tar", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer wake-ups passing tar's output on to zstd."""
    import fcntl

    try:
        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ (Linux)
    except OSError:
        pass


def end_of_archive(written: int, record: int = 10240) -> bytes:
    """Two zero blocks, then zeros up to a whole record, as GNU tar ends an archive. tar reads
    whole records and stops at those blocks: with a shorter last record it would leave bytes of
    its input unread, and the zstd feeding it would die of SIGPIPE (an archive "unreadable")."""
    return bytes(1024 + -(written + 1024) % record)


class _TarMembers:
    """Passes a tar stream's members on and stops at its end (the first all-zero header block):
    what comes after is padding, and another archive's members may follow in its place.

    Each member is a 512-byte header, then its size (an octal field) rounded up to 512 bytes.
    Chunks go out as memoryviews of what was read: no copies but a header cut between two reads.
    """

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink, self.partial, self.data_left, self.ended, self.written = sink, b"", 0, False, 0

    def feed(self, chunk: bytes) -> None:
        if self.ended:
            return
        if self.partial:
            chunk, self.partial = self.partial + chunk, b""
        view = memoryview(chunk)
        passed = 0  # the members found whole or begun in this chunk, written out at once
        while True:
            if self.data_left:
                step = min(self.data_left, len(chunk) - passed)
                passed += step
                self.data_left -= step
                if self.data_left:
                    break
            if len(chunk) - passed < 512:
                self.partial = bytes(view[passed:])
                break
            header = view[passed:passed + 512]
            if header == _ZERO_BLOCK:
                self.ended = True
                break
            size = int(bytes(header[124:136]).rstrip(b"\0 ") or b"0", 8)  # sizes of 8 GiB and up are not octal
            self.data_left = 512 + -(-size // 512) * 512
        self.sink.write(view[:passed])
        self.written += passed


_ZERO_BLOCK = bytes(512)


@contextlib.contextmanager
def compressed(target: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A stream written compressed to `target` (zstd; without it, gzip: the path it gets),
    renamed into place only when complete."""
    import gzip

    target.parent.mkdir(parents=True, exist_ok=True)
    zstd = shutil.which("zstd")
    if zstd is None:
        target = target.with_suffix(".gz")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            if zstd:
                proc = subprocess.Popen([zstd, "-1", "-T0", "-q", "-c"], stdin=subprocess.PIPE, stdout=out)
                _widen_pipe(proc.stdin.fileno())  # type: ignore[union-attr]
                try:
                    yield proc.stdin, target  # type: ignore[misc]
                finally:
                    proc.stdin.close()  # type: ignore[union-attr]
                    if proc.wait() != 0:
                        raise OSError("zstd failed")
            else:
                with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
                    yield gz, target  # type: ignore[misc]
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def find(key: str) -> Path | None:
    """The cached snapshot for a key, if any."""
    for candidate in (archive_path(key), archive_path(key).with_suffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def start_unpacking(archive: Path, directory: Path, numeric_owner: bool = False) -> list[subprocess.Popen[bytes]]:
    """`zstd -d | tar -x` of a cached archive into `directory`, started; `wait_unpacked` ends it."""
    zstd = shutil.which("zstd")
    if zstd is None:
        raise OSError("zstd is needed to read the cached data directory")
    unzstd = subprocess.Popen([zstd, "-d", "-q", "-c", str(archive)], stdout=subprocess.PIPE)
    tar = subprocess.Popen(["tar", "-C", str(directory), *(["--numeric-owner"] if numeric_owner else []), "-xf", "-"],
                           stdin=unzstd.stdout)
    unzstd.stdout.close()  # type: ignore[union-attr]  (tar holds the pipe now)
    return [unzstd, tar]


def wait_unpacked(procs: list[subprocess.Popen[bytes]], archive: Path) -> None:
    """Wait for `start_unpacking`'s processes; OSError if the archive could not be read. tar stops
    reading at the end-of-archive blocks: zstd killed by SIGPIPE for bytes past them (an archive
    without whole records at its end) is no failure when tar read the archive to its end."""
    import signal

    unzstd, tar = procs
    if tar.wait() != 0 or unzstd.wait() not in (0, -signal.SIGPIPE):
        raise OSError(f"{archive} is corrupt or unreadable")


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
        self._procs = start_unpacking(archive, self.scratch) if archive.suffix == ".zst" else []

    def finish(self, owner: tuple[int, int] | None) -> float:
        """Wait for the extraction, fix owners, move it into place; returns seconds since start."""
        try:
            if self._procs:
                wait_unpacked(self._procs, self.archive)
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
