"""Shared fixtures: a throwaway project with the repo's devenv.yaml and fixed passwords."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import devenv

REPO_ROOT = Path(devenv.__file__).resolve().parents[1]
FIXED_SECRETS = {
    "postgres_password": "pg-test-pw",
    "postgres_admin_password": "pg-admin-test-pw",
    "pgbouncer_admin_password": "pgb-test-pw",
    "redis_password": "redis-test-pw",
}
# Kept when a test clears DEVENV_*: the machine's registry of stacks (devenv.registry), one per
# test session, so that tests never see (or prune) a developer's stacks, nor leave theirs there.
KEPT_ENV = ("DEVENV_REGISTRY_DIR",)


# Set beside DEVENV_REGISTRY_DIR when this session made that directory (not the developer):
# each pytest-xdist worker, which inherits both, then takes a registry of its own beside it.
_OWN_REGISTRY = "PYTEST_DEVENV_REGISTRY_ROOT"


def pytest_configure(config: pytest.Config) -> None:
    """Give the session its own registry of stacks (a fresh directory, removed at exit); each
    xdist worker its own (a test that lists or prunes stacks sees its worker's only)."""
    import atexit
    import tempfile

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # A pytest these tests start (the plugin's tests) is a plain run, as a developer's: it must not
    # inherit this worker's variables and take itself for an xdist worker. (xdist's own code reads
    # config.workerinput, not these.)
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        os.environ.pop(name, None)
    if worker and os.environ.get(_OWN_REGISTRY):
        os.environ["DEVENV_REGISTRY_DIR"] = os.path.join(os.environ[_OWN_REGISTRY], f"stacks-{worker}")
    elif "DEVENV_REGISTRY_DIR" not in os.environ:
        directory = tempfile.mkdtemp(prefix="devenv-registry-")
        os.environ["DEVENV_REGISTRY_DIR"] = os.path.join(directory, "stacks")
        os.environ[_OWN_REGISTRY] = directory
        atexit.register(shutil.rmtree, directory, True)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): one worker per core, at most 4. The Docker engine's tests
    run on one worker and the other engines' on one (their xdist_group, tests/integration/
    conftest.py); more workers would only share the rest, whose every test starts servers."""
    return max(1, min(4, os.cpu_count() or 1))


@pytest.fixture
def fixed_secrets() -> dict[str, str]:
    """The passwords every `project` fixture's secrets.json holds."""
    return dict(FIXED_SECRETS)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project dir holding a copy of the repo's devenv.yaml and fixed secrets.

    DEVENV_* variables are cleared (also for subprocesses, which inherit os.environ) so a
    developer's environment cannot change what is rendered or validated.
    """
    for name in list(os.environ):
        if name.startswith("DEVENV_") and name not in KEPT_ENV:
            monkeypatch.delenv(name)
    shutil.copyfile(REPO_ROOT / "devenv.yaml", tmp_path / "devenv.yaml")
    state = tmp_path / ".devenv"
    state.mkdir()
    secrets = state / "secrets.json"
    secrets.write_text(json.dumps(FIXED_SECRETS, indent=2, sort_keys=True), encoding="utf-8")
    os.chmod(secrets, 0o600)
    return tmp_path


@pytest.fixture
def run_devenv(project: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m devenv ARGS` as a real subprocess inside the project."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devenv", *args],
            cwd=project,
            # As a developer runs it: CI mode would timestamp the lines the tests read.
            env={**{k: v for k, v in os.environ.items() if k != "CI"}, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
def edit_config(project: Path) -> Callable[[str, str], int]:
    """Replace one exact, unique piece of the project's devenv.yaml; return its 1-based line."""

    def edit(old: str, new: str) -> int:
        path = project / "devenv.yaml"
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{old!r} must occur exactly once in devenv.yaml"
        path.write_text(text.replace(old, new), encoding="utf-8")
        return text[: text.index(old)].count("\n") + 1

    return edit
