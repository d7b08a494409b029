"""Rootless Podman (.ci/podman-rootless-up.sh: the API service of an unprivileged user with
subordinate uids). Under its uid mapping a file of root's is nobody's in a container, and a
0600 config or key of devenv's would be unreadable by the image's server user: devenv knows
the engine is rootless (/info's Rootless) and copies its files in instead of bind-mounting
them. Skipped on a developer's machine without the lane; a failure in CI, where it is expected.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import Project, make_project, teardown_project, use_runtime


@pytest.fixture
def rootless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    """A dev-profile project on the rootless Podman."""
    use_runtime("rootless", monkeypatch)
    proj = make_project(tmp_path / "proj", "rootless", profile="dev")
    proj.env["DEVENV_CACHE_DIR"] = str(tmp_path / "cache")  # the seeded-data cache, as a developer has it
    proj.env.pop("DEVENV_NO_CACHE", None)
    yield proj
    teardown_project(proj)


def test_rootless_podman_gets_copies_its_servers_read_and_down_leaves_nothing(rootless: Project) -> None:
    proj = rootless
    up = proj.devenv("up")
    assert "Podman 4." in up.stderr, up.stderr
    for service in ("postgres", "pgbouncer", "redis"):
        mounts = proj.container(service).attrs["Mounts"]
        assert [m for m in mounts if m["Type"] == "bind"] == [], f"{service} has a bind mount: {mounts}"
    # The servers run with devenv's configs (read as the image's user, through the uid mapping).
    with proj.admin_connect() as conn:
        assert conn.execute("SHOW config_file").fetchone()[0] == "/etc/postgresql/postgresql.conf"
        assert conn.execute("SHOW log_min_duration_statement").fetchone()[0] == "1s"  # devenv.yaml's dev value
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    # PgBouncer read its userlist and found postgres by name, at its address after the cache fill
    # restarted it: at once (its lookups hung for 30-70 s, in one restart of two, until devenv
    # restarted PgBouncer too; the connect_timeout does not cover PgBouncer's wait for a server).
    started = time.monotonic()
    with proj.connect(pooled=True, connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] > 0
    assert time.monotonic() - started < 10, "the pooled connection waited for PgBouncer's lookup of postgres"
    assert proj.redis().ping()  # redis.conf's requirepass, read
    doctor = proj.devenv("doctor", check=False)
    assert "Docker API 1.41, rootless" in doctor.stdout, doctor.stdout
    assert "FAIL" not in doctor.stdout, doctor.stdout  # rootlessport holds the ports: the stack's
    # The cache, filled by that first `up`, restored into a new volume through the engine's API
    # (as root devenv could write the volume's directory itself, with uids the mapping does not
    # have: the server then could not chown its data).
    proj.devenv("down", "--volumes")
    again = proj.devenv("up")
    assert "restor" in again.stderr, again.stderr
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    proj.devenv("down", "--volumes")
    assert proj.containers() == []
    label = {"label": f"com.docker.compose.project={proj.stack_name}"}
    assert proj.client().volumes.list(filters=label) == []
