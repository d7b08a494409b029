"""Reset cost: devenv against pytest-postgresql and a bare template clone, measured in one run.

1. Per-test overhead through the pytest plugin (`devenv_db`) vs pytest-postgresql's
   `postgresql` fixture on the same server, schema and seed: (T(N tests) - T(1 test)) / (N-1).
   Target: devenv at least 5x less.
2. Python API reset (`Devenv.reset`, connections kept open) vs a bare
   `CREATE DATABASE ... TEMPLATE` over an already-open connection. Target: within 1.3x.
3. `devenv reset` from the CLI vs the API reset plus the CLI's own start-up (`devenv --help`).
4. Reset time at 1k, 100k and 1M generated tasks (`seed_scale`) for each strategy, and the one
   `auto` picks. --scales 1000,100000 skips the slow 1M build.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, make_project  # noqa: E402  (also puts the repo on sys.path)
from _common import timed as run  # noqa: E402


def median_ms(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def per_test_overhead(project: Path, env: dict[str, str], profile: str, tests: int) -> dict[str, float]:
    """Milliseconds of fixture overhead per test, for devenv_db and pytest-postgresql."""
    from devenv.api import Devenv

    handle = Devenv.load(config=project / "devenv.yaml", profile=profile, env=env)
    pg = handle.stack.postgres
    seeds = [str(p) for part in ("schema", "data") for p in sorted((project / "seeds" / part).glob("*.sql"))]
    body = "    with {fixture_conn}.cursor() as cur:\n        assert cur.execute('select count(*) from tasks').fetchone()[0] == 40\n"
    files = {
        "devenv": "def test_{i}(devenv_db):\n" + body.format(fixture_conn="devenv_db.conn"),
        "pytest-postgresql": "def test_{i}(postgresql):\n" + body.format(fixture_conn="postgresql"),
    }
    conftest = textwrap.dedent(f"""
        from pathlib import Path
        from pytest_postgresql import factories
        postgresql_noproc = factories.postgresql_noproc(
            host="127.0.0.1", port={pg.port}, user="{pg.user}", password="{pg.password}",
            dbname="ppg_bench", load=[Path(p) for p in {seeds!r}])
        postgresql = factories.postgresql("postgresql_noproc")
    """)
    out: dict[str, float] = {}
    for name, template in files.items():
        if name == "pytest-postgresql":
            try:
                import pytest_postgresql  # noqa: F401
            except ImportError:
                print("pytest-postgresql not installed: skipping its row (pip install pytest-postgresql)")
                continue
        timings = {}
        for count in (1, tests):
            work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=project))
            (work / "test_bench.py").write_text("\n".join(template.format(i=i) for i in range(count)))
            if name == "pytest-postgresql":
                (work / "conftest.py").write_text(conftest)
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--devenv-profile", profile,
                    "--devenv-keep", str(work)]
            if name == "devenv":
                argv += ["-p", "no:postgresql"]  # keep each run to its own plugin
            else:
                argv += ["-p", "no:devenv"]
                argv.remove("--devenv-profile"), argv.remove(profile), argv.remove("--devenv-keep")
            run(argv, project, env)  # warm: template built once, outside the measurement
            timings[count] = min(run(argv, project, env) for _ in range(3))
        out[name] = (timings[tests] - timings[1]) / (tests - 1) * 1000
    return out


def api_vs_bare(project: Path, env: dict[str, str], profile: str, runs: int) -> dict[str, float]:
    from psycopg import sql

    from devenv.api import Devenv

    handle = Devenv.load(config=project / "devenv.yaml", profile=profile, env=env)
    handle.create_database("bench_api")
    template = handle.janitor.ensure_template()
    out = {"API reset (auto)": median_ms(lambda: handle.reset("bench_api", redis_db=None), runs)}
    for strategy in ("restore", "clone", "copy"):
        out[f"API reset ({strategy})"] = median_ms(lambda: handle.reset("bench_api", strategy=strategy, redis_db=None), runs)
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
    samples_cli = [run(devenv + ["reset", "-p", profile], project, env) for _ in range(runs)]
    samples_help = [run(devenv + ["--help"], project, env) for _ in range(runs)]
    return {"CLI devenv reset": statistics.median(samples_cli) * 1000,
            "CLI devenv --help": statistics.median(samples_help) * 1000}


def scale_table(scales: list[int], profile: str, runs: int) -> list[tuple[int, dict[str, float], str, float]]:
    from devenv.api import Devenv

    rows = []
    for scale in scales:
        extra = f"  bench{scale}:\n    extends: {profile}\n    seed_scale: {scale}\n"
        project, env = make_project("devenv-bench-reset-", extra)
        name = f"bench{scale}"
        devenv = [sys.executable, "-m", "devenv"]
        try:
            build = run(devenv + ["up", "-p", name, "--timeout", "600"], project, env)
            handle = Devenv.load(config=project / "devenv.yaml", profile=name, env=env)
            times = {}
            for strategy in ("restore", "clone", "copy"):
                n = runs if scale <= 100_000 else max(3, runs // 4)
                times[strategy] = median_ms(lambda: handle.reset(strategy=strategy, redis_db=None), n)
            picked = handle.reset(redis_db=None).strategy
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
    try:
        run(devenv + ["up", "-p", args.profile], project, env)
        overhead = per_test_overhead(project, env, args.profile, args.tests)
        api = api_vs_bare(project, env, args.profile, args.runs)
        cli = cli_reset(project, env, args.profile, max(5, args.runs // 2))
    finally:
        subprocess.run(devenv + ["down", "--volumes", "-p", args.profile], cwd=project, env=env, capture_output=True)
        shutil.rmtree(project, ignore_errors=True)

    print(f"profile {args.profile}; medians")
    print("\n1. per-test fixture overhead")
    for name, value in overhead.items():
        print(f"   {name:<32} {value:7.1f} ms/test")
    if len(overhead) == 2:
        ratio = overhead["pytest-postgresql"] / overhead["devenv"]
        print(f"   pytest-postgresql / devenv       {ratio:7.1f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
    print("\n2. API reset vs bare clone")
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
        print("\n4. reset time by data size (ms, median)")
        print(f"   {'tasks':>9} {'restore':>9} {'clone':>9} {'copy':>9}   auto picks   (template build + up)")
        for scale, times, picked, build in scale_table(scales, args.profile, args.runs):
            print(f"   {scale:>9} {times['restore']:>9.1f} {times['clone']:>9.1f} {times['copy']:>9.1f}   {picked:<10}   {build:.1f}s")


if __name__ == "__main__":
    main()
