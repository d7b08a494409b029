"""What the benchmarks share: free ports, a throwaway TaskFlow project, a timed CLI run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_project(prefix: str, profile_extra: str = "") -> tuple[Path, dict[str, str]]:
    """A temp copy of devenv.yaml (plus `profile_extra` under `profiles:`) and seeds/, on free ports."""
    project = Path(tempfile.mkdtemp(prefix=prefix))
    config = (REPO / "devenv.yaml").read_text()
    if profile_extra:
        config = config.replace("profiles:\n", f"profiles:\n{profile_extra}", 1)
    (project / "devenv.yaml").write_text(config)
    shutil.copytree(REPO / "seeds", project / "seeds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVENV_")}
    env.update({f"DEVENV_{s}_PORT": str(free_port()) for s in ("POSTGRES", "PGBOUNCER", "REDIS")})
    # The benchmark's stacks are recorded in a registry of its own, inside the project it
    # removes afterwards, never in the machine's (`devenv ls` would list them as orphans).
    env["DEVENV_REGISTRY_DIR"] = str(project / ".bench-registry")
    return project, env


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds one command takes; a failure ends the benchmark with its output."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed
