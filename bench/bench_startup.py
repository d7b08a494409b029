"""How long `devenv --help` takes, next to the floor `python -c "import click"`.

The target: `devenv --help` within 1.5x of importing click alone, i.e. devenv adds little on
top of the interpreter and its CLI library. Commands are run interleaved (one of each per
round) so drift in machine load affects all of them alike. This is a report: it always
exits 0.

    python bench/bench_startup.py [--runs 21]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

TARGET_RATIO = 1.5


def time_once(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one run of argv, in seconds; a failing command is an error."""
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command (default 21)")
    args = parser.parse_args()
    runs = max(1, args.runs)

    # No DEVENV_* from the caller's shell: they could change what devenv does at startup.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVENV_")}
    baseline = "python -c 'import click'"
    commands: dict[str, list[str]] = {
        baseline: [sys.executable, "-c", "import click"],
        "python -m devenv --help": [sys.executable, "-m", "devenv", "--help"],
    }
    script = shutil.which("devenv")
    if script:
        commands["devenv --help (console script)"] = [script, "--help"]
        print(f"console script: {script}")
    else:
        print("note: no `devenv` console script on PATH; measuring `python -m devenv` only")

    for name, argv in list(commands.items()):  # warm the OS file cache and .pyc files; not measured
        try:
            time_once(argv, env)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"error: `{name}` does not run ({exc}); left out")
            del commands[name]
    if baseline not in commands:
        print("no baseline to compare with; nothing measured")
        return 0
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(time_once(argv, env))

    print(f"{runs} runs each, interleaved; python {sys.version.split()[0]} at {sys.executable}")
    width = max(map(len, commands))
    print(f"{'command':<{width}}  {'median':>9}  {'p90':>9}  {'ratio':>6}")
    base_median = statistics.median(samples[baseline])
    met = True
    for name, values in samples.items():
        median = statistics.median(values)
        ratio = median / base_median
        print(f"{name:<{width}}  {median * 1000:7.1f}ms  {percentile(values, 0.9) * 1000:7.1f}ms  {ratio:5.2f}x")
        if name != baseline:
            met = met and ratio <= TARGET_RATIO
    print(f"target: devenv --help within {TARGET_RATIO}x of `{baseline}` (median): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
