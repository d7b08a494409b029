"""The real servers accept the files `devenv render` writes (for the compose target).

These start PostgreSQL 15, PgBouncer and Redis briefly on free 127.0.0.1 ports. A missing
binary skips its cases with the reason, except when `CI` is set: then it is a failure.
Running as root (CI, containers), the servers run as the `postgres` OS user, since
PostgreSQL and PgBouncer refuse to run as root; everything they read is chowned to it.

The rendered files target containers (listen on 0.0.0.0, PgBouncer reaches host
`postgres`, config under /etc/...). Only the lines that say *where* a server listens or finds
its files are redirected to the temp dir and a free port; every settings-table line is
used exactly as rendered.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

IN_CI = bool(os.environ.get("CI"))
AS_ROOT = os.geteuid() == 0
SERVER_USER = "postgres"
PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))

# What each profile must set, as the seeds' tables say (see test_render.py for the sources).
_SHARED = {"work_mem": "4MB", "maintenance_work_mem": "64MB", "wal_level": "logical", "log_min_duration_statement": "1000"}
_DEV = {**_SHARED, "max_connections": "20", "shared_buffers": "128MB", "log_statement": "all", "ssl": "off"}
_PROD = {**_SHARED, "max_connections": "100", "shared_buffers": "256MB", "log_statement": "ddl", "ssl": "on"}
EXPECTED_POSTGRES = {
    "dev": {**_DEV, "fsync": "on"},
    "prod": {**_PROD, "fsync": "on"},
    "ci": {**_DEV, "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    "rds": {
        **_PROD,
        "shared_buffers": "2GB",
        "effective_cache_size": "6GB",
        "work_mem": "64MB",
        "maintenance_work_mem": "512MB",
        "max_connections": "200",
        "log_min_duration_statement": "500",
    },
}
# Redis: `mb`/`gb` are powers of 1024 (`m`/`g` would be powers of 1000).
EXPECTED_REDIS_MAXMEMORY = {"dev": 256 << 20, "prod": 1 << 30, "ci": 128 << 20}
ADMIN_USER, ADMIN_PASSWORD = "pgbouncer_admin", "pgb-test-pw"
REDIS_PASSWORD = "redis-test-pw"

# Units `postgres -C` / SHOW use when they print a bare number.
_GUC_UNIT_BYTES = {"shared_buffers": 8192, "effective_cache_size": 8192, "work_mem": 1024, "maintenance_work_mem": 1024}
_MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_TIME_UNITS_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


# --------------------------------------------------------------------------- helpers


def require(binary: str | Path) -> str:
    """Path of an executable, or skip (fail under CI) naming what is missing."""
    path = Path(binary)
    found = str(path) if path.is_absolute() and os.access(path, os.X_OK) else shutil.which(str(binary))
    if not found:
        message = f"{binary} is not installed"
        if IN_CI:
            pytest.fail(f"{message} (CI is set: a missing binary is a failure, not a skip)")
        pytest.skip(message)
    return found


def run_as() -> dict[str, Any]:
    """subprocess kwargs that drop root to the server user (no-op when not root)."""
    if not AS_ROOT:
        return {}
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        message = f"running as root but there is no '{SERVER_USER}' OS user to run the servers as"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return {"user": SERVER_USER, "group": SERVER_USER, "extra_groups": []}


def give_to_server_user(path: Path) -> None:
    """chown -R to the server user when root, so the dropped-privilege servers can read it."""
    if not AS_ROOT:
        return
    for item in [path, *path.rglob("*")]:
        shutil.chown(item, SERVER_USER, SERVER_USER)


def child_env(home: Path) -> dict[str, str]:
    """The environment minus libpq/devenv variables a developer may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DEVENV_", "REDISCLI_"))}
    env["HOME"] = str(home)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_tempdir() -> Path:
    """A temp dir the server user can reach (pytest's tmp_path is under a root-only 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="devenv-binaries-"))
    path.chmod(0o755)
    give_to_server_user(path)
    return path


def redirect(text: str, replacements: dict[str, str], ini: bool) -> str:
    """Replace whole `name = value` (ini) or `name value` (redis) lines; each must occur once."""
    for name, value in replacements.items():
        pattern = rf"^{re.escape(name)}\s*=.*$" if ini else rf"^{re.escape(name)}\s.*$"
        line = f"{name} = {value}" if ini else f"{name} {value}"
        text, count = re.subn(pattern, lambda _: line, text, flags=re.MULTILINE)
        assert count == 1, f"expected one `{name}` line, found {count}"
    return text


def memory_bytes(name: str, text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", text.strip())
    assert match, f"{name} = {text!r} is not a memory size"
    number, unit = int(match.group(1)), match.group(2)
    return number * (_MEMORY_UNITS[unit] if unit else _GUC_UNIT_BYTES[name])


def duration_ms(text: str) -> int:
    match = re.fullmatch(r"(-?\d+)\s*([a-z]*)", text.strip())
    assert match, f"{text!r} is not a duration"
    return int(match.group(1)) * _TIME_UNITS_MS[match.group(2) or "ms"]


def same_setting(name: str, expected: str, reported: str) -> bool:
    """Compare a value from devenv.yaml with what the server reports (units may differ)."""
    if name in _GUC_UNIT_BYTES:
        return memory_bytes(name, expected) == memory_bytes(name, reported)
    if name == "log_min_duration_statement":
        return duration_ms(expected) == duration_ms(reported)
    return expected.strip().lower() == reported.strip().lower()


def wait_for_port(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 20.0) -> None:
    """Until 127.0.0.1:port accepts; fail at once (with the log) if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"{proc.args[0]} did not listen on {port} within {timeout}s:\n{log.read_text(errors='replace')}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = server_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def spawn(workdir: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a server as the server user and wait for its port; always stopped afterwards."""
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(argv: list[str], port: int, name: str) -> subprocess.Popen[bytes]:
        log_path = workdir / f"{name}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(workdir), **run_as())
        started.append((proc, log))
        wait_for_port(proc, port, log_path)
        return proc

    yield start
    for proc, log in reversed(started):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown for all three servers
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture
def render_into(workdir: Path, run_devenv: Any) -> Callable[[str], Path]:
    """`devenv render --profile P --out DIR` in the fixture project; DIR readable by the servers."""

    def render(profile: str) -> Path:
        out = workdir / f"render-{profile}"
        result = run_devenv("render", "--profile", profile, "--out", str(out))
        assert result.returncode == 0, result.stderr
        give_to_server_user(out)
        return out

    return render


@pytest.fixture(scope="session")
def pg_datadir() -> Iterator[Path]:
    """One initdb'ed PostgreSQL 15 data directory for the session."""
    initdb = require(PG_BINDIR / "initdb")
    kwargs = run_as()
    root = server_tempdir()
    data = root / "data"
    result = subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8", "--no-sync"],
        capture_output=True,
        text=True,
        env=child_env(root),
        timeout=120,
        **kwargs,
    )
    assert result.returncode == 0, result.stderr
    yield data
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("profile", ["dev", "prod", "ci", "rds"])
def test_postgres_reports_the_rendered_settings(profile: str, render_into: Callable[[str], Path], pg_datadir: Path) -> None:
    """`postgres -C name -c config_file=...` loads the rendered file and prints each value.

    The binary is PostgreSQL 15 while devenv validates against 16's catalogue: every setting
    here exists in both. `-C` loads the configuration without starting a server, so ssl=on
    is reported without certificate files (the start test below covers those).
    """
    postgres = require(PG_BINDIR / "postgres")
    conf = render_into(profile) / "postgresql.conf"
    mismatches = {}
    for name, expected in EXPECTED_POSTGRES[profile].items():
        result = subprocess.run(
            [postgres, "-C", name, "-c", f"config_file={conf}", "-D", str(pg_datadir)],
            capture_output=True,
            text=True,
            env=child_env(pg_datadir),
            timeout=30,
            **run_as(),
        )
        assert result.returncode == 0, f"postgres -C {name} failed:\n{result.stderr}"
        reported = result.stdout.strip()
        if not same_setting(name, expected, reported):
            mismatches[name] = (expected, reported)
    assert not mismatches, f"expected vs reported: {mismatches}"


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    openssl = require("openssl")
    cert, key = directory / "server.crt", directory / "server.key"
    result = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    key.chmod(0o600)  # postgres refuses a key readable by others
    give_to_server_user(directory)
    return cert, key


@pytest.mark.parametrize("profile", ["dev", "prod", "ci"])
def test_postgres_starts_on_the_rendered_files(
    profile: str,
    render_into: Callable[[str], Path],
    pg_datadir: Path,
    spawn: Callable[..., subprocess.Popen[bytes]],
    workdir: Path,
) -> None:
    """The server starts on the rendered postgresql.conf and pg_hba.conf and runs with their values.

    Command-line `-c` options override only where it listens and finds files: the compose
    file points hba_file and the certificate at /etc/postgresql/ inside the container.
    For prod (ssl=on) a throwaway self-signed certificate stands in for devenv's.
    """
    psycopg = pytest.importorskip("psycopg")
    postgres = require(PG_BINDIR / "postgres")
    out = render_into(profile)
    sockets = workdir / f"sockets-{profile}"
    sockets.mkdir()
    give_to_server_user(sockets)
    port = free_port()
    argv = [
        postgres, "-D", str(pg_datadir),
        "-c", f"config_file={out / 'postgresql.conf'}",
        "-c", f"hba_file={out / 'pg_hba.conf'}",
        "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
        "-c", f"unix_socket_directories={sockets}",
    ]  # fmt: skip
    if EXPECTED_POSTGRES[profile]["ssl"] == "on":
        certs = workdir / "certs"
        certs.mkdir()
        cert, key = _self_signed_certificate(certs)
        argv += ["-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]
    server = spawn(argv, port, f"postgres-{profile}")

    # The port opens before the server accepts sessions ("the database system is starting up").
    deadline = time.monotonic() + 20
    while True:
        try:
            conn = psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="postgres", autocommit=True)
            break
        except psycopg.OperationalError as exc:
            log = (workdir / f"postgres-{profile}.log").read_text(errors="replace")
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"postgres did not accept a session: {exc}\n{log}")
            time.sleep(0.05)
    with conn:
        shown = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in EXPECTED_POSTGRES[profile]}
        assert conn.execute("SHOW hba_file").fetchone()[0] == str(out / "pg_hba.conf")
        conn.execute("ALTER ROLE postgres PASSWORD 'pg-test-pw'")
    mismatches = {n: (e, shown[n]) for n, e in EXPECTED_POSTGRES[profile].items() if not same_setting(n, e, shown[n])}
    assert not mismatches, f"expected vs SHOW: {mismatches}"

    # The compose health check's command answers for a running server.
    pg_isready = require(PG_BINDIR / "pg_isready")
    ready = subprocess.run([pg_isready, "-h", "127.0.0.1", "-p", str(port), "-U", "taskflow", "-d", "taskflow"], capture_output=True, text=True)
    assert ready.returncode == 0, ready.stdout + ready.stderr

    # pg_hba.conf: TCP needs the password (scram-sha-256) ...
    tcp = {"host": "127.0.0.1", "port": port, "user": "postgres", "dbname": "postgres", "passfile": os.devnull}
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**tcp, password="wrong-password", sslmode="prefer").close()
    # ... and with it works; with ssl=on the session is encrypted.
    sslmode = "require" if EXPECTED_POSTGRES[profile]["ssl"] == "on" else "disable"
    with psycopg.connect(**tcp, password="pg-test-pw", sslmode=sslmode) as conn:
        encrypted = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
    assert encrypted is (sslmode == "require")
    # With ssl on, TLS is required on TCP (hostssl, and hostnossl ... reject, as rds.force_ssl):
    # the right password without TLS is refused.
    if sslmode == "require":
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(**tcp, password="pg-test-pw", sslmode="disable").close()


# --------------------------------------------------------------------------- PgBouncer


def _psql_admin(psql: str, port: int, password: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", str(port), "-U", ADMIN_USER, "-d", "pgbouncer", "-X", "-tA", "-F", "|", "-c", sql],
        capture_output=True,
        text=True,
        env={**child_env(Path(tempfile.gettempdir())), "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
        timeout=30,
    )


@pytest.mark.parametrize("profile", ["dev", "prod", "ci"])
def test_pgbouncer_serves_the_rendered_ini(
    profile: str, render_into: Callable[[str], Path], spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    pgbouncer = require("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else "pgbouncer")
    psql = require("psql")
    out = render_into(profile)
    port = free_port()
    ini = out / "pgbouncer.ini"
    # The compose-target ini listens on 0.0.0.0:6432 and reads /etc/pgbouncer/userlist.txt in
    # its container; here it must take a free local port and the rendered userlist next to it.
    # The [databases] host `postgres` stays: PgBouncer resolves it only when a client connects.
    local_ini = out / "pgbouncer.local.ini"
    local = {"listen_addr": "127.0.0.1", "listen_port": str(port), "auth_file": str(out / "userlist.txt")}
    tls = EXPECTED_POSTGRES[profile]["ssl"] == "on"
    if tls:  # the certificate `render` wrote, with PgBouncer's copy of the key
        local.update(client_tls_cert_file=str(out / "ssl" / "server.crt"), client_tls_key_file=str(out / "ssl" / "pgbouncer.key"))
    local_ini.write_text(redirect(ini.read_text(), local, ini=True))
    give_to_server_user(out)
    spawn([pgbouncer, str(local_ini)], port, f"pgbouncer-{profile}")

    result = _psql_admin(psql, port, ADMIN_PASSWORD, "SHOW CONFIG")
    assert result.returncode == 0, result.stderr
    config = {row.split("|")[0]: row.split("|")[1] for row in result.stdout.splitlines() if "|" in row}
    assert config["pool_mode"] == "transaction"
    assert config["default_pool_size"] == "20"
    assert config["max_client_conn"] == "100"
    assert config["auth_type"] == "scram-sha-256"
    assert config["admin_users"] == ADMIN_USER

    # The compose health check (admin console, SHOW VERSION) works with its PGPASSWORD ...
    health = yaml.safe_load((out / "docker-compose.yml").read_text())["services"]["pgbouncer"]
    argv = [psql if a == "psql" else str(port) if a == "6432" else a for a in health["healthcheck"]["test"][1:]]
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                        env={**child_env(out), "PGPASSWORD": health["environment"]["PGPASSWORD"]})  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.startswith("PgBouncer"), ok.stderr
    # ... and a wrong password is refused.
    assert _psql_admin(psql, port, "wrong-password", "SHOW VERSION").returncode != 0
    # With ssl on, TLS is required on TCP (client_tls_sslmode = require): a plain client is
    # refused however right its password, an encrypted one gets in.
    plain = subprocess.run(
        [psql, f"host=127.0.0.1 port={port} user={ADMIN_USER} dbname=pgbouncer sslmode=disable connect_timeout=5",
         "-X", "-tAc", "SHOW VERSION"], capture_output=True, text=True, timeout=30,
        env={**child_env(out), "PGPASSWORD": ADMIN_PASSWORD})
    if tls:
        assert plain.returncode != 0 and "SSL required" in plain.stderr, plain.stdout + plain.stderr
        assert "client_tls_sslmode" in config and config["client_tls_sslmode"] == "require"
        assert config["server_tls_sslmode"] == "require"
    else:
        assert plain.returncode == 0, plain.stderr


# --------------------------------------------------------------------------- Redis


@pytest.mark.parametrize("profile", ["dev", "prod", "ci"])
def test_redis_serves_the_rendered_conf(
    profile: str, render_into: Callable[[str], Path], spawn: Callable[..., subprocess.Popen[bytes]], workdir: Path
) -> None:
    redis = pytest.importorskip("redis")
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    redis_server = require("redis-server")
    out = render_into(profile)
    port = free_port()
    data = workdir / f"redis-data-{profile}"
    data.mkdir()
    # bind/port/dir are the container's (0.0.0.0:6379, /data); here a free local port and a temp dir.
    local_conf = out / "redis.local.conf"
    local_conf.write_text(redirect((out / "redis.conf").read_text(), {"bind": "127.0.0.1", "port": str(port), "dir": str(data)}, ini=False))
    give_to_server_user(workdir)
    spawn([redis_server, str(local_conf)], port, f"redis-{profile}")

    client = redis.Redis(host="127.0.0.1", port=port, password=REDIS_PASSWORD, socket_timeout=5, decode_responses=True)
    try:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        assert client.config_get("maxmemory") == {"maxmemory": str(EXPECTED_REDIS_MAXMEMORY[profile])}
        assert client.config_get("save")["save"] == ("" if profile == "ci" else "3600 1 300 100 60 10000")
    finally:
        client.close()
    # Without the password: NOAUTH (RESP2, so the refusal is the command's, not HELLO's; no retries).
    anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, protocol=2, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.exceptions.AuthenticationError, match="Authentication required"):
        anonymous.get("x")
    anonymous.close()

    # The compose health check passes with REDISCLI_AUTH and fails without it (NOAUTH is not PONG).
    redis_cli = require("redis-cli")
    service = yaml.safe_load((out / "docker-compose.yml").read_text())["services"]["redis"]
    shell = service["healthcheck"]["test"][1].replace("$$", "$").replace("-p 6379", f"-p {port}")
    shell = shell.replace("redis-cli", redis_cli, 1)
    env = child_env(workdir)
    assert subprocess.run(["sh", "-c", shell], env={**env, "REDISCLI_AUTH": service["environment"]["REDISCLI_AUTH"]}, timeout=30).returncode == 0
    assert subprocess.run(["sh", "-c", shell], env=env, capture_output=True, timeout=30).returncode != 0
