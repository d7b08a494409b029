"""Cold start from a cache: a compressed snapshot of a seeded PostgreSQL data directory.

The first `up` of a given setup (PostgreSQL version, rendered settings, schema, seed) saves
the seeded data directory as `pgdata-<key>.tar.zst` in the cache directory; the next cold
`up` anywhere with the same key restores it instead of running initdb, schema and seed.
A CI cache step keeps that directory between runs (see docs/ci.md).

Passwords are not part of the key: every checkout generates its own, so after a restore
the superuser's password is set again over the unix socket (trusted locally).

Trust: archives are 0600 in a directory devenv makes 0700, each with a sidecar holding its
sha256 (`<archive>.sha256`, written before the archive is renamed into place). An archive is
used only when it, its sidecar and its directory belong to this user and nobody else can write
to them, and its content matches the sidecar; a damaged one is moved aside (quarantined) and
the `up` falls back to initdb. The unpacking `tar` and `zstd` run in a process group of their
own, so that an `up` killed midway leaves nothing the next one cannot find and end (see
`end_unpackers`).
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
from typing import IO, TYPE_CHECKING, Callable, Iterator

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
        "template": template_key(stack, major),
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
    renamed into place only when complete, 0600, after its checksum (`checksum_path`).

    A new cache directory is made 0700; an existing one is used only when it is this user's
    and nobody else can write to it (OSError otherwise: the archive would not be trusted).
    """
    import gzip

    from devenv import safefs

    _own_directory(target.parent)
    zstd = shutil.which("zstd")
    if zstd is None:
        target = target.with_suffix(".gz")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as out:
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
        # The checksum first: an archive is never in place without the sidecar that vouches for it.
        safefs.write_file(checksum_path(target), f"{_sha256(tmp)}  {target.name}\n".encode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _own_directory(directory: Path) -> None:
    """The cache directory: made 0700 when missing; OSError unless it is this user's and nobody
    else can write to it (what is written there would not be trusted)."""
    from devenv import safefs

    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    if not safefs.verified_dir(directory):
        raise OSError(f"{directory} is not a directory of this user's that only this user can write to")


def find(key: str) -> Path | None:
    """The cached snapshot for a key, if any (trusted or not: see `untrusted`)."""
    for candidate in (archive_path(key), archive_path(key).with_suffix(".gz")):
        if os.path.lexists(candidate):
            return candidate
    return None


class CacheDamaged(OSError):
    """A cached archive that does not match its checksum, or cannot be unpacked."""


def checksum_path(archive: Path) -> Path:
    """The sidecar holding an archive's sha256."""
    return archive.with_name(archive.name + ".sha256")


def login_path(archive: Path) -> Path:
    """The sidecar holding the password of a cached Docker cluster's one-time login
    (devenv.db.roles.RESTORE_ROLE): 0600 beside the archive, which holds the data anyway."""
    return archive.with_name(archive.name.split(".tar")[0] + ".login")  # one for .tar.zst and .tar.gz


def new_login() -> str:
    """A new one-time login password, for the copy of the cluster about to be saved."""
    import secrets

    return secrets.token_urlsafe(24)


def write_login(archive: Path, password: str) -> None:
    """The one-time login password of `archive`, in its sidecar (0600, written whole), once the
    archive is whole: a failed save leaves none, and one that fails to replace an archive leaves
    the old archive's own."""
    from devenv import safefs

    _own_directory(archive.parent)
    safefs.write_file(login_path(archive), (password + "\n").encode())


def read_login(archive: Path) -> str | None:
    """The one-time login password of a cached archive: only from a sidecar of this user's that
    nobody else can read or write (else None: the caller sets the passwords another way)."""
    from devenv import safefs

    path = login_path(archive)
    try:
        if not safefs.verified_file(path) or os.lstat(path).st_mode & 0o077:
            return None
        return path.read_text(encoding="ascii").strip() or None
    except (OSError, ValueError):
        return None


def untrusted(archive: Path) -> str | None:
    """Why an archive must not be used without reading it (None: it may be, once `verify`
    agrees): it, its checksum and its directory must be this user's, writable by nobody else."""
    from devenv import safefs

    if not safefs.verified_dir(archive.parent):
        return f"its directory {archive.parent} is not this user's alone (another user could swap the archive)"
    if not safefs.verified_file(archive):
        return "it is not a regular file of this user's that only this user can write"
    if not safefs.verified_file(checksum_path(archive)):
        return f"it has no checksum of this user's ({checksum_path(archive).name}; made by an older devenv?)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(archive: Path) -> None:
    """CacheDamaged unless the archive's content matches the sha256 in its sidecar."""
    try:
        expected = checksum_path(archive).read_text(encoding="ascii").split()[0]
        actual = _sha256(archive)
    except (OSError, ValueError, IndexError) as exc:
        raise CacheDamaged(f"its checksum cannot be read: {exc}") from exc
    if actual != expected:
        raise CacheDamaged(f"its content does not match its checksum (sha256 {actual[:12]}..., expected {expected[:12]}...)")


def quarantine(archive: Path) -> Path | None:
    """Move a damaged archive aside (`<name>.damaged-<time>`), its checksum deleted, so that
    no later `up` tries it again; the new name (None when it could not be moved)."""
    aside = archive.with_name(f"{archive.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    checksum_path(archive).unlink(missing_ok=True)
    login_path(archive).unlink(missing_ok=True)
    try:
        os.replace(archive, aside)
    except OSError:
        try:
            archive.unlink()
        except OSError:
            return None
        return None
    return aside


def usable(archive: Path, say: Callable[[str], None], check: bool = True) -> Path | None:
    """`archive` if it may be restored: trusted (see `untrusted`) and, with `check`, matching
    its checksum. A damaged one is quarantined. What is wrong is said through `say`."""
    why = untrusted(archive)
    if why:
        say(f"postgres   not using the cached data {archive}: {why}")
        return None
    if check:
        try:
            verify(archive)
        except CacheDamaged as exc:
            said_quarantine(archive, exc, say)
            return None
    return archive


def said_quarantine(archive: Path, exc: BaseException, say: Callable[[str], None]) -> None:
    """Quarantine a damaged archive and say so: the `up` goes on with initdb, schema and seed."""
    aside = quarantine(archive)
    where = f"moved aside to {aside.name}" if aside else "deleted"
    say(f"postgres   the cached data {archive} is damaged ({exc}); {where}, so initdb, schema and seed run instead")


def start_unpacking(archive: Path, directory: Path, numeric_owner: bool = False) -> list[subprocess.Popen[bytes]]:
    """`zstd -d | tar -x` of a cached archive into `directory`, started; `wait_unpacked` ends it.

    Both run in a process group led by tar (whose argv names `directory`): a killed `up`
    leaves them findable, and `end_unpackers` ends the two at once.
    """
    zstd = shutil.which("zstd")
    if zstd is None:
        raise OSError("zstd is needed to read the cached data directory")
    read, write = os.pipe()
    try:
        tar = subprocess.Popen(["tar", "-C", str(directory), *(["--numeric-owner"] if numeric_owner else []), "-xf", "-"],
                               stdin=read, **_group(0))
        try:
            # tar waits on its stdin until zstd writes or closes it: its group is there to join.
            unzstd = subprocess.Popen([zstd, "-d", "-q", "-c", str(archive)], stdout=write, **_group(tar.pid))
        except BaseException:
            tar.kill()
            tar.wait()
            raise
    finally:
        os.close(read)
        os.close(write)
    return [unzstd, tar]


def _group(leader: int) -> dict:
    """Popen's arguments to run a child in process group `leader` (0: a new one it leads). Not a
    new session: a process can join only a group of its own session. Not the terminal's
    foreground group either, so Ctrl-C on devenv does not reach it."""
    if sys.version_info >= (3, 11):
        return {"process_group": leader}
    return {"preexec_fn": lambda: os.setpgid(0, leader)}  # pragma: no cover (Python 3.10)


def end_unpackers(directory: Path) -> list[int]:
    """End what a killed `up` left unpacking into `directory` (tar, and zstd in its group);
    the tar pids that were found."""
    import signal

    from devenv.runtime.procs import kill_group, processes_with_arg, scan_processes, wait_gone

    found = processes_with_arg(scan_processes(), "tar", f"{directory}\0")
    for pid in found:
        kill_group(pid, signal.SIGKILL)  # tar leads the group: zstd goes with it
    for pid in found:
        wait_gone(pid, 5)
    return found


def wait_unpacked(procs: list[subprocess.Popen[bytes]], archive: Path) -> None:
    """Wait for `start_unpacking`'s processes; OSError if the archive could not be read. tar stops
    reading at the end-of-archive blocks: zstd killed by SIGPIPE for bytes past them (an archive
    without whole records at its end) is no failure when tar read the archive to its end."""
    import signal

    unzstd, tar = procs
    if tar.wait() != 0 or unzstd.wait() not in (0, -signal.SIGPIPE):
        raise CacheDamaged(f"{archive} is corrupt or unreadable (zstd or tar failed)")


class Restore:
    """An extraction of a cached snapshot running in the background (tar and zstd on another core).

    Started as early as possible in `up`, joined just before Postgres starts: the Python work
    in between (imports, rendering) overlaps with it, and so does the check of the archive's
    checksum (a thread). `finish` raises CacheDamaged when either fails: nothing is moved into
    place, the caller quarantines the archive and runs initdb.
    """

    def __init__(self, archive: Path, pgdata: Path) -> None:
        import threading

        self.archive, self.pgdata = archive, pgdata
        self.started = time.perf_counter()
        self.scratch = scratch_path(pgdata)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        os.chmod(self.scratch, 0o700)
        self._damage: list[BaseException] = []
        self._check = threading.Thread(target=self._verify, daemon=True)
        self._check.start()
        self._procs = start_unpacking(archive, self.scratch) if archive.suffix == ".zst" else []

    def _verify(self) -> None:
        try:
            verify(self.archive)
        except CacheDamaged as exc:
            self._damage.append(exc)

    def finish(self, owner: tuple[int, int] | None) -> float:
        """Wait for the extraction and the checksum, fix owners, move it into place; returns
        seconds since start."""
        try:
            if self._procs:
                wait_unpacked(self._procs, self.archive)
            else:
                try:
                    with tarfile.open(self.archive, "r:gz") as tar:
                        tar.extractall(self.scratch, filter="tar")
                except (tarfile.TarError, EOFError, OSError) as exc:
                    raise CacheDamaged(f"{self.archive} is corrupt or unreadable: {exc}") from exc
            self._check.join()
            if self._damage:
                raise self._damage[0]
            first = next(self.scratch.iterdir(), self.scratch)
            if owner is not None and (first.stat().st_uid, first.stat().st_gid) != owner:
                # tar as root restores owners by name; walk only when the names differ here.
                for root, dirs, files in os.walk(self.scratch):
                    for name in [*dirs, *files]:
                        os.lchown(os.path.join(root, name), *owner)
            if owner is not None:
                os.chown(self.scratch, *owner)
            os.chmod(self.scratch, 0o700)  # postgres refuses a data directory others can read
            os.replace(self.scratch, self.pgdata)
        except BaseException:
            for proc in self._procs:
                proc.kill()
            for proc in self._procs:
                proc.wait()
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        return time.perf_counter() - self.started


def scratch_path(pgdata: Path) -> Path:
    """Where a restore unpacks before the rename into `pgdata`."""
    return pgdata.with_name(pgdata.name + ".restore")
