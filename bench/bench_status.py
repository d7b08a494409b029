"""How long `devenv status` takes on a running native stack, next to `devenv --help`.

The target: `devenv status` within 2x `devenv --help` (medians, measured interleaved in the
same run). One throwaway project is brought up natively on free ports (profile `dev` unless
`--profile`: dev logs every statement, so the slow-query scan reads a log that grows with every
`status`, as a developer's does), recorded in a registry of the benchmark's own. `status`
checks each service's health, asks Postgres, PgBouncer's console and Redis for the monitoring
view, reads the postgres log for slow queries and asks the working database for the steps.
Taken down (with its data) at the end. A report: exits 0.

`--compare DIR` also runs `--help` and `status` of another checkout (PYTHONPATH=DIR: a worktree
of main, byte-compiled) in the same interleaved rounds, against the same stack: the before and
after of a change under the same machine load.

    python bench/bench_status.py [--runs 21] [--profile dev] [--compare DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys

from _common import make_project, timed

TARGET_RATIO = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command (default 21)")
    parser.add_argument("--profile", default="dev", help="the stack's profile (default dev)")
    parser.add_argument("--compare", metavar="DIR", help="another checkout to measure in the same rounds")
    args = parser.parse_args()
    root, env = make_project("devenv-bench-status-")
    devenv = [sys.executable, "-m", "devenv"]
    try:
        timed([*devenv, "up", "-p", args.profile, "--runtime", "native"], root, env)
        commands = {
            "devenv --help": [*devenv, "--help"],
            "devenv status": [*devenv, "status", "-p", args.profile],
            "devenv status --json": [*devenv, "status", "-p", args.profile, "--json"],
        }
        envs = {name: env for name in commands}
        if args.compare:
            other = {**env, "PYTHONPATH": args.compare}
            for name in ("devenv --help", "devenv status"):
                commands[f"{name} [compare]"] = commands[name]
                envs[f"{name} [compare]"] = other
        shown = subprocess.run(commands["devenv status"], cwd=root, env=env, capture_output=True, text=True)
        print(shown.stdout + shown.stderr)
        for name, argv in commands.items():  # warm the file cache and .pyc files; not measured
            timed(argv, root, envs[name])
        samples: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for round_ in range(max(1, args.runs)):
            # A turning order: a command's servers are still ending its sessions when the next
            # one starts, which would always weigh on the same neighbour.
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                samples[name].append(timed(commands[name], root, envs[name]))
        print(f"{args.runs} runs each, interleaved; one native stack, profile {args.profile}"
              + (f"; [compare]: PYTHONPATH={args.compare}" if args.compare else ""))
        met = True
        for name, values in samples.items():
            median = statistics.median(values)
            base = statistics.median(samples["devenv --help" + (" [compare]" if name.endswith("[compare]") else "")])
            print(f"{name:<32} {median * 1000:7.1f}ms  {median / base:5.2f}x")
            if not name.endswith("[compare]"):
                met = met and ("--help" in name or median / base <= TARGET_RATIO)
        print(f"target: devenv status within {TARGET_RATIO}x of `devenv --help` (median): {'met' if met else 'NOT met'}")
    finally:
        subprocess.run([*devenv, "down", "--volumes", "-p", args.profile, "--runtime", "native"],
                       cwd=root, env=env, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
