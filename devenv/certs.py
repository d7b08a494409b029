"""A self-signed certificate for local TLS, for profiles with ssl = on."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from devenv.errors import DependencyError


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
