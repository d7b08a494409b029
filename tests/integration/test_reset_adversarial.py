"""Adversarial tests of the reset by key (issue 19 item 1): after any write a reset must leave
exactly what a clone gives (the seeded state: every table's rows, sequences), with devenv.dirty
and the key logs empty, and say honestly how it went.

The seeded state is taken right after `up` (a fresh clone), as devenv's superuser (row-level
security must not hide rows from the comparison), per table with ONLY (inheritance must not
blur which table holds a row)."""

from __future__ import annotations

import threading
import time

import pytest

from devenv.api import Devenv
from devenv.db.janitor import ResetResult

# What is tested is SQL inside the database (devenv.restore and its triggers), the same on every
# runtime: native only, for CI's time.
pytestmark = pytest.mark.native_only(reason="the reset's SQL is the same on every runtime")


def _seed(project, schema: str, data: str = "") -> None:
    (project.root / "seeds" / "schema" / "005_adv.sql").write_text(schema)
    if data:
        (project.root / "seeds" / "data" / "003_adv.sql").write_text(data)


def _state(project) -> dict[str, object]:
    """Every user table's rows (count, md5 of the rows ordered) and every sequence."""
    with project.admin_connect(dbname="taskflow", autocommit=True) as conn:
        # Text that tells every value apart, whatever the server's settings.
        conn.execute("SET extra_float_digits = 3; SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'")
        out: dict[str, object] = {}
        tables = conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'devenv', 'pg_toast') "
            "ORDER BY 1").fetchall()
        for (table,) in tables:
            out[table] = conn.execute(f"SELECT count(*), md5(coalesce(string_agg(x::text, ';' ORDER BY x::text), '')) "
                                      f"FROM ONLY {table} x").fetchone()
        for name, value in conn.execute("SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences "
                                        "WHERE schemaname <> 'devenv' ORDER BY 1").fetchall():
            out["seq " + name] = value
        return out


def _diff(before: dict[str, object], after: dict[str, object]) -> dict[str, tuple[object, object]]:
    return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}


def _leftovers(project) -> tuple[int, int]:
    """Rows left in devenv.dirty and in every key log."""
    with project.admin_connect(dbname="taskflow", autocommit=True) as conn:
        dirty = conn.execute("SELECT count(*) FROM devenv.dirty").fetchone()[0]
        logged = conn.execute("SELECT string_agg(format('(SELECT count(*) FROM devenv.%I)', keys), ' + ') "
                              "FROM devenv.snapshots WHERE keys IS NOT NULL").fetchone()[0]
        keys = conn.execute(f"SELECT {logged}").fetchone()[0] if logged else 0
        return dirty, keys


def _handle(project) -> Devenv:
    return Devenv.load(config=project.root / "devenv.yaml", profile="ci", runtime=project.runtime, env=project.env)


def _write(project, *statements: str) -> None:
    with project.connect(autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _assert_as_seeded(project, seeded: dict[str, object], note: object = None) -> None:
    """The state is the seeded one, and devenv.dirty and the key logs are empty."""
    assert _diff(seeded, _state(project)) == {}, note
    assert _leftovers(project) == (0, 0), note


def _reset_is_exact(project, *writes: str, strategy: str = "auto", up: bool = True) -> ResetResult:
    """Bring the stack up (unless up=False), run the writes, reset once: the seeded state and
    nothing left in devenv.dirty or the key logs. The reset's result, for its strategy/detail."""
    if up:
        project.devenv("up")
    seeded = _state(project)
    handle = _handle(project)
    try:
        _write(project, *writes)
        result = handle.reset(strategy=strategy, redis_db=None)
        _assert_as_seeded(project, seeded, result)
        return result
    finally:
        handle.close()


# ---- found by an adversarial pass (issue 19), each fixed --------------------------------------------------------------------------------

def test_a_soft_delete_rule_keeps_rows_the_test_inserted(project) -> None:
    """A DELETE rule (the soft-delete pattern) would rewrite the restore's DELETE by key into an
    UPDATE (HELD: rules are ENABLE ORIGIN by default, quiet under the restore's replica role)."""
    _seed(project,
          "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, deleted boolean NOT NULL DEFAULT false);\n"
          "CREATE RULE notes_soft_delete AS ON DELETE TO notes DO INSTEAD UPDATE notes SET deleted = true WHERE id = OLD.id;\n",
          "INSERT INTO notes (id, body) VALUES (1, 'a'), (2, 'b');\n")
    _reset_is_exact(project, "INSERT INTO notes (id, body) VALUES (3, 'new')")


def test_a_soft_delete_rule_makes_a_reset_by_key_a_silent_clone(project) -> None:
    """The same rule after an UPDATE (HELD, as above). With ENABLE ALWAYS RULE, see
    test_an_always_soft_delete_rule_keeps_rows_the_test_inserted."""
    _seed(project,
          "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, deleted boolean NOT NULL DEFAULT false);\n"
          "CREATE RULE notes_soft_delete AS ON DELETE TO notes DO INSTEAD UPDATE notes SET deleted = true WHERE id = OLD.id;\n",
          "INSERT INTO notes (id, body) VALUES (1, 'a'), (2, 'b');\n")
    result = _reset_is_exact(project, "UPDATE notes SET body = 'changed' WHERE id = 1", strategy="restore")
    assert (result.strategy, result.detail) == ("restore", "rows"), result


def test_an_always_soft_delete_rule_keeps_rows_the_test_inserted(project) -> None:
    """A DELETE rule made ENABLE ALWAYS (as on a logical replica) would fire under the restore's
    replica role and turn its DELETE by key into an UPDATE: the table has rules of its own that
    fire always, so the reset clones ('always triggers'), and the row the test inserted is gone."""
    _seed(project,
          "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, deleted boolean NOT NULL DEFAULT false);\n"
          "CREATE RULE notes_soft_delete AS ON DELETE TO notes DO INSTEAD UPDATE notes SET deleted = true WHERE id = OLD.id;\n"
          "ALTER TABLE notes ENABLE ALWAYS RULE notes_soft_delete;\n",
          "INSERT INTO notes (id, body) VALUES (1, 'a'), (2, 'b');\n")
    _reset_is_exact(project, "INSERT INTO notes (id, body) VALUES (3, 'new')")


def test_forced_row_level_security_hides_rows_from_the_snapshot_and_the_restore(project) -> None:
    """FORCE ROW LEVEL SECURITY applies policies to the owner, the application role devenv
    snapshots and restores as (NOBYPASSRLS), so its snapshot and its DELETE by key miss rows: a
    written table that forces row security is reset by a clone ('row security')."""
    _seed(project,
          "CREATE TABLE docs (id int PRIMARY KEY, tenant text NOT NULL, body text NOT NULL);\n"
          "ALTER TABLE docs ENABLE ROW LEVEL SECURITY;\n"
          "ALTER TABLE docs FORCE ROW LEVEL SECURITY;\n"
          "CREATE POLICY docs_tenant ON docs USING (tenant = current_setting('app.tenant', true));\n",
          "SELECT set_config('app.tenant', 'a', false);\n"
          "INSERT INTO docs VALUES (1, 'a', 'one');\n"
          "SELECT set_config('app.tenant', 'b', false);\n"
          "INSERT INTO docs VALUES (2, 'b', 'two');\n"
          "SELECT set_config('app.tenant', '', false);\n")
    project.devenv("up")
    assert _state(project)["public.docs"][0] == 2
    _reset_is_exact(project, "SET app.tenant = 'a'", "UPDATE docs SET body = 'changed' WHERE id = 1", up=False)


def test_a_write_committed_while_a_reset_runs_is_undone_by_the_next_reset(project) -> None:
    """A transaction that writes tasks while a reset runs (busy, not idle: not ended) and commits
    after it: its own devenv.dirty row (each transaction adds one) and its keys stay for the next
    reset, which puts the write back (it used to add no mark when tasks was marked already)."""
    project.devenv("up")
    seeded = _state(project)
    handle = _handle(project)
    try:
        with project.connect(autocommit=True) as conn:
            first, second = [r[0] for r in conn.execute("SELECT id FROM tasks ORDER BY id LIMIT 2")]
        _write(project, f"UPDATE tasks SET title = 'first' WHERE id = '{first}'")
        writer = project.connect()  # a transaction
        writer.execute(f"UPDATE tasks SET title = 'late' WHERE id = '{second}'")

        def busy_then_commit() -> None:
            writer.execute("SELECT pg_sleep(2)")
            writer.commit()

        thread = threading.Thread(target=busy_then_commit)
        thread.start()
        time.sleep(0.5)
        first_reset = handle.reset(redis_db=None)
        thread.join()
        writer.close()
        second_reset = handle.reset(redis_db=None)
        _assert_as_seeded(project, seeded, (first_reset, second_reset))
    finally:
        handle.close()


def test_a_table_first_written_while_the_restore_waits_loses_its_mark(project) -> None:
    """A table first written and committed while the restore runs (here: while its DELETE by key
    waits for a busy writer's row lock): the restore takes out only the marks it read (DELETE ...
    RETURNING at its start) and those of its own writes, so that table's mark and keys stay for
    the next reset."""
    project.devenv("up")
    seeded = _state(project)
    handle = _handle(project)
    try:
        first = "(SELECT id FROM tasks ORDER BY id LIMIT 1)"
        _write(project, f"UPDATE tasks SET title = 'first' WHERE id = {first}")
        busy = project.connect()
        busy.execute(f"UPDATE tasks SET title = 'busy' WHERE id = {first}")  # holds the row lock

        def sleep_then_commit() -> None:
            busy.execute("SELECT pg_sleep(3)")  # active, not idle: the restore does not end it
            busy.commit()

        holder = threading.Thread(target=sleep_then_commit)
        holder.start()
        time.sleep(0.3)
        results: list[object] = []
        resetter = threading.Thread(target=lambda: results.append(handle.reset(redis_db=None)))
        resetter.start()
        time.sleep(1.0)  # the restore now waits for the row lock
        _write(project, "UPDATE users SET email = 'moved@x' WHERE email = 'alice@taskflow.dev'")
        holder.join()
        resetter.join()
        busy.close()
        results.append(handle.reset(redis_db=None))
        _assert_as_seeded(project, seeded, results)
    finally:
        handle.close()


def test_a_child_row_written_through_its_inheritance_parent_goes_back_into_the_child(project) -> None:
    """Inheritance: an UPDATE through the parent marks only the parent; the whole tree is compared,
    each table by its own rows (ONLY), so the child's row goes back into the child with its extra
    column (it used to be put back into the parent)."""
    _seed(project,
          "CREATE TABLE vehicles (id int PRIMARY KEY, name text NOT NULL);\n"
          "CREATE TABLE cars (doors int NOT NULL) INHERITS (vehicles);\n",
          "INSERT INTO vehicles VALUES (1, 'bike');\nINSERT INTO cars VALUES (2, 'sedan', 4);\n")
    _reset_is_exact(project, "UPDATE vehicles SET name = 'renamed' WHERE id = 2")


def test_enable_always_triggers_fire_during_the_restore(project) -> None:
    """A trigger the schema made ENABLE ALWAYS (meant to fire on logical replicas) would fire on the
    restore's own DELETE and INSERT (new updated_at, audit rows): such a written table is reset by
    a clone ('always triggers')."""
    _seed(project,
          "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, updated_at timestamptz NOT NULL);\n"
          "CREATE TABLE audit (n bigserial PRIMARY KEY, item int NOT NULL, op text NOT NULL);\n"
          "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS "
          "$$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;\n"
          "CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
          "INSERT INTO audit (item, op) VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, TG_OP); "
          "RETURN NULL; END $$;\n"
          "CREATE TRIGGER items_touch BEFORE INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch();\n"
          "CREATE TRIGGER items_audit AFTER INSERT OR UPDATE OR DELETE ON items FOR EACH ROW EXECUTE FUNCTION audit_it();\n"
          "ALTER TABLE items ENABLE ALWAYS TRIGGER items_touch;\n"
          "ALTER TABLE items ENABLE ALWAYS TRIGGER items_audit;\n",
          "INSERT INTO items (id, name) VALUES (1, 'one'), (2, 'two');\n")
    _reset_is_exact(project, "UPDATE items SET name = 'changed' WHERE id = 1")


def test_key_columns_named_like_the_restores_own_names_go_back_by_key(project) -> None:
    """Key columns named like the restore's row alias (g) or like PL/pgSQL's own variables (found,
    new, tg_op: the key log's trigger and the put-back function are PL/pgSQL) are columns there:
    ROW(g.*) is the row whatever the columns are called, use_column resolves the rest, and both
    the test's write and the reset go by key (an ambiguity would fail the write, or clone)."""
    _seed(project, "CREATE TABLE grid (g int, found int, new int, tg_op int, v text NOT NULL, "
                   "PRIMARY KEY (g, found, new, tg_op));\n",
          "INSERT INTO grid VALUES (1, 1, 1, 1, 'a'), (2, 2, 2, 2, 'b');\n")
    result = _reset_is_exact(project, "UPDATE grid SET v = 'x' WHERE g = 1", strategy="restore")
    assert (result.strategy, result.detail) == ("restore", "rows"), result


def test_an_expression_index_whose_function_calls_another_of_the_schema(project) -> None:
    """An expression index on a function that calls another by its bare name (as an unaccent
    wrapper does): putting rows back evaluates it under the caller's search_path, as the test's
    own write did, so the restore goes by key instead of failing into a clone."""
    _seed(project, "CREATE FUNCTION shout(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper(t) $$;\n"
                   "CREATE FUNCTION norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT shout(t) $$;\n"
                   "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL);\n"
                   "CREATE INDEX notes_norm ON notes (norm(body));\n",
          "INSERT INTO notes VALUES (1, 'a'), (2, 'b');\n")
    result = _reset_is_exact(project, "UPDATE notes SET body = 'changed' WHERE id = 1", strategy="restore")
    assert (result.strategy, result.detail) == ("restore", "rows"), result


def test_a_table_name_with_a_double_quote(project) -> None:
    """A table whose (quoted) name holds a `"`: the snapshot's name keeps only letters, digits and
    _, so the template is made and resets go by key."""
    _seed(project, 'CREATE TABLE "odd""name" (id int PRIMARY KEY, v text NOT NULL);\n',
          'INSERT INTO "odd""name" VALUES (1, \'a\');\n')
    up = project.devenv("up", check=False)
    assert up.returncode == 0, up.stderr[-2000:]
    result = _reset_is_exact(project, 'UPDATE "odd""name" SET v = \'x\'', up=False)
    assert (result.strategy, result.detail) == ("restore", "rows"), result


def test_a_sequence_name_with_a_double_quote(project) -> None:
    """A sequence whose name holds a `"`: snapshot_sequences keeps it quoted by format('%I.%I'),
    so setval works on every restore."""
    _seed(project, 'CREATE SEQUENCE "odd""seq";\n', "SELECT nextval('\"odd\"\"seq\"');\n")
    result = _reset_is_exact(project, "UPDATE tasks SET title = 'x' WHERE id = (SELECT id FROM tasks ORDER BY id LIMIT 1)",
                             "SELECT nextval('\"odd\"\"seq\"')", strategy="restore")
    assert (result.strategy, result.detail) == ("restore", "rows"), result


def test_float_keys_under_extra_float_digits_zero(project) -> None:
    """A float8 key under extra_float_digits = 0 in devenv.yaml: the keys go to the put-back
    function as an array of their own type (no text), and the restore pins extra_float_digits
    for itself anyway, so the key still matches the seeded number."""
    project.edit("devenv.yaml", "    full_page_writes:", "    extra_float_digits:         {default: 0}\n    full_page_writes:")
    _seed(project, "CREATE TABLE readings (k float8 PRIMARY KEY, v text NOT NULL);\n",
          "INSERT INTO readings VALUES (0.1::float8 + 0.2::float8, 'a'), (1.0::float8 / 3, 'b');\n")
    _reset_is_exact(project, "UPDATE readings SET v = 'changed'")


def test_a_keyless_float_change_under_extra_float_digits_zero_is_not_seen(project) -> None:
    """The whole-table comparison is by ROW(x.*)::text too: with extra_float_digits pinned, a float
    the test changed in its last bits no longer prints as the seeded one."""
    project.edit("devenv.yaml", "    full_page_writes:", "    extra_float_digits:         {default: 0}\n    full_page_writes:")
    _seed(project, "CREATE TABLE samples (x float8 NOT NULL);\n",
          "INSERT INTO samples VALUES (0.1::float8 + 0.2::float8);\n")
    _reset_is_exact(project, "UPDATE samples SET x = 0.3")


def test_timestamptz_keys_under_sql_datestyle_and_an_ambiguous_zone_abbreviation(project) -> None:
    """A timestamptz key under DateStyle SQL with Asia/Kolkata (IST, which would read back as
    Israel's through text): the keys stay of their own type, and the restore pins DateStyle ISO
    and TimeZone UTC, so the key is found."""
    project.edit("devenv.yaml", "    full_page_writes:",
                 "    DateStyle:                  {default: 'SQL, DMY'}\n    TimeZone:                   {default: Asia/Kolkata}\n"
                 "    full_page_writes:")
    _seed(project, "CREATE TABLE shifts (k timestamptz PRIMARY KEY, v text NOT NULL);\n",
          "INSERT INTO shifts VALUES ('2025-01-01 09:00:00+05:30', 'a');\n")
    _reset_is_exact(project, "UPDATE shifts SET v = 'changed'")


def test_another_roles_idle_transaction_holding_a_row_lock_stalls_the_reset(project) -> None:
    """Another role's session (devenv's superuser: a developer's psql as admin) left in a
    transaction holding a lock on a row the test changed: the application role cannot end it, so
    the restore gives up after its lock_timeout and the reset clones, which ends every session."""
    project.devenv("up")
    seeded = _state(project)
    handle = _handle(project)
    idle = project.admin_connect(dbname="taskflow")
    first = "(SELECT id FROM tasks ORDER BY id LIMIT 1)"
    done: list[object] = []
    try:
        _write(project, f"UPDATE tasks SET title = 'x' WHERE id = {first}")
        idle.execute(f"SELECT * FROM tasks WHERE id = {first} FOR UPDATE")  # now idle in a transaction
        thread = threading.Thread(target=lambda: done.append(handle.reset(redis_db=None)), daemon=True)
        thread.start()
        thread.join(20)
        assert done, "the reset still waits after 20 s"
        assert _diff(seeded, _state(project)) == {}
    finally:
        idle.close()
        thread.join(20)
        handle.close()


def test_partitioned_tables_are_compared_whole_through_their_root(project) -> None:
    """Held: a partitioned table with a key (compared whole), rows moved between partitions by
    an update of the partition key, a write straight into a partition, one partition with a
    dropped column (another column order), a default partition."""
    _seed(project,
          "CREATE TABLE events (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);\n"
          "CREATE TABLE events_eu (dropme int, id int NOT NULL, region text NOT NULL, v text);\n"
          "ALTER TABLE events_eu DROP COLUMN dropme;\n"
          "ALTER TABLE events ATTACH PARTITION events_eu FOR VALUES IN ('eu');\n"
          "CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us');\n"
          "CREATE TABLE events_other PARTITION OF events DEFAULT;\n",
          "INSERT INTO events VALUES (1, 'eu', 'a'), (2, 'us', 'b'), (3, 'xx', 'c');\n")
    project.devenv("up")
    seeded = _state(project)
    handle = _handle(project)
    failures = {}
    try:
        for write in ("UPDATE events SET region = 'us' WHERE id = 1", "DELETE FROM events_us",
                      "INSERT INTO events_other VALUES (9, 'zz', 'n')", "UPDATE events SET v = 'all'"):
            _write(project, write)
            result = handle.reset(redis_db=None)
            diff = _diff(seeded, _state(project))
            if diff or _leftovers(project) != (0, 0) or result.strategy != "restore":
                failures[write] = (result, diff)
    finally:
        handle.close()
    assert failures == {}


def test_a_refreshed_materialized_view_goes_back(project) -> None:
    """Materialized views have no snapshot: REFRESH after a write must make the next reset a
    clone (the DDL guard counts REFRESH), not leave the refreshed contents."""
    _seed(project, "CREATE MATERIALIZED VIEW task_counts AS SELECT status, count(*) AS n FROM tasks GROUP BY status;\n")
    _reset_is_exact(project, "UPDATE tasks SET status = 'archived'", "REFRESH MATERIALIZED VIEW task_counts")


def test_a_session_setting_named_like_the_memo_hides_writes_from_every_reset(project) -> None:
    """mark_dirty's memo holds the transaction's id: a session that SETs `devenv.dirty_<oid>` by
    hand cannot match a later transaction, so its writes are marked and put back."""
    project.devenv("up")
    seeded = _state(project)
    handle = _handle(project)
    try:
        with project.connect(autocommit=True) as conn:
            oid = conn.execute("SELECT 'tasks'::regclass::oid").fetchone()[0]
            conn.execute(f"SET devenv.dirty_{oid} = 'y'")
            conn.execute("UPDATE tasks SET title = 'hidden'")
        results = [handle.reset(redis_db=None), handle.reset(redis_db=None)]
        assert _diff(seeded, _state(project)) == {}, results
    finally:
        handle.close()


def test_other_roles_cannot_reach_devenvs_tables_or_functions(project) -> None:
    """Held: another role (granted a table) cannot write devenv.dirty or a key log, call
    devenv.restore, or read the snapshots."""
    import psycopg

    _seed(project, "CREATE TABLE shared (id int PRIMARY KEY, v text);\nGRANT ALL ON shared TO PUBLIC;\n",
          "INSERT INTO shared VALUES (1, 'a');\n")
    project.devenv("up")
    with project.admin_connect(dbname="postgres", autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS adv19_low")
        admin.execute("CREATE ROLE adv19_low NOLOGIN")
    allowed = []
    with project.admin_connect(dbname="taskflow", autocommit=True) as conn:
        conn.execute("SET ROLE adv19_low")
        conn.execute("UPDATE shared SET v = 'b'")  # granted: logged by the definer functions
        for attempt in ("INSERT INTO devenv.dirty VALUES ('shared'::regclass, true)", "DELETE FROM devenv.dirty",
                        "DELETE FROM devenv.keys_0", "SELECT devenv.put_back_0(NULL)",
                        "SELECT * FROM devenv.restore('x', NULL, NULL)", "SELECT count(*) FROM devenv.snapshots",
                        "SELECT devenv.mark_dirty()"):
            try:
                conn.execute(attempt)
                allowed.append(attempt)
            except psycopg.Error:
                pass
    assert allowed == []


def test_a_serializable_transaction_marks_its_table_once(project) -> None:
    """mark_dirty remembers a marked table in a transaction-local setting holding the
    transaction's id: once per transaction, also in a serializable one (a function's SET
    clause for search_path does not undo it)."""
    project.devenv("up")
    with project.connect() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        for i in range(20):
            conn.execute(f"UPDATE tasks SET title = 'x{i}' WHERE id = (SELECT id FROM tasks ORDER BY id LIMIT 1)")
        oid = conn.execute("SELECT 'tasks'::regclass::oid").fetchone()[0]
        memo = conn.execute(f"SELECT current_setting('devenv.dirty_{oid}', true)").fetchone()[0]
        xact = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        conn.commit()
    with project.connect() as conn:
        rows = conn.execute("SELECT count(*) FROM devenv.dirty").fetchone()[0]
    assert (memo, rows) == (xact, 1)


def test_resets_after_a_dump_is_restored_and_after_a_snapshot_is_restored(project, tmp_path) -> None:
    """`devenv dump` of a written database, `devenv restore` of it, more writes, then a reset:
    the seeded state by key; DDL after the restore is still seen (a clone). The same through
    `devenv snapshot save/restore`."""
    project.devenv("up")
    seeded = _state(project)
    first = "(SELECT id FROM tasks ORDER BY id LIMIT 1)"
    _write(project, f"UPDATE tasks SET title = 'before dump' WHERE id = {first}",
           "INSERT INTO users (email, password_hash) VALUES ('dumped@x', 'x')")
    dump = tmp_path / "w.dump"
    project.devenv("dump", str(dump))
    project.devenv("restore", "--yes", str(dump))
    _write(project, "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks ORDER BY id DESC LIMIT 3)")
    reset = project.devenv("reset")
    assert "(restore, by key)" in reset.stderr, reset.stderr
    _assert_as_seeded(project, seeded)
    project.devenv("restore", "--yes", str(dump))
    _write(project, "CREATE TABLE scratch (a int)")
    reset = project.devenv("reset")
    assert "(restore" not in reset.stderr, reset.stderr
    assert _diff(seeded, _state(project)) == {}
    _write(project, f"UPDATE tasks SET title = 'before save' WHERE id = {first}")
    project.devenv("snapshot", "save", "s1")
    project.devenv("reset")
    project.devenv("snapshot", "restore", "s1")
    _write(project, "INSERT INTO users (email, password_hash) VALUES ('after@x', 'x')")
    reset = project.devenv("reset")
    assert "(restore, by key)" in reset.stderr, reset.stderr
    _assert_as_seeded(project, seeded)


def test_pooled_and_direct_writers_during_resets_leave_nothing_after_a_quiet_reset(project) -> None:
    """Writers (through PgBouncer and direct) update and insert while resets run in a loop; once
    they stop, one more reset must give the seeded state."""
    import psycopg

    project.devenv("up")
    seeded = _state(project)
    handle = _handle(project)
    stop = threading.Event()
    wrote = [0]

    def writer(pooled: bool) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                with project.connect(pooled=pooled, connect_timeout=5) as conn:
                    conn.execute(f"UPDATE tasks SET title = 'w{i}' WHERE id = (SELECT id FROM tasks ORDER BY random() LIMIT 1)")
                    conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, 'x')", (f"w{pooled}{i}@x",))
                    conn.execute("SELECT pg_sleep(0.02)")
                    conn.commit()
                    wrote[0] += 1
            except psycopg.Error:
                pass

    threads = [threading.Thread(target=writer, args=(p,), daemon=True) for p in (True, False, True)]
    try:
        for t in threads:
            t.start()
        for _ in range(30):
            handle.reset(redis_db=None)
            time.sleep(0.03)
        stop.set()
        for t in threads:
            t.join(10)
        result = handle.reset(redis_db=None)
        assert wrote[0] > 0
        _assert_as_seeded(project, seeded, result)
    finally:
        stop.set()
        handle.close()


# ---- what held (a broad sweep: every failure listed at once) ---------------------------------

_HELD_SCHEMA = """
CREATE SCHEMA "Mixed Case";
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pt AS (x int, y text);
CREATE DOMAIN code AS text CHECK (VALUE ~ '^[A-Z]+$');
CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE "Mixed Case"."Order" ("select" text PRIMARY KEY, "Value" int NOT NULL, j json, x xml);
CREATE TABLE "données" ("clé" text PRIMARY KEY, "valeur ü" text);
CREATE TABLE amounts (k numeric PRIMARY KEY, v text);
CREATE TABLE arrays (k int[] PRIMARY KEY, v text);
CREATE TABLE points (k pt PRIMARY KEY, v text);
CREATE TABLE moods (k mood PRIMARY KEY, v text);
CREATE TABLE codes (k code PRIMARY KEY, v text);
CREATE TABLE names_ci (k text COLLATE ci PRIMARY KEY, v text);
CREATE TABLE floats (k float8 PRIMARY KEY, v text);
CREATE TABLE stamps (k timestamptz PRIMARY KEY, v text);
CREATE TABLE slots (k int PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE, v text UNIQUE DEFERRABLE);
CREATE TABLE parents (id int PRIMARY KEY, name text);
CREATE TABLE children (parent_id int REFERENCES parents ON UPDATE CASCADE ON DELETE CASCADE, n int, v text,
                       PRIMARY KEY (parent_id, n));
CREATE TABLE bookings (id int PRIMARY KEY, during int4range, EXCLUDE USING gist (during WITH &&));
CREATE TABLE "ééééééééééééééééééééééééééééééé" (k text PRIMARY KEY, v text);
CREATE TABLE rev (a int, b text, v text, PRIMARY KEY (b, a));
CREATE TABLE gen (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int, b int GENERATED ALWAYS AS (a * 2) STORED, dropme int);
ALTER TABLE gen DROP COLUMN dropme;
CREATE TABLE log_other (id bigserial PRIMARY KEY, what text);
CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO log_other (what) VALUES (TG_OP); RETURN NULL; END $$;
CREATE TRIGGER amounts_log AFTER INSERT OR UPDATE OR DELETE ON amounts FOR EACH STATEMENT EXECUTE FUNCTION log_it();
CREATE VIEW amounts_view AS SELECT k, v FROM amounts;
CREATE FUNCTION amounts_view_ins() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO amounts VALUES (NEW.k, NEW.v); RETURN NEW; END $$;
CREATE TRIGGER amounts_view_ins INSTEAD OF INSERT ON amounts_view FOR EACH ROW EXECUTE FUNCTION amounts_view_ins();
CREATE FUNCTION definer_write() RETURNS void LANGUAGE sql SECURITY DEFINER AS $$ UPDATE amounts SET v = 'definer' $$;
GRANT USAGE ON SCHEMA "Mixed Case" TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON "Mixed Case"."Order", "données" TO PUBLIC;
"""
_HELD_DATA = r"""
INSERT INTO "Mixed Case"."Order" VALUES ('a,"b', 1, '{"a": 1}', '<a/>'), ('{x}', 2, '[1, 2]', '<b>t</b>'),
  ('back\slash', 3, 'null', NULL), ('NULL', 4, NULL, NULL), ('', 5, NULL, NULL), (' sp ', 6, NULL, NULL), ('(p)', 7, NULL, NULL);
INSERT INTO "données" VALUES ('ключ', 'ü'), ('日本', 'x'), ('e' || chr(769), 'combining');
INSERT INTO amounts VALUES (1.0, 'one'), (2.50, 'two and a half'), ('NaN', 'nan');
INSERT INTO arrays VALUES ('{1,2}', 'a'), ('{}', 'empty'), ('{3,NULL}', 'null inside');
INSERT INTO points VALUES (ROW(1, 'a,b'), 'p1'), (ROW(2, NULL), 'p2');
INSERT INTO moods VALUES ('sad', 's'), ('happy', 'h');
INSERT INTO codes VALUES ('ABC', 'a'), ('XYZ', 'x');
INSERT INTO names_ci VALUES ('Alice', 'a'), ('bob', 'b');
INSERT INTO floats VALUES (0.1::float8 + 0.2::float8, 'a'), ('-0', 'negzero'), ('Infinity', 'inf'), (1e-300, 'tiny');
INSERT INTO stamps VALUES ('2025-01-01 12:34:56.789123+00', 'a'), ('infinity', 'inf');
INSERT INTO slots VALUES (1, 'one'), (2, 'two');
INSERT INTO parents VALUES (1, 'p1'), (2, 'p2');
INSERT INTO children VALUES (1, 1, 'c11'), (1, 2, 'c12'), (2, 1, 'c21');
INSERT INTO bookings VALUES (1, '[1,5)'), (2, '[5,9)');
INSERT INTO gen (a) VALUES (1), (2);
INSERT INTO "ééééééééééééééééééééééééééééééé" VALUES ('a', 'b');
INSERT INTO rev VALUES (1, 'x', 'one'), (2, 'y', 'two');
"""
_HELD_WRITES = {
    "quoted names, json/xml": ['UPDATE "Mixed Case"."Order" SET "Value" = "Value" + 10, j = \'{"b": 2}\', x = \'<c/>\''],
    "quoted key text round trip": ['UPDATE "Mixed Case"."Order" SET "select" = "select" || \'!\''],
    "unicode": ['UPDATE "données" SET "clé" = upper("clé"), "valeur ü" = \'z\''],
    "numeric scale": ["UPDATE amounts SET k = 1.00 WHERE k = 1", "UPDATE amounts SET k = 2.5000 WHERE k = 2.5"],
    "numeric delete and reinsert other scale": ["DELETE FROM amounts WHERE k = 1", "INSERT INTO amounts VALUES (1.000, 'other')"],
    "arrays": ["UPDATE arrays SET k = k || 9, v = 'changed'"],
    "composite": ["UPDATE points SET k = ROW((k).x + 10, (k).y), v = 'c'"],
    "enum": ["UPDATE moods SET k = 'ok' WHERE k = 'sad'"],
    "domain": ["DELETE FROM codes", "INSERT INTO codes VALUES ('QQQ', 'q')"],
    "nondeterministic collation": ["UPDATE names_ci SET k = upper(k), v = 'u'"],
    "nondeterministic delete and reinsert": ["DELETE FROM names_ci WHERE k = 'alice'", "INSERT INTO names_ci VALUES ('ALICE', 'x')"],
    "floats": ["UPDATE floats SET v = 'changed'", "UPDATE floats SET k = 0 WHERE k = '-0'"],
    "timestamps": ["SET TimeZone = 'Asia/Kathmandu'", "SET DateStyle = 'SQL, DMY'", "UPDATE stamps SET v = 'changed'"],
    "swap keys (deferrable)": ["UPDATE slots SET k = 3 - k"],
    "swap a unique non-key": ["BEGIN", "SET CONSTRAINTS ALL DEFERRED", "UPDATE slots SET v = CASE v WHEN 'one' THEN 'two' ELSE 'one' END", "COMMIT"],
    "on update cascade": ["UPDATE parents SET id = 10 WHERE id = 1"],
    "on delete cascade": ["DELETE FROM parents WHERE id = 2"],
    "exclusion": ["DELETE FROM bookings WHERE id = 1", "UPDATE bookings SET during = '[1,9)'"],
    "identity, generated, dropped column": ["UPDATE gen SET a = a + 5", "INSERT INTO gen (a) VALUES (7)",
                                            "INSERT INTO gen (id, a) OVERRIDING SYSTEM VALUE VALUES (100, 1)"],
    "user trigger writing another table": ["UPDATE amounts SET v = 'x' WHERE k = 1"],
    "instead-of view": ["INSERT INTO amounts_view VALUES (42, 'via view')"],
    "security definer": ["SELECT definer_write()"],
    "writable CTE on one table twice": ["WITH a AS (UPDATE amounts SET v = 'u' WHERE k = 1 RETURNING k), "
                                        "b AS (INSERT INTO amounts VALUES (9, 'n') RETURNING k) "
                                        "DELETE FROM amounts WHERE k = 2.5"],
    "merge insert/update/delete": ["MERGE INTO children c USING (VALUES (1, 1, 'm'), (1, 2, NULL), (2, 5, 'new')) s(p, n, v) "
                                   "ON c.parent_id = s.p AND c.n = s.n "
                                   "WHEN MATCHED AND s.v IS NULL THEN DELETE WHEN MATCHED THEN UPDATE SET v = s.v "
                                   "WHEN NOT MATCHED THEN INSERT VALUES (s.p, s.n, s.v)"],
    "long multibyte table name": ['UPDATE "ééééééééééééééééééééééééééééééé" SET k = \'z\'', 'INSERT INTO "ééééééééééééééééééééééééééééééé" VALUES (\'n\', \'n\')'],
    "reversed composite key": ["UPDATE rev SET a = a + 10, v = 'r' WHERE b = 'x'", "DELETE FROM rev WHERE b = 'y'"],
    "upsert": ["INSERT INTO parents VALUES (1, 'up'), (3, 'new') ON CONFLICT (id) DO UPDATE SET name = excluded.name"],
    "savepoints": ["BEGIN", "UPDATE parents SET name = 'a' WHERE id = 1", "SAVEPOINT s", "UPDATE children SET v = 'b'",
                   "ROLLBACK TO SAVEPOINT s", "UPDATE moods SET v = 'c'", "COMMIT"],
    "replication role local": ["SET session_replication_role = local", "UPDATE parents SET name = 'local'",
                               "RESET session_replication_role"],
    "copy": ["COPY"],
    "everything deleted": ["DELETE FROM children", "DELETE FROM parents", "DELETE FROM amounts", "DELETE FROM arrays"],
}


def test_what_held_a_reset_by_key_after_many_kinds_of_write(project) -> None:
    _seed(project, _HELD_SCHEMA, _HELD_DATA)
    project.devenv("up")
    seeded = _state(project)
    handle = _handle(project)
    failures = {}
    try:
        for name, statements in _HELD_WRITES.items():
            try:
                with project.connect(autocommit=True) as conn:
                    for statement in statements:
                        if statement == "COPY":
                            with conn.cursor().copy('COPY "Mixed Case"."Order" ("select", "Value") FROM STDIN') as copy:
                                copy.write_row(("copied", 99))
                        else:
                            conn.execute(statement)
            except Exception as exc:  # a write the schema refuses is no finding: say so
                failures[name] = f"write failed: {exc}"
                handle.reset(strategy="clone", redis_db=None)
                continue
            result = handle.reset(redis_db=None)
            diff = _diff(seeded, _state(project))
            left = _leftovers(project)
            if diff or left != (0, 0) or (result.strategy, result.detail) != ("restore", "rows"):
                failures[name] = (result.strategy, result.detail, diff, left)
                handle.reset(strategy="clone", redis_db=None)
        # Another role, granted the tables, writes too (its writes are logged by the definer functions).
        with project.admin_connect(dbname="postgres", autocommit=True) as admin:
            admin.execute("DROP ROLE IF EXISTS adv19_other")
            admin.execute("CREATE ROLE adv19_other NOLOGIN")
        with project.admin_connect(dbname="taskflow", autocommit=True) as conn:
            conn.execute("SET ROLE adv19_other")
            conn.execute('UPDATE "Mixed Case"."Order" SET "select" = "select" || \'?\'')
            conn.execute('DELETE FROM "données"')
        result = handle.reset(redis_db=None)
        diff = _diff(seeded, _state(project))
        if diff or (result.strategy, result.detail) != ("restore", "rows"):
            failures["another role"] = (result.strategy, result.detail, diff)
    finally:
        handle.close()
    assert failures == {}
