"""The one-time cache login (devenv.db.roles.RESTORE_ROLE) never outlives a save that was killed
(found by an adversarial pass, adv19b): plan.save_live makes it in the LIVE cluster before the
base backup and drops it afterwards; a SIGKILL in between leaves a note in the state directory,
and the next `up` (not the no-op one) drops the login. Native here (cheap); the Docker runtime's
save_volume calls the same plan.save_live on the local-engine path, and save_through_api (the
archive-API path) leaves the same note through roles.add_restore_login.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Project, make_project, teardown_project

KILLED_SAVE = """
import sys, time
from pathlib import Path
from devenv.cli.output import load_stack
from devenv.db import cache
from devenv.runtime import plan
stack = load_stack(None, sys.argv[1])
cache.save_live = lambda *a, **k: time.sleep(600)  # the base backup, long enough to be killed in
plan.save_live(stack, Path(sys.argv[2]), "adv19b", "not-a-real-password")
"""


@pytest.fixture
def native_proj(tmp_path: Path):  # type: ignore[no-untyped-def]
    proj = make_project(tmp_path / "proj", "native")
    yield proj
    teardown_project(proj)


def _restore_roles(proj: Project) -> list[tuple[str, bool]]:
    with proj.admin_connect() as conn:
        return conn.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolname = 'devenv_restore'").fetchall()


def test_a_save_killed_mid_backup_leaves_no_superuser_behind_after_the_next_up(native_proj: Project) -> None:
    proj = native_proj
    proj.devenv("up")
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, proj.profile, proj.pgdata()], cwd=proj.root,
                             env=proj.env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _restore_roles(proj):
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the login was never made"
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # as an OOM kill or a CI job cancelled mid-save
        child.wait()
    assert _restore_roles(proj) == [("devenv_restore", True)], "the live cluster now has a stray superuser"
    proj.devenv("up")  # the next `up` is where devenv could clean it up
    assert _restore_roles(proj) == [], "devenv_restore (SUPERUSER LOGIN) survives the next `up` on the live cluster"
