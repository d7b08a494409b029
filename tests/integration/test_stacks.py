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

from tests.integration.conftest import (Project, docker_client, docker_images, docker_teardown, make_project,
                                       teardown_project)

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
        assert set(item) == {"checkout", "config", "project", "profile", "runtime", "engine", "name", "ports", "state",
                             "orphaned", "services", "data_bytes", "data", "volumes", "recorded", "updated"}
        assert (item["engine"] is None) == (runtime == "native"), item["engine"]
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
    # `down --volumes` leaves nothing of the stack: its record goes too (not "stopped, 0 B" for ever).
    b.devenv("down", "--volumes")
    assert str(b.root) not in listing(a) and str(a.root) in listing(a)


def _forge(proj: Project, checkout: Path) -> Path:
    """A copy of the project's record whose checkout is `checkout` (a path that does not exist):
    what a copied or corrupt record looks like. Returns its file."""
    registry = Path(os.environ["DEVENV_REGISTRY_DIR"])
    original = next(json.loads(f.read_text()) for f in registry.glob("*.json")
                    if json.loads(f.read_text())["checkout"] == str(proj.root))
    forged = registry / f"forged{uuid.uuid4().hex[:6]}-dev.json"
    forged.write_text(json.dumps(dict(original, checkout=str(checkout), config=str(checkout / "devenv.yaml"))))
    forged.chmod(0o600)
    return forged


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
    heading = next(line for line in dry.stdout.splitlines() if line.startswith(str(b.root)))
    assert "is gone (moved or deleted)" in heading and "of data" in heading, heading  # its size, never blind
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

    # A copy of a's record naming a gone checkout removes nothing of a's: not its servers, its data,
    # its containers or volumes; only the copy's own record goes.
    copied = b.root.parent / "copied-record"
    forged = _forge(a, copied)
    a_pids = a.server_pids()
    pruned = cli(a, "prune", "--yes", str(copied))
    assert f"removed {copied}" in pruned.stderr and not forged.exists(), pruned.stderr
    assert a.server_pids() == a_pids and all(_alive(pid) for pid in a_pids.values())
    if runtime == "docker":
        assert all(c.status == "running" for c in a.containers())

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


def test_a_docker_stack_without_a_record_is_pruned_only_with_unrecorded(tmp_path: Path, runtime: str) -> None:
    """Labels only (another user's stack on a shared engine, or one made before the registry):
    its working directory missing from this disk says nothing of whether it is orphaned."""
    if runtime != "docker":
        pytest.skip("Docker's labels only")
    proj = make_project(tmp_path / "p", runtime)
    client = docker_client()
    name = f"unrec{uuid.uuid4().hex[:8]}-dev"
    checkout = f"/builds/otheruser-{uuid.uuid4().hex[:6]}/proj"
    labels = {"com.docker.compose.project": name, "dev.devenv.project": name[:-4], "dev.devenv.profile": "dev"}
    volume = client.volumes.create(f"{name}_pgdata", labels=labels)
    image = dict(docker_images()).get("DEVENV_REDIS_IMAGE", "redis:7")
    box = client.containers.run(image, ["sleep", "300"], detach=True, name=f"{name}-redis-1", labels={
        **labels, "com.docker.compose.service": "redis", "com.docker.compose.oneoff": "False",
        "com.docker.compose.project.working_dir": f"{checkout}/.devenv/dev"})
    try:
        dry = cli(proj, "prune", "--dry-run")
        assert checkout not in dry.stdout and f"{name} of {checkout}" in dry.stderr and "--unrecorded" in dry.stderr
        assert "nothing to prune" in cli(proj, "prune", "--yes", checkout).stderr
        box.reload()
        assert box.status == "running"
        local = (proj.env.get("DOCKER_HOST") or "unix://").startswith("unix://")
        listed = cli(proj, "prune", "--unrecorded", "--dry-run", checkout)
        if not local:
            assert "not this machine's" in listed.stderr
            return
        assert checkout in listed.stdout and "unrecorded" in listed.stdout and "record in the registry" not in listed.stdout
        assert f"{name}_pgdata" in listed.stdout
        done = cli(proj, "prune", "--unrecorded", "--yes", checkout)
        assert f"removed {checkout}" in done.stderr
        label = {"label": f"com.docker.compose.project={name}"}
        assert client.containers.list(all=True, filters=label) == [] and client.volumes.list(filters=label) == []
    finally:
        for thing in (box, volume):
            try:
                thing.remove(force=True)
            except Exception:  # noqa: BLE001  (already removed by the prune)
                pass


def test_a_checkout_path_with_a_newline_and_bytes_not_utf8_comes_up_and_lists_on_one_line(tmp_path: Path,
                                                                                          runtime: str) -> None:
    if runtime != "native":
        pytest.skip("the native runtime's directories are named from the checkout's path")
    root = tmp_path / os.fsdecode(b"odd\xff\nFAKE  dev  native")
    proj = make_project(root, runtime)
    try:
        proj.devenv("up")
        table = subprocess.run([sys.executable, "-m", "devenv", "ls"], cwd=os.fsencode(root), env=proj.env,
                               capture_output=True, timeout=60)
        assert table.returncode == 0, table.stderr
        rows = [line for line in table.stdout.decode().splitlines() if line.startswith(str(tmp_path))]
        assert len(rows) == 1 and "odd\\xff\\nFAKE" in rows[0] and "running" in rows[0], table.stdout
        assert str(root) in listing(proj)
    finally:
        proc = subprocess.run([sys.executable, "-m", "devenv", "down", "--volumes"], cwd=os.fsencode(root), env=proj.env,
                              capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(root) not in listing(proj)
