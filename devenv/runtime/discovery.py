"""The server programs on this machine: which PostgreSQL, PgBouncer and Redis the native runtime runs.

Used by the native runtime (to run them) and by `devenv doctor` (to report them); nothing here
writes a file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from devenv.errors import DependencyError

# Where each binary comes from, for the error when it is missing: (Debian/Ubuntu, Homebrew).
PACKAGES = {
    "postgres": ("postgresql (or postgresql-16)", "postgresql@16"),
    "initdb": ("postgresql (or postgresql-16)", "postgresql@16"),
    "pgbouncer": ("pgbouncer", "pgbouncer"),
    "redis-server": ("redis-server", "redis"),
}


@dataclass(frozen=True)
class Binaries:
    """The server programs found on this machine."""

    postgres: str
    initdb: str
    pg_major: int
    pg_version: str
    pgbouncer: str
    redis_server: str


def find_binaries(major: int, env: Mapping[str, str]) -> Binaries:
    """The servers to run: PostgreSQL `major` if installed, else the newest found; DependencyError
    naming the package of the first one missing."""
    candidates = postgres_candidates(env)
    if not candidates:
        raise missing("postgres")
    found_major, version, bindir = next((c for c in candidates if c[0] == major), candidates[0])
    initdb = bindir / "initdb"
    if not initdb.exists():
        raise missing("initdb")
    pgbouncer = which("pgbouncer", env)
    if pgbouncer is None:
        raise missing("pgbouncer")
    redis_server = which("redis-server", env)
    if redis_server is None:
        raise missing("redis-server")
    return Binaries(postgres=str(bindir / "postgres"), initdb=str(initdb), pg_major=found_major,
                    pg_version=version, pgbouncer=pgbouncer, redis_server=redis_server)


def postgres_candidates(env: Mapping[str, str]) -> list[tuple[int, str, Path]]:
    """(major, version, bindir) of every PostgreSQL found, newest first."""
    dirs: list[Path] = []
    found = which("postgres", env)
    if found:
        dirs.append(Path(os.path.realpath(found)).parent)
    pg_config = which("pg_config", env)
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=5).stdout.strip()
            if out:
                dirs.append(Path(out))
        except (OSError, subprocess.TimeoutExpired):
            pass
    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    dirs += sorted(Path("/opt/homebrew/opt").glob("postgresql@*/bin")) + sorted(Path("/usr/local/opt").glob("postgresql@*/bin"))
    seen, out_list = set(), []
    for bindir in dirs:
        real = bindir.resolve()
        if real in seen or not (real / "postgres").exists():
            continue
        seen.add(real)
        version = postgres_version(real / "postgres")
        if version:
            out_list.append((int(version.split(".")[0]), version, real))
    return sorted(out_list, key=lambda c: c[0], reverse=True)


def discovery_key(env: Mapping[str, str]) -> list[str]:
    """What binary discovery depends on: PATH and the installed PostgreSQL versions."""
    installed = sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return [env.get("PATH", ""), *installed]


def postgres_version(binary: Path) -> str | None:
    """The version a `postgres` binary reports ('16.4'), None if it does not run."""
    try:
        text = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def which(program: str, env: Mapping[str, str]) -> str | None:
    """A program on env's PATH, or in the sbin directories where packages put servers."""
    # Debian installs pgbouncer in /usr/sbin, which a non-root PATH often lacks.
    path = os.pathsep.join([env.get("PATH", os.defpath), "/usr/sbin", "/usr/local/sbin", "/opt/homebrew/bin"])
    return shutil.which(program, path=path)


def missing(program: str) -> DependencyError:
    """The error for a server program that is not installed: where devenv looked, what to install."""
    debian, brew = PACKAGES[program]
    return DependencyError(
        f"{program} not found (looked on PATH, in `pg_config --bindir` and /usr/lib/postgresql/*/bin)"
        if program in ("postgres", "initdb") else f"{program} not found on PATH or in /usr/sbin",
        hint=f"install it: Debian/Ubuntu `sudo apt-get install {debian.split(' ')[0]}`"
        f"{' (' + debian.split(' ', 1)[1].strip('()') + ')' if ' ' in debian else ''}; "
        f"macOS `brew install {brew}`. Or use the Docker runtime: `devenv up --runtime docker`.",
    )
