"""What the benchmarks share: free ports, a throwaway TaskFlow project, a timed CLI run."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_project(prefix: str, profile_extra: str = "") -> tuple[Path, dict[str, str]]:
    """A temp copy of devenv.yaml (plus `profile_extra` under `profiles:`) and seeds/, on free ports."""
    project = Path(tempfile.mkdtemp(prefix=prefix))
    config = (REPO / "devenv.yaml").read_text()
    if profile_extra:
        config = config.replace("profiles:\n", f"profiles:\n{profile_extra}", 1)
    (project / "devenv.yaml").write_text(config)
    shutil.copytree(REPO / "seeds", project / "seeds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVENV_")}
    env.update({f"DEVENV_{s}_PORT": str(free_port()) for s in ("POSTGRES", "PGBOUNCER", "REDIS")})
    # The benchmark's stacks are recorded in a registry of its own, inside the project it
    # removes afterwards, never in the machine's (`devenv ls` would list them as orphans).
    env["DEVENV_REGISTRY_DIR"] = str(project / ".bench-registry")
    return project, env


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds one command takes; a failure ends the benchmark with its output."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


# ---- the disk under a benchmark -----------------------------------------------------------
# On ext4 without a journal the kernel does not reuse an inode freed in the last 60-360 s and
# scans past each one for every file it creates (fs/ext4/ialloc.c, recently_deleted): an initdb
# or a restore right after deleting a cluster (`down --volumes`, rmtree) costs up to ~1.5 s more
# than on a quiet disk, tmpfs or any journaled filesystem. The benchmarks say where they write
# and mark the numbers taken in that state.
AFTER_DELETES = "[after deletes; ext4 without a journal]"


@dataclass(frozen=True)
class DiskFacts:
    """The filesystem a path lives on, as far as this process can tell without privileges."""

    path: str
    mount: str  # its mount point
    fstype: str  # ext4, tmpfs, overlay, ...
    source: str  # the device (or "tmpfs")
    journal: bool | None  # ext*: whether it has a journal; None when unknown or not ext*

    @property
    def inode_trap(self) -> bool:
        """Files created right after many were deleted here are slow (see AFTER_DELETES)."""
        return self.fstype == "ext4" and self.journal is False

    def describe(self) -> str:
        """e.g. `/var/lib/devenv: ext4 on /dev/vda (mounted at /), no journal`."""
        text = f"{self.path}: {self.fstype} on {self.source} (mounted at {self.mount})"
        if self.fstype.startswith("ext"):
            text += {True: ", journal", False: ", NO journal", None: ", journal unknown"}[self.journal]
        return text


def disk_facts(path: str | os.PathLike) -> DiskFacts:
    """Type, device and (ext4) journal of the filesystem holding `path` (or its nearest existing
    parent): /proc/self/mountinfo, then /sys/fs/ext4/<dev>/journal_task ("<none>" without a
    journal), else `tune2fs -l` (needs to read the device)."""
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    real = os.path.realpath(where)
    best: tuple[str, str, str, str] = ("/", "?", "?", "?")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        mount = fields[4].encode().decode("unicode_escape")  # \040 for spaces
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):  # the longest match; the later of equals is on top
            best = (mount, tail[0], tail[1], fields[2])
    mount, fstype, source, devno = best
    journal = _ext_journal(devno, source) if fstype.startswith("ext") else None
    return DiskFacts(str(path), mount, fstype, source, journal)


def _ext_journal(devno: str, source: str) -> bool | None:
    try:
        name = Path(os.path.realpath(f"/sys/dev/block/{devno}")).name
        return Path(f"/sys/fs/ext4/{name}/journal_task").read_text().strip() != "<none>"
    except OSError:
        pass
    try:
        out = subprocess.run(["tune2fs", "-l", source], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    features = next((line for line in out.splitlines() if line.startswith("Filesystem features:")), None)
    return None if features is None else "has_journal" in features.split()


def print_disk_facts(places: dict[str, str | os.PathLike]) -> dict[str, DiskFacts]:
    """Print, once at the top of a benchmark, the filesystem of each place it writes
    (label -> path) and what AFTER_DELETES next to a number means when one of them has the trap."""
    facts = {label: disk_facts(path) for label, path in places.items()}
    print("where this benchmark writes:")
    for label, fact in facts.items():
        print(f"  {label:<22} {fact.describe()}")
    if any(fact.inode_trap for fact in facts.values()):
        print(f"  {AFTER_DELETES} next to a number: files created right after many were deleted on ext4 without a\n"
              "  journal, which reuses no inode freed in the last 60-360 s and scans past each for every file it\n"
              "  creates: up to ~1.5 s slower than on a quiet disk, tmpfs or a journaled filesystem (bench/README.md)")
    print()
    return facts


def after_deletes(*facts: DiskFacts) -> str:
    """AFTER_DELETES when a timed creation right after deletions writes to a disk with the trap."""
    return AFTER_DELETES if any(fact.inode_trap for fact in facts) else ""


def engine_data_root(client: Any) -> str | None:
    """Where a local Docker/Podman engine keeps its volumes (DockerRootDir; Podman's compat API
    answers with its graph root), when that path is on this machine; None for a remote engine."""
    try:
        root = client.info().get("DockerRootDir")
    except Exception:  # an engine that does not say: no facts, no failure
        return None
    host = getattr(getattr(client, "api", None), "base_url", "")
    local = "://localhost" in host or "://127.0.0.1" in host  # a unix socket is http+docker://localhost
    return root if root and local and Path(root).exists() else None


@contextlib.contextmanager
def journaled_loop(size_mb: int = 256) -> Iterator[Path | None]:
    """A fresh ext4 with a journal on a loop device, mounted for the block (a reference disk
    without the trap); None where this process may not make one (not root, no loop devices)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        yield None
        return
    work = Path(tempfile.mkdtemp(prefix="devenv-bench-loop-", dir="/var/tmp"))
    work.chmod(0o755)  # the servers' user passes through to the clusters made inside
    image, mount = work / "ext4.img", work / "mnt"
    mounted = False
    try:
        with open(image, "wb") as out:
            out.truncate(size_mb << 20)
        mount.mkdir()
        made = subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "has_journal", str(image)], capture_output=True)
        mounted = made.returncode == 0 and subprocess.run(
            ["mount", "-o", "loop", str(image), str(mount)], capture_output=True).returncode == 0
        yield mount if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
