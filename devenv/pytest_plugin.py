"""pytest plugin (entry point `pytest11`): a seeded stack per session, a fresh database per test.

Fixtures:
    devenv_stack  session: the stack, up (profile `ci` by default) or reused if already running;
                  sets DATABASE_URL, DIRECT_DATABASE_URL and REDIS_URL for this process
    devenv_db     function: this worker's database, reset to the seeded state before the test
    devenv_redis  function: this worker's Redis index, flushed (and seed keys reloaded)

Under pytest-xdist each worker gets its own database (`<db>_test_gw0`, cloned from the same
template) and its own Redis index, so workers never see each other's data. The stack is
stopped at the end only if this run started it (and not with --devenv-keep).

Settings: each command-line option has an ini key (pytest.ini, pyproject.toml's
[tool.pytest.ini_options], setup.cfg) and an environment variable; the option wins, then the
ini file, then the environment, then the default (`_setting`).

- `--devenv-url` (an existing server: devenv starts nothing, see devenv.config.external) and
  `--devenv-redis-url`;
- `--devenv-keep-failed`: a test that fails with `devenv_db` leaves its database renamed to
  `<db>_kept_<run>_<n>` and its report names it with a URL; the next run drops those.
"""

from __future__ import annotations

import itertools
import os
import re
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
# ini key -> (command-line option, environment variable, help)
_SETTINGS = {
    "devenv_profile": ("--devenv-profile", "DEVENV_PROFILE", "settings profile for the test stack (default: ci)"),
    "devenv_runtime": ("--devenv-runtime", "DEVENV_RUNTIME", "where the stack runs (default: auto)"),
    "devenv_config": ("--devenv-config", None,
                      "path to devenv.yaml, relative to the ini file (default: the nearest upwards)"),
    "devenv_url": ("--devenv-url", "DEVENV_URL",
                   "an existing PostgreSQL server (postgresql://USER@HOST:PORT/DB): no stack is started"),
    "devenv_redis_url": ("--devenv-redis-url", "DEVENV_REDIS_URL", "an existing Redis, with --devenv-url"),
    "devenv_keep_failed": ("--devenv-keep-failed", "DEVENV_KEEP_FAILED",
                           "keep a failed test's database and name it in the report (bool)"),
}
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False, "": False}
_GIVEN = pytest.StashKey["SeededDatabase"]()  # the test's database, once devenv_db gave it
_KEPT = pytest.StashKey[str]()  # the name a failed test's database is kept under
_kept_counter = itertools.count(1)
_SECTION = "devenv: kept database"
_ANY_KEPT = pytest.StashKey[bool]()  # the controller saw a report keeping a database
_config: pytest.Config  # this process's (pytest_runtest_logreport is not given it)


def pytest_addoption(parser: pytest.Parser) -> None:
    from devenv.runtime.plan import RUNTIME_NAMES

    group = parser.getgroup("devenv", "devenv: PostgreSQL + PgBouncer + Redis for tests")
    group.addoption("--devenv-profile", default=None, help="settings profile for the test stack (default: ci)")
    group.addoption("--devenv-runtime", default=None, choices=list(RUNTIME_NAMES),
                    help="where the stack runs (default: auto)")
    group.addoption("--devenv-keep", action="store_true", help="leave the stack running after the session")
    group.addoption("--devenv-config", default=None, help="path to devenv.yaml (default: the nearest upwards)")
    group.addoption("--devenv-url", default=None,
                    help="an existing PostgreSQL server, postgresql://USER@HOST:PORT/DB (the password in "
                         "PGPASSWORD or DEVENV_URL, not on the command line): no stack is started")
    group.addoption("--devenv-redis-url", default=None, help="an existing Redis (redis://HOST:PORT), with --devenv-url")
    group.addoption("--devenv-keep-failed", action="store_true", default=None,
                    help="keep a failed test's database (named in its report); the next run drops it")
    for key, (_, env, text) in _SETTINGS.items():
        parser.addini(key, f"devenv: {text}" + (f" (environment: {env})" if env else ""), default="")


def _setting(config: pytest.Config, key: str) -> str | None:
    """A setting: its command-line option, else the ini key, else its environment variable."""
    option, env, _ = _SETTINGS[key]
    value = config.getoption(option)
    if value not in (None, ""):
        return str(value) if value is not True else "true"
    ini = str(config.getini(key) or "").strip()
    if ini:
        if key == "devenv_config" and config.inipath is not None:  # relative to the ini file's directory
            return str(config.inipath.parent / ini)
        return ini
    return (os.environ.get(env) or None) if env else None


def _keep_failed(config: pytest.Config) -> bool:
    return _BOOLS[(_setting(config, "devenv_keep_failed") or "").lower()]


def _source(config: pytest.Config, key: str) -> str:
    """Where a setting's value in effect comes from (_setting's order), as messages name it."""
    option, env, _ = _SETTINGS[key]
    if config.getoption(option) not in (None, ""):
        return option
    if str(config.getini(key) or "").strip():
        return f"ini key {key}" + (f" in {config.inipath}" if config.inipath else "")
    return f"environment variable {env}" if env else option


def _check_settings(config: pytest.Config) -> None:
    """A bad value in the ini file (or its environment variable) is a usage error naming it.

    Only the value in effect is judged: a command-line option overrides a bad ini value (and
    the option's own value is checked by its `choices`)."""
    from devenv.runtime.plan import RUNTIME_NAMES

    for key, allowed in (("devenv_runtime", RUNTIME_NAMES), ("devenv_keep_failed", tuple(_BOOLS))):
        value = _setting(config, key)
        source = _source(config, key)
        if value is None or source.startswith("--"):
            continue
        if (value.lower() if key == "devenv_keep_failed" else value) not in allowed:
            shown = ", ".join(a for a in allowed if a)
            raise pytest.UsageError(f"devenv: {source} = {value!r} is not valid; use one of: {shown}")
    explicit = _setting(config, "devenv_config")
    if explicit and not os.path.isfile(os.path.expanduser(explicit)):
        # Named but missing: never silently replaced by another devenv.yaml or by seeds/.
        raise pytest.UsageError(f"devenv: {_source(config, 'devenv_config')} = {explicit!r}: no such file; "
                                "name an existing devenv.yaml (an ini value is relative to the ini file)")


def pytest_configure(config: pytest.Config) -> None:
    global _config
    config.addinivalue_line("markers", "devenv: uses the devenv stack")
    _check_settings(config)
    _config = config
    if not hasattr(config, "workerinput"):
        # The controller: a fresh id for this run, inherited by its xdist workers (and
        # overwriting one inherited from an outer pytest, as under pytester).
        os.environ[_RUN_ENV] = uuid.uuid4().hex


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller stops the stack if this run started it (workers never do)."""
    from devenv.errors import ConfigError
    from devenv.config.project import state_dir

    config = session.config
    if hasattr(config, "workerinput") or _setting(config, "devenv_url"):
        return  # a worker, or an existing server: nothing was started
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
        if config.stash.get(_ANY_KEPT, False):  # its URL must work: the stack stays up
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"devenv: the stack stays up for the kept database(s); "
                                    f"`devenv down -p {_profile(config)}` stops it")
        elif not config.getoption("--devenv-keep"):
            handle = _load(config)
            assert handle is not None
            handle.down()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """The controller (and a run without xdist) notes a report that kept a database."""
    if any(title == _SECTION for title, _ in report.sections):
        _config.stash[_ANY_KEPT] = True


def _profile(config: pytest.Config) -> str:
    return _setting(config, "devenv_profile") or "ci"


def _config_path(config: pytest.Config) -> "Path":
    """This checkout's devenv.yaml: --devenv-config, else the nearest one upwards from the
    rootdir; DEVENV_CONFIG only where there is none. A DEVENV_CONFIG exported in a shell of
    another checkout (a worktree beside this one) must not point these tests at its database."""
    from devenv.config.project import find_config
    from devenv.errors import ConfigError

    explicit = _setting(config, "devenv_config")
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
    url = _setting(config, "devenv_url")
    if url:
        try:  # a named one (checked to exist at configure), else the nearest upwards
            path: Path | None = _config_path(config)
        except ConfigError:
            if os.environ.get("DEVENV_CONFIG"):
                raise  # named there but missing: never silently the seeds instead
            path = None  # no devenv.yaml anywhere, none named: the seeds under the rootdir
        redis_url = _setting(config, "devenv_redis_url")
        sources = (_source(config, "devenv_url"), _source(config, "devenv_redis_url"))
        return Devenv.on_server(url, config.rootpath, profile, redis_url, path, sources=sources)
    runtime = _setting(config, "devenv_runtime") or "auto"
    try:
        return Devenv.load(config=_config_path(config), profile=profile, runtime=runtime)
    except ConfigError:
        if required:
            raise
        return None


def _worker() -> str | None:
    """This xdist worker's id ("gw0", "gw1", ...), None in a run without workers. From the
    config, not PYTEST_XDIST_WORKER: a pytest started inside a worker inherits that variable."""
    workerinput = getattr(_config, "workerinput", None)
    return workerinput.get("workerid") if workerinput else None


@pytest.fixture(scope="session")
def devenv_stack(pytestconfig: pytest.Config) -> Iterator["Devenv"]:
    """The stack, brought up for this run or reused; the URLs point at this worker's database."""
    from devenv.state import locked

    from devenv.errors import DevenvError, SchemaError

    failure: DevenvError | None = None
    handle: Devenv | None = None
    try:
        handle = _load(pytestconfig)
        assert handle is not None
        lock_dir = handle.stack.state_dir / "pytest"
        with locked(lock_dir):  # workers start together: one of them brings it up
            if handle.external:
                try:
                    handle.prepare()  # the template on the existing server (what `up` does)
                except SchemaError as exc:  # its hint is `devenv up`'s: say what to do here
                    exc.hint = ("fix the step (it ran against the template being built on the server "
                                f"{handle.stack.host}:{handle.stack.postgres.port}), then run pytest again; "
                                "that template was discarded and nothing else on the server was changed.")
                    raise
            else:
                was_running = handle.is_healthy()
                handle.up()
                owner = handle.stack.state_dir / _OWNER_FILE
                if not was_running:
                    owner.write_text(os.environ.get(_RUN_ENV, ""))
            _drop_earlier_kept(handle, lock_dir)
            if handle.external:
                _check_owner(handle, _database_name(handle))
    except DevenvError as exc:  # a bad URL, role or devenv.yaml: its message and hint, no traceback
        failure = exc
    if failure is not None:
        if handle is not None:
            handle.close()
        pytest.fail(f"devenv: {failure}" + (f"\nhint: {failure.hint}" if failure.hint else ""), pytrace=False)
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


def _check_owner(handle: "Devenv", name: str) -> None:
    """On an existing server: this worker's database, if it exists, must be the URL role's (or
    the role a superuser), else every reset would fail on it (the CI role changed)."""
    from devenv.errors import ConfigError

    owner = handle.janitor.owner(name)
    user = handle.stack.postgres.user
    if owner is None or owner == user or handle.janitor.role_attributes()["rolsuper"]:
        return
    raise ConfigError(
        f"database {name} on {handle.stack.host}:{handle.stack.postgres.port} belongs to role '{owner}', "
        f"not to '{user}' of the URL: devenv cannot reset it",
        hint=f"drop it as '{owner}' (or a superuser): DROP DATABASE \"{name}\"; or run the tests as '{owner}'.")


def _drop_earlier_kept(handle: "Devenv", lock_dir: "Path") -> None:
    """Once per run (the first worker to get here, under the lock): drop the databases that
    --devenv-keep-failed kept in earlier runs of this checkout, and only those."""
    run = os.environ.get(_RUN_ENV, "")
    marker = lock_dir / "kept-swept"
    try:
        if marker.read_text() == run:
            return
    except OSError:
        pass
    import warnings

    import psycopg

    for name in handle.janitor.databases(_kept_pattern(handle)):
        if not name.split("_kept_")[-1].startswith(run[:8]):
            try:
                handle.janitor.drop(name)
            except psycopg.errors.InsufficientPrivilege:  # kept by another role (the CI role changed)
                warnings.warn(f"devenv: kept database {name} belongs to role {handle.janitor.owner(name)!r}, "
                              f"not dropped (DROP DATABASE \"{name}\" as that role)", stacklevel=2)
    marker.write_text(run)


def _kept_prefix(handle: "Devenv") -> str:
    return f"{handle.stack.postgres.database}_test"[:40]


def _kept_pattern(handle: "Devenv") -> str:
    return "^" + re.escape(_kept_prefix(handle)) + r"[a-z0-9_]*_kept_[0-9a-f]{8}_[0-9]+$"


def _kept_name(dbname: str, handle: "Devenv") -> str:
    """`<db>_kept_<run>_<n>`, within PostgreSQL's 63 bytes and matching _kept_pattern."""
    stem = _kept_prefix(handle) + dbname[len(_kept_prefix(handle)):][:12]
    return f"{stem}_kept_{os.environ.get(_RUN_ENV, '0' * 8)[:8]}_{next(_kept_counter)}"


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
    # Not in the repr: a failing test's traceback shows its fixtures, and the URLs hold the password.
    url: str = field(repr=False)  # through PgBouncer (direct on an existing server)
    direct_url: str = field(repr=False)  # Postgres itself (LISTEN/NOTIFY, session features)
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

    def _open(self) -> "psycopg.Connection[Any] | None":
        """The connection, unless there is none or the client knows it closed or broken."""
        return None if self.conn is None or self.conn.closed or self.conn.broken else self.conn

    def before_reset(self) -> None:
        if (conn := self._open()) is not None:
            try:
                conn.rollback()
            except Exception:
                self.close()

    def pids(self) -> tuple[int, ...]:
        """The backend pid of the open connection: the reset does not count it as a session
        PgBouncer may hold (it is none of PgBouncer's), so it renews no pool for it. One the
        server ended meanwhile is passed once at most: DISCARD ALL fails on it, and it is reopened."""
        conn = self._open()
        return () if conn is None else (conn.info.backend_pid,)

    def after_reset(self, reopen: Callable[[], "psycopg.Connection[Any]"], strategy: str) -> "psycopg.Connection[Any]":
        if (conn := self._open()) is not None and strategy == "restore":
            try:
                conn.autocommit = True
                conn.execute("DISCARD ALL")
                conn.autocommit = False
                return conn
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
def devenv_db(devenv_stack: "Devenv", _devenv_worker_connection: _WorkerConnection,
              request: pytest.FixtureRequest) -> Iterator[SeededDatabase]:
    """This worker's database, back in the freshly seeded state (reset before the test).

    With --devenv-keep-failed, a test that fails keeps it: after the other fixtures' teardowns
    (they may still use it) it is renamed to the name its report gives, and the next test's
    reset clones a fresh one."""
    name = _database_name(devenv_stack)
    _devenv_worker_connection.before_reset()
    result = devenv_stack.reset(name, redis_db=None, known_sessions=_devenv_worker_connection.pids())
    urls = devenv_stack.urls(name)
    conn = _devenv_worker_connection.after_reset(lambda: devenv_stack.connect(name, prepare_threshold=None),
                                                 result.strategy)
    db = SeededDatabase(name, urls["DATABASE_URL"], urls["DIRECT_DATABASE_URL"], result.strategy, conn, devenv_stack)
    request.node.stash[_GIVEN] = db
    yield db
    kept = request.node.stash.get(_KEPT, None)
    if kept:
        _devenv_worker_connection.close()  # its open transaction, if any, is rolled back: committed data stays
        devenv_stack.janitor.rename_away(name, kept)


@pytest.hookimpl(hookwrapper=True)  # the old style: pytest 7.4 with older pluggy too
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With --devenv-keep-failed, a failure (of the test, or of a fixture set up after devenv_db)
    names the database it keeps in the report: made here, before the report leaves an xdist
    worker; devenv_db's teardown renames the database."""
    outcome = yield
    report = outcome.get_result()
    db = item.stash.get(_GIVEN, None)
    if db is None or not report.failed or call.when not in ("setup", "call") or _KEPT in item.stash:
        return
    if not _keep_failed(item.config):
        return
    kept = item.stash[_KEPT] = _kept_name(db.name, db.handle)
    report.sections.append((_SECTION, _kept_text(db.handle, kept)))


def _kept_text(handle: "Devenv", kept: str) -> str:
    """What a failed test's report says of its kept database.

    On devenv's own stack the URL carries the password: a generated one for a server on
    127.0.0.1 that `devenv env` prints as well, in the developer's own report. On an existing
    server (CI, shared) the password is someone else's: never printed."""
    url = handle.urls(kept)["DIRECT_DATABASE_URL"]
    lines = [f"{kept}: this test's database as it failed (committed data); the next run drops it"]
    if handle.external:
        from devenv.config.external import redact

        lines += [f"  URL: {redact(url)}",
                  "  the password is the one of --devenv-url / devenv_url: PGPASSWORD=... psql \"URL\""]
    else:
        lines += [f"  URL: {url}", f"  open it: psql '{url}'"]
    return "\n".join(lines)


@pytest.fixture
def devenv_redis(devenv_stack: "Devenv") -> Any:
    """A redis-py client on this worker's Redis index, flushed and re-seeded."""
    from devenv.db.reset import reset

    server = devenv_stack.stack.server
    if server is not None and not server.redis_host:
        pytest.fail("devenv_redis: the tests run on an existing server (--devenv-url) and no Redis was given\n"
                    "hint: pass --devenv-redis-url redis://HOST:PORT (or devenv_redis_url in the ini file, "
                    "or DEVENV_REDIS_URL).", pytrace=False)
    index = _redis_index()
    reset(devenv_stack.stack, redis_db=index, janitor=devenv_stack.janitor, redis_only=True)
    return devenv_stack.redis(index)
