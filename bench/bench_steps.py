"""A second `devenv up` with nothing changed, when Alembic is the schema step: it must not run
the migration tool and stay within 1.5x `devenv --help` (the no-op `up` hashes the steps'
inputs, listed by the last full `up`, and returns before loading the stack).

Also times the full `up` that a new migration file causes (the template built through Alembic,
the working database brought forward in a copy) next to the first one, and the per-test reset
(the API's, as the pytest plugin's fixtures do it: a one-row write, then `reset`) of this project
against the same project with its schema from SQL files (target within 1.2x): the reset checks
the steps' files by stat to know the template's name is current.

    python bench/bench_steps.py [--runs 11] [--resets 200] [--tests 30]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import after_deletes, make_project, print_disk_facts, timed  # noqa: E402
from bench_reset import RECORDER  # noqa: E402  (records each test's setup + teardown from inside pytest)

ENV_PY = """\
import os
from alembic import context
from sqlalchemy import create_engine

with open(os.path.join(os.path.dirname(__file__), "..", "ran.log"), "a") as marker:
    marker.write("ran\\n")
url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
with create_engine(url).connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""


def migration(number: int, body: str) -> str:
    previous = repr(f"{number - 1:03d}") if number > 1 else "None"
    return (f"from alembic import op\nimport sqlalchemy as sa\n\nrevision = '{number:03d}'\n"
            f"down_revision = {previous}\n\n\ndef upgrade():\n    {body}\n")


def per_test_resets(projects: dict[str, tuple[Path, dict[str, str]]], count: int) -> dict[str, list[float]]:
    """Seconds of `write one row; Janitor.reset()` per project, interleaved, as a test's teardown."""
    import os
    import time

    from devenv.api import Devenv

    handles = {}
    for label, (root, env) in projects.items():
        saved = dict(os.environ)
        os.environ.update({k: v for k, v in env.items() if k.startswith("DEVENV_")})
        try:
            handles[label] = Devenv.load(config=root / "devenv.yaml", profile="dev", runtime="native")
        finally:
            os.environ.clear()
            os.environ.update(saved)
    out: dict[str, list[float]] = {label: [] for label in handles}
    for _ in range(count):
        for label, handle in handles.items():
            with handle.connect() as conn:
                conn.execute("INSERT INTO t (x) VALUES (1)")
                conn.commit()
            start = time.perf_counter()
            handle.reset()
            out[label].append(time.perf_counter() - start)
    return out


TEST_BODIES = {
    "read": "    devenv_db.conn.execute('select count(*) from t').fetchone()\n",
    "write": "    devenv_db.conn.execute('insert into t (x) values (1)')\n    devenv_db.conn.commit()\n",
}


def plugin_per_test(projects: dict[str, tuple[Path, dict[str, str]]], tests: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    """Seconds of the plugin's setup + teardown per test (`devenv_db`), each test but the first
    of a pytest run of `tests`, per project and test kind; runs interleaved."""
    import json
    import tempfile

    out: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for label, (root, env) in projects.items():
            for body, code in TEST_BODIES.items():
                work = Path(tempfile.mkdtemp(prefix="bench-tests-", dir=root))
                (work / "test_bench.py").write_text("\n".join(f"def test_{i}(devenv_db):\n{code}" for i in range(tests)))
                (work / "conftest.py").write_text(RECORDER)
                phases = work / "phases.json"
                timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:postgresql", str(work),
                       "--devenv-profile", "dev", "--devenv-runtime", "native", "--devenv-keep",
                       "--devenv-config", str(root / "devenv.yaml")], root, {**env, "BENCH_PHASES": str(phases)})
                out.setdefault((label, body), []).extend(json.loads(phases.read_text())[1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--resets", type=int, default=200)
    parser.add_argument("--tests", type=int, default=30, help="tests per pytest run for the plugin's per-test cost")
    args = parser.parse_args()
    sql_project, sql_env = make_project("devenv-bench-sql-")
    sql_env["DEVENV_NO_CACHE"] = "1"
    with (sql_project / "seeds" / "schema" / "900_t.sql").open("w") as handle:
        handle.write("CREATE TABLE t (id serial PRIMARY KEY, x int);\n")
    project, env = make_project("devenv-bench-steps-")
    env["DEVENV_NO_CACHE"] = "1"  # the first `up` builds the template through Alembic, never from the cache
    (project / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    versions = project / "migrations" / "versions"
    versions.mkdir(parents=True)
    (project / "migrations" / "env.py").write_text(ENV_PY)
    (versions / "001.py").write_text(migration(1, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))'))
    with (project / "devenv.yaml").open("a") as config:
        config.write("\nschema:\n  - run: alembic upgrade head\n    inputs: [alembic.ini, migrations]\nseed: []\n")
    devenv = [sys.executable, "-m", "devenv"]
    prof = ["--profile", "dev", "--runtime", "native"]
    from devenv.api import Devenv
    from devenv.runtime.native import NativeRuntime

    stack = Devenv.load(config=project / "devenv.yaml", profile="dev", env=env).stack
    data = print_disk_facts({"devenv data": NativeRuntime(env).layout(stack).pgdata})["devenv data"]
    samples: dict[str, list[float]] = {}
    try:
        first = timed(devenv + ["up", *prof], project, env)
        runs_after_first = len((project / "ran.log").read_text().splitlines())
        timed(devenv + ["up", *prof], sql_project, sql_env)
        for _ in range(args.runs):  # interleaved, so that all see the same machine
            samples.setdefault("devenv up (no-op, alembic step)", []).append(timed(devenv + ["up", *prof], project, env))
            samples.setdefault("devenv up (no-op, sql files)", []).append(timed(devenv + ["up", *prof], sql_project, sql_env))
            samples.setdefault("devenv --help", []).append(timed(devenv + ["--help"], project, env))
        ran = len((project / "ran.log").read_text().splitlines()) - runs_after_first
        (versions / "002.py").write_text(migration(2, 'op.add_column("t", sa.Column("x", sa.Integer))'))
        migrate = timed(devenv + ["up", *prof], project, env)
        both = {"alembic step": (project, env), "sql files": (sql_project, sql_env)}
        resets = per_test_resets(both, args.resets)
        plugin = plugin_per_test(both, args.tests, rounds=3)
    finally:
        for where, variables in ((project, env), (sql_project, sql_env)):
            subprocess.run(devenv + ["down", "--volumes", *prof], cwd=where, env=variables, capture_output=True)
            shutil.rmtree(where, ignore_errors=True)
    med = {key: statistics.median(values) for key, values in samples.items()}
    print(f"native runtime, profile dev, {args.runs} runs")
    for key, values in samples.items():
        print(f"{key:<34} median {med[key] * 1000:6.0f}ms  min {min(values) * 1000:6.0f}ms  max {max(values) * 1000:6.0f}ms")
    print(f"{'first up (template via alembic)':<34} {first * 1000:6.0f}ms")
    # It drops the template (its files deleted) and builds another right away.
    print(f"{'up after a new migration file':<34} {migrate * 1000:6.0f}ms  {after_deletes(data)}".rstrip())
    for label, values in resets.items():
        print(f"{'reset after a write (' + label + ')':<34} median {statistics.median(values) * 1000:6.2f}ms")
    reset_ratio = statistics.median(resets["alembic step"]) / statistics.median(resets["sql files"])
    print(f"per-test reset, alembic step / sql files: {reset_ratio:.2f}x (target < 1.2x: "
          f"{'met' if reset_ratio < 1.2 else 'NOT met'})")
    for body in TEST_BODIES:
        values = {label: statistics.median(plugin[(label, body)]) for label in ("alembic step", "sql files")}
        ratio = values["alembic step"] / values["sql files"]
        print(f"plugin per-test setup+teardown, {body} tests: alembic step {values['alembic step'] * 1000:.2f}ms, "
              f"sql files {values['sql files'] * 1000:.2f}ms: {ratio:.2f}x (target < 1.2x: {'met' if ratio < 1.2 else 'NOT met'})")
    ratio = med["devenv up (no-op, alembic step)"] / med["devenv --help"]
    print(f"no-op up / devenv --help: {ratio:.2f}x (target < 1.5x: {'met' if ratio < 1.5 else 'NOT met'}); "
          f"alembic ran {ran} time(s) during the no-op runs (target 0: {'met' if ran == 0 else 'NOT met'})")


if __name__ == "__main__":
    main()
