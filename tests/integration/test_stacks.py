"""`devenv ls` and `devenv prune` across checkouts: two git worktrees of one repository, each
with its own stack, both up at once on real servers (native, and Docker on the test images).

The registry is the pytest session's own (tests/conftest.py), so `ls` sees this session's
stacks, and Docker's stacks that have no record. `prune` is given the deleted worktree's path:
other sessions on the same engine may have orphaned stacks of their own, not ours to remove.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.integration.conftest import Project, docker_client, docker_teardown, make_project, teardown_project

SERVICES = ("postgres", "pgbouncer", "redis")


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=cwd,
                   check=True, capture_output=True)


def cli(proj: Project, *args: str, stdin: Any = subprocess.DEVNULL, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m devenv ARGS` in the project's environment (no --profile added: ls and prune take none)."""
    proc = subprocess.run([sys.executable, "-m", "devenv", *args], cwd=proj.root if proj.root.is_dir() else "/",
                          env=proj.env, stdin=stdin, capture_output=True, text=True, timeout=180)
    if check:
        assert proc.returncode == 0, f"devenv {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def listing(proj: Project) -> dict[str, dict[str, Any]]:
    """`devenv ls --json`, by checkout (this test's stacks and whatever else the machine has)."""
    return {item["checkout"]: item for item in json.loads(cli(proj, "ls", "--json").stdout) if item["checkout"]}


@pytest.fixture
def worktrees(tmp_path: Path, runtime: str) -> Iterator[tuple[Project, Project]]:
    """Two git worktrees of one repository holding the TaskFlow project, each on its own ports."""
    repo = make_project(tmp_path / "repo", runtime, profile="dev")
    git("init", "-q", "-b", "main", cwd=repo.root)
    (repo.root / ".gitignore").write_text(".devenv/\n")
    git("add", "-A", cwd=repo.root)
    git("commit", "-q", "-m", "taskflow", cwd=repo.root)
    projects = []
    for name in ("wt-a", "wt-b"):
        git("worktree", "add", "-q", "-b", name, str(tmp_path / name), cwd=repo.root)
        proj = make_project(tmp_path / f"unused-{name}", runtime, profile="dev")  # its env: free ports, images
        proj.root = (tmp_path / name).resolve()
        if runtime == "docker":
            # Stack names per checkout are issue 16 item 1; until then each worktree names its own.
            proj.edit("devenv.yaml", re.search(r"^project:\s*(\S+)", (proj.root / "devenv.yaml").read_text(), re.M)[1],
                      f"taskflow-t{uuid.uuid4().hex[:8]}")
        projects.append(proj)
    names = [proj.project_name for proj in projects]
    yield projects[0], projects[1]
    for proj, name in zip(projects, names):
        if proj.root.is_dir():
            teardown_project(proj)
        else:  # deleted by the test: what is left of its stack goes as prune removes it
            cli(proj, "prune", "--yes", str(proj.root), check=False)
            if runtime == "docker":
                docker_teardown(name)


def test_ls_lists_both_worktrees_with_their_ports_and_state(worktrees: tuple[Project, Project], runtime: str) -> None:
    a, b = worktrees
    a.devenv("up")
    b.devenv("up")
    found = listing(a)
    for proj in (a, b):
        item = found[str(proj.root)]
        assert (item["profile"], item["runtime"], item["state"], item["orphaned"], item["recorded"]) == \
            ("dev", runtime, "running", False, True)
        assert item["ports"] == {s: int(proj.env[f"DEVENV_{s.upper()}_PORT"]) for s in SERVICES}
        assert item["services"] == {s: True for s in SERVICES}
        assert set(item) == {"checkout", "config", "project", "profile", "runtime", "name", "ports", "state", "orphaned",
                             "services", "data_bytes", "data", "volumes", "recorded", "updated"}
        assert item["config"] == str(proj.root / "devenv.yaml")
        if runtime == "native" or os.geteuid() == 0:
            assert item["data_bytes"] > 1_000_000  # a Postgres cluster
    table = cli(a, "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["CHECKOUT", "PROFILE", "RUNTIME"]
    for proj in (a, b):
        row = next(line for line in table if line.startswith(str(proj.root) + " "))
        ports = ",".join(proj.env[f"DEVENV_{s.upper()}_PORT"] for s in SERVICES)
        assert row.split()[1:5] == ["dev", runtime, ports, "running"], row

    b.devenv("down")
    found = listing(a)
    assert found[str(b.root)]["state"] == "stopped"
    assert found[str(b.root)]["services"] == {s: False for s in SERVICES}
    assert found[str(a.root)]["state"] == "running"


def test_a_deleted_worktree_is_orphaned_and_prune_removes_only_its_stack(worktrees: tuple[Project, Project],
                                                                         runtime: str) -> None:
    a, b = worktrees
    a.devenv("up")
    b.devenv("up")
    with a.connect() as conn:  # data of the living checkout: it must survive the prune
        conn.execute("CREATE TABLE kept_by_prune (id int)")
    b_item = listing(a)[str(b.root)]
    b_pids = b.server_pids()
    b_containers = [c.name for c in b.containers()] if runtime == "docker" else []
    b_volumes = b_item["volumes"]
    b_name = b.project_name
    if runtime == "docker":
        assert b_containers and b_volumes
    else:
        assert b_item["data"]

    shutil.rmtree(b.root)  # the worktree is gone; its servers still run
    git("worktree", "prune", cwd=a.root)
    found = listing(a)
    assert found[str(b.root)]["state"] == "orphaned" and found[str(b.root)]["orphaned"] is True
    assert found[str(b.root)]["services"] == {s: True for s in SERVICES}
    assert found[str(a.root)]["state"] == "running"
    assert "orphaned (running)" in next(line for line in cli(a, "ls").stdout.splitlines() if line.startswith(str(b.root)))

    # Without a terminal and without --yes: refused, with a hint, and nothing removed.
    refused = cli(a, "prune", str(b.root), check=False)
    assert refused.returncode == 2, refused.stderr
    assert "error: prune removes the stacks above" in refused.stderr and "hint: pass --yes" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert str(b.root) in refused.stdout
    dry = cli(a, "prune", "--dry-run")
    assert str(b.root) in dry.stdout and str(a.root) not in dry.stdout
    assert listing(a)[str(b.root)]["services"] == {s: True for s in SERVICES}

    pruned = cli(a, "prune", "--yes", str(b.root))
    assert f"removed {b.root} (dev, {runtime})" in pruned.stderr, pruned.stderr
    assert str(b.root) not in listing(a)  # record gone
    if runtime == "docker":
        client = docker_client()
        label = {"label": f"dev.devenv.project={b_name}"}
        assert client.containers.list(all=True, filters=label) == []
        assert client.volumes.list(filters=label) == []
        assert client.networks.list(filters=label) == []
    else:
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in b_pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in b_pids.values()), b_pids
        assert not any(os.path.lexists(path) for path in b_item["data"]), b_item["data"]

    # The living checkout's stack is untouched: healthy, its data there.
    assert listing(a)[str(a.root)]["state"] == "running"
    a.devenv("status")
    with a.connect() as conn:
        assert conn.execute("SELECT count(*) FROM kept_by_prune").fetchone() == (0,)
    assert "nothing to prune" in cli(a, "prune", "--yes", str(b.root)).stderr


def _alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2] != "Z"
