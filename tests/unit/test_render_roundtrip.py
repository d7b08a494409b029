"""Property (issue 15, class 9): a settings-table cell cannot break out of its line.

For any string put in devenv.yaml, either validation refuses it (a ConfigError, exit 3) or the
real server reads the rendered file back with exactly that value for that setting, and every
other setting exactly as without the row. Each server's own parser is the oracle, one server
per module, none per example:

- PostgreSQL: `pg_file_settings`, which parses the config file anew on every query (the file
  is rewritten per example; the server never loads it);
- PgBouncer: the rendered ini rewritten, `RELOAD`, `SHOW CONFIG` on its console;
- Redis: `redis-server` has no offline check and starts in milliseconds: one per example.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.errors import ConfigError
from devenv.render import compose_placement, render_files
from tests.conftest import FIXED_SECRETS, REPO_ROOT
from tests.unit.test_binaries_accept_config import (
    PG_BINDIR,
    child_env,
    free_port,
    give_to_server_user,
    redirect,
    require,
    run_as,
    server_tempdir,
    wait_for_port,
)

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None,
                    derandomize=bool(os.environ.get("CI")))
# What breaks config lexers, weighted in; any other character too.
_NASTY = "'\"\\#;=%$ \t\n\r\x00\x0b\x0c\x1b\x7f\x85\u2028é€{}[]*&!|-_.,:"
VALUES = st.one_of(st.text(alphabet=_NASTY + "ab", max_size=24), st.text(max_size=24))
_ANCHOR = {
    "postgres": "    wal_level:                  {default: logical}\n",
    "pgbouncer": "    pool_mode:                  {default: transaction}\n",
    "redis": "    maxmemory-policy:           {default: allkeys-lru}\n",
}


def _event(text: str) -> None:
    """Counted by --hypothesis-show-statistics (outside a @given test there is nothing to count)."""
    try:
        event(text)
    except hypothesis.errors.InvalidArgument:
        pass


class Renderer:
    """devenv.yaml with one extra row -> the rendered files, through load_config and build_stack."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = (REPO_ROOT / "devenv.yaml").read_text(encoding="utf-8")

    def files(self, service: str, name: str | None = None, value: str | None = None) -> dict[str, str] | None:
        """The rendered files, or None when validation refuses the value (a ConfigError)."""
        text = self.base
        if name is not None:
            cell = yaml.safe_dump({"default": value}, default_flow_style=True, width=10_000, allow_unicode=False).strip()
            text = text.replace(_ANCHOR[service], _ANCHOR[service] + f"    {name}: {cell}\n")
        (self.root / "devenv.yaml").write_text(text, encoding="utf-8")
        try:
            stack = build_stack(load_config(self.root / "devenv.yaml", {}), "dev")
        except ConfigError as exc:
            assert exc.hint, exc.message
            _event("refused at config time")
            return None
        if name is not None:
            _event("accepted: the server reads it back")
            got = getattr(stack, service).settings[name]
            assert got == value, f"YAML carried {value!r} as {got!r}"
        return render_files(stack, compose_placement(stack))


@pytest.fixture(scope="module")
def renderer() -> Iterator[Renderer]:
    root = Path(tempfile.mkdtemp(prefix="devenv-roundtrip-"))
    (root / ".devenv").mkdir()
    (root / ".devenv" / "secrets.json").write_text(json.dumps(FIXED_SECRETS))
    os.chmod(root / ".devenv" / "secrets.json", 0o600)
    yield Renderer(root)
    shutil.rmtree(root, ignore_errors=True)


def _has_control(value: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg_conf() -> Iterator[tuple[Path, Callable[[], dict[str, tuple[str, str | None]]]]]:
    """A running PostgreSQL 15 whose config_file we rewrite; reads pg_file_settings."""
    psycopg = pytest.importorskip("psycopg")
    initdb, postgres = require(PG_BINDIR / "initdb"), require(PG_BINDIR / "postgres")
    root = server_tempdir()
    data, sockets, conf = root / "data", root / "sockets", root / "conf" / "postgresql.conf"
    subprocess.run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--locale=C", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, env=child_env(root), timeout=120, **run_as())
    sockets.mkdir()
    conf.parent.mkdir()
    conf.write_text("# replaced per example\n")
    give_to_server_user(root)
    port = free_port()
    log = root / "postgres.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [postgres, "-D", str(data), "-c", f"config_file={conf}", "-c", f"hba_file={data / 'pg_hba.conf'}",
             "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}", "-c", f"unix_socket_directories={sockets}"],
            stdout=out, stderr=subprocess.STDOUT, env=child_env(root), **run_as())
    try:
        wait_for_port(proc, port, log)
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="postgres", autocommit=True)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

        def parsed() -> dict[str, tuple[str, str | None]]:
            rows = conn.execute("SELECT name, setting, error FROM pg_file_settings WHERE sourcefile = %s", (str(conf),))
            found: dict[str, tuple[str, str | None]] = {}
            for name, setting, error in rows.fetchall():
                assert name not in found, f"{name} appears twice in the rendered file"
                found[name] = (setting, error)
            return found

        yield conf, parsed
        conn.close()
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@EXAMPLES
@given(name=st.sampled_from(["application_name", "log_line_prefix", "search_path"]), value=VALUES)
def test_postgres_reads_back_any_value_validation_accepts(renderer: Renderer, pg_conf: Any, name: str, value: str) -> None:
    conf, parsed = pg_conf
    files = renderer.files("postgres", name, value)
    if files is None:
        return  # refused at config time, with a hint
    assert not _has_control(value), f"{value!r} has a control character and was accepted"
    conf.write_text(renderer.files("postgres")["postgresql.conf"])  # type: ignore[index]
    baseline = parsed()
    conf.write_text(files["postgresql.conf"])
    got = parsed()
    # The value as the lexer read it; the setting's own check may still refuse it at start
    # (`search_path = ','`: "setting could not be applied"), which is not a breakout.
    assert name in got and got[name][0] == value, f"wrote {value!r}, the server parsed {got.get(name)!r}"
    assert {k: v for k, v in got.items() if k != name} == {k: v for k, v in baseline.items() if k != name}


def test_the_issue_s_postgres_injection_is_refused(renderer: Renderer) -> None:
    assert renderer.files("postgres", "application_name", "x\\'\nlog_statement = none") is None


def test_a_backslash_before_a_quote_stays_in_its_value(renderer: Renderer, pg_conf: Any) -> None:
    """`\\'` at the end of a value once escaped the closing quote: now the value reads back whole."""
    conf, parsed = pg_conf
    files = renderer.files("postgres", "application_name", "tail\\")
    assert files is not None
    conf.write_text(files["postgresql.conf"])
    assert parsed()["application_name"] == ("tail\\", None)


# --------------------------------------------------------------------------- PgBouncer

ADMIN = ("pgbouncer_admin", FIXED_SECRETS["pgbouncer_admin_password"])


@pytest.fixture(scope="module")
def pgbouncer(renderer: Renderer) -> Iterator[tuple[Callable[[str], None], Callable[[], dict[str, str]]]]:
    """A running PgBouncer on the rendered ini (listen and auth_file redirected), its console."""
    psycopg = pytest.importorskip("psycopg")
    binary = require("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else "pgbouncer")
    root = server_tempdir()
    port = free_port()
    ini = root / "pgbouncer.ini"

    def write(text: str) -> None:
        ini.write_text(redirect(text, {"listen_addr": "127.0.0.1", "listen_port": str(port),
                                       "auth_file": str(root / "userlist.txt")}, ini=True))
        give_to_server_user(root)

    files = renderer.files("pgbouncer")
    assert files is not None
    (root / "userlist.txt").write_text(files["userlist.txt"])
    write(files["pgbouncer.ini"])
    log = root / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, str(ini)], stdout=out, stderr=subprocess.STDOUT, env=child_env(root), **run_as())
    try:
        wait_for_port(proc, port, log)
        conn = psycopg.connect(host="127.0.0.1", port=port, user=ADMIN[0], password=ADMIN[1], dbname="pgbouncer",
                               autocommit=True, sslmode="disable", cursor_factory=psycopg.ClientCursor)  # simple protocol

        def reload_and_show() -> dict[str, str]:
            conn.execute("RELOAD")
            return {row[0]: row[1] for row in conn.execute("SHOW CONFIG").fetchall()}

        yield write, reload_and_show
        conn.close()
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@EXAMPLES
@given(name=st.sampled_from(["server_reset_query", "server_check_query"]), value=VALUES)
def test_pgbouncer_reads_back_any_value_validation_accepts(renderer: Renderer, pgbouncer: Any, name: str, value: str) -> None:
    write, reload_and_show = pgbouncer
    files = renderer.files("pgbouncer", name, value)
    if files is None:
        return
    assert not _has_control(value), f"{value!r} has a control character and was accepted"
    write(renderer.files("pgbouncer")["pgbouncer.ini"])  # type: ignore[index]
    baseline = reload_and_show()
    write(files["pgbouncer.ini"])
    got = reload_and_show()
    assert got[name] == value, f"wrote {value!r}, PgBouncer has {got[name]!r}"
    assert {k: v for k, v in got.items() if k != name} == {k: v for k, v in baseline.items() if k != name}


def test_the_issue_s_pgbouncer_injection_is_refused(renderer: Renderer) -> None:
    assert renderer.files("pgbouncer", "server_reset_query", "DISCARD ALL\nauth_type = trust") is None


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_run() -> Iterator[Callable[[str], dict[str, str]]]:
    """Start redis-server on a rendered redis.conf (bind/port/dir redirected); CONFIG GET *."""
    redis = pytest.importorskip("redis")
    binary = require("redis-server")
    root = server_tempdir()

    def run(text: str) -> dict[str, str]:
        port = free_port()
        conf = root / "redis.conf"
        conf.write_text(redirect(text, {"bind": "127.0.0.1", "port": str(port), "dir": str(root)}, ini=False))
        give_to_server_user(root)
        log = root / "redis.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([binary, str(conf)], stdout=out, stderr=subprocess.STDOUT, env=child_env(root),
                                    **run_as())
        try:
            wait_for_port(proc, port, log)
            client = redis.Redis(host="127.0.0.1", port=port, password=FIXED_SECRETS["redis_password"],
                                 decode_responses=False)
            raw = client.config_get("*")
            client.close()
            return {k.decode() if isinstance(k, bytes) else k: v.decode("utf-8", "surrogateescape")
                    if isinstance(v, bytes) else v for k, v in raw.items()}
        finally:
            _stop(proc)

    yield run
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_baseline(renderer: Renderer, redis_run: Callable[[str], dict[str, str]]) -> dict[str, str]:
    files = renderer.files("redis")
    assert files is not None
    return redis_run(files["redis.conf"])


_VOLATILE = {"port", "dir"}  # redirected per run
_ALIASES = {"replica-announce-ip": {"slave-announce-ip"}}  # the same setting under its old name


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None,
          derandomize=bool(os.environ.get("CI")))
@given(name=st.sampled_from(["replica-announce-ip", "syslog-ident"]), value=VALUES)
def test_redis_reads_back_any_value_validation_accepts(
    renderer: Renderer, redis_run: Any, redis_baseline: dict[str, str], name: str, value: str
) -> None:
    files = renderer.files("redis", name, value)
    if files is None:
        return
    assert not _has_control(value), f"{value!r} has a control character and was accepted"
    got = redis_run(files["redis.conf"])
    assert got[name] == value, f"wrote {value!r}, Redis has {got[name]!r}"
    changed = {k for k in set(got) | set(redis_baseline)
               if k not in _VOLATILE | {name} | _ALIASES.get(name, set()) and got.get(k) != redis_baseline.get(k)}
    assert not changed, {k: (redis_baseline.get(k), got.get(k)) for k in changed}


def test_the_issue_s_redis_injection_is_refused(renderer: Renderer) -> None:
    assert renderer.files("redis", "maxmemory-policy", 'allkeys-lru\nrequirepass ""') is None


# --------------------------------------------------------------------------- the type catalogue


def test_pgbouncer_types_accept_what_the_server_reports(pgbouncer: Any) -> None:
    """rules.TYPES is right about the server: each typed key's own default passes its check."""
    from devenv.config.rules import TYPES, value_problem

    write, reload_and_show = pgbouncer
    shown = reload_and_show()
    checked = {name: shown[name] for name in TYPES["pgbouncer"] if name in shown}
    assert len(checked) >= len(TYPES["pgbouncer"]) - 3, "most typed keys exist in this PgBouncer"
    wrong = {name: (value, value_problem("pgbouncer", name, value)) for name, value in checked.items()
             if value_problem("pgbouncer", name, value) is not None}
    assert not wrong, wrong


def test_redis_types_accept_what_the_server_reports(redis_baseline: dict[str, str]) -> None:
    from devenv.config.rules import TYPES, value_problem

    missing = [name for name in TYPES["redis"] if name not in redis_baseline]
    assert not missing, f"not Redis 7 settings: {missing}"
    wrong = {name: (redis_baseline[name], value_problem("redis", name, redis_baseline[name]))
             for name in TYPES["redis"] if value_problem("redis", name, redis_baseline[name]) is not None}
    assert not wrong, wrong


@pytest.mark.parametrize(("service", "name", "value"), [
    ("pgbouncer", "pool_mode", "transactions"), ("pgbouncer", "default_pool_size", "20 "),
    ("pgbouncer", "server_lifetime", "30s"), ("pgbouncer", "query_timeout", "-1"),
    ("redis", "maxmemory", "1 gb"), ("redis", "appendonly", "true"), ("redis", "maxclients", "many"),
    ("redis", "maxmemory-policy", "lru"),
])
def test_a_value_of_the_wrong_type_is_refused_at_config_time(renderer: Renderer, service: str, name: str, value: str) -> None:
    """Not an injection, but the server would refuse to start on it (exit 6, after Postgres)."""
    assert renderer.files(service, name, value) is None
