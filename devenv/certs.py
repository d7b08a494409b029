"""A self-signed certificate for local TLS, for profiles with ssl = on.

With ssl on, TLS is required on TCP (pg_hba's hostssl, PgBouncer's client_tls_sslmode): both
Postgres and PgBouncer serve this certificate. Under Docker each needs the key owned by its
own image's user, so PgBouncer gets a copy (PGBOUNCER_KEY) that devenv hands over separately.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devenv.errors import DependencyError

PGBOUNCER_KEY = "pgbouncer.key"  # the key's copy the compose file mounts into PgBouncer


def ensure_certificate(directory: Path, owner: tuple[int, int] | None = None) -> None:
    """A self-signed certificate for local TLS (ssl = on), made once with openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / "server.crt", directory / "server.key"
    if crt.exists() and key.exists():
        return
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DependencyError(
            "openssl not found: needed to create a local certificate for ssl = on",
            hint="install it (Debian/Ubuntu `apt-get install openssl`, macOS `brew install openssl`) "
            "or use a profile with ssl off.",
        )
    proc = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "825", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(crt)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise DependencyError(f"openssl could not create a certificate: {proc.stderr.strip()}")
    os.chmod(key, 0o600)  # postgres refuses a key others can read
    os.chmod(crt, 0o644)
    if owner is not None:
        for path in (key, crt):
            os.chown(path, *owner)


def ensure_key_copy(directory: Path, name: str = PGBOUNCER_KEY) -> Path:
    """A private copy (0600) of `directory`'s server.key under `name`, made once.

    Written under a fresh name with O_EXCL (never through a planted link) and renamed in.
    """
    copy = directory / name
    if copy.exists():
        return copy
    data = (directory / "server.key").read_bytes()
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, copy)
    return copy
