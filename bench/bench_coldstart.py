"""Cold `devenv up -p ci` from the cache vs from scratch vs the peers, measured in one run.

- devenv from the cache: `down --volumes`, then `up` restores the seeded data directory.
- devenv from scratch: the same with DEVENV_NO_CACHE=1 (initdb, schema, seed).
- pytest-postgresql's server fixture (`postgresql_proc`): what it does, timed directly
  (initdb, `pg_ctl start -w`, first connection); the fixture itself refuses to run as root.
- testcontainers' PostgresContainer (Docker; Ryuk off, no registry) when installed and an
  engine answers, on the local test image.
Target: from the cache, the whole stack healthy and seeded at least 5x faster than
testcontainers' single Postgres container.

    python bench/bench_coldstart.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (also puts the repo on sys.path)
    after_deletes, engine_data_root, free_port, make_project, print_disk_facts, timed)


def pytest_postgresql_equivalent(bindir: Path) -> float:
    """initdb + pg_ctl start -w + first connection, as pytest-postgresql's postgresql_proc does."""
    import psycopg

    user: dict = {}
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam("postgres")
        user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    scratch = Path(tempfile.mkdtemp(prefix="bench-ppg-"))
    if user:
        os.chown(scratch, user["user"], user["group"])
    port = free_port()
    start = time.perf_counter()
    try:
        subprocess.run([str(bindir / "initdb"), "-D", str(scratch / "data"), "-U", "postgres", "-A", "trust"],
                       check=True, capture_output=True, **user)
        subprocess.run([str(bindir / "pg_ctl"), "start", "-w", "-D", str(scratch / "data"), "-l", str(scratch / "log"),
                        "-o", f"-p {port} -k {scratch} -c listen_addresses=127.0.0.1"], check=True, capture_output=True, **user)
        psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
        return time.perf_counter() - start
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(scratch / "data")],
                       capture_output=True, **user)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    project, env = make_project("devenv-bench-cold-")
    env["DEVENV_CACHE_DIR"] = str(project / "cache")
    no_cache = {**env, "DEVENV_NO_CACHE": "1"}
    devenv = [sys.executable, "-m", "devenv"]
    up = devenv + ["up", "-p", "ci", "--runtime", "native"]
    down = devenv + ["down", "--volumes", "-p", "ci", "--runtime", "native"]

    from devenv.api import Devenv
    from devenv.runtime.native import NativeRuntime

    stack = Devenv.load(config=project / "devenv.yaml", profile="ci", env=env).stack
    runtime = NativeRuntime(env)
    bindir = Path(runtime.binaries(stack).postgres).parent
    image = os.environ.get("DEVENV_POSTGRES_IMAGE", "devenv-test/postgres:15")
    # Each row creates its files right after deletions (`down --volumes`, the fixture's rmtree of
    # its previous run, a container removed with its volume): marked where the disk has the trap.
    places = {"devenv -p ci data": runtime.layout(stack).pgdata, "devenv cache": env["DEVENV_CACHE_DIR"],
              "pytest-postgresql": tempfile.gettempdir()}
    try:
        from devenv.runtime.dockerapi import connect
        from devenv.runtime.engine import find_endpoint

        endpoint = find_endpoint()
        root = engine_data_root(connect(endpoint)) if endpoint else None
        if root:
            places["Docker volumes"] = root
    except Exception:  # no engine, no SDK: the Docker rows say why below
        pass
    facts = print_disk_facts(places)
    notes = {  # row -> the places its creations write to
        "devenv up -p ci, from the cache": after_deletes(facts["devenv -p ci data"]),
        "devenv up -p ci, from scratch": after_deletes(facts["devenv -p ci data"]),
        "pytest-postgresql server (initdb + pg_ctl -w)": after_deletes(facts["pytest-postgresql"]),
    }
    if "Docker volumes" in facts:
        notes["testcontainers PostgresContainer"] = after_deletes(facts["Docker volumes"])
        notes["devenv up --runtime docker -p dev, from the cache"] = after_deletes(facts["Docker volumes"])

    samples: dict[str, list[float]] = {}
    add = lambda key, value: value is not None and samples.setdefault(key, []).append(value)  # noqa: E731
    try:
        timed(up, project, env)  # the first up of this setup fills the cache
        timed(down, project, env)
        for _ in range(args.runs):
            add("devenv up -p ci, from the cache", timed(up, project, env))
            timed(down, project, env)
            add("devenv up -p ci, from scratch", timed(up, project, no_cache))
            timed(down, project, env)
            add("pytest-postgresql server (initdb + pg_ctl -w)", pytest_postgresql_equivalent(bindir))
        try:
            from bench_docker import bench_testcontainers

            for _ in range(min(args.runs, 3)):
                add("testcontainers PostgresContainer", bench_testcontainers(image))
        except Exception as exc:  # no engine, no image, no testcontainers: say so, keep the rest
            print(f"testcontainers not measured: {exc}")
        try:  # Docker: the seeded volume restored from the cache (dev profile: the ci one is on tmpfs)
            from bench_docker import bench_docker_cold_from_cache

            for value in bench_docker_cold_from_cache(min(args.runs, 3)):
                add("devenv up --runtime docker -p dev, from the cache", value)
        except Exception as exc:
            print(f"Docker from the cache not measured: {exc}")
    finally:
        subprocess.run(down, cwd=project, env=env, capture_output=True)
        shutil.rmtree(project, ignore_errors=True)

    medians = {key: statistics.median(values) for key, values in samples.items()}
    print(f"cold start, {args.runs} runs (medians; PostgreSQL from {bindir})")
    for key, value in medians.items():
        print(f"  {key:<48} {value * 1000:8.0f} ms  {notes.get(key, '')}".rstrip())
    cached = medians["devenv up -p ci, from the cache"]
    print(f"  from scratch / from the cache                    {medians['devenv up -p ci, from scratch'] / cached:8.2f}x")
    if "testcontainers PostgresContainer" in medians:
        ratio = medians["testcontainers PostgresContainer"] / cached
        print(f"  testcontainers / devenv from the cache           {ratio:8.2f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
        docker_cached = medians.get("devenv up --runtime docker -p dev, from the cache")
        if docker_cached:
            ratio = medians["testcontainers PostgresContainer"] / docker_cached
            print(f"  testcontainers / devenv on Docker from the cache {ratio:8.2f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
