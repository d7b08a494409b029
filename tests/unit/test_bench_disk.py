"""The benchmarks' disk facts (bench/_common.py) and bench_up's floors measured as devenv runs.

The facts are read from the real filesystems of this machine (tmpfs, the root filesystem, and
when this process may mount them, ext4 loop filesystems with and without a journal).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
from _common import AFTER_DELETES, DiskFacts, after_deletes, disk_facts, engine_data_root  # noqa: E402


def findmnt(path: str, column: str) -> str:
    return subprocess.run(["findmnt", "-n", "-o", column, "--target", path], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not Path("/dev/shm").is_dir() or shutil.which("findmnt") is None, reason="no /dev/shm")
def test_tmpfs_and_a_path_that_does_not_exist_yet(tmp_path: Path) -> None:
    facts = disk_facts("/dev/shm/devenv-not-made-yet/postgres")  # the nearest existing parent's filesystem
    assert (facts.fstype, facts.mount) == (findmnt("/dev/shm", "FSTYPE"), findmnt("/dev/shm", "TARGET"))
    assert facts.journal is None and not facts.inode_trap and after_deletes(facts) == ""
    root = disk_facts(tmp_path)
    assert (root.fstype, root.mount) == (findmnt(str(tmp_path), "FSTYPE"), findmnt(str(tmp_path), "TARGET"))


def test_only_ext4_without_a_journal_has_the_trap() -> None:
    def facts(fstype: str, journal: bool | None) -> DiskFacts:
        return DiskFacts("/x", "/", fstype, "/dev/x", journal)

    assert after_deletes(facts("tmpfs", None), facts("ext4", False)) == AFTER_DELETES
    assert after_deletes(facts("ext4", True), facts("xfs", None), facts("ext4", None)) == ""
    assert "NO journal" in facts("ext4", False).describe() and ", journal" in facts("ext4", True).describe()


def test_engine_data_root_only_for_a_local_engine(tmp_path: Path) -> None:
    class Client:
        def __init__(self, url: str, root: str) -> None:
            self.api = type("Api", (), {"base_url": url})()
            self.root = root

        def info(self) -> dict:
            return {"DockerRootDir": self.root}

    assert engine_data_root(Client("http+docker://localhost", str(tmp_path))) == str(tmp_path)
    assert engine_data_root(Client("http://10.213.0.2:2375", str(tmp_path))) is None  # a remote engine's disk
    assert engine_data_root(Client("http+docker://ssh", str(tmp_path))) is None
    assert engine_data_root(Client("http+docker://localhost", str(tmp_path / "absent"))) is None


@pytest.fixture
def loop_mounts(tmp_path: Path):
    """Mount ext4 images (made with the given mkfs options) on loop devices; unmount after."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 to mount loop filesystems")
    mounted: list[Path] = []

    def mount(name: str, *mkfs: str) -> Path:
        image, target = tmp_path / f"{name}.img", tmp_path / name
        with open(image, "wb") as out:
            out.truncate(16 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", *mkfs, str(image)], check=True, capture_output=True)
        target.mkdir()
        if subprocess.run(["mount", "-o", "loop", str(image), str(target)], capture_output=True).returncode != 0:
            pytest.skip("this machine does not let us mount a loop filesystem")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_ext4_journal_read_from_sysfs(loop_mounts) -> None:
    journaled = disk_facts(loop_mounts("journaled") / "data")
    bare = disk_facts(loop_mounts("bare", "-O", "^has_journal") / "data")
    assert (journaled.fstype, journaled.journal, journaled.inode_trap) == ("ext4", True, False)
    assert (bare.fstype, bare.journal, bare.inode_trap) == ("ext4", False, True)
    assert after_deletes(journaled) == "" and after_deletes(bare) == AFTER_DELETES
    assert bare.source.startswith("/dev/loop") and bare.mount.endswith("/bare")


def test_bench_up_floors_run_as_devenv_runs_the_profile() -> None:
    """ci (ephemeral): initdb --no-sync on tmpfs and postgres with fsync off and the rest of the
    profile's settings; dev: initdb with its syncs beside devenv's data directory."""
    import bench_up

    from devenv.config.resolve import build_stack
    from devenv.config.settings import load_config

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVENV_")}
    stacks = {p: build_stack(load_config(_common.REPO / "devenv.yaml", env), p) for p in ("ci", "dev")}
    bindir, data, pw = Path("/bin"), Path("/d"), Path("/pw")
    ci, dev = (bench_up.initdb_argv(bindir, stacks[p], data, pw) for p in ("ci", "dev"))
    assert "--no-sync" in ci and "--no-sync" not in dev
    assert ci[:5] == ["/bin/initdb", "-D", "/d", "-U", stacks["ci"].postgres.admin_user]
    settings = bench_up.postgres_settings(stacks["ci"])
    for wanted in ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "shared_buffers=128MB"):
        assert settings[settings.index(wanted) - 1] == "-c"
    assert "fsync=off" not in bench_up.postgres_settings(stacks["dev"])
    if Path("/dev/shm").is_dir():
        assert bench_up.floor_parent(stacks["ci"], Path("/dev/shm/devenv-x/postgres")) == Path("/dev/shm")
    beside = Path("/var/lib/devenv/taskflow-dev-x/data/postgres")
    assert bench_up.floor_parent(stacks["dev"], beside) in (Path("/var/lib/devenv"), Path("/var/lib"), Path("/var"))


def test_journaled_loop_is_a_journaled_ext4_and_goes_away() -> None:
    from _common import journaled_loop

    with journaled_loop(32) as mount:
        if mount is None:
            pytest.skip("no loop filesystem here (needs root, mkfs.ext4 and loop devices)")
        facts = disk_facts(mount / "cluster")
        assert (facts.fstype, facts.journal, facts.mount) == ("ext4", True, str(mount))
        assert after_deletes(facts) == ""
    assert not mount.exists() and not mount.parent.exists()
    assert str(mount) not in Path("/proc/self/mountinfo").read_text()
