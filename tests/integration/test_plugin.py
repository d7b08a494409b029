"""The pytest plugin, driven by pytester: real test files, real stacks, with and without xdist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port

pytest_plugins = ["pytester"]

TEST_FILE = '''
import json, os

def _record(devenv_db, devenv_redis, name):
    with open(os.environ["RECORD_DIR"] + "/" + name + "-" + os.environ.get("PYTEST_XDIST_WORKER", "main"), "w") as f:
        json.dump({"db": devenv_db.name, "redis": devenv_redis.connection_pool.connection_kwargs["db"],
                   "strategy": devenv_db.strategy, "env_db": os.environ["DATABASE_URL"].rsplit("/", 1)[1]}, f)

def _check_fresh_and_dirty(devenv_db, devenv_redis, name):
    # Every test starts from the seeded state, whatever the one before did.
    with devenv_db.conn.cursor() as cur:
        assert cur.execute("select count(*) from tasks").fetchone()[0] == 40
        assert cur.execute("select count(*) from users where email like 'dirty%'").fetchone()[0] == 0
        cur.execute("delete from tasks where status = 'done'")
        cur.execute("insert into users (email, password_hash) values ('dirty-" + name + "@x', 'x')")
    devenv_db.conn.commit()
    assert devenv_redis.dbsize() == 0
    devenv_redis.set("dirty", name)
    # The pooled URL reaches the same database, through PgBouncer.
    with devenv_db.connect(pooled=True, autocommit=True) as pooled:
        assert pooled.execute("select count(*) from tasks where status = 'done'").fetchone()[0] == 0
    _record(devenv_db, devenv_redis, name)

def test_one(devenv_db, devenv_redis):
    _check_fresh_and_dirty(devenv_db, devenv_redis, "one")

def test_two(devenv_db, devenv_redis):
    _check_fresh_and_dirty(devenv_db, devenv_redis, "two")

def test_three(devenv_db, devenv_redis):
    with devenv_db.conn.cursor() as cur:
        cur.execute("create table scratch (a int)")  # DDL: the next reset must clone
    devenv_db.conn.commit()
    _check_fresh_and_dirty(devenv_db, devenv_redis, "three")

def test_four(devenv_db, devenv_redis):
    with devenv_db.conn.cursor() as cur:
        assert cur.execute("select to_regclass('scratch')").fetchone()[0] is None
    _check_fresh_and_dirty(devenv_db, devenv_redis, "four")
'''


@pytest.fixture
def plugin_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runtime: str):
    """A pytester directory holding the TaskFlow project, on free ports."""
    shutil.copy(REPO / "devenv.yaml", pytester.path / "devenv.yaml")
    shutil.copytree(REPO / "seeds", pytester.path / "seeds")
    for name in ("POSTGRES", "PGBOUNCER", "REDIS"):
        monkeypatch.setenv(f"DEVENV_{name}_PORT", str(free_port()))
    for name in ("DEVENV_PROFILE", "DEVENV_CONFIG", "DATABASE_URL", "DIRECT_DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("RECORD_DIR", str(records))
    pytester.makepyfile(test_taskflow=TEST_FILE)
    yield pytester, records
    pytester.run("python", "-m", "devenv", "down", "--volumes", "-p", "ci", "--runtime", runtime)


def _records(records: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in records.iterdir()}


def test_each_test_gets_a_freshly_seeded_database_and_clean_redis(plugin_project, runtime: str) -> None:
    pytester, records = plugin_project
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devenv-runtime", runtime, "-v")
    result.assert_outcomes(passed=4)
    seen = _records(records)
    assert {r["db"] for r in seen.values()} == {"taskflow_test"}
    assert {r["redis"] for r in seen.values()} == {1}
    assert {r["env_db"] for r in seen.values()} == {"taskflow_test"}
    # After DDL (test_three) the reset copied the template (FILE_COPY on ci, no fsync); otherwise it restored in place.
    assert seen["four-main"]["strategy"] in ("clone", "copy")
    assert seen["two-main"]["strategy"] == "restore"


def test_the_stack_started_by_the_run_is_stopped_unless_kept(plugin_project, runtime: str) -> None:
    from devenv.api import Devenv

    pytester, _ = plugin_project
    pytester.runpytest_subprocess("--devenv-runtime", runtime, "-k", "one").assert_outcomes(passed=1)
    handle = Devenv.load(config=pytester.path / "devenv.yaml", profile="ci", runtime=runtime)
    assert not handle.is_healthy(), "the run started the stack, so it should have stopped it"
    pytester.runpytest_subprocess("--devenv-runtime", runtime, "--devenv-keep", "-k", "one").assert_outcomes(passed=1)
    assert handle.is_healthy(), "--devenv-keep leaves the stack running"
    # Already running before the run: reused, and left running.
    pytester.runpytest_subprocess("--devenv-runtime", runtime, "-k", "two").assert_outcomes(passed=1)
    assert handle.is_healthy()


def test_xdist_workers_get_their_own_database_and_redis_index(plugin_project, runtime: str) -> None:
    pytest.importorskip("xdist")
    pytester, records = plugin_project
    # Every test on both workers at once: shared data would break their fresh-state checks.
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each", "--devenv-runtime", runtime, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    seen = _records(records)
    by_worker = {name.rsplit("-", 1)[1]: r for name, r in seen.items()}
    assert set(by_worker) == {"gw0", "gw1"}, seen
    assert by_worker["gw0"]["db"] == "taskflow_test_gw0" and by_worker["gw1"]["db"] == "taskflow_test_gw1"
    assert by_worker["gw0"]["redis"] != by_worker["gw1"]["redis"]
    assert all(r["env_db"] == r["db"] for r in seen.values())


def test_the_reused_connection_runs_the_same_query_in_many_tests(plugin_project, runtime: str) -> None:
    """psycopg prepares a query run five times; DISCARD ALL between tests must not break the sixth."""
    pytester, _ = plugin_project
    pytester.makepyfile(test_repeat="\n".join(
        f"def test_{i}(devenv_db):\n"
        f"    assert devenv_db.conn.execute('select count(*) from tasks').fetchone()[0] == 40\n"
        f"    devenv_db.conn.execute('delete from tasks where status = %s', ('done',))\n"
        f"    devenv_db.conn.commit()\n"
        for i in range(8)))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devenv-runtime", runtime, "test_repeat.py")
    result.assert_outcomes(passed=8)
