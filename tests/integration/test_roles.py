"""Trust boundaries (issue 15, classes 1 and 2): what the application role may do, what root
trusts, and the environment the servers start with. Real servers, driven through the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Project

SECRET_VARS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-for-devenv-test", "GITHUB_TOKEN": "ghp_devenv_test_token",
               "CI_JOB_TOKEN": "ci-job-token-devenv-test"}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.native_only(reason="reads /proc/<pid>/environ of the native servers")
def test_servers_start_with_a_minimal_environment(project: Project) -> None:
    project.env.update(SECRET_VARS, PATH="/tmp/devenv-not-a-system-dir:" + os.environ["PATH"], PGHOST="elsewhere")
    project.devenv("up")
    for service, pid in project.server_pids().items():
        env = _environ(pid)
        for name in SECRET_VARS:
            assert name not in env, f"{service} (pid {pid}) inherited {name}"
        assert not any(value in SECRET_VARS.values() for value in env.values()), service
        assert "PGHOST" not in env, service
        assert "/tmp/devenv-not-a-system-dir" not in env.get("PATH", ""), service
        assert set(env) <= {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "PG_GRANDPARENT_PID", "PGLOCALEDIR",
                            "PGSYSCONFDIR"} | {k for k in env if k.startswith("LC_")}, (service, sorted(env))
        if service != "redis":  # redis-server writes its process title over its environment block
            assert env.get("HOME"), service
