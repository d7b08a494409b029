"""How long `devenv status` takes on a running native stack, next to `devenv --help`.

The target: `devenv status` within 2x `devenv --help` (medians, measured interleaved in the
same run). One throwaway project is brought up natively on free ports (profile `dev` unless
`--profile`: dev logs every statement, so the slow-query scan reads a log that grows with every
`status`, as a developer's does), recorded in a registry of the benchmark's own. `status`
checks each service's health, asks Postgres, PgBouncer's console and Redis for the monitoring
view, reads the postgres log for slow queries and asks the working database for the steps.
Taken down (with its data) at the end. A report: exits 0.

`--compare DIR` also runs `--help` and `status` of another checkout (PYTHONPATH=DIR: a worktree
of main, byte-compiled) in the same interleaved rounds, on a stack of its own brought up by that
checkout: the before and after of a change under the same machine load.

    python bench/bench_status.py [--runs 21] [--profile dev] [--compare DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from _common import make_project, timed

TARGET_RATIO = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command (default 21)")
    parser.add_argument("--profile", default="dev", help="the stack's profile (default dev)")
    parser.add_argument("--compare", metavar="DIR", help="another checkout to measure in the same rounds")
    args = parser.parse_args()
    devenv = [sys.executable, "-m", "devenv"]
    # side -> (project, env): each checkout its own project and stack. Sharing one, each would
    # rebuild the other's stack.json (its fingerprint holds the package's template paths).
    sides: dict[str, tuple[Path, dict[str, str]]] = {"": make_project("devenv-bench-status-")}
    if args.compare:
        root, env = make_project("devenv-bench-status-compare-")
        sides[" [compare]"] = (root, {**env, "PYTHONPATH": args.compare})
    try:
        commands: dict[str, tuple[list[str], str]] = {}
        for side, (root, env) in sides.items():
            timed([*devenv, "up", "-p", args.profile, "--runtime", "native"], root, env)
            commands[f"devenv --help{side}"] = ([*devenv, "--help"], side)
            commands[f"devenv status{side}"] = ([*devenv, "status", "-p", args.profile], side)
            if not side:
                commands["devenv status --json"] = ([*devenv, "status", "-p", args.profile, "--json"], side)
        root, env = sides[""]
        shown = subprocess.run(commands["devenv status"][0], cwd=root, env=env, capture_output=True, text=True)
        print(shown.stdout + shown.stderr)
        for argv, side in commands.values():  # warm the file cache and .pyc files; not measured
            timed(argv, *sides[side])
        samples: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        shuffle = random.Random(19).shuffle
        for _ in range(max(1, args.runs)):
            shuffle(names)  # each round in another order: what one command leaves weighs on no one always
            for name in names:
                argv, side = commands[name]
                samples[name].append(timed(argv, *sides[side]))
        print(f"{args.runs} runs each, interleaved; a native stack, profile {args.profile}"
              + (f"; [compare]: PYTHONPATH={args.compare}, a stack of its own" if args.compare else ""))
        met = True
        for name, values in samples.items():
            median = statistics.median(values)
            base = statistics.median(samples[f"devenv --help{commands[name][1]}"])
            print(f"{name:<32} {median * 1000:7.1f}ms  {median / base:5.2f}x")
            if not commands[name][1]:
                met = met and ("--help" in name or median / base <= TARGET_RATIO)
        print(f"target: devenv status within {TARGET_RATIO}x of `devenv --help` (median): {'met' if met else 'NOT met'}")
    finally:
        for root, env in sides.values():
            subprocess.run([*devenv, "down", "--volumes", "-p", args.profile, "--runtime", "native"],
                           cwd=root, env=env, capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
