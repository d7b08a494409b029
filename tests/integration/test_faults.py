"""Faults the next command recovers from by itself (issue 15, classes 15, 16, 17, 19): a killed
command's PgBouncer PAUSE, a lost or damaged native state.json, a port the servers cannot bind,
and pooled clients beside concurrent resets of every strategy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_lifecycle import (
    SEEDED_TASKS,
    alive,
    assert_healthy,
    cleanup,
    count,
    insert_user,
    native_dir,
    project_processes,
    refuses,
    server_pids,
    user_exists,
    wait_for,
)

SERVICES = ("postgres", "pgbouncer", "redis")


@pytest.fixture
def proj(project: Any) -> Any:
    """`project`, and afterwards no server process of it left, tracked or not."""
    yield project
    cleanup(project)


# ---- class 16: a lost or damaged native state.json ---------------------------------------------


@pytest.mark.native_only(reason="native's state.json")
@pytest.mark.parametrize("damage", ["deleted", "not-json", "wrong-shape"])
def test_a_lost_or_damaged_state_file_while_up_adopts_the_running_servers(proj: Any, damage: str) -> None:
    """Before: `up` stopped Postgres, SIGKILLed PgBouncer, then failed on its own Redis's port
    (exit 5), every time; `down` said "nothing was running" and left all three running."""
    proj.devenv("up")
    insert_user(proj)
    pids = server_pids(proj)
    state = native_dir(proj) / "state.json"
    fingerprint = proj.root / ".devenv" / proj.profile / "state.json"

    def damage_state() -> None:
        if damage == "deleted":
            state.unlink()
        elif damage == "not-json":
            state.write_text('{"postgres": {"pid": ')
        else:
            state.write_text('{"postgres": [1, 2], "pgbouncer": {"pid": "x"}, "redis": 7, "_meta": []}')
        fingerprint.write_text("[]")  # the no-op path's record too: the full `up` must run

    damage_state()
    result = proj.devenv("up", check=False)
    assert result.returncode == 0, result.stderr
    assert "adopted" in result.stderr, result.stderr
    assert server_pids(proj) == pids, "a running server of the stack was restarted or replaced"
    assert_healthy(proj)
    assert user_exists(proj)

    damage_state()
    stopped = proj.devenv("down")
    assert "stopped postgres, pgbouncer, redis" in stopped.stderr, stopped.stderr
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), 15, "the servers to stop")
    assert project_processes(proj) == []

    proj.devenv("up")
    assert user_exists(proj), "the data was not kept"
    assert count(proj, "tasks") == SEEDED_TASKS
