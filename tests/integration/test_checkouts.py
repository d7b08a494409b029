"""Several checkouts of one repository on one machine (issue 16): each its own stack, sticky ports.

Two `git worktree`s of one throwaway repository whose devenv.yaml gives both the same (free)
ports and no DEVENV_*_PORT pins them: started at the same moment, one keeps the configured
ports and the other moves, and each keeps what it got.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from devenv import registry
from devenv.config.identity import IDENTITY_FILE, record_name
from tests.integration.conftest import SERVICES, Project, docker_teardown, free_ports, make_project, teardown_project

DEFAULT_PORTS = {"postgres": 5432, "pgbouncer": 6432, "redis": 6379}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def make_worktrees(base: Path, runtime: str) -> tuple[Project, Project]:
    """A git repository with the TaskFlow project and a second worktree of it; both devenv.yaml
    name the same free ports, and nothing pins them (no DEVENV_*_PORT)."""
    first = make_project(base / "main", runtime)
    env = {k: v for k, v in first.env.items() if not re.fullmatch(r"DEVENV_[A-Z]+_PORT", k)}
    config = first.root / "devenv.yaml"
    text = config.read_text()
    for service, port in zip(SERVICES, free_ports(3)):
        text, count = re.subn(rf"^  port: {DEFAULT_PORTS[service]}$", f"  port: {port}", text, flags=re.M)
        assert count == 1, f"devenv.yaml has no `port: {DEFAULT_PORTS[service]}` line"
    config.write_text(text)
    (first.root / ".gitignore").write_text(".devenv/\n")
    _git(first.root, "init", "-q")
    _git(first.root, "add", "-A")
    _git(first.root, "commit", "-qm", "taskflow")
    _git(first.root, "worktree", "add", "-q", str(base / "other"))
    return (Project(root=first.root, runtime=runtime, env=dict(env)),
            Project(root=base / "other", runtime=runtime, env=dict(env)))


@pytest.fixture
def worktrees(tmp_path: Path, runtime: str) -> Iterator[tuple[Project, Project]]:
    pair = make_worktrees(tmp_path, runtime)
    yield pair
    for proj in pair:
        proj.devenv("down", "--volumes", check=False)
    if runtime == "docker":
        docker_teardown(pair[0].project_name)


def _ports(proj: Project) -> dict[str, int]:
    """The ports `devenv env` gives (what an application would connect to)."""
    urls = json.loads(proj.devenv("env", "--format", "json").stdout)
    port = lambda url: int(re.search(r"@127\.0\.0\.1:(\d+)/", url).group(1))  # noqa: E731
    return {"postgres": port(urls["DIRECT_DATABASE_URL"]), "pgbouncer": port(urls["DATABASE_URL"]),
            "redis": port(urls["REDIS_URL"])}


def _configured(proj: Project) -> dict[str, int]:
    text = (proj.root / "devenv.yaml").read_text()
    return {s: int(p) for s, p in zip(SERVICES, re.findall(r"^  port: (\d+)$", text, flags=re.M))}


def _up_together(*projects: Project) -> list[subprocess.CompletedProcess[str]]:
    """`devenv up` in each project, all started at the same moment."""
    with ThreadPoolExecutor(max_workers=len(projects)) as pool:
        return list(pool.map(lambda proj: proj.devenv("up", timeout=240), projects))


def test_two_worktrees_up_at_once_each_get_their_own_stack_and_ports(worktrees: tuple[Project, Project]) -> None:
    a, b = worktrees
    results = _up_together(a, b)
    assert a.devenv("status", check=False).returncode == 0 and b.devenv("status", check=False).returncode == 0
    configured = _configured(a)
    ports = {proj.root: _ports(proj) for proj in (a, b)}
    assert not set(ports[a.root].values()) & set(ports[b.root].values()), ports
    kept = [proj for proj in (a, b) if ports[proj.root] == configured]
    assert len(kept) == 1, f"one worktree keeps devenv.yaml's ports: {ports}"
    moved, stayed = (b, a) if kept[0] is a else (a, b)
    said = results[[a, b].index(moved)].stderr
    for service in SERVICES:
        assert (f"{service}: port {configured[service]} is held by the devenv stack of {stayed.root} (profile dev, "
                f"{moved.runtime}); using {ports[moved.root][service]}, kept for this checkout") in said, said
    assert a.stack().name != b.stack().name and a.stack().name.startswith(f"{a.project_name}-dev-")
    # `devenv ls` lists both, each with its own name and ports (from their registry records).
    listed = subprocess.run([sys.executable, "-m", "devenv", "ls", "--json"], cwd=a.root, env=a.env,
                            capture_output=True, text=True, timeout=120, check=True).stdout
    by_checkout = {item["checkout"]: item for item in json.loads(listed)}
    for proj in (a, b):
        assert by_checkout[str(proj.root)]["ports"] == ports[proj.root], by_checkout
        assert by_checkout[str(proj.root)]["name"] == proj.stack().name

    # Each its own data: a table made in one is absent from the other.
    with a.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE only_in_a (id int)")
    with b.connect() as conn:
        assert conn.execute("SELECT to_regclass('only_in_a')").fetchone()[0] is None

    # A pinned port another checkout's stack runs on: an error naming that checkout, nothing started.
    pinned = Project(root=moved.root, runtime=moved.runtime,
                     env={**moved.env, "DEVENV_POSTGRES_PORT": str(configured["postgres"])})
    clash = pinned.devenv("up", check=False)
    assert clash.returncode == 5, clash.stderr
    assert (f"error: port {configured['postgres']} for postgres is held by the devenv stack of {stayed.root} "
            f"(profile dev, {moved.runtime})") in clash.stderr, clash.stderr
    assert "unset DEVENV_POSTGRES_PORT" in clash.stderr and f"`devenv down` in {stayed.root}" in clash.stderr
    assert _ports(moved) == ports[moved.root], "a failed `up` changes no port"

    # `down` in one leaves the other running; ports stay the same across `down`/`up`.
    moved.devenv("down")
    assert stayed.devenv("status", check=False).returncode == 0
    stayed.devenv("down")
    moved.devenv("up")  # devenv.yaml's ports are free now: the moved checkout keeps its own
    stayed.devenv("up")
    assert {proj.root: _ports(proj) for proj in (a, b)} == ports
    again = moved.devenv("up")
    assert "nothing to do" in again.stderr, again.stderr
    with a.connect() as conn:
        assert conn.execute("SELECT to_regclass('only_in_a')").fetchone()[0] == "only_in_a"


def test_a_port_another_program_holds_moves_unless_pinned(worktrees: tuple[Project, Project]) -> None:
    a, _ = worktrees
    configured = _configured(a)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", configured["redis"]))
        holder.listen()
        (a.root / "devenv.yaml").write_text((a.root / "devenv.yaml").read_text().replace(
            f"  port: {configured['redis']}\n", f"  port: {configured['redis']}\n  pin_port: true\n"))
        refused = a.devenv("up", check=False)
        assert refused.returncode == 5, refused.stderr
        assert f"error: port {configured['redis']} for redis is already in use by pid" in refused.stderr
        assert "remove `pin_port` from redis in devenv.yaml" in refused.stderr, refused.stderr
        _git(a.root, "checkout", "devenv.yaml")  # unpinned again
        result = a.devenv("up")
        assert f"redis: port {configured['redis']} is in use by pid" in result.stderr, result.stderr
    ports = _ports(a)
    assert ports["redis"] != configured["redis"] and ports["postgres"] == configured["postgres"]
    assert a.redis().ping()
    remembered = json.loads((a.root / ".devenv" / "dev" / "ports.json").read_text())
    assert remembered == {"redis": {"port": ports["redis"], "configured": configured["redis"]}}
    assert (a.root / ".devenv" / "dev" / "ports.json").stat().st_mode & 0o777 == 0o600
    # `down` keeps the reservation; `down --volumes` drops it, and keeps the remembered ports.
    a.devenv("down")
    assert registry.find(a.root, "dev").ports == ports
    a.devenv("down", "--volumes")
    assert registry.find(a.root, "dev") is None
    assert json.loads((a.root / ".devenv" / "dev" / "ports.json").read_text()) == remembered


PLUGIN_TEST = '''
import json, os

def test_where(devenv_stack):
    with devenv_stack.connect() as conn:
        tables = [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'mine_%'")]
    with open(os.environ["RECORD"], "w") as handle:
        json.dump({"tables": tables, "url": os.environ["DIRECT_DATABASE_URL"], "root": str(devenv_stack.stack.root)},
                  handle)
'''


def test_each_checkouts_pytest_plugin_reaches_its_own_database(worktrees: tuple[Project, Project],
                                                               tmp_path: Path) -> None:
    a, b = worktrees
    _up_together(a, b)
    for proj in (a, b):  # a table in each one's database, named after its worktree
        with proj.connect(autocommit=True) as conn:
            conn.execute(f"CREATE TABLE mine_{proj.root.name} (id int)")
        (proj.root / "test_where.py").write_text(PLUGIN_TEST)
    for proj, other in ((a, b), (b, a)):
        record = tmp_path / f"record-{proj.root.name}.json"
        # A DEVENV_CONFIG exported in the other worktree's shell must not lead these tests there.
        env = {**proj.env, "RECORD": str(record), "DEVENV_CONFIG": str(other.root / "devenv.yaml")}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--devenv-profile", "dev",
                              "--devenv-runtime", proj.runtime, "--devenv-keep", "test_where.py"],
                             cwd=proj.root, env=env, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout + run.stderr
        seen = json.loads(record.read_text())
        port = proj.stack().postgres.port
        assert seen["root"] == str(proj.root) and f"@127.0.0.1:{port}/" in seen["url"], seen
        assert seen["tables"] == [f"mine_{proj.root.name}"], seen


@pytest.fixture
def dev_project(tmp_path: Path, runtime: str) -> Iterator[Project]:
    """A fresh project on the `dev` profile (its data in a volume, not on tmpfs)."""
    proj = make_project(tmp_path / "proj", runtime, profile="dev")
    yield proj
    teardown_project(proj)


@pytest.mark.parametrize("runtime", ["docker"], indirect=True)
def test_a_docker_stack_from_before_the_checkout_id_keeps_its_data(dev_project: Project) -> None:
    """A checkout whose stack is named `{project}-{profile}` (as before names carried the checkout
    id) keeps that name and its data; a copy of the checkout takes a name of its own."""
    proj = dev_project
    legacy = f"{proj.project_name}-{proj.profile}"
    state = proj.root / ".devenv" / proj.profile
    record_name(state, proj.root, proj.project_name, legacy)  # up under the old name...
    proj.devenv("up")
    with proj.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE before_the_upgrade (id int)")
    assert {c.name for c in proj.containers()} == {f"{legacy}-{s}-1" for s in SERVICES}

    (state / IDENTITY_FILE).unlink()  # ... then as a checkout of the older devenv: no record
    assert proj.stack().name == legacy, "its password note says it made a Docker volume"
    proj.devenv("up")  # containers of this checkout under the old name: adopted
    assert json.loads((state / IDENTITY_FILE).read_text())["name"] == legacy
    proj.devenv("down")
    (state / IDENTITY_FILE).unlink()
    proj.devenv("up")  # no containers, the old volume and this checkout's note: adopted
    assert json.loads((state / IDENTITY_FILE).read_text())["name"] == legacy
    with proj.connect() as conn:
        assert conn.execute("SELECT to_regclass('before_the_upgrade')").fetchone()[0] == "before_the_upgrade"
    assert proj.pgdata() == f"volume:{legacy}-pgdata"

    copy = Project(root=proj.root.parent / "copy", runtime=proj.runtime, profile=proj.profile,
                   env={**proj.env, **{f"DEVENV_{s.upper()}_PORT": str(p) for s, p in zip(SERVICES, free_ports(3))}})
    shutil.copytree(proj.root, copy.root, symlinks=True)  # `cp -r`, .devenv/ and all
    try:
        assert copy.stack().name not in (legacy, proj.stack().name)
        copy.devenv("up")
        with copy.connect() as conn:
            assert conn.execute("SELECT to_regclass('before_the_upgrade')").fetchone()[0] is None
        assert proj.devenv("status", check=False).returncode == 0, "the original's stack is untouched"
    finally:
        copy.devenv("down", "--volumes", check=False)
