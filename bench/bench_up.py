"""`devenv up` on the native runtime against the floors of its parts, measured in the same run.

Floors, measured the way devenv runs the profile: initdb with devenv's arguments (its bootstrap
role, password file, encoding, locale, auth methods; `--no-sync` for an ephemeral profile) into a
directory on the filesystem devenv's data directory is on (tmpfs for an ephemeral profile, the
stack's directory otherwise); postgres spawned directly with the profile's settings (`-c` for
each of the settings table's, as devenv's postgresql.conf has them: fsync, synchronous_commit,
full_page_writes, ...) until the first connection; schema + seed applied with psycopg; pgbouncer
and redis-server until they first answer. devenv: the first-ever `up` (initdb, three servers,
schema, seed, healthy, and saving the seeded-data cache, into an empty DEVENV_CACHE_DIR each
run), a cold `up` with existing data, a no-op `up`, and `devenv --help`.

Each round first deletes the floor's previous cluster and devenv's (`down --volumes`), then
times both creations, in turns: on ext4 without a journal both are then slowed alike (the
numbers are marked; `--settle` waits that many seconds after the deletions). Prints medians and
the ratios against the targets: first-ever < 2x the sum of the floors; cold < 3x (start +
health floors); no-op < 1.5x --help.

`--journaled-loop` (root) also times the floor's initdb, after deleting its previous cluster,
on a journaled ext4 loop filesystem: the same deletions on a disk without the trap.

    python bench/bench_up.py [--runs 5] [--profile dev] [--settle 0] [--journaled-loop]
"""

from __future__ import annotations

import argparse
import contextlib
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
    AFTER_DELETES, REPO, DiskFacts, free_port, journaled_loop, make_project, print_disk_facts, timed)

from devenv.config.stack import Stack  # noqa: E402
from devenv.db.seeds import split_statements  # noqa: E402
from devenv.runtime.discovery import which  # noqa: E402
from devenv.runtime.native import NativeRuntime  # noqa: E402

LOOP_ROW = "initdb (journaled loop ext4)"
FLOOR_PASSWORD = "bench-floor"  # a password like devenv's: host connections authenticate with SCRAM, as devenv's do


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


def floor_parent(stack: Stack, devenv_pgdata: Path) -> Path:
    """Where the floors' clusters go: the filesystem devenv's data directory is on (for an
    ephemeral profile, tmpfs), beside devenv's directories, never inside them."""
    if stack.ephemeral and Path("/dev/shm").is_dir():
        return Path("/dev/shm")  # devenv's ephemeral layout (devenv.runtime.native)
    where = devenv_pgdata.parent.parent.parent  # <base>/data/postgres -> beside <base>
    while not where.is_dir():
        where = where.parent
    return where


def initdb_argv(bindir: Path, stack: Stack, data: Path, pwfile: Path) -> list[str]:
    """devenv's initdb (devenv.runtime.native: `_initdb_args`, `--no-sync` when ephemeral)."""
    argv = [str(bindir / "initdb"), "-D", str(data), "-U", stack.postgres.admin_user, f"--pwfile={pwfile}",
            "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256"]
    return argv + (["--no-sync"] if stack.ephemeral else [])


def postgres_settings(stack: Stack) -> list[str]:
    """`-c name=value` for each of the profile's settings: what devenv's postgresql.conf sets."""
    return [arg for name, value in stack.postgres.settings.items() for arg in ("-c", f"{name}={value}")]


def floors(bindir: Path, scratch: Path, stack: Stack) -> dict[str, float]:
    """One measurement of each floor, in seconds; the cluster stays in `scratch` (the next
    round deletes it together with devenv's)."""
    import psycopg
    import redis

    out: dict[str, float] = {}
    user = as_user()
    data, run, pwfile = scratch / "data", scratch / "run", scratch / "pw"
    run.mkdir()
    pwfile.write_text(FLOOR_PASSWORD + "\n")
    pwfile.chmod(0o600)
    if user:
        for path in (scratch, run, pwfile):
            os.chown(path, user["user"], user["group"])
    admin = stack.postgres.admin_user
    t = time.perf_counter()
    subprocess.run(initdb_argv(bindir, stack, data, pwfile), check=True, capture_output=True, **user)
    out["initdb"] = time.perf_counter() - t

    port = free_port()
    login = {"host": "127.0.0.1", "port": port, "user": admin, "password": FLOOR_PASSWORD}
    with open(scratch / "postgres.log", "wb") as log:  # devenv's server logs to a file too
        t = time.perf_counter()
        pg = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(run),
                               "-c", "listen_addresses=127.0.0.1", *postgres_settings(stack)],
                              stdout=log, stderr=log, **user)
    poll(lambda: psycopg.connect(**login, dbname="postgres").close())
    out["postgres start"] = time.perf_counter() - t
    try:
        with psycopg.connect(**login, dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE seeded")
        t = time.perf_counter()
        with psycopg.connect(**login, dbname="seeded", autocommit=True) as conn:
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


def conditions(stack: Stack, parent: Path, facts: dict[str, DiskFacts]) -> str:
    """What the floors did, in one paragraph of output."""
    sync = "--no-sync (as devenv for an ephemeral profile)" if stack.ephemeral else "with its fsyncs (as devenv)"
    settings = " ".join(f"{k}={v}" for k, v in stack.postgres.settings.items())
    same = facts["floor clusters"].mount == facts["devenv data"].mount
    return (f"floors: initdb {sync} into {parent} ({facts['floor clusters'].fstype}; "
            f"{'the same filesystem as' if same else 'NOT the filesystem of'} devenv's data directory); "
            f"postgres with the profile's settings: {settings}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", default="dev")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait after each round's deletions before its timed creations")
    parser.add_argument("--journaled-loop", action="store_true",
                        help="also time the floor's initdb on a journaled ext4 loop filesystem (root)")
    args = parser.parse_args()
    with journaled_loop() if args.journaled_loop else contextlib.nullcontext() as loop:
        if args.journaled_loop and loop is None:
            print("--journaled-loop: no loop filesystem here (needs root, mkfs.ext4 and loop devices)")
        bench(args, loop)


def bench(args: argparse.Namespace, loop: Path | None) -> None:
    """The rounds and the report; `loop`: a journaled filesystem for the reference initdb, or None."""

    project, env = make_project("devenv-bench-")
    devenv = [sys.executable, "-m", "devenv"]
    prof = ["--profile", args.profile, "--runtime", "native"]

    from devenv.config.settings import load_config
    from devenv.config.resolve import build_stack

    stack = build_stack(load_config(project / "devenv.yaml", env), args.profile)
    runtime = NativeRuntime(env)
    bindir = Path(runtime.binaries(stack).postgres).parent
    layout = runtime.layout(stack)
    pgdata = layout.pgdata
    parent = floor_parent(stack, pgdata)
    print(f"native runtime, profile {args.profile}{' (ephemeral)' if stack.ephemeral else ''}, {args.runs} runs, "
          f"PostgreSQL from {bindir}")
    places = {"devenv data": pgdata, "floor clusters": parent, "devenv conf, logs": layout.base,
              "devenv cache (temp)": tempfile.gettempdir()}
    facts = print_disk_facts({**places, **({"journaled loop": loop} if loop else {})})
    print(conditions(stack, parent, facts))
    trap = facts["devenv data"].inode_trap or facts["floor clusters"].inode_trap
    marked: set[tuple[str, int]] = set()  # (row, sample) created right after deletions on a disk with the trap

    samples: dict[str, list[float]] = {}
    add = lambda key, value: samples.setdefault(key, []).append(value)  # noqa: E731
    floor_dir: Path | None = None
    loop_dir: Path | None = None
    user = as_user()

    def loop_initdb() -> None:
        """The floor's initdb alone, on the journaled loop filesystem."""
        nonlocal loop_dir
        loop_dir = Path(tempfile.mkdtemp(prefix="initdb-", dir=loop))
        pwfile = loop_dir / "pw"
        pwfile.write_text(FLOOR_PASSWORD + "\n")
        if user:
            os.chown(loop_dir, user["user"], user["group"])
            os.chown(pwfile, user["user"], user["group"])
        t = time.perf_counter()
        subprocess.run(initdb_argv(bindir, stack, loop_dir / "data", pwfile), check=True, capture_output=True, **user)
        add(LOOP_ROW, time.perf_counter() - t)

    def measure_floors() -> None:
        nonlocal floor_dir
        floor_dir = Path(tempfile.mkdtemp(prefix="devenv-floor-", dir=parent))
        for key, value in floors(bindir, floor_dir, stack).items():
            add(key, value)

    def first_ever() -> None:
        # An empty cache per run: otherwise every run after the first restores from it
        # (bench_coldstart.py measures that) instead of running initdb, schema and seed.
        with tempfile.TemporaryDirectory(prefix="devenv-cache-") as cache:
            add("devenv up (first ever)", timed(devenv + ["up", *prof], project, {**env, "DEVENV_CACHE_DIR": cache}))

    try:
        for round_ in range(args.runs):
            # The deletions first, both: the floor's previous cluster and devenv's data, on the
            # filesystem each was made on; then both creations, in turns, so that the inodes
            # those deletions freed (not reused for a while on ext4 without a journal) slow both alike.
            deleted = floor_dir is not None
            for old in (floor_dir, loop_dir):
                if old is not None:
                    shutil.rmtree(old)
            floor_dir = loop_dir = None
            timed(devenv + ["down", "--volumes", *prof], project, env)
            if deleted and args.settle:
                time.sleep(args.settle)
            if deleted and trap:
                marked.update((key, round_) for key in ("initdb", "schema+seed", "devenv up (first ever)"))
            steps = [measure_floors, first_ever] + ([loop_initdb] if loop else [])
            for step in steps[round_ % len(steps):] + steps[:round_ % len(steps)]:  # turns: none always first
                step()
            add("devenv up (no-op)", timed(devenv + ["up", *prof], project, env))
            add("devenv --help", timed(devenv + ["--help"], project, env))
            timed(devenv + ["down", *prof], project, env)
            add("devenv up (cold, data exists)", timed(devenv + ["up", *prof], project, env))
    finally:
        subprocess.run(devenv + ["down", "--volumes", *prof], cwd=project, env=env, capture_output=True)
        shutil.rmtree(project, ignore_errors=True)
        for old in (floor_dir, loop_dir):
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    med = {key: statistics.median(values) for key, values in samples.items()}
    note = AFTER_DELETES if not args.settle else f"[{args.settle:g} s after deletes; ext4 without a journal]"
    print(f"\n{'measurement':<32} {'median':>9} {'min':>9} {'max':>9}   runs")
    for key, values in samples.items():
        runs = ", ".join(f"{v * 1000:.0f}{'*' if (key, i) in marked else ''}" for i, v in enumerate(values))
        print(f"{key:<32} {med[key] * 1000:>7.0f}ms {min(values) * 1000:>7.0f}ms {max(values) * 1000:>7.0f}ms   {runs}")
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
    if loop and trap:
        after = [v for i, v in enumerate(samples["initdb"]) if ("initdb", i) in marked]
        reference = samples[LOOP_ROW][1:]
        if after and reference:
            print(f"the floor's initdb after deletions: {statistics.median(after) * 1000:.0f}ms on "
                  f"{facts['floor clusters'].fstype} without a journal vs {statistics.median(reference) * 1000:.0f}ms "
                  f"on the journaled loop filesystem ({statistics.median(after) / statistics.median(reference):.2f}x)")
    if marked:
        print(f"* {note}: from the second round on, the floors' initdb and schema+seed and devenv's first-ever up\n"
              "  all follow that round's deletions (the floor's previous cluster and `down --volumes`): like with like")


if __name__ == "__main__":
    main()
