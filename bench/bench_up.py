"""`devenv up` on the native runtime against the floors of its parts, measured in the same run.

Floors: initdb; postgres spawned directly until the first connection; schema + seed applied
with psycopg; pgbouncer and redis-server until they first answer. devenv: the first-ever
`up` (initdb, three servers, schema, seed, healthy, and saving the seeded-data cache, into an
empty DEVENV_CACHE_DIR each run), a cold `up` with existing data, a no-op
`up`, and `devenv --help`. Prints medians and the ratios against the targets:
first-ever < 2x the sum of the floors; cold < 3x (start + health floors); no-op < 1.5x --help.

    python bench/bench_up.py [--runs 5] [--profile dev]
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
from _common import REPO, free_port, make_project, timed  # noqa: E402  (also puts the repo on sys.path)

from devenv.db.seeds import split_statements  # noqa: E402
from devenv.runtime.discovery import which  # noqa: E402
from devenv.runtime.native import NativeRuntime  # noqa: E402


def as_user() -> dict:
    if os.geteuid() != 0:
        return {}
    import pwd

    entry = pwd.getpwnam(os.environ.get("DEVENV_NATIVE_USER", "postgres"))
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def poll(probe, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def floors(bindir: Path, scratch: Path) -> dict[str, float]:
    """One measurement of each floor, in seconds."""
    import psycopg
    import redis

    out: dict[str, float] = {}
    user = as_user()
    data, run = scratch / "data", scratch / "run"
    run.mkdir()
    if user:
        os.chown(scratch, user["user"], user["group"])
        os.chown(run, user["user"], user["group"])
    t = time.perf_counter()
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "bench", "-E", "UTF8", "--locale=C", "-A", "trust"],
                   check=True, capture_output=True, **user)
    out["initdb"] = time.perf_counter() - t

    port = free_port()
    t = time.perf_counter()
    pg = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(run),
                           "-c", "listen_addresses=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **user)
    poll(lambda: psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="postgres").close())
    out["postgres start"] = time.perf_counter() - t
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE seeded")
        t = time.perf_counter()
        with psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="seeded", autocommit=True) as conn:
            for part in ("schema", "data"):
                for path in sorted((REPO / "seeds" / part).glob("*.sql")):
                    with conn.transaction():
                        for statement, _ in split_statements(path.read_text()):
                            conn.execute(statement.encode())
        out["schema+seed"] = time.perf_counter() - t

        ini, users = scratch / "pgb.ini", scratch / "users.txt"
        users.write_text('"bench" ""\n')
        bport = free_port()
        ini.write_text(f"[databases]\nseeded = host=127.0.0.1 port={port}\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
                       f"listen_port = {bport}\nauth_type = trust\nauth_file = {users}\nadmin_users = bench\nunix_socket_dir =\n")
        t = time.perf_counter()
        pgb = subprocess.Popen([which("pgbouncer", os.environ), str(ini)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, **user)
        poll(lambda: psycopg.connect(host="127.0.0.1", port=bport, user="bench", dbname="pgbouncer").close())
        out["pgbouncer start"] = time.perf_counter() - t
        pgb.terminate()
        pgb.wait()

        rport = free_port()
        t = time.perf_counter()
        rs = subprocess.Popen([which("redis-server", os.environ), "--port", str(rport), "--save", "", "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, **user)
        poll(lambda: redis.Redis(port=rport).ping())
        out["redis start"] = time.perf_counter() - t
        rs.terminate()
        rs.wait()
    finally:
        pg.terminate()
        pg.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", default="dev")
    args = parser.parse_args()

    project, env = make_project("devenv-bench-")
    devenv = [sys.executable, "-m", "devenv"]
    prof = ["--profile", args.profile, "--runtime", "native"]

    from devenv.config.settings import load_config
    from devenv.config.resolve import build_stack

    stack = build_stack(load_config(project / "devenv.yaml", env), args.profile)
    bindir = Path(NativeRuntime(env).binaries(stack).postgres).parent

    samples: dict[str, list[float]] = {}
    add = lambda key, value: samples.setdefault(key, []).append(value)  # noqa: E731
    try:
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="devenv-floor-") as scratch:
                for key, value in floors(bindir, Path(scratch)).items():
                    add(key, value)
            timed(devenv + ["down", "--volumes", *prof], project, env)
            # An empty cache per run: otherwise every run after the first restores from it
            # (bench_coldstart.py measures that) instead of running initdb, schema and seed.
            with tempfile.TemporaryDirectory(prefix="devenv-cache-") as cache:
                add("devenv up (first ever)", timed(devenv + ["up", *prof], project, {**env, "DEVENV_CACHE_DIR": cache}))
            add("devenv up (no-op)", timed(devenv + ["up", *prof], project, env))
            add("devenv --help", timed(devenv + ["--help"], project, env))
            timed(devenv + ["down", *prof], project, env)
            add("devenv up (cold, data exists)", timed(devenv + ["up", *prof], project, env))
    finally:
        subprocess.run(devenv + ["down", "--volumes", *prof], cwd=project, env=env, capture_output=True)
        shutil.rmtree(project, ignore_errors=True)

    med = {key: statistics.median(values) for key, values in samples.items()}
    print(f"native runtime, profile {args.profile}, {args.runs} runs, PostgreSQL from {bindir}")
    print(f"{'measurement':<32} {'median':>9} {'min':>9} {'max':>9}")
    for key, values in samples.items():
        print(f"{key:<32} {med[key] * 1000:>7.0f}ms {min(values) * 1000:>7.0f}ms {max(values) * 1000:>7.0f}ms")
    floor_all = sum(med[k] for k in ("initdb", "postgres start", "schema+seed", "pgbouncer start", "redis start"))
    floor_start = sum(med[k] for k in ("postgres start", "pgbouncer start", "redis start"))
    print()
    for label, value, base, target in (
        ("first-ever up / sum of floors", med["devenv up (first ever)"], floor_all, 2.0),
        ("cold up / start floors", med["devenv up (cold, data exists)"], floor_start, 3.0),
        ("no-op up / devenv --help", med["devenv up (no-op)"], med["devenv --help"], 1.5),
    ):
        ratio = value / base
        print(f"{label:<32} {ratio:>6.2f}x  (target < {target}x: {'met' if ratio < target else 'NOT met'};"
              f" {value * 1000:.0f}ms vs {base * 1000:.0f}ms)")


if __name__ == "__main__":
    main()
