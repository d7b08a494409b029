"""How long `devenv ls` takes with 5 stacks on the machine, next to `devenv --help`.

The target: `devenv ls` within 2x `devenv --help` (medians, measured interleaved in the same
run). Five throwaway projects are brought up natively (profile `ci`: data on tmpfs), each on
free ports, recorded in a registry of the benchmark's own (DEVENV_REGISTRY_DIR), so the
machine's real registry is neither read nor changed; with `--docker 1` that many of them run
on Docker instead (DEVENV_*_IMAGE are passed on: the test images). A Docker engine on the default socket is asked by `ls` whether or not a
stack runs there. Everything is taken down (with its data) at the end. A report: exits 0.

    python bench/bench_ls.py [--runs 21] [--stacks 5] [--docker 0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import make_project, timed

TARGET_RATIO = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command (default 21)")
    parser.add_argument("--stacks", type=int, default=5, help="stacks on the machine (default 5)")
    parser.add_argument("--docker", type=int, default=0, help="how many of them on Docker (default 0)")
    args = parser.parse_args()
    registry = Path(tempfile.mkdtemp(prefix="devenv-bench-registry-"))
    projects: list[tuple[Path, dict[str, str], str]] = []
    try:
        for index in range(args.stacks):
            runtime = "docker" if index < args.docker else "native"
            root, env = make_project(f"devenv-bench-ls-{index}-")
            if runtime == "docker":
                text = (root / "devenv.yaml").read_text()
                (root / "devenv.yaml").write_text(text.replace("project: taskflow", f"project: taskflow-bls{index}", 1))
            env["DEVENV_REGISTRY_DIR"] = str(registry / "stacks")
            env.update({k: v for k, v in os.environ.items() if k.endswith("_IMAGE") and k.startswith("DEVENV_")})
            projects.append((root, env, runtime))
            timed([sys.executable, "-m", "devenv", "up", "-p", "ci", "--runtime", runtime], root, env)
        root, env, _ = projects[0]
        commands = {
            "devenv --help": [sys.executable, "-m", "devenv", "--help"],
            "devenv ls": [sys.executable, "-m", "devenv", "ls"],
            "devenv ls --json": [sys.executable, "-m", "devenv", "ls", "--json"],
        }
        listing = subprocess.run(commands["devenv ls"], cwd=root, env=env, capture_output=True, text=True)
        print(listing.stdout + listing.stderr)
        for argv in commands.values():  # warm the file cache and .pyc files; not measured
            timed(argv, root, env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(max(1, args.runs)):
            for name, argv in commands.items():
                samples[name].append(timed(argv, root, env))
        base = statistics.median(samples["devenv --help"])
        print(f"{args.runs} runs each, interleaved; {args.stacks} stacks ({args.docker} on Docker)")
        met = True
        for name, values in samples.items():
            median = statistics.median(values)
            print(f"{name:<18} {median * 1000:7.1f}ms  {median / base:5.2f}x")
            met = met and (name == "devenv --help" or median / base <= TARGET_RATIO)
        print(f"target: devenv ls within {TARGET_RATIO}x of `devenv --help` (median): {'met' if met else 'NOT met'}")
    finally:
        for root, env, runtime in projects:
            subprocess.run([sys.executable, "-m", "devenv", "down", "--volumes", "-p", "ci", "--runtime", runtime],
                           cwd=root, env=env, capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(registry, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
