"""The pytest plugin in an application's suite: settings from the ini file, an existing server
the test starts itself (no devenv servers), and a failed test's database kept for psql."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import REPO, SERVER_COMMS, _proc_argv, _proc_stat, free_port

pytest_plugins = ["pytester"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")

# Each test starts from the seeded state; writes, and in test_b DDL, must be gone by the next.
SERVER_TESTS = '''
import json, os

def _fresh(devenv_db, name):
    with devenv_db.conn.cursor() as cur:
        assert cur.execute("select count(*) from tasks").fetchone()[0] == 40
        assert cur.execute("select count(*) from users where email like 'dirty%'").fetchone()[0] == 0
        assert cur.execute("select to_regclass('scratch')").fetchone()[0] is None
        assert cur.execute("select count(*) from information_schema.columns "
                           "where table_name = 'tasks' and column_name = 'extra'").fetchone()[0] == 0
        cur.execute("delete from tasks where status = 'done'")
        cur.execute("insert into users (email, password_hash) values ('dirty-" + name + "@x', 'x')")
    devenv_db.conn.commit()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.environ["RECORD_DIR"] + "/" + name + "-" + worker, "w") as f:
        json.dump({"db": devenv_db.name, "strategy": devenv_db.strategy, "url": os.environ["DATABASE_URL"],
                   "direct": os.environ["DIRECT_DATABASE_URL"],
                   "guard": devenv_db.conn.execute("select count(*) from pg_event_trigger").fetchone()[0]}, f)

def test_a(devenv_db):
    _fresh(devenv_db, "a")

def test_b(devenv_db):
    _fresh(devenv_db, "b")
    with devenv_db.conn.cursor() as cur:  # DDL by the test: the next reset must undo it
        cur.execute("create table scratch (a int)")
        cur.execute("alter table tasks add column extra int")
    devenv_db.conn.commit()

def test_c(devenv_db):
    _fresh(devenv_db, "c")

def test_d(devenv_db):
    _fresh(devenv_db, "d")

def test_redis(devenv_redis):
    assert devenv_redis.dbsize() == 0
    devenv_redis.set("dirty", "x")

def test_redis_again(devenv_redis):
    assert devenv_redis.dbsize() == 0
    devenv_redis.set("dirty", "y")
'''


def _records(records: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in records.iterdir()}


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        # Kept: the registry of this session's stacks, the images the runtime fixture chose.
        kept = name == "DEVENV_REGISTRY_DIR" or name.endswith("_IMAGE")
        if name.startswith(("DEVENV_", "PG")) and not kept or name.endswith("DATABASE_URL"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("REDIS_URL", raising=False)


# ---- settings in the ini file -------------------------------------------------------------------

def test_settings_only_in_pyproject_are_used(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                             runtime: str) -> None:
    """devenv_profile, devenv_runtime and devenv_config (relative to pyproject.toml) from
    [tool.pytest.ini_options] alone: the dev profile (fsync on; ci, the default, has it off)
    of the devenv.yaml in stack/, not one upwards."""
    _clean_env(monkeypatch)
    for name in ("POSTGRES", "PGBOUNCER", "REDIS"):
        monkeypatch.setenv(f"DEVENV_{name}_PORT", str(free_port()))
    stack_dir = pytester.path / "stack"
    stack_dir.mkdir()
    shutil.copy(REPO / "devenv.yaml", stack_dir / "devenv.yaml")
    shutil.copytree(REPO / "seeds", stack_dir / "seeds")
    pytester.makefile(".toml", pyproject=f'''
[tool.pytest.ini_options]
devenv_profile = "dev"
devenv_runtime = "{runtime}"
devenv_config = "stack/devenv.yaml"
devenv_keep_failed = "false"
''')
    pytester.makepyfile(test_app='''
def test_profile(devenv_db):
    assert devenv_db.conn.execute("show fsync").fetchone()[0] == "on"
    assert devenv_db.conn.execute("select count(*) from tasks").fetchone()[0] == 40
''')
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devenv-keep")
        result.assert_outcomes(passed=1)
        assert (stack_dir / ".devenv" / "dev").is_dir()
        assert not (stack_dir / ".devenv" / "ci").exists() and not (pytester.path / ".devenv").exists()
    finally:
        pytester.run("python", "-m", "devenv", "down", "--volumes", "-p", "dev", "--runtime", runtime,
                     "--config", str(stack_dir / "devenv.yaml"))


def test_the_option_wins_over_the_ini_file_which_wins_over_the_environment(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("DEVENV_PROFILE", "from-env")
    monkeypatch.setenv("DEVENV_RUNTIME", "docker")
    monkeypatch.setenv("DEVENV_KEEP_FAILED", "yes")
    pytester.makeini("[pytest]\ndevenv_profile = from-ini\ndevenv_config = sub/devenv.yaml\n")
    (pytester.path / "sub").mkdir()
    (pytester.path / "sub" / "devenv.yaml").write_text("project: x\n")
    pytester.makepyfile(test_x='''
from devenv.pytest_plugin import _keep_failed, _setting

def test_x(pytestconfig):
    import os
    got = {k: _setting(pytestconfig, k) for k in ("devenv_profile", "devenv_runtime", "devenv_config")}
    assert got == {"devenv_profile": os.environ["EXPECTED"], "devenv_runtime": "docker",
                   "devenv_config": str(pytestconfig.inipath.parent / "sub" / "devenv.yaml")}, got
    assert _keep_failed(pytestconfig)
''')
    monkeypatch.setenv("EXPECTED", "from-ini")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    monkeypatch.setenv("EXPECTED", "from-option")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devenv-profile", "from-option").assert_outcomes(passed=1)


@pytest.mark.parametrize("line, key", [("devenv_runtime = kubernetes", "devenv_runtime"),
                                       ("devenv_keep_failed = maybe", "devenv_keep_failed")])
def test_a_bad_ini_value_is_a_usage_error_naming_the_key(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                         line: str, key: str) -> None:
    _clean_env(monkeypatch)
    pytester.makeini(f"[pytest]\n{line}\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = "\n".join(result.errlines)
    assert f"ini key {key}" in err and "Traceback" not in err, err


def test_the_option_wins_over_a_bad_ini_value(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the value in effect is judged: a bad ini value overridden on the command line is no error."""
    _clean_env(monkeypatch)
    pytester.makeini("[pytest]\ndevenv_runtime = kubernetes\ndevenv_keep_failed = maybe\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devenv-runtime", "native",
                                           "--devenv-keep-failed")
    result.assert_outcomes(passed=1)
    alone = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devenv-runtime", "native")
    assert alone.ret == pytest.ExitCode.USAGE_ERROR and "ini key devenv_keep_failed" in "\n".join(alone.errlines)


@pytest.mark.parametrize("where", ["option", "ini", "env"])
def test_a_named_devenv_config_that_is_missing_is_a_usage_error(pytester: pytest.Pytester,
                                                                monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Never silently replaced by seeds/ (or by another devenv.yaml), on an existing server too.
    DEVENV_CONFIG counts only where no devenv.yaml is found upwards: then, missing, it is an error."""
    _clean_env(monkeypatch)
    shutil.copytree(REPO / "seeds", pytester.path / "seeds")
    if where == "env":
        monkeypatch.setenv("DEVENV_CONFIG", str(pytester.path / "deploy" / "devenv.yaml"))
    else:
        shutil.copy(REPO / "devenv.yaml", pytester.path / "devenv.yaml")
    pytester.makeini("[pytest]\n" + ("devenv_config = deploy/devenv.yaml\n" if where == "ini" else ""))
    pytester.makepyfile(test_x="def test_x(devenv_db):\n    pass\n")
    args = ["--devenv-config", "deploy/devenv.yaml"] if where == "option" else []
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--devenv-url",
                                           "postgresql://app@127.0.0.1:1/postgres", *args)
    if where == "env":  # found only when the fixture loads the stack: its error, once per test
        result.assert_outcomes(errors=1)
        out = "\n".join(result.outlines)
        assert "deploy/devenv.yaml does not exist" in out and "DEVENV_CONFIG" in out, out
        return
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = "\n".join(result.errlines)
    named = "--devenv-config" if where == "option" else f"ini key devenv_config in {pytester.path / 'tox.ini'}"
    assert named in err and "deploy/devenv.yaml" in err and "no such file" in err and "Traceback" not in err, err


@pytest.mark.parametrize("key, value, source", [
    ("devenv_redis_url", "http://127.0.0.1:1", "ini key devenv_redis_url in "),
    ("DEVENV_REDIS_URL", "http://127.0.0.1:1", "environment variable DEVENV_REDIS_URL: "),
    ("devenv_url", "mysql://app@127.0.0.1:1/x", "ini key devenv_url in "),
])
def test_a_bad_url_names_where_it_came_from(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                            key: str, value: str, source: str) -> None:
    _clean_env(monkeypatch)
    shutil.copytree(REPO / "seeds", pytester.path / "seeds")
    args = []
    if key.isupper():
        monkeypatch.setenv(key, value)
    if key != "devenv_url":
        args = ["--devenv-url", "postgresql://app@127.0.0.1:1/postgres"]
    pytester.makeini("[pytest]\n" + (f"{key} = {value}\n" if key.islower() else ""))
    pytester.makepyfile(test_x="def test_x(devenv_db):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(errors=1)
    out = "\n".join(result.outlines)
    assert f"devenv: {source}" in out and "Traceback" not in out, out
    if key != "devenv_url":
        assert "--devenv-redis-url" not in out.split("hint:")[0], out


# ---- an existing server, started here -----------------------------------------------------------

class Server:
    """A PostgreSQL 15 cluster (initdb, pg_ctl as the postgres OS user, scram, 127.0.0.1) and a
    Redis, made by the test: the existing servers devenv is pointed at."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="devenv-extsrv-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port, self.redis_port = free_port(), free_port()
        self.password, self.app_password = secrets.token_hex(12), secrets.token_hex(12)
        self.redis_password = secrets.token_hex(12)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        shutil.chown(pwfile, "postgres", "postgres")
        self._as_postgres(PG_BIN / "initdb", "-D", str(self.dir / "data"), "-U", "boss", "--auth=scram-sha-256",
                          f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C.UTF-8")
        pwfile.unlink()
        # TLS on, with a certificate for 127.0.0.1 (verify-full checks it); role tlsonly may log in only over TLS.
        data = self.dir / "data"
        self.cert = self.dir / "server.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(data / "server.key"),
                        "-out", str(self.cert)], check=True, capture_output=True)
        shutil.copy(self.cert, data / "server.crt")
        for name in ("server.key", "server.crt"):
            shutil.chown(data / name, "postgres", "postgres")
        (data / "server.key").chmod(0o600)
        hba = data / "pg_hba.conf"
        hba.write_text("hostnossl all tlsonly 0.0.0.0/0 reject\n" + hba.read_text())
        self._as_postgres(PG_BIN / "pg_ctl", "-D", str(data), "-w", "-l", str(self.dir / "log"), "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on", "start")
        conf = self.dir / "redis.conf"
        conf.write_text(f"port {self.redis_port}\nbind 127.0.0.1\nrequirepass {self.redis_password}\n"
                        "save \"\"\nappendonly no\n")
        self.redis = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL)

    def _as_postgres(self, *argv: object) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], check=True, cwd=self.dir,
                       stdout=subprocess.DEVNULL)

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="boss", password=self.password,
                             dbname=dbname, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def stop(self) -> None:
        self.redis.terminate()
        self.redis.wait()
        self._as_postgres(PG_BIN / "pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if not (PG_BIN / "initdb").exists() or not shutil.which("redis-server"):
        pytest.skip("needs PostgreSQL 15's binaries and redis-server")
    srv = Server()
    # The important case: an application role that is no superuser, as a DBA would make it
    # (CREATEDB; SET on session_replication_role lets the reset restore in place, PG 15+).
    srv.sql(f"CREATE ROLE app LOGIN CREATEDB PASSWORD '{srv.app_password}'")
    srv.sql("GRANT SET ON PARAMETER session_replication_role TO app")
    srv.sql(f"CREATE ROLE nocreate LOGIN PASSWORD '{srv.app_password}'")
    srv.sql(f"CREATE ROLE nogrant LOGIN CREATEDB PASSWORD '{srv.app_password}'")
    srv.sql(f"CREATE ROLE tlsonly LOGIN CREATEDB PASSWORD '{srv.app_password}'")
    srv.sql("GRANT SET ON PARAMETER session_replication_role TO tlsonly")
    yield srv
    srv.stop()


@pytest.fixture
def server_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """An application checkout without devenv.yaml: seeds/ under its rootdir, the tests above."""
    _clean_env(monkeypatch)
    shutil.copytree(REPO / "seeds", pytester.path / "seeds")
    pytester.makeini("[pytest]\n")
    records = tmp_path / "records"
    records.mkdir()
    monkeypatch.setenv("RECORD_DIR", str(records))
    pytester.makepyfile(test_app=SERVER_TESTS)
    return pytester, records


def _server_processes_under(path: Path) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            stat = _proc_stat(int(proc.name))
            if stat and stat[0] in SERVER_COMMS and stat[1] != "Z" and any(str(path) in a for a in _proc_argv(int(proc.name))):
                out.append(int(proc.name))
    return out


@pytest.mark.parametrize("role", ["app", "boss"])
def test_an_existing_server_under_xdist(server_project, server: Server, monkeypatch: pytest.MonkeyPatch,
                                        role: str) -> None:
    """`app` is no superuser (no event triggers: the catalogue signature catches the DDL);
    `boss` is (the event triggers). No devenv server is started, nothing is registered."""
    pytest.importorskip("xdist")
    pytester, records = server_project
    password = server.app_password if role == "app" else server.password
    monkeypatch.setenv("PGPASSWORD", password)  # not on the command line
    registry = Path(os.environ["DEVENV_REGISTRY_DIR"])
    before = sorted(registry.iterdir()) if registry.exists() else []
    url = f"postgresql://{role}@127.0.0.1:{server.port}/postgres?sslmode=disable"
    monkeypatch.setenv("DEVENV_REDIS_URL", f"redis://:{server.redis_password}@127.0.0.1:{server.redis_port}")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "each", "-v",
                                           "--devenv-url", url)
    result.assert_outcomes(passed=12)
    assert password not in "\n".join(result.outlines + result.errlines)
    seen = _records(records)
    by_worker: dict[str, set[str]] = {}
    for name, record in seen.items():
        by_worker.setdefault(name.rsplit("-", 1)[1], set()).add(record["db"])
        # No PgBouncer: both URLs are direct, to this worker's database on the server.
        assert record["url"] == record["direct"]
        assert f"@127.0.0.1:{server.port}/{record['db']}?sslmode=disable" in record["url"]
        assert record["guard"] == (0 if role == "app" else 2)
    assert set(by_worker) == {"gw0", "gw1"}
    db0, db1 = by_worker["gw0"].pop(), by_worker["gw1"].pop()
    assert re.fullmatch(r"[a-z0-9_]+_[0-9a-f]{6}_test_gw0", db0) and db1 == db0[:-1] + "1"
    for worker in ("gw0", "gw1"):
        assert seen[f"a-{worker}"]["strategy"] == "restore" or seen[f"a-{worker}"]["strategy"] in ("clone", "copy")
        assert seen[f"c-{worker}"]["strategy"] in ("clone", "copy"), "the reset after DDL must clone"
        assert seen[f"d-{worker}"]["strategy"] == "restore"
    # Built on the server by the role: the template and the workers' databases.
    owned = {name: owner for name, owner in server.sql(
        "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE '%\\_test\\_gw_' "
        "OR datname LIKE '%\\_\\_tpl\\_%'")}
    base = db0.removesuffix("_test_gw0")  # <project>_<checkout key>: this checkout's, not the other test's
    owned = {name: owner for name, owner in owned.items() if name.startswith(base)}
    assert db0 in owned and db1 in owned and any(name.startswith(base + "__tpl_") for name in owned), owned
    assert set(owned.values()) == {role}
    # No devenv server: no process, no data, nothing registered.
    assert _server_processes_under(pytester.path) == []
    assert (sorted(registry.iterdir()) if registry.exists() else []) == before
    state = pytester.path / ".devenv"
    leftovers = [p.name for p in state.rglob("*")] if state.exists() else []
    assert not any(name in ("data", "native", "secrets.json", "stack.json", "run") for name in leftovers), leftovers


@pytest.mark.parametrize("sslmode", ["require", "verify-full"])
def test_the_urls_sslmode_is_used_by_every_session(server_project, server: Server, monkeypatch: pytest.MonkeyPatch,
                                                   sslmode: str) -> None:
    """tlsonly is refused without TLS: the template build (psycopg), the in-place restore
    (devenv's own driver) and the test's connection all use it; verify-full checks the certificate."""
    pytester, records = server_project
    monkeypatch.setenv("PGPASSWORD", server.app_password)
    url = f"postgresql://tlsonly@127.0.0.1:{server.port}/postgres?sslmode={sslmode}"
    if sslmode == "verify-full":
        url += f"&sslrootcert={server.cert}"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "not redis", "--devenv-url", url)
    result.assert_outcomes(passed=4)
    seen = _records(records)
    assert seen["d-main"]["strategy"] == "restore" and f"sslmode={sslmode}" in seen["d-main"]["url"]
    if sslmode == "verify-full":  # a certificate it does not trust: refused
        other = Path(tempfile.mkdtemp()) / "other.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x",
                        "-keyout", str(other.with_suffix(".key")), "-out", str(other)], check=True, capture_output=True)
        bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_app.py::test_a",
                                            "--devenv-url", url.replace(str(server.cert), str(other)))
        bad.assert_outcomes(errors=1)
        bad.stdout.fnmatch_lines(["*certificate verify failed*"])
        shutil.rmtree(other.parent)


def test_a_role_that_may_not_set_session_replication_role_gets_clones(server_project, server: Server,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without GRANT SET ON PARAMETER session_replication_role the in-place reload cannot turn
    triggers off: after a write every reset clones, and every test still starts fresh."""
    pytester, records = server_project
    monkeypatch.setenv("PGPASSWORD", server.app_password)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "not redis",
                                           "--devenv-url", f"postgresql://nogrant@127.0.0.1:{server.port}/postgres")
    result.assert_outcomes(passed=4)
    seen = _records(records)
    assert {seen[f"{name}-main"]["strategy"] for name in "bcd"} <= {"clone", "copy"}


def test_a_role_without_createdb_is_told_what_to_run(server_project, server: Server,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytester, _ = server_project
    url = f"postgresql://nocreate:{server.app_password}@127.0.0.1:{server.port}/postgres"
    monkeypatch.setenv("DEVENV_URL", url)  # the environment: the password stays out of argv
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_app.py::test_a")
    result.assert_outcomes(errors=1)
    out = "\n".join(result.outlines + result.errlines)
    assert "may not create databases" in out and 'ALTER ROLE "nocreate" CREATEDB' in out, out
    assert server.app_password not in out and "Traceback" not in out and "During handling" not in out


def test_devenv_redis_without_a_redis_url_says_to_pass_one(server_project, server: Server,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytester, _ = server_project
    monkeypatch.setenv("PGPASSWORD", server.app_password)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "test_redis and not again",
                                           "--devenv-url", f"postgresql://app@127.0.0.1:{server.port}/postgres")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no Redis was given*", "*--devenv-redis-url*"])


def test_a_failed_tests_database_on_an_existing_server_is_named_without_the_password(
        server_project, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester, _ = server_project
    pytester.makepyfile(test_app=FAILING)
    monkeypatch.setenv("DEVENV_URL", f"postgresql://app:{server.app_password}@127.0.0.1:{server.port}/postgres")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "each",
                                           "--devenv-keep-failed")
    result.assert_outcomes(failed=2, errors=2, passed=2)
    out = "\n".join(result.outlines + result.errlines)
    assert server.app_password not in out
    kept = re.findall(r"URL: postgresql://app:\*\*\*@127\.0\.0\.1:\d+/(\w+_kept_\w+)", out)
    assert len(kept) == 4, out
    seen = [{e for (e,) in server.sql("select email from users where email like '%@x'", dbname=name)} for name in kept]
    assert sorted(map(sorted, seen)) == sorted(map(sorted, KEPT_DATA * 2))
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "passes").assert_outcomes(passed=1)
    names = ", ".join(f"'{name}'" for name in kept)
    assert server.sql(f"select datname from pg_database where datname in ({names})") == []


def _base(pytester: pytest.Pytester) -> str:
    """`<project>_<checkout key>`: what every database of this checkout on the server starts with."""
    from devenv.config.external import database_base

    return database_base(pytester.path.resolve().name, pytester.path)


def test_on_an_existing_server_the_nearest_devenv_yaml_is_used(server_project, server: Server,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No config named: the rootdir's devenv.yaml (its database name, taskflow) as without --devenv-url."""
    pytester, records = server_project
    shutil.copy(REPO / "devenv.yaml", pytester.path / "devenv.yaml")
    monkeypatch.setenv("PGPASSWORD", server.app_password)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_app.py::test_a",
                                           "--devenv-url", f"postgresql://app@127.0.0.1:{server.port}/postgres")
    result.assert_outcomes(passed=1)
    assert _records(records)["a-main"]["db"].startswith("taskflow_"), _records(records)


def test_pruning_on_an_existing_server_drops_only_devenvs_templates_of_its_role(
        server_project, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's `<base>__tpl_zzz` stays; an old template of another role (the CI role changed)
    stays with a one-line warning; an old template of the URL's role goes."""
    pytester, _ = server_project
    base = _base(pytester)
    users, others, stale = f"{base}__tpl_zzz", f"{base}__tpl_aaaaaaaaaaaa", f"{base}__tpl_bbbbbbbbbbbb"
    server.sql(f'CREATE DATABASE "{users}" OWNER app')
    server.sql(f'CREATE DATABASE "{others}" OWNER boss')
    server.sql(f'CREATE DATABASE "{stale}" OWNER app')
    monkeypatch.setenv("PGPASSWORD", server.app_password)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_app.py::test_a",
                                               "--devenv-url", f"postgresql://app@127.0.0.1:{server.port}/postgres")
        result.assert_outcomes(passed=1)
        out = "\n".join(result.outlines + result.errlines)
        assert f"old template {others} belongs to role 'boss', not dropped" in out and "Traceback" not in out, out
        left = {name for (name,) in server.sql(f"SELECT datname FROM pg_database WHERE datname LIKE '{base}__tpl%'")}
        assert users in left and others in left and stale not in left, left
    finally:
        for name in (users, others, stale):
            server.sql(f'DROP DATABASE IF EXISTS "{name}"')


def test_a_worker_database_of_another_role_fails_the_session_saying_what_to_do(
        server_project, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """And an old kept database of that role is left with a warning, not a traceback."""
    pytester, _ = server_project
    name = f"{_base(pytester)}_test"
    kept = f"{name}_kept_0123abcd_1"
    server.sql(f'CREATE DATABASE "{name}" OWNER boss')
    server.sql(f'CREATE DATABASE "{kept}" OWNER boss')
    monkeypatch.setenv("PGPASSWORD", server.app_password)
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_app.py::test_a", "test_app.py::test_b",
                                               "--devenv-url", f"postgresql://app@127.0.0.1:{server.port}/postgres")
        result.assert_outcomes(errors=2)
        out = "\n".join(result.outlines + result.errlines)
        assert f"database {name} on 127.0.0.1:{server.port} belongs to role 'boss'" in out, out
        assert f'DROP DATABASE "{name}"' in out and "Traceback" not in out and "psycopg.errors" not in out, out
        assert f"kept database {kept} belongs to role 'boss', not dropped" in out, out
    finally:
        server.sql(f'DROP DATABASE IF EXISTS "{name}"')
        server.sql(f'DROP DATABASE IF EXISTS "{kept}"')


def test_a_failing_step_on_an_existing_server_says_to_rerun_pytest(server_project, server: Server,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit-7 hint of `devenv up` (`devenv env`, the working database) does not fit here."""
    pytester, _ = server_project
    config = (REPO / "devenv.yaml").read_text() + (
        "\nschema:\n  - sql: seeds/schema\n  - run: [python, -c, \"print('migrating'); raise SystemExit(3)\"]\n")
    (pytester.path / "devenv.yaml").write_text(config)
    monkeypatch.setenv("PGPASSWORD", server.app_password)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_app.py::test_a",
                                           "--devenv-url", f"postgresql://app@127.0.0.1:{server.port}/postgres")
    result.assert_outcomes(errors=1)
    out = "\n".join(result.outlines)
    assert "exited with status 3" in out and "migrating" in out, out
    hint = out.split("hint:", 1)[1]
    assert "run pytest again" in hint and "devenv up" not in hint and "devenv env" not in hint, out


# ---- keep a failed test's database --------------------------------------------------------------

# A failing test (its own fixture's teardown still writes to the database after the failure),
# a fixture failing after devenv_db gave the database, and a test that passes.
FAILING = '''
import pytest

@pytest.fixture
def audit(devenv_db):
    yield
    with devenv_db.connect(autocommit=True) as conn:
        conn.execute("insert into users (email, password_hash) values ('teardown@x', 'x')")

def test_fails(audit, devenv_db):
    devenv_db.conn.execute("insert into users (email, password_hash) values ('kept@x', 'x')")
    devenv_db.conn.commit()
    devenv_db.conn.execute("insert into users (email, password_hash) values ('uncommitted@x', 'x')")
    assert False, "boom"

@pytest.fixture
def broken(devenv_db):
    devenv_db.conn.execute("insert into users (email, password_hash) values ('setup@x', 'x')")
    devenv_db.conn.commit()
    raise RuntimeError("setup broke")

def test_setup_fails(broken):
    pass

def test_passes(devenv_db):
    assert devenv_db.conn.execute("select count(*) from users where email like '%@x'").fetchone()[0] == 0
'''
KEPT_DATA = ({"kept@x", "teardown@x"}, {"setup@x"})


@pytest.mark.parametrize("xdist", [False, True])
def test_a_failed_tests_database_is_kept_and_dropped_by_the_next_run(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, runtime: str, xdist: bool) -> None:
    import psycopg

    if xdist:
        pytest.importorskip("xdist")
    _clean_env(monkeypatch)
    for name in ("POSTGRES", "PGBOUNCER", "REDIS"):
        monkeypatch.setenv(f"DEVENV_{name}_PORT", str(free_port()))
    shutil.copy(REPO / "devenv.yaml", pytester.path / "devenv.yaml")
    shutil.copytree(REPO / "seeds", pytester.path / "seeds")
    pytester.makepyfile(test_app=FAILING)
    args = ["-p", "no:cacheprovider", "--devenv-runtime", runtime, *(["-n", "2", "--dist", "each"] if xdist else [])]
    try:
        result = pytester.runpytest_subprocess(*args, "--devenv-keep-failed")
        workers = 2 if xdist else 1
        result.assert_outcomes(failed=workers, errors=workers, passed=workers)
        out = "\n".join(result.outlines)
        urls = re.findall(r"URL: (postgresql://\S+)", out)
        assert len(urls) == 2 * workers, out
        assert "devenv: kept database" in out
        kept = [url.rsplit("/", 1)[1].split("?")[0] for url in urls]
        seen = []
        for url in urls:  # the stack stays up while a database is kept: the URL works now
            with psycopg.connect(url) as conn:
                seen.append({e for (e,) in conn.execute("select email from users where email like '%@x'")})
        # Committed data and the user's teardown's, not the open transaction's row.
        assert sorted(map(sorted, seen)) == sorted(map(sorted, KEPT_DATA * workers))
        assert len(set(kept)) == len(kept) and all("_kept_" in name for name in kept)
        # The next run (without the option) drops them.
        pytester.runpytest_subprocess(*args, "-k", "passes").assert_outcomes(passed=workers)
        with psycopg.connect(urls[0].rsplit("/", 1)[0] + "/postgres") as conn:
            left = [n for (n,) in conn.execute("select datname from pg_database where datname like '%\\_kept\\_%'")]
        assert left == []
    finally:
        pytester.run("python", "-m", "devenv", "down", "--volumes", "-p", "ci", "--runtime", runtime)
