"""pytest plugin (entry point `pytest11`): a seeded stack per session, a fresh database per test.

Fixtures:
    devenv_stack  session: the stack, up (profile `ci` by default) or reused if already running;
                  sets DATABASE_URL, DIRECT_DATABASE_URL and REDIS_URL for this process
    devenv_db     function: this worker's database, reset to the seeded state before the test
    devenv_redis  function: this worker's Redis index, flushed (and seed keys reloaded)

Under pytest-xdist each worker gets its own database (`<db>_test_gw0`, cloned from the same
template) and its own Redis index, so workers never see each other's data. The stack is
stopped at the end only if this run started it (and not with --devenv-keep).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    import psycopg

    from devenv.api import Devenv

_RUN_ENV = "DEVENV_PYTEST_RUN"  # shared by the controller and its xdist workers
_OWNER_FILE = "pytest-owner"
_URL_NAMES = ("DATABASE_URL", "DIRECT_DATABASE_URL", "REDIS_URL")


def pytest_addoption(parser: pytest.Parser) -> None:
    from devenv.runtime.plan import RUNTIME_NAMES

    group = parser.getgroup("devenv", "devenv: PostgreSQL + PgBouncer + Redis for tests")
    group.addoption("--devenv-profile", default=None, help="settings profile for the test stack (default: ci)")
    group.addoption("--devenv-runtime", default=None, choices=list(RUNTIME_NAMES),
                    help="where the stack runs (default: auto)")
    group.addoption("--devenv-keep", action="store_true", help="leave the stack running after the session")
    group.addoption("--devenv-config", default=None, help="path to devenv.yaml (default: the nearest upwards)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "devenv: uses the devenv stack")
    if not hasattr(config, "workerinput"):
        # The controller: a fresh id for this run, inherited by its xdist workers (and
        # overwriting one inherited from an outer pytest, as under pytester).
        os.environ[_RUN_ENV] = uuid.uuid4().hex


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller stops the stack if this run started it (workers never do)."""
    from devenv.errors import ConfigError
    from devenv.config.project import state_dir

    config = session.config
    if hasattr(config, "workerinput"):
        return
    try:  # only paths: a run that never used devenv must not load or create anything
        root = _config_path(config).parent
    except ConfigError:
        return
    owner = state_dir(root, _profile(config)) / _OWNER_FILE
    try:
        started_by_us = owner.read_text().strip() == os.environ.get(_RUN_ENV)
    except OSError:
        return
    if started_by_us:
        owner.unlink(missing_ok=True)  # kept or stopped, it is no longer this run's
        if not config.getoption("--devenv-keep"):
            handle = _load(config)
            assert handle is not None
            handle.down()


def _profile(config: pytest.Config) -> str:
    return config.getoption("--devenv-profile") or os.environ.get("DEVENV_PROFILE") or "ci"


def _config_path(config: pytest.Config) -> "Path":
    """This checkout's devenv.yaml: --devenv-config, else the nearest one upwards from the
    rootdir; DEVENV_CONFIG only where there is none. A DEVENV_CONFIG exported in a shell of
    another checkout (a worktree beside this one) must not point these tests at its database."""
    from devenv.config.project import find_config
    from devenv.errors import ConfigError

    explicit = config.getoption("--devenv-config")
    if explicit:
        return find_config(explicit)
    try:
        return find_config(None, cwd=config.rootpath)
    except ConfigError:
        if os.environ.get("DEVENV_CONFIG"):
            return find_config(os.environ["DEVENV_CONFIG"])
        raise


def _load(config: pytest.Config, required: bool = True) -> "Devenv | None":
    """The stack of this checkout's devenv.yaml (_config_path), with the ports it remembers."""
    from devenv.api import Devenv
    from devenv.errors import ConfigError

    profile = _profile(config)
    runtime = config.getoption("--devenv-runtime") or os.environ.get("DEVENV_RUNTIME") or "auto"
    try:
        return Devenv.load(config=_config_path(config), profile=profile, runtime=runtime)
    except ConfigError:
        if required:
            raise
        return None


def _worker() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... under xdist


@pytest.fixture(scope="session")
def devenv_stack(pytestconfig: pytest.Config) -> Iterator["Devenv"]:
    """The stack, brought up for this run or reused; the URLs point at this worker's database."""
    from devenv.state import locked

    handle = _load(pytestconfig)
    assert handle is not None
    with locked(handle.stack.state_dir / "pytest"):  # workers start together: one of them brings it up
        was_running = handle.is_healthy()
        handle.up()
        owner = handle.stack.state_dir / _OWNER_FILE
        if not was_running:
            owner.write_text(os.environ.get(_RUN_ENV, ""))
    saved = {name: os.environ.get(name) for name in _URL_NAMES}
    os.environ.update(handle.urls(_database_name(handle), _redis_index()))
    try:
        yield handle
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        handle.close()


def _database_name(handle: "Devenv") -> str:
    # Never the working database: tests must not reset a developer's data.
    worker = _worker()
    base = f"{handle.stack.postgres.database}_test"
    return f"{base}_{worker}" if worker else base


def _redis_index() -> int:
    """1 without xdist, 2 + N for worker gwN: index 0 stays the application's."""
    worker = _worker()
    index = 1 if worker is None else 2 + int(worker.removeprefix("gw"))
    if index > 15:
        raise pytest.UsageError("devenv gives each xdist worker a Redis database index; Redis has 16: use -n 14 or fewer")
    return index


@dataclass
class SeededDatabase:
    """A freshly reset database for one test: its name, URLs and a direct connection."""

    name: str
    url: str  # through PgBouncer
    direct_url: str  # Postgres itself (LISTEN/NOTIFY, session features)
    strategy: str  # how the reset was done: restore, clone or copy
    conn: "psycopg.Connection[Any]"  # direct, autocommit off
    handle: "Devenv" = field(repr=False, compare=False)  # the stack it is on

    def connect(self, pooled: bool = False, **kwargs: Any) -> "psycopg.Connection[Any]":
        """Another connection to this database; the caller closes it."""
        return self.handle.connect(self.name, pooled=pooled, **kwargs)


class _WorkerConnection:
    """One direct connection per worker, reused from test to test.

    Opening a connection costs a SCRAM handshake (~10 ms), more than the reset itself. Between
    tests it is rolled back (so the reset never waits on its locks) and DISCARD ALL'd (no temp
    tables, prepared statements, settings, LISTENs or advisory locks carried over). A clone
    replaces the database, so then it is reopened; so it is if a test closed or broke it.
    psycopg does not prepare statements on it: it would not notice that DISCARD ALL dropped
    them, and the sixth test running the same query would fail ("prepared statement does not exist").
    """

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None

    def before_reset(self) -> None:
        if self.conn is not None and not (self.conn.closed or self.conn.broken):
            try:
                self.conn.rollback()
            except Exception:
                self.close()

    def after_reset(self, reopen: Callable[[], "psycopg.Connection[Any]"], strategy: str) -> "psycopg.Connection[Any]":
        if self.conn is not None and not (self.conn.closed or self.conn.broken) and strategy == "restore":
            try:
                self.conn.autocommit = True
                self.conn.execute("DISCARD ALL")
                self.conn.autocommit = False
                return self.conn
            except Exception:
                pass
        self.close()
        self.conn = reopen()
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="session")
def _devenv_worker_connection() -> Iterator[_WorkerConnection]:
    holder = _WorkerConnection()
    yield holder
    holder.close()


@pytest.fixture
def devenv_db(devenv_stack: "Devenv", _devenv_worker_connection: _WorkerConnection) -> SeededDatabase:
    """This worker's database, back in the freshly seeded state (reset before the test)."""
    name = _database_name(devenv_stack)
    _devenv_worker_connection.before_reset()
    result = devenv_stack.reset(name, redis_db=None)
    urls = devenv_stack.urls(name)
    conn = _devenv_worker_connection.after_reset(lambda: devenv_stack.connect(name, prepare_threshold=None),
                                                 result.strategy)
    return SeededDatabase(name, urls["DATABASE_URL"], urls["DIRECT_DATABASE_URL"], result.strategy, conn, devenv_stack)


@pytest.fixture
def devenv_redis(devenv_stack: "Devenv") -> Any:
    """A redis-py client on this worker's Redis index, flushed and re-seeded."""
    from devenv.db.reset import reset

    index = _redis_index()
    reset(devenv_stack.stack, redis_db=index, janitor=devenv_stack.janitor, redis_only=True)
    return devenv_stack.redis(index)
