"""Reset cost: devenv against pytest-postgresql and a bare template clone, measured in one run.

1. Per-test overhead through the pytest plugin (`devenv_db`) vs pytest-postgresql's
   `postgresql` fixture on the same server, schema and seed: each test's setup + teardown
   time as pytest reports it (median over N tests x 3 runs, the first test of each run left
   out), for tests that only read and tests that write; a fixture-less test shows pytest's own
   share. Target: devenv at least 5x less.
2. Python API reset (`Devenv.reset`, connections kept open) after a test-like write (one row of
   tasks), and with nothing written, vs a bare `CREATE DATABASE ... TEMPLATE` over an
   already-open connection. Target: within 1.3x.
3. `devenv reset` from the CLI vs the API reset plus the CLI's own start-up (`devenv --help`).
4. Reset time at 1k, 100k and 1M generated tasks (`seed_scale`) for each strategy, each reset
   after a one-row write to tasks over a new connection, and the one `auto` picks; the restore
   after the same write over a connection kept open, as the plugin's tests write (the reset is
   told of it: `known_sessions`); the in-place restore (by key) and
   `auto` after a test that updates or inserts 1,000 rows. Targets: after a one-row write
   under 3 ms at 100k and under 5 ms at 1M; after 1,000 rows written under 20 ms at 1M.
   --scales 1000,100000 skips the slow 1M build (about 5 minutes on 2 cores).
5. What the key logs cost a test's own writes: a 10,000-row INSERT into tasks in a database
   with them vs a copy without them (its key triggers dropped), interleaved, each rolled back.
   Target: at most 1.3x.

    python bench/bench_reset.py [--profile ci] [--tests 60] [--scales 1000,100000,1000000]

Needs `pip install pytest-postgresql` for (1); without it that row is skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, after_deletes, make_project, print_disk_facts  # noqa: E402  (also puts the repo on sys.path)
from _common import timed as run  # noqa: E402


def median_ms(fn, runs: int, before=None) -> float:
    """Median milliseconds of `fn()`; `before()` runs untimed ahead of each call."""
    samples = []
    for _ in range(runs):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


# Records each test's setup + teardown time (the fixtures' whole cost) from inside pytest: the
# difference between whole runs of N and 1 tests drowned in the start-up noise of a busy machine.
RECORDER = textwrap.dedent("""
    import json, os
    _phases = {}
    def pytest_runtest_logreport(report):
        if report.when in ("setup", "teardown"):
            _phases[report.nodeid] = _phases.get(report.nodeid, 0.0) + report.duration
    def pytest_sessionfinish(session):
        with open(os.environ["BENCH_PHASES"], "w") as out:
            json.dump(list(_phases.values()), out)
""")
TEST_BODIES = {  # what a test does with its connection: only read, or change a few rows
    "read": "    assert {conn}.execute('select count(*) from tasks').fetchone()[0] == 40\n",
    "write": "    assert {conn}.execute('select count(*) from tasks').fetchone()[0] == 40\n"
             "    {conn}.execute(\"update tasks set status = 'done' where status = 'todo'\")\n"
             "    {conn}.execute(\"insert into users (email, password_hash) values ('bench@x', 'x')\")\n"
             "    {conn}.commit()\n",
}


def per_test_overhead(project: Path, env: dict[str, str], profile: str, tests: int, rounds: int = 3) -> dict[str, float]:
    """Median milliseconds of setup + teardown per test (the first test of a run excluded: it
    brings up or connects to the server), for devenv_db, pytest-postgresql and no fixture."""
    import json

    from devenv.api import Devenv

    handle = Devenv.load(config=project / "devenv.yaml", profile=profile, env=env)
    pg = handle.stack.postgres
    seeds = [str(p) for part in ("schema", "data") for p in sorted((project / "seeds" / part).glob("*.sql"))]
    # pytest-postgresql as it is used: with a superuser (devenv's admin role; the application's
    # is none), which its janitor needs to end autovacuum workers on its template.
    ppg_conftest = textwrap.dedent(f"""
        from pathlib import Path
        from pytest_postgresql import factories
        postgresql_noproc = factories.postgresql_noproc(
            host="127.0.0.1", port={pg.port}, user="{pg.admin_user}", password="{pg.admin_password}",
            dbname="ppg_bench", load=[Path(p) for p in {seeds!r}])
        postgresql = factories.postgresql("postgresql_noproc")
    """)
    try:
        import pytest_postgresql  # noqa: F401
        fixtures = {"devenv_db": "devenv_db.conn", "pytest-postgresql": "postgresql", "no fixture": ""}
    except ImportError:
        print("pytest-postgresql not installed: skipping its row (pip install pytest-postgresql)")
        fixtures = {"devenv_db": "devenv_db.conn", "no fixture": ""}
    variants = {(name, body) for name in fixtures for body in TEST_BODIES if name != "no fixture"} | {("no fixture", "read")}
    samples: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    for _ in range(rounds):  # rounds interleave the variants, so that a busy spell hits them all
        for name, body in sorted(variants):
            work = Path(tempfile.mkdtemp(prefix="bench-tests-", dir=project))
            conn = fixtures[name]
            arg = {"devenv_db": "devenv_db", "pytest-postgresql": "postgresql", "no fixture": ""}[name]
            code = TEST_BODIES[body].format(conn=conn) if conn else "    pass\n"
            (work / "test_bench.py").write_text("\n".join(f"def test_{i}({arg}):\n{code}" for i in range(tests)))
            (work / "conftest.py").write_text(RECORDER + (ppg_conftest if name == "pytest-postgresql" else ""))
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(work)]
            if name == "pytest-postgresql":
                argv += ["-p", "no:devenv"]
            else:
                argv += ["-p", "no:postgresql", "--devenv-profile", profile, "--devenv-keep"]
            phases = work / "phases.json"
            run(argv, project, {**env, "BENCH_PHASES": str(phases)})
            samples[(name, body)] += json.loads(phases.read_text())[1:]
    return {f"{name} ({body})": statistics.median(values) * 1000 for (name, body), values in sorted(samples.items())}


# What a typical test does before the reset: change a row of tasks (the big table).
ONE_ROW = "UPDATE tasks SET status = 'done' WHERE id = (SELECT id FROM tasks ORDER BY id LIMIT 1)"


def write_one_row(handle, database: str | None = None) -> None:
    """ONE_ROW over a new connection, closed after."""
    with handle.connect(database, autocommit=True) as conn:
        conn.execute(ONE_ROW)


WRITES = {  # a test that writes 1,000 rows of tasks
    "1,000 updated": "UPDATE tasks SET status = 'done' WHERE id IN (SELECT id FROM tasks ORDER BY id LIMIT 1000)",
    "1,000 inserted": "INSERT INTO tasks (user_id, title) SELECT (SELECT id FROM users ORDER BY id LIMIT 1), "
                      "'bench ' || i FROM generate_series(1, 1000) i",
}
INSERT_10K = ("INSERT INTO tasks (user_id, title, description, metadata) SELECT (SELECT id FROM users ORDER BY id LIMIT 1), "
              "'bench ' || i, 'row ' || i, jsonb_build_object('i', i) FROM generate_series(1, 10000) i")


def tracking_cost(handle, runs: int) -> tuple[float, float]:
    """Medians (ms) of a 10,000-row insert into tasks with the key logs and without (a copy of the
    database whose key triggers are dropped), interleaved, each rolled back."""
    from psycopg import sql

    bare = "bench_untracked"
    handle.janitor.drop(bare)
    handle.janitor.copy_live(handle.stack.postgres.database, bare)
    samples: dict[str, list[float]] = {"tracked": [], "untracked": []}
    try:
        with handle.connect(bare, autocommit=True) as conn:
            for event in ("insert", "update", "delete"):
                conn.execute(sql.SQL("DROP TRIGGER devenv_keys_{} ON tasks".format(event)))
        with handle.connect(autocommit=True) as tracked, handle.connect(bare, autocommit=True) as untracked:
            for _ in range(runs):
                for name, conn in (("tracked", tracked), ("untracked", untracked)):
                    with conn.transaction(force_rollback=True):
                        start = time.perf_counter()
                        conn.execute(INSERT_10K)
                        samples[name].append(time.perf_counter() - start)
    finally:
        handle.janitor.drop(bare)
    return statistics.median(samples["tracked"]) * 1000, statistics.median(samples["untracked"]) * 1000


def api_vs_bare(project: Path, env: dict[str, str], profile: str, runs: int) -> dict[str, float]:
    from psycopg import sql

    from devenv.api import Devenv

    handle = Devenv.load(config=project / "devenv.yaml", profile=profile, env=env)
    handle.create_database("bench_api")
    template = handle.janitor.ensure_template()
    write = lambda: write_one_row(handle, "bench_api")  # noqa: E731
    out = {"API reset (auto)": median_ms(lambda: handle.reset("bench_api", redis_db=None), runs, before=write),
           "API reset (auto), nothing written": median_ms(lambda: handle.reset("bench_api", redis_db=None), runs)}
    for strategy in ("restore", "clone", "copy"):
        out[f"API reset ({strategy})"] = median_ms(
            lambda: handle.reset("bench_api", strategy=strategy, redis_db=None), runs, before=write)
    counter = iter(range(10**6))
    with handle.connect("postgres", autocommit=True) as conn:
        names = []

        def bare() -> None:
            name = f"bench_bare_{next(counter)}"
            names.append(name)
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))

        # PostgreSQL 15+ defaults to WAL_LOG, as devenv's clone does.
        out["bare CREATE DATABASE ... TEMPLATE"] = median_ms(bare, runs)
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(template)))
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true").format(sql.Identifier(template)))
    handle.close()
    return out


def cli_reset(project: Path, env: dict[str, str], profile: str, runs: int) -> dict[str, float]:
    devenv = [sys.executable, "-m", "devenv"]
    samples_cli, samples_help = [], []
    for _ in range(runs):  # interleaved: a noisy neighbour slows both alike
        samples_cli.append(run(devenv + ["reset", "-p", profile], project, env))
        samples_help.append(run(devenv + ["--help"], project, env))
    return {"CLI devenv reset": statistics.median(samples_cli) * 1000,
            "CLI devenv --help": statistics.median(samples_help) * 1000}


def scale_table(scales: list[int], profile: str, runs: int) -> list[tuple[int, dict[str, Any], str, float]]:
    from devenv.api import Devenv

    rows = []
    for scale in scales:
        extra = f"  bench{scale}:\n    extends: {profile}\n    seed_scale: {scale}\n"
        project, env = make_project("devenv-bench-reset-", extra)
        env["DEVENV_NO_CACHE"] = "1"  # the cold-start cache would archive gigabytes at 1M, which is not measured here
        name = f"bench{scale}"
        devenv = [sys.executable, "-m", "devenv"]
        try:
            print(f"building {scale} tasks ...", file=sys.stderr, flush=True)
            build = run(devenv + ["up", "-p", name, "--timeout", "3600"], project, env)
            handle = Devenv.load(config=project / "devenv.yaml", profile=name, env=env)
            times = {}
            write = lambda: write_one_row(handle)  # noqa: E731
            # A restore costs milliseconds at any scale: as many samples everywhere. A clone or
            # copy of a big template costs up to a second each: fewer.
            n = runs if scale <= 1_000 else 5 if scale <= 100_000 else 3
            for strategy in ("restore", "clone", "copy"):
                times[strategy] = median_ms(lambda: handle.reset(strategy=strategy, redis_db=None),
                                            runs if strategy == "restore" else n, before=write)
            # The plugin's way: the test writes over the connection kept from test to test, which
            # the reset knows (known_sessions). write_one_row opens a new one per write, as a test
            # with a connection of its own does: any connection opened and closed just before
            # costs the reset ~0.5 ms, whether it wrote or not.
            with handle.connect(autocommit=True) as kept:
                pid = (kept.info.backend_pid,)
                times["restore, kept connection"] = median_ms(
                    lambda: handle.reset(strategy="restore", redis_db=None, known_sessions=pid), runs,
                    before=lambda: kept.execute(ONE_ROW))
            write()
            picked = handle.reset(redis_db=None).strategy
            for label, statement in WRITES.items():
                def write_many(statement: str = statement) -> None:
                    with handle.connect(autocommit=True) as conn:
                        conn.execute(statement)
                times[f"restore, {label}"] = median_ms(lambda: handle.reset(strategy="restore", redis_db=None), runs,
                                                       before=write_many)
                times[f"auto, {label}"] = median_ms(lambda: handle.reset(redis_db=None), n, before=write_many)
                write_many()
                times[f"auto picks, {label}"] = handle.reset(redis_db=None).strategy
            times["tracked"], times["untracked"] = tracking_cost(handle, max(n, 5))
            handle.close()
            rows.append((scale, times, picked, build))
        finally:
            subprocess.run(devenv + ["down", "--volumes", "-p", name], cwd=project, env=env, capture_output=True)
            shutil.rmtree(project, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--tests", type=int, default=60)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--scales", default="1000,100000,1000000")
    args = parser.parse_args()

    project, env = make_project("devenv-bench-reset-")
    devenv = [sys.executable, "-m", "devenv"]
    os.environ.update({k: v for k, v in env.items() if k.startswith("DEVENV_")})
    from devenv.api import Devenv
    from devenv.runtime.native import NativeRuntime

    stack = Devenv.load(config=project / "devenv.yaml", profile=args.profile, env=env).stack
    data = print_disk_facts({"devenv data": NativeRuntime(env).layout(stack).pgdata})["devenv data"]
    try:
        run(devenv + ["up", "-p", args.profile], project, env)
        overhead = per_test_overhead(project, env, args.profile, args.tests)
        api = api_vs_bare(project, env, args.profile, args.runs)
        cli = cli_reset(project, env, args.profile, max(5, args.runs // 2))
    finally:
        subprocess.run(devenv + ["down", "--volumes", "-p", args.profile], cwd=project, env=env, capture_output=True)
        shutil.rmtree(project, ignore_errors=True)

    print(f"profile {args.profile}; medians")
    print(f"\n1. per-test setup + teardown ({args.tests} tests x 3 runs, first test of each run excluded)")
    for name, value in overhead.items():
        print(f"   {name:<32} {value:7.2f} ms/test")
    for body in TEST_BODIES:
        if f"pytest-postgresql ({body})" in overhead:
            ratio = overhead[f"pytest-postgresql ({body})"] / overhead[f"devenv_db ({body})"]
            print(f"   pytest-postgresql / devenv_db, {body + ' tests':<11} {ratio:6.1f}x  "
                  f"(target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    print("\n2. API reset vs bare clone")
    if after_deletes(data):  # each drops a database, then creates one
        print(f"   clone, copy and the bare clone {after_deletes(data)}")
    for name, value in api.items():
        print(f"   {name:<36} {value:7.1f} ms")
    ratio = api["API reset (auto)"] / api["bare CREATE DATABASE ... TEMPLATE"]
    print(f"   API reset / bare clone               {ratio:7.2f}x  (target <= 1.3x: {'met' if ratio <= 1.3 else 'NOT met'})")
    print("\n3. CLI reset")
    budget = api["API reset (auto)"] + cli["CLI devenv --help"]
    for name, value in cli.items():
        print(f"   {name:<36} {value:7.1f} ms")
    print(f"   CLI reset / (API reset + --help)     {cli['CLI devenv reset'] / budget:7.2f}x  (target <= 1x)")

    scales = [int(s) for s in args.scales.split(",") if s]
    if scales:
        print("\n4. reset time by data size (ms, median); restore = in place, by key where tables have one")
        print(f"   {'tasks':>9} {'restore':>9} {'clone':>9} {'copy':>9}   auto picks   (template build + up)")
        if after_deletes(data):  # clone and copy drop a database and create one; each build follows a `down --volumes`
            print(f"   clone, copy and the builds {after_deletes(data)}")
        table = scale_table(scales, args.profile, args.runs)
        for scale, times, picked, build in table:
            print(f"   {scale:>9} {times['restore']:>9.1f} {times['clone']:>9.1f} {times['copy']:>9.1f}   {picked:<10}   {build:.1f}s")
        targets = {100_000: 3.0, 1_000_000: 5.0}
        for scale, times, _, _ in table:
            if scale in targets:
                for how, value in (("a new connection per write", times["restore"]),
                                   ("a kept connection, as the plugin", times["restore, kept connection"])):
                    met = value < targets[scale]
                    print(f"   {scale:>9} one-row write over {how}, restore {value:.1f} ms "
                          f"(target < {targets[scale]:g} ms: {'met' if met else 'NOT met'})")
        print("\n   after a test that writes 1,000 rows of tasks (ms, median)")
        for scale, times, _, _ in table:
            for label in WRITES:
                line = (f"   {scale:>9} {label:<15} restore {times[f'restore, {label}']:7.1f}   "
                        f"auto {times[f'auto, {label}']:7.1f} ({times[f'auto picks, {label}']})")
                if scale == 1_000_000:
                    met = times[f"restore, {label}"] < 20
                    line += f"   (target < 20 ms: {'met' if met else 'NOT met'})"
                print(line)
        print("\n5. the key logs' cost on a 10,000-row insert into tasks (ms, median, rolled back)")
        for scale, times, _, _ in table:
            ratio = times["tracked"] / times["untracked"]
            print(f"   {scale:>9} tracked {times['tracked']:7.1f}   untracked {times['untracked']:7.1f}   "
                  f"{ratio:5.2f}x  (target <= 1.3x: {'met' if ratio <= 1.3 else 'NOT met'})")

if __name__ == "__main__":
    main()
