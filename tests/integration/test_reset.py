"""Reset: back to the freshly seeded state, never from a stale template, pooled clients unharmed."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from devenv.api import Devenv
from devenv.config.resolve import load_stack_cached
from tests.integration.conftest import free_port


def _counts(proj) -> tuple[int, int]:
    with proj.connect() as conn:
        return (conn.execute("SELECT count(*) FROM users").fetchone()[0],
                conn.execute("SELECT count(*) FROM tasks").fetchone()[0])


def _dirty(proj) -> None:
    with proj.connect() as conn:
        conn.execute("DELETE FROM tasks WHERE status = 'done'")
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('dirty@x', 'x')")
        conn.execute("CREATE TABLE scratch (a int)")
    proj.redis().set("dirty", "1")


# On the engine lanes only `auto` (the others are the same SQL on any engine).
@pytest.mark.parametrize("strategy", [pytest.param("auto", marks=pytest.mark.every_engine), "restore", "clone", "copy"])
def test_cli_reset_restores_the_seeded_state(project, strategy: str) -> None:
    project.devenv("up")
    with project.connect() as conn:
        conn.execute("DELETE FROM tasks WHERE status = 'done'")
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('dirty@x', 'x')")
    project.redis().set("dirty", "1")
    result = project.devenv("reset", "--strategy", strategy)
    assert "reset taskflow" in result.stderr and " ms" in result.stderr
    assert _counts(project) == (8, 40)
    assert project.redis().exists("dirty") == 0


def test_the_plain_cli_reset_runs_without_click_and_says_the_same(project) -> None:
    """`devenv reset [-p P]` restores in place without loading click (devenv.cli.entry: its import
    costs more than the reset); a form click parses prints the same line."""
    project.devenv("up")
    project.redis().set("dirty", "1")
    with project.connect() as conn:
        conn.execute("DELETE FROM tasks WHERE status = 'done'")
    project.env["PYTHONPROFILEIMPORTTIME"] = "1"  # python -X importtime
    try:
        plain = project.devenv("reset")
    finally:
        del project.env["PYTHONPROFILEIMPORTTIME"]
    imported = {line.rsplit("|", 1)[1].strip() for line in plain.stderr.splitlines() if line.startswith("import time:")}
    assert {"devenv.db.janitor", "devenv.db.reset"} <= imported, "the import trace is not there to be read"
    # Each costs more than the reset: click ~35 ms, psycopg ~150 ms, dataclasses (with inspect) ~10 ms,
    # yaml (with the validation it serves; stack.json spares both). The rule this guards: modules
    # on the reset path use devenv.record.Record, not dataclasses (devenv/record.py).
    heavy = {"click", "psycopg", "dataclasses", "inspect", "yaml"}
    assert not heavy & imported, sorted(heavy & imported)
    assert _counts(project) == (8, 40) and project.redis().exists("dirty") == 0
    said = [line for line in plain.stderr.splitlines() if not line.startswith("import time:")]
    assert len(said) == 1 and said[0].startswith("taskflow-") and "reset taskflow (restore, by key) and Redis in" in said[0]
    parsed = project.devenv("reset", "--strategy", "auto")
    assert parsed.stderr.split(" in ")[0] == said[0].split(" in ")[0]


def test_reset_after_ddl_drops_what_the_test_created(project) -> None:
    project.devenv("up")
    _dirty(project)
    result = project.devenv("reset")
    assert "(clone)" in result.stderr or "(copy)" in result.stderr, "DDL since the clone: restore is not enough"
    with project.connect() as conn:
        assert conn.execute("SELECT to_regclass('scratch')").fetchone()[0] is None
    assert _counts(project) == (8, 40)


def test_a_changed_seed_file_rebuilds_the_template_on_the_next_reset(project) -> None:
    project.devenv("up")
    with project.connect() as conn:
        old_template = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'taskflow__tpl_%'").fetchone()[0]
    # Databases that merely start like devenv's templates are a user's: pruning keeps them.
    mine = ["taskflow__tpl_zzz", "taskflow__tpl_0123456789ab_backup", "taskflow__tpl_0123456789ab__building_x"]
    with project.admin_connect(autocommit=True) as conn:
        for name in mine:
            conn.execute(f'CREATE DATABASE "{name}"')
    (project.root / "seeds" / "data" / "003_more.sql").write_text(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES "
        "('00000000-0000-4000-8000-0000000000a1', 'ivan@taskflow.dev', 'x', '2025-01-01');\n")
    project.devenv("reset")
    assert _counts(project) == (9, 40)
    with project.connect() as conn:
        templates = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'taskflow__tpl_%'")]
    assert templates and old_template not in templates, "the stale template must be gone"
    assert set(mine) <= set(templates), "a database devenv did not make must stay"


def test_reset_hard_rebuilds_from_changed_files(project) -> None:
    project.devenv("up")
    users = project.root / "seeds" / "data" / "001_users.sql"
    users.write_text(users.read_text().replace("alice@taskflow.dev", "alice.smith@taskflow.dev"))
    assert project.devenv("up", check=False).returncode == 8  # an applied file changed
    project.devenv("reset", "--hard")
    with project.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE email = 'alice.smith@taskflow.dev'").fetchone()[0] == 1
    project.devenv("up")  # consistent again: the ledger holds the new checksum


def test_pooled_clients_reconnect_cleanly_after_a_reset(project) -> None:
    """After a reset, new pooled connections see the new database at once, without errors."""
    project.devenv("up")
    for strategy in ("clone", "restore"):
        with project.connect(pooled=True, autocommit=True) as pooled:
            pooled.execute("DELETE FROM tasks")  # leaves a server connection in PgBouncer's pool
        project.devenv("reset", "--strategy", strategy)
        for _ in range(5):  # more clients than one server connection, through the same pool
            with project.connect(pooled=True, autocommit=True) as pooled:
                assert pooled.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


def test_the_callers_own_session_is_not_counted_pgbouncers_servers_are_renewed(project) -> None:
    """known_sessions (the plugin's connection, kept from test to test): the restore does not
    count it (with no other session on the database the reset then asks PgBouncer for nothing);
    a server connection of PgBouncer's is still counted, and renewed (RECONNECT)."""
    from devenv.clients import connect
    from devenv.db.janitor import restore_in_place
    from devenv.db.template import template_name

    project.devenv("up")
    handle = Devenv.load(config=project.root / "devenv.yaml", profile="ci", runtime=project.runtime, env=project.env)
    try:
        with project.connect(autocommit=True) as own, connect.postgres(handle.stack, "taskflow") as restorer:
            template = template_name(handle.stack, restorer.server_major)
            own.execute("DELETE FROM tasks WHERE status = 'done'")
            others, how = restore_in_place(restorer, template, "restore")
            assert how == "rows" and others >= 1  # own, and whatever PgBouncer's health check left
            own.execute("DELETE FROM tasks WHERE status = 'done'")
            known = (own.info.backend_pid,)
            assert restore_in_place(restorer, template, "restore", known_sessions=known) == (others - 1, "rows")
        with handle.connect(autocommit=True) as own, handle.connect(pooled=True, autocommit=True) as pooled:
            server = pooled.execute("SELECT pg_backend_pid()").fetchone()[0]
            pooled.execute("SET work_mem = '7MB'")  # a test's leftover on PgBouncer's server connection
            own.execute("DELETE FROM tasks WHERE status = 'done'")
            assert handle.reset(redis_db=None, known_sessions=(own.info.backend_pid,)).strategy == "restore"
            assert pooled.execute("SELECT pg_backend_pid()").fetchone()[0] != server
            assert pooled.execute("SHOW work_mem").fetchone()[0] == "4MB"
            assert own.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    finally:
        handle.close()


def test_a_pooled_connection_outlives_a_clone_reset(project) -> None:
    """PgBouncer holds pooled clients through the swap (PAUSE/RESUME): an open pooled
    connection is not dropped and its next query runs on the new database."""
    project.devenv("up")
    with project.connect(pooled=True, autocommit=True) as pooled:
        pooled.execute("DELETE FROM tasks")
        project.devenv("reset", "--strategy", "clone")
        assert pooled.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


def test_clone_resets_beside_pooled_logins_leave_pgbouncer_running(project) -> None:
    """PgBouncer 1.18 to 1.24 segfaults when KILL meets clients mid-login (pgbouncer#1401):
    resets while other clients log in through the pool must leave it up and serving."""
    project.devenv("up")
    pgbouncer = project.server_pids()["pgbouncer"]
    stop, served = threading.Event(), [0]

    def pooled_client() -> None:
        while not stop.is_set():
            try:
                with project.connect(pooled=True, autocommit=True, connect_timeout=5) as conn:
                    conn.execute("SELECT count(*) FROM tasks")
                    served[0] += 1
            except psycopg.OperationalError:  # its session terminated by a reset: that is allowed
                pass

    clients = [threading.Thread(target=pooled_client, daemon=True) for _ in range(3)]
    handle = Devenv.load(config=project.root / "devenv.yaml", profile="ci", runtime=project.runtime, env=project.env)
    try:
        for thread in clients:
            thread.start()
        for _ in range(40):
            assert handle.reset(strategy="clone").strategy == "clone"
    finally:
        stop.set()
        for thread in clients:
            thread.join(10)
        handle.close()
    assert served[0] > 0, "the pooled clients never got through"
    assert project.server_pids()["pgbouncer"] == pgbouncer, "PgBouncer was restarted or replaced"
    with project.connect(pooled=True, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


def test_a_new_database_needs_no_pgbouncer_and_a_swap_names_it_when_unreachable(project) -> None:
    """Creating a database that is not there yet holds no pooled clients (a first `up` on Docker
    seeds while PgBouncer's container may still be starting); replacing one does, and an
    unreachable PgBouncer is then named as such."""
    from devenv.errors import HealthCheckError
    from devenv.db.janitor import Janitor

    project.devenv("up")
    stack = project.stack()
    stack = stack.replace(pgbouncer=stack.pgbouncer.replace(port=free_port()))  # nobody listens
    janitor = Janitor(stack)
    try:
        assert janitor.create("taskflow_fresh") is True
        with pytest.raises(HealthCheckError, match="cannot reach PgBouncer's admin console"):
            janitor.reset("taskflow_fresh", strategy="clone")
    finally:
        janitor.close()
    with project.connect() as conn:
        conn.execute("SELECT 1")  # the failed swap left the stack as it was
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'taskflow_fresh%'")}
    assert names == {"taskflow_fresh"}, "the failed clone's scratch copy is dropped"


def test_a_new_clusters_empty_database_is_adopted_for_the_template(project) -> None:
    """The image's entrypoint makes an empty POSTGRES_DB database with the cluster: the template
    is built in it (renamed away) rather than in a new database that the empty one is then
    dropped for. One with a session on it is not adopted: a new database is made as before."""
    from devenv.db.janitor import Janitor

    project.devenv("up")
    stack = project.stack()

    def as_if_new() -> int:
        """Only an empty taskflow, as the entrypoint leaves it; its oid."""
        with project.connect(dbname="postgres", autocommit=True) as conn:
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'taskflow%'").fetchall():
                conn.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false')
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute("CREATE DATABASE taskflow")
            return conn.execute("SELECT oid FROM pg_database WHERE datname = 'taskflow'").fetchone()[0]

    def oids() -> dict[str, int]:
        """{"template": oid, "taskflow": oid}, and any other taskflow* database by name."""
        with project.connect(dbname="postgres") as conn:
            rows = conn.execute("SELECT datname, oid FROM pg_database WHERE datname LIKE 'taskflow%'").fetchall()
        return {"template" if "__tpl_" in name else name: oid for name, oid in rows}

    def create_adopting() -> bool:
        janitor = Janitor(stack)
        try:
            return janitor.create("taskflow", adopt=True)
        finally:
            janitor.close()

    empty = as_if_new()
    assert create_adopting() is True
    after = oids()
    assert set(after) == {"template", "taskflow"} and after["template"] == empty, after
    assert _counts(project) == (8, 40)

    empty = as_if_new()
    with project.connect(dbname="taskflow", autocommit=True) as held:  # a session on it: no rename
        held.execute("SELECT 1")
        assert create_adopting() is True
    after = oids()
    assert set(after) == {"template", "taskflow"} and empty not in after.values(), "a new one; the empty one replaced"
    assert _counts(project) == (8, 40)


def test_redis_seed_keys_are_reloaded(project) -> None:
    (project.root / "seeds" / "redis.json").write_text(json.dumps({
        "feature:dark_mode": "on", "queue:emails": ["a", "b"], "ratelimit:config": {"limit": "100", "window": "60"},
    }))
    project.devenv("up")
    client = project.redis()
    client.flushdb()
    client.set("junk", "1")
    project.devenv("reset")
    assert client.get("feature:dark_mode") == "on"
    assert client.lrange("queue:emails", 0, -1) == ["a", "b"]
    assert client.hgetall("ratelimit:config") == {"limit": "100", "window": "60"}
    assert client.exists("junk") == 0


def test_seed_scale_generates_tasks(project) -> None:
    project.edit("devenv.yaml", "    ephemeral: true\n", "    ephemeral: true\n    seed_scale: 500\n")
    project.devenv("up")
    assert _counts(project) == (8 + 10, 40 + 500)
    with project.connect() as conn:  # deterministic ids: the same scale gives the same rows
        assert conn.execute("SELECT title FROM tasks WHERE id = md5('scale-task-7')::uuid").fetchone()[0] \
            == "Plan onboarding emails"  # ARRAY[...][1 + 7 % 8], [1 + 7 % 10]


def test_python_api(project, monkeypatch) -> None:
    monkeypatch.setenv("DEVENV_NO_CACHE", "1")  # in-process: the shared cache would skip the clone
    handle = Devenv.load(config=project.root / "devenv.yaml", profile="ci", runtime=project.runtime, env=project.env)
    try:
        report = handle.up()
        assert report.database_created
        assert handle.is_healthy()
        with handle.connect() as conn:
            conn.execute("DELETE FROM tasks")
            conn.commit()
        result = handle.reset()
        assert result.strategy == "restore" and result.database == "taskflow"
        with handle.connect(pooled=True) as conn:
            assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
        assert handle.create_database("taskflow_other") is True
        assert handle.create_database("taskflow_other") is False  # kept
        with handle.connect("taskflow_other") as conn:
            assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
        assert handle.redis(3).ping() is True
    finally:
        handle.close()


_CONTENTS = ("SELECT (SELECT md5(string_agg(u::text, ',' ORDER BY u::text)) FROM users u), "
             "(SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM tasks t)")
# Each is what one test might do; every one must be undone by an in-place restore. The second
# element: how (ResetResult.detail): "rows", put back by primary key from the key logs, or
# "tables", compared whole (a TRUNCATE or a write as a replica: no key log sees their rows).
_WRITES = {
    "update one row": (["UPDATE tasks SET title = 'changed' WHERE id = (SELECT id FROM tasks ORDER BY id LIMIT 1)"], "rows"),
    "update a key": (["UPDATE tasks SET id = gen_random_uuid() WHERE id = (SELECT id FROM tasks ORDER BY id LIMIT 1)"], "rows"),
    "cascaded delete": (["DELETE FROM users WHERE email = 'alice@taskflow.dev'"], "rows"),  # ON DELETE CASCADE to tasks
    "insert": (["INSERT INTO users (email, password_hash) VALUES ('new@x', 'x')"], "rows"),
    "upsert": (["INSERT INTO users (id, email, password_hash) SELECT id, 'taken@x', 'x' FROM users ORDER BY id LIMIT 1 "
                "ON CONFLICT (id) DO UPDATE SET email = excluded.email"], "rows"),
    "merge": (["MERGE INTO tasks t USING (SELECT id FROM tasks ORDER BY id LIMIT 3) s ON t.id = s.id "
               "WHEN MATCHED THEN UPDATE SET status = 'archived'"], "rows"),
    "email swapped to a new row": (["UPDATE users SET email = 'moved@x' WHERE email = 'alice@taskflow.dev'",
                                    "INSERT INTO users (email, password_hash) VALUES ('alice@taskflow.dev', 'x')"], "rows"),
    "truncate": (["TRUNCATE users CASCADE"], "tables"),
    "as a replica": (["SET session_replication_role = replica", "DELETE FROM tasks", "RESET session_replication_role"], "tables"),
    "rolled back": (["BEGIN", "DELETE FROM tasks", "ROLLBACK"], "rows"),
    "open transaction": (["BEGIN", "UPDATE tasks SET status = 'done'"], "rows"),  # left open: the reset ends it
}


def test_restore_undoes_every_kind_of_write(project) -> None:
    """Restore puts back only what was written (devenv.dirty, the key logs); whatever the write,
    the data is the seed's, and the reset says whether it went by key."""
    project.devenv("up")
    handle = Devenv.load(config=project.root / "devenv.yaml", profile="ci", runtime=project.runtime, env=project.env)
    try:
        with project.connect(autocommit=True) as conn:
            seeded = conn.execute(_CONTENTS).fetchone()
        for name, (statements, how) in _WRITES.items():
            writer = project.connect(autocommit=True)
            for statement in statements:
                writer.execute(statement)
            result = handle.reset(redis_db=None)
            assert (result.strategy, result.detail) == ("restore", how), name
            writer.close()
            with project.connect(autocommit=True) as conn:
                assert conn.execute(_CONTENTS).fetchone() == seeded, f"{name}: not the seeded data after a restore"
                assert conn.execute("SELECT count(*) FROM devenv.dirty").fetchone()[0] == 0, name
                logged = conn.execute("SELECT string_agg(format('(SELECT count(*) FROM devenv.%I)', keys), ' + ') "
                                      "FROM devenv.snapshots WHERE keys IS NOT NULL").fetchone()[0]
                assert conn.execute(f"SELECT {logged}").fetchone()[0] == 0, f"{name}: keys left in the logs"
        with project.connect(autocommit=True) as conn:  # nothing written: nothing to reload, still seeded
            conn.execute("SELECT count(*) FROM tasks")
        assert handle.reset(redis_db=None).strategy == "restore"
    finally:
        handle.close()


@pytest.mark.native_only(reason="SQL in the database, the same on every runtime")
def test_rows_go_back_by_composite_key_with_generated_and_identity_columns_and_copy(project) -> None:
    """A composite primary key, a generated column and an identity column: the written rows go
    back by key (COPY among the writes), the untouched ones are not rewritten (same xmin)."""
    (project.root / "seeds" / "schema" / "005_members.sql").write_text(
        "CREATE TABLE members (team int, member int, role text NOT NULL, "
        "slug text GENERATED ALWAYS AS (team || '-' || member) STORED, n int GENERATED ALWAYS AS IDENTITY, "
        "PRIMARY KEY (team, member));\n")
    (project.root / "seeds" / "data" / "003_members.sql").write_text(
        "INSERT INTO members (team, member, role) VALUES (1, 1, 'owner'), (1, 2, 'dev'), (2, 1, 'dev');\n")
    project.devenv("up")
    contents = "SELECT string_agg(m::text, ';' ORDER BY team, member) FROM members m"
    handle = Devenv.load(config=project.root / "devenv.yaml", profile="ci", runtime=project.runtime, env=project.env)
    try:
        with project.connect(autocommit=True) as conn:
            seeded = conn.execute(contents).fetchone()[0]
            untouched = conn.execute("SELECT xmin::text FROM members WHERE (team, member) = (2, 1)").fetchone()
        for write in ("UPDATE members SET role = 'lead' WHERE (team, member) = (1, 2)",
                      "UPDATE members SET member = 9 WHERE (team, member) = (1, 1)",
                      "DELETE FROM members WHERE team = 1",
                      "INSERT INTO members (team, member, role) VALUES (3, 3, 'new')",
                      "COPY"):
            with project.connect(autocommit=True) as conn:
                if write == "COPY":
                    with conn.cursor().copy("COPY members (team, member, role) FROM STDIN") as copy:
                        copy.write_row((4, 4, "copied"))
                else:
                    conn.execute(write)
            result = handle.reset(redis_db=None)
            assert (result.strategy, result.detail) == ("restore", "rows"), write
            with project.connect(autocommit=True) as conn:
                assert conn.execute(contents).fetchone()[0] == seeded, write
                assert conn.execute("SELECT xmin::text FROM members WHERE (team, member) = (2, 1)").fetchone() == untouched, write
    finally:
        handle.close()


def test_the_cli_reuses_the_stack_until_an_input_changes(project, monkeypatch) -> None:
    """`devenv reset` reads .devenv/<profile>/stack.json instead of devenv.yaml while up's inputs hash the same."""
    for name, value in project.env.items():
        if name.startswith("DEVENV_"):
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(project.root)
    built = load_stack_cached(None, "ci")
    assert (project.root / ".devenv" / "ci" / "stack.json").stat().st_mode & 0o077 == 0, "it holds the passwords"
    assert load_stack_cached(None, "ci") == built == project.stack("ci")
    monkeypatch.setenv("DEVENV_REDIS_PORT", str(free_port()))
    assert load_stack_cached(None, "ci").redis.port != built.redis.port
    project.edit("devenv.yaml", "    ephemeral: true\n", "    ephemeral: true\n    seed_scale: 5\n")
    assert load_stack_cached(None, "ci").seed_scale == 5


def test_restore_counts_identical_rows_of_a_table_without_a_key(project) -> None:
    """Rows are compared as a multiset: one of two identical rows deleted, or a third added, is put right."""
    (project.root / "seeds" / "schema" / "005_events.sql").write_text("CREATE TABLE events (kind text);\n")
    (project.root / "seeds" / "data" / "003_events.sql").write_text("INSERT INTO events VALUES ('a'), ('a'), ('b');\n")
    project.devenv("up")
    handle = Devenv.load(config=project.root / "devenv.yaml", profile="ci", runtime=project.runtime, env=project.env)
    try:
        for write in ("DELETE FROM events WHERE ctid IN (SELECT ctid FROM events WHERE kind = 'a' LIMIT 1)",
                      "INSERT INTO events VALUES ('a')",
                      "UPDATE events SET kind = 'b' WHERE kind = 'a'"):
            with project.connect(autocommit=True) as conn:
                conn.execute(write)
            assert handle.reset(redis_db=None).strategy == "restore", write
            with project.connect(autocommit=True) as conn:
                assert [r[0] for r in conn.execute("SELECT kind FROM events ORDER BY 1")] == ["a", "a", "b"], write
    finally:
        handle.close()


def test_ddl_and_disabled_triggers_under_replica_mode_are_seen_by_the_next_reset(project) -> None:
    """The application role may set session_replication_role (the restore needs it), under which
    ordinary triggers and event triggers do not fire: devenv's fire always, so DDL there (a new
    table, a dropped or disabled devenv_dirty trigger) still makes the next reset a clone."""
    proj = project
    proj.devenv("up")
    with proj.connect(autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("CREATE TABLE extra (x int)")
    result = proj.devenv("reset")
    assert "(restore" not in result.stderr, result.stderr  # a clone or a copy: the schema changed
    with proj.connect(autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('extra')").fetchone() == (None,)
        conn.execute("SET session_replication_role = replica")
        conn.execute("ALTER TABLE tasks DISABLE TRIGGER USER")
        conn.execute("RESET session_replication_role")
        conn.execute("DELETE FROM tasks WHERE id IN (SELECT id FROM tasks LIMIT 10)")
    proj.devenv("reset")
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (40,)


@pytest.mark.native_only(reason="SQL in the database, the same on every runtime")
def test_auto_clones_when_putting_back_by_key_would_cost_more_than_a_clone(project) -> None:
    """More keys logged than a clone costs (at this seed, more than RESTORE_MAX_ROWS): `auto`
    clones; `restore` asked for by name still goes by key."""
    from devenv.db.janitor import RESTORE_MAX_ROWS

    project.devenv("up")
    many = (f"INSERT INTO tasks (user_id, title) SELECT (SELECT id FROM users ORDER BY id LIMIT 1), 'many ' || i "
            f"FROM generate_series(1, {RESTORE_MAX_ROWS + 1}) i")
    handle = Devenv.load(config=project.root / "devenv.yaml", profile="ci", runtime=project.runtime, env=project.env)
    try:
        for strategy, expected in (("auto", ("clone", "copy")), ("restore", ("restore",))):
            with project.connect(autocommit=True) as conn:
                conn.execute(many)
            result = handle.reset(strategy=strategy, redis_db=None)
            assert result.strategy in expected, (strategy, result)
            with project.connect(autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (40,), strategy
        with project.connect(autocommit=True) as conn:  # just under: still by key
            conn.execute(many.replace(str(RESTORE_MAX_ROWS + 1), str(RESTORE_MAX_ROWS)))
        assert (lambda r: (r.strategy, r.detail))(handle.reset(redis_db=None)) == ("restore", "rows")
    finally:
        handle.close()
