"""Trust boundaries (issue 15, classes 1 and 2): what the application role may do, what root
trusts, and the environment the servers start with. Real servers, driven through the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Project

SECRET_VARS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-for-devenv-test", "GITHUB_TOKEN": "ghp_devenv_test_token",
               "CI_JOB_TOKEN": "ci-job-token-devenv-test"}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_servers_start_with_a_minimal_environment(project: Project) -> None:
    project.env.update(SECRET_VARS, PATH="/tmp/devenv-not-a-system-dir:" + os.environ["PATH"], PGHOST="elsewhere")
    project.devenv("up")
    if project.runtime == "docker":
        # Containers get their image's variables and what the compose file names, nothing of the caller's.
        allowed = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA", "PGPASSWORD", "REDISCLI_AUTH"}
        for service in ("postgres", "pgbouncer", "redis"):
            container = project.container(service)
            image_env = {item.split("=", 1)[0] for item in container.image.attrs["Config"].get("Env") or []}
            names = {item.split("=", 1)[0] for item in container.attrs["Config"]["Env"] or []}
            assert names <= image_env | allowed, (service, sorted(names - image_env))
            assert not names & set(SECRET_VARS), service
        return
    for service, pid in project.server_pids().items():
        env = _environ(pid)
        for name in SECRET_VARS:
            assert name not in env, f"{service} (pid {pid}) inherited {name}"
        assert not any(value in SECRET_VARS.values() for value in env.values()), service
        assert "PGHOST" not in env, service
        assert "/tmp/devenv-not-a-system-dir" not in env.get("PATH", ""), service
        assert set(env) <= {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "PG_GRANDPARENT_PID", "PGLOCALEDIR",
                            "PGSYSCONFDIR"} | {k for k in env if k.startswith("LC_")}, (service, sorted(env))
        if service != "redis":  # redis-server writes its process title over its environment block
            assert env.get("HOME"), service


# ---- class 1: the application role ---------------------------------------------------------------

OS_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files", "pg_signal_backend",
            "pg_read_all_data", "pg_write_all_data", "pg_monitor")


def test_the_application_role_is_no_superuser_and_owns_its_database(project: Project) -> None:
    import psycopg

    project.devenv("up")
    stack = project.stack()
    with project.connect(autocommit=True) as conn:
        user, is_super = conn.execute("SELECT current_user, current_setting('is_superuser')").fetchone()
        assert (user, is_super) == ("taskflow", "off")
        attrs = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
                             "FROM pg_roles WHERE rolname = current_user").fetchone()
        assert attrs == (False, True, False, False, False)
        assert conn.execute("SELECT count(*) FROM pg_auth_members WHERE member = current_user::regrole").fetchone()[0] == 0
        for role in OS_ROLES:
            assert not conn.execute("SELECT pg_has_role(current_user, %s, 'MEMBER')", (role,)).fetchone()[0], role
        # It owns its database and every object the schema and the seed made.
        assert conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
                            ).fetchone()[0] == "taskflow"
        foreign = conn.execute(
            "SELECT c.oid::regclass::text, pg_get_userbyid(c.relowner) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND c.relowner <> current_user::regrole").fetchall()
        assert foreign == []
        # No way to the OS: COPY TO PROGRAM, server files, superuser-only settings.
        for statement in ("COPY (SELECT 1) TO PROGRAM 'id'", "COPY (SELECT 1) TO '/tmp/devenv-owned'",
                          "SELECT pg_read_file('/etc/passwd')", "ALTER SYSTEM SET work_mem = '1MB'",
                          "CREATE ROLE intruder SUPERUSER", "SELECT lo_import('/etc/passwd')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # Through PgBouncer too: the pooled URL is the same role.
    with project.connect(pooled=True, autocommit=True) as conn:
        assert conn.execute("SELECT current_user, current_setting('is_superuser')").fetchone() == ("taskflow", "off")
    # devenv's own superuser exists, with the password of .devenv/secrets.json, and is the bootstrap role.
    with psycopg.connect(host="127.0.0.1", port=stack.postgres.port, user=stack.postgres.admin_user,
                         password=stack.postgres.admin_password, dbname="postgres", autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE oid = 10 AND rolname = current_user").fetchone() == (True,)


def test_everything_the_suite_does_works_as_the_application_role(project: Project, tmp_path: Path) -> None:
    """Resets (every strategy), snapshots, dump and restore, per-worker databases: devenv's
    cluster-level work as its admin role, the data as the application's; users see only the latter."""
    project.devenv("up")
    with project.connect(autocommit=True) as conn:

        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        assert tables
        first = tables[0]
        seeded = conn.execute(f'SELECT count(*) FROM "{first}"').fetchone()[0]
        conn.execute(f'DELETE FROM "{first}"')
    for strategy in ("restore", "clone", "copy", "auto"):
        project.devenv("reset", "--strategy", strategy)
        with project.connect(autocommit=True) as conn:
            assert conn.execute(f'SELECT count(*) FROM "{first}"').fetchone()[0] == seeded, strategy
            conn.execute(f'DELETE FROM "{first}"')
    project.devenv("snapshot", "save", "empty")
    project.devenv("reset")
    project.devenv("snapshot", "restore", "empty")
    with project.connect(autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{first}"').fetchone()[0] == 0
        assert conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
                            ).fetchone()[0] == "taskflow"
    dump = tmp_path / "empty.dump"
    project.devenv("dump", str(dump))
    project.devenv("reset", "--hard")
    project.devenv("restore", "--yes", str(dump))
    with project.connect(autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{first}"').fetchone()[0] == 0
        owners = {r[0] for r in conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'devenv')").fetchall()}
        assert owners == {"taskflow"}
        # The restored database still has devenv's DDL guard (event triggers are the admin's).
        assert {r[0] for r in conn.execute("SELECT evtname FROM pg_event_trigger").fetchall()} == {
            "devenv_ddl_end", "devenv_ddl_drop"}
    project.devenv("reset")
    with project.connect(autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{first}"').fetchone()[0] == seeded
        conn.execute("CREATE TABLE scratch_after_restore (id int)")  # DDL as the application role
    project.devenv("reset")
    with project.connect(autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('scratch_after_restore')").fetchone()[0] is None


# ---- class 1: an older devenv's cluster is migrated in place -------------------------------------


def _make_old_layout(project: Project) -> None:
    """Turn a running stack's cluster into what an older devenv made: the application role is
    the bootstrap superuser (renamed from devenv_admin), owning every database and object, with
    the application's password; secrets.json without the admin password; the old note."""
    import hashlib
    import json

    import psycopg

    stack = project.stack()
    pg = stack.postgres
    admin = dict(host="127.0.0.1", port=pg.port, dbname="postgres", autocommit=True)
    with psycopg.connect(user=pg.admin_user, password=pg.admin_password, **admin) as conn:
        conn.execute("CREATE ROLE old_layout_helper SUPERUSER LOGIN PASSWORD 'helper-pw'")
    with psycopg.connect(user="old_layout_helper", password="helper-pw", **admin) as conn:
        databases = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname NOT IN ('template0', 'template1', 'postgres')").fetchall()]
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (pg.user,))
        for name in databases:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            with psycopg.connect(user="old_layout_helper", password="helper-pw",
                                 **{**admin, "dbname": name}) as inside:
                inside.execute(f'REASSIGN OWNED BY "{pg.user}" TO "{pg.admin_user}"')
                inside.execute(f'DROP OWNED BY "{pg.user}"')
            conn.execute(f'ALTER DATABASE "{name}" OWNER TO "{pg.admin_user}"')
            if "__tpl_" in name or "__snap_" in name:
                conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        conn.execute(f'REVOKE SET ON PARAMETER session_replication_role FROM "{pg.user}"')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (pg.user,))
        conn.execute(f'DROP ROLE "{pg.user}"')
        conn.execute(f'ALTER ROLE "{pg.admin_user}" RENAME TO "{pg.user}"')
        conn.execute(f"ALTER ROLE \"{pg.user}\" PASSWORD '{pg.password_secret}'")
    with psycopg.connect(user=pg.user, password=pg.password, **admin) as conn:
        conn.execute("DROP ROLE old_layout_helper")
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE oid = 10 AND rolname = current_user").fetchone() == (True,)
    secrets_path = project.root / ".devenv" / "secrets.json"
    secrets = json.loads(secrets_path.read_text())
    del secrets["postgres_admin_password"]
    secrets_path.write_text(json.dumps(secrets))
    if project.runtime == "native":
        pgdata = Path(project.native_state()["_meta"]["pgdata"])
        pgdata.with_name(pgdata.name + ".password-sha256").write_text(
            hashlib.sha256(pg.password_secret.encode()).hexdigest() + "\n")
    else:
        (project.root / ".devenv" / project.profile / "docker-volume-password").write_text(
            hashlib.sha256(pg.password_secret.encode()).hexdigest() + "\n")


def test_an_older_devenvs_cluster_is_migrated_by_up_with_its_data_kept(project: Project) -> None:
    import psycopg

    project.profile = "dev"  # durable data, as a developer's
    project.devenv("up")
    with project.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO kept (note) SELECT 'row ' || g FROM generate_series(1, 5) g")
        conn.execute("CREATE VIEW kept_view AS SELECT * FROM kept")
        conn.execute("CREATE FUNCTION kept_fn() RETURNS int LANGUAGE sql AS 'SELECT 42'")
        conn.execute("CREATE TYPE kept_mood AS ENUM ('ok', 'meh')")
        conn.execute("CREATE SCHEMA kept_schema")
        conn.execute("SELECT lo_from_bytea(0, 'large')")
    project.devenv("snapshot", "save", "before-upgrade")
    _make_old_layout(project)

    first = project.devenv("up")
    assert first.stderr.count("migrated this cluster from an older devenv") == 1, first.stderr
    second = project.devenv("up")
    assert "migrated" not in second.stderr

    stack = project.stack()
    with project.connect(autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('is_superuser')").fetchone() == ("off",)
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (5,)
        assert conn.execute("SELECT count(*) FROM kept_view").fetchone() == (5,)
        assert conn.execute("SELECT kept_fn()").fetchone() == (42,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    with project.connect(autocommit=True) as conn:
        not_ours = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
            "AND c.relowner <> current_user::regrole").fetchall()
        assert not_ours == []
        assert conn.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'kept_schema'"
                            ).fetchone() == ("taskflow",)
        assert conn.execute("SELECT pg_get_userbyid(typowner) FROM pg_type WHERE typname = 'kept_mood'"
                            ).fetchone() == ("taskflow",)
        assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner <> current_user::regrole"
                            ).fetchone() == (0,)
        owners = dict(conn.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database").fetchall())
        assert {name: owner for name, owner in owners.items() if name not in ("postgres", "template0", "template1")} \
            == {name: "taskflow" for name in owners if name not in ("postgres", "template0", "template1")}
        conn.execute("ALTER TABLE kept ADD COLUMN extra int")  # it owns it: DDL works
    with psycopg.connect(host="127.0.0.1", port=stack.postgres.port, user=stack.postgres.admin_user,
                         password=stack.postgres.admin_password, dbname="postgres", autocommit=True) as conn:
        assert conn.execute("SELECT rolname FROM pg_roles WHERE oid = 10").fetchone() == (stack.postgres.admin_user,)
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'devenv_migrating'").fetchone() == (0,)
    # The pool logs in as the new role; the snapshot is kept and restores; resets work.
    with project.connect(pooled=True, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (5,)
    project.devenv("snapshot", "restore", "before-upgrade")
    with project.connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (5,)
    project.devenv("reset")
    with project.connect(autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('kept')").fetchone() == (None,)


# ---- class 1: what root trusts (natively, as root, the servers run as `postgres`) ----------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="root's trust in files the server user can write")


def _as_postgres(script: str) -> "subprocess.CompletedProcess[str]":
    import subprocess

    return subprocess.run(["runuser", "-u", "postgres", "--", "sh", "-c", script], capture_output=True, text=True)


@needs_root
@pytest.mark.native_only(reason="the native runtime's files")
def test_root_never_acts_on_files_the_server_user_can_write(project: Project, tmp_path: Path) -> None:
    import json
    import shutil
    import stat

    project.devenv("up")
    base = (project.root / ".devenv" / project.profile / "native").resolve()
    state_file = base / "state.json"
    real_state = json.loads(state_file.read_text())

    # The server user can write none of the stack's directory, conf/, log/ or data/.
    for where in (base, base / "conf", base / "log", base / "data", Path(real_state["_meta"]["pgdata"]).parent):
        _as_postgres(f"touch '{where}/planted'")
        assert not (where / "planted").exists(), f"the server user can create files in {where}"
        assert stat.S_IMODE(os.stat(where).st_mode) & 0o022 == 0 and os.stat(where).st_uid == 0, where
    assert _as_postgres(f"echo '{{}}' > '{state_file}'").returncode != 0

    # What a server user could plant where an older devenv let it write: a state.json naming its own
    # pg_dump and a pgdata outside devenv's directory.
    marker = tmp_path / "planted-program-ran"
    planted = Path("/tmp") / f"devenv-planted-{os.getpid()}"
    shutil.rmtree(planted, ignore_errors=True)
    assert _as_postgres(f"mkdir -p '{planted}'").returncode == 0
    for program in ("postgres", "initdb", "pg_dump", "pgbouncer", "redis-server"):
        (planted / program).write_text(f"#!/bin/sh\ntouch '{marker}'\n")
        os.chmod(planted / program, 0o755)
    shutil.chown(planted / "pg_dump", "postgres")
    victim = tmp_path / "victim" / "devenv-x" / "postgres"
    victim.mkdir(parents=True)
    (victim / "precious").write_text("keep me")
    evil = {**real_state, "_meta": {**real_state["_meta"], "pgdata": str(victim), "binaries": {
        **real_state["_meta"]["binaries"], "postgres": str(planted / "postgres"), "initdb": str(planted / "initdb"),
        "pgbouncer": str(planted / "pgbouncer"), "redis_server": str(planted / "redis-server")}}}
    try:
        # 1. Planted by the server user (its file): ignored.
        os.chown(base, _uid("postgres"), -1)  # as an older devenv left it
        assert _as_postgres(f"rm -f '{state_file}' && cat > '{state_file}' <<'EOF'\n{json.dumps(evil)}\nEOF").returncode == 0
        os.chown(base, 0, 0)
        project.devenv("dump", str(tmp_path / "one.dump"))
        assert not marker.exists(), "root ran a program named by a state.json the server user wrote"
        # 2. Root's own file naming programs another user could have put there: not run either.
        state_file.unlink()
        state_file.write_text(json.dumps(evil))
        os.chmod(state_file, 0o600)
        project.devenv("dump", str(tmp_path / "two.dump"))
        assert not marker.exists(), "root ran a program from a directory the server user owns"
        # 3. `down --volumes` deletes only inside devenv's own directories.
        state_file.write_text(json.dumps({**real_state, "_meta": {**real_state["_meta"], "pgdata": str(victim)}}))
        project.devenv("down", "--volumes")
        assert (victim / "precious").read_text() == "keep me"
        assert not base.exists()
    finally:
        shutil.rmtree(planted, ignore_errors=True)


def _uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def test_a_migration_killed_after_the_rename_is_finished_by_the_next_up(project: Project) -> None:
    """The kill point that leaves the most undone: the bootstrap role renamed to devenv_admin (with
    the application's old password), the superuser of the moment still there, no application role,
    every database still the bootstrap's. The next `up` finishes the migration with the data kept."""
    import psycopg

    project.profile = "dev"
    project.devenv("up")
    with project.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept SELECT generate_series(1, 3)")
    _make_old_layout(project)
    pg = project.stack().postgres
    admin = dict(host="127.0.0.1", port=pg.port, dbname="postgres", autocommit=True)
    with psycopg.connect(user=pg.user, password=pg.password, **admin) as conn:  # as rename_bootstrap does
        conn.execute("CREATE ROLE devenv_migrating SUPERUSER LOGIN PASSWORD 'm'")
    with psycopg.connect(user="devenv_migrating", password="m", **admin) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (pg.user,))
        conn.execute(f'ALTER ROLE "{pg.user}" RENAME TO "{pg.admin_user}"')
    # ...and here that `up` was killed.
    project.devenv("up")
    with project.connect(autocommit=True) as conn:
        assert conn.execute("SELECT current_setting('is_superuser'), (SELECT count(*) FROM kept)").fetchone() == ("off", 3)
        assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'kept'").fetchone() == ("taskflow",)
    with project.admin_connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'devenv_migrating'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datdba = 10 AND datname NOT IN "
                            "('postgres', 'template0', 'template1')").fetchone() == (0,)


@pytest.mark.native_only(reason="one runtime is enough to walk the kill points of the one migration both use")
def test_an_up_killed_anywhere_in_a_migration_leaves_one_the_next_up_finishes(project: Project) -> None:
    """SIGKILL of the migrating `up` at several points (before, inside and after the rename and
    the hand-over): the next `up` always ends with the application role no superuser, owning
    its data, the superuser of the moment gone, and nothing lost."""
    import signal
    import subprocess
    import sys
    import time

    project.profile = "dev"
    project.devenv("up")
    with project.connect(autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept SELECT generate_series(1, 3)")
    argv = [sys.executable, "-m", "devenv", "up", "--runtime", project.runtime, "--profile", project.profile]
    _make_old_layout(project)
    start = time.monotonic()
    project.devenv("up")  # a whole migrating `up`: the kill points below fall inside its span
    span = time.monotonic() - start
    for delay in (span * f for f in (0.1, 0.3, 0.5, 0.65, 0.8, 0.95)):
        _make_old_layout(project)
        with subprocess.Popen(argv, cwd=project.root, env=project.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) as child:
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        project.devenv("up")
        with project.connect(autocommit=True) as conn:
            assert conn.execute("SELECT current_setting('is_superuser'), (SELECT count(*) FROM kept)").fetchone() == ("off", 3), delay
            assert conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'kept'").fetchone() == ("taskflow",), delay
        with project.admin_connect(autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'devenv_migrating'").fetchone() == (0,), delay
            assert conn.execute("SELECT rolname FROM pg_roles WHERE oid = 10").fetchone() == ("devenv_admin",), delay
