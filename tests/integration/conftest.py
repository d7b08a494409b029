"""Integration fixtures: real servers in throwaway projects, on free ports, driven through the CLI.

Every test here runs once per runtime in RUNTIMES. A runtime whose engine is missing is
skipped on a developer's machine and fails in CI (where `CI` is set).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from devenv.settings import load_config
from devenv.stack import Stack, build_stack

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = ["native"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Project:
    """A throwaway copy of the TaskFlow project with its own ports, driven through the CLI."""

    root: Path
    runtime: str
    profile: str = "dev"
    env: dict[str, str] = field(default_factory=dict)

    def devenv(self, *args: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `python -m devenv ARGS` in the project; `check` asserts exit code 0."""
        argv = [sys.executable, "-m", "devenv", *args]
        if args and args[0] in ("up", "down", "status", "logs") and "--runtime" not in args:
            argv += ["--runtime", self.runtime]
        if args and args[0] not in ("--help",) and "-p" not in args and "--profile" not in args:
            argv += ["--profile", self.profile]
        proc = subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check:
            assert proc.returncode == 0, f"devenv {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return proc

    def stack(self, profile: str | None = None) -> Stack:
        """The Stack this project's CLI sees (same file, same environment)."""
        config = load_config(self.root / "devenv.yaml", env=self.env)
        return build_stack(config, profile or self.profile)

    def connect(self, pooled: bool = False, **kwargs: Any):  # type: ignore[no-untyped-def]
        """A psycopg connection: direct to Postgres, or through PgBouncer."""
        import psycopg

        urls = self.stack().urls()
        return psycopg.connect(urls["DATABASE_URL" if pooled else "DIRECT_DATABASE_URL"], **kwargs)

    def redis(self):  # type: ignore[no-untyped-def]
        """A redis-py client with the stack's password."""
        import redis

        return redis.Redis.from_url(self.stack().urls()["REDIS_URL"], decode_responses=True)

    def edit(self, relative: str, old: str, new: str) -> None:
        """Replace text in a project file (e.g. a row of the settings table)."""
        path = self.root / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1))


def _engine_available(runtime: str) -> str | None:
    """None when the runtime can run here, else why not."""
    if runtime == "native":
        missing = [p for p in ("pgbouncer", "redis-server") if not shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin")]
        return f"missing {', '.join(missing)}" if missing else None
    return f"unknown runtime {runtime}"


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """Each integration test runs once per runtime."""
    reason = _engine_available(request.param)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{request.param} runtime unavailable in CI: {reason}")
        pytest.skip(f"{request.param} runtime unavailable: {reason}")
    return request.param


def make_project(base: Path, runtime: str, profile: str = "dev") -> Project:
    """Copy devenv.yaml and seeds/ into `base` and give the stack free ports."""
    base.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "devenv.yaml", base / "devenv.yaml")
    shutil.copytree(REPO / "seeds", base / "seeds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVENV_")}
    env.update({
        "DEVENV_POSTGRES_PORT": str(free_port()),
        "DEVENV_PGBOUNCER_PORT": str(free_port()),
        "DEVENV_REDIS_PORT": str(free_port()),
    })
    return Project(root=base, runtime=runtime, profile=profile, env=env)


@pytest.fixture
def project(tmp_path: Path, runtime: str) -> Iterator[Project]:
    """A fresh project (nothing running yet), torn down with its data afterwards."""
    proj = make_project(tmp_path / "proj", runtime, profile="ci")
    yield proj
    proj.devenv("down", "--volumes", check=False)


@pytest.fixture(scope="session")
def _session_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Project]]:
    started: dict[tuple[str, str], Project] = {}
    yield started
    for proj in started.values():
        proj.devenv("down", "--volumes", check=False)


@pytest.fixture
def running(runtime: str, _session_stacks: dict, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A factory: `running("dev")` is a stack that is up and seeded, shared within the session.

    Tests that only read use it; tests that change state use `project` instead.
    """
    def get(profile: str = "dev") -> Project:
        key = (runtime, profile)
        if key not in _session_stacks:
            proj = make_project(tmp_path_factory.mktemp(f"{runtime}-{profile}"), runtime, profile)
            proj.devenv("up")
            _session_stacks[key] = proj
        return _session_stacks[key]

    return get
