"""The seeded template: its name, and what every template carries besides the data.

After schema and seed, devenv keeps a template database, `<db>__tpl_<key>`, where the key
hashes the schema and seed files, the server's major version and what this module installs:
a change to any of them builds a new template, so nothing stale is served. Databases are
cloned from it (devenv.db.janitor), and each clone carries snapshot tables of the seeded data
and `devenv.restore`, the function that puts written tables back in place (one round trip).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from devenv.db.seeds import read_sql, split_statements, step_files
from devenv.errors import SchemaError
from devenv.config.stack import Stack

if TYPE_CHECKING:
    import psycopg

SCALE_FILE = "scale.sql"

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "devenv", "pg_toast")
TEMPLATE_FORMAT = 9  # bump when what a template carries (snapshots, guards, owners) changes

# Installed in every template: counts DDL so that `restore` knows when it is not enough. The
# counter is the application role's (its DDL advances it); the event triggers, which only a
# superuser may create, and their function are the admin role's (GUARD_TRIGGERS, installed by
# install_guard), the function's names pinned to the catalogue: it also runs in admin sessions.
# ENABLE ALWAYS: they count DDL under session_replication_role = replica too, which the
# application role may set (the restore needs it), as the devenv_dirty triggers do.
DDL_GUARD = """
CREATE SEQUENCE IF NOT EXISTS devenv.ddl_changes;
"""
GUARD_TRIGGERS = """
DROP FUNCTION IF EXISTS devenv.count_ddl() CASCADE;
CREATE FUNCTION devenv.count_ddl() RETURNS event_trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS
$$ BEGIN PERFORM pg_catalog.nextval('devenv.ddl_changes'::pg_catalog.regclass); END $$;
CREATE EVENT TRIGGER devenv_ddl_end ON ddl_command_end EXECUTE FUNCTION devenv.count_ddl();
CREATE EVENT TRIGGER devenv_ddl_drop ON sql_drop EXECUTE FUNCTION devenv.count_ddl();
ALTER EVENT TRIGGER devenv_ddl_end ENABLE ALWAYS;
ALTER EVENT TRIGGER devenv_ddl_drop ENABLE ALWAYS;
"""

# Where no event trigger can be made (an existing server whose role is no superuser), the
# template records this signature of its catalogue instead, and `restore` compares it: every
# CREATE, ALTER or DROP inserts, updates or deletes a row of one of these tables, which changes
# its row count or the newest row version's xmin (copied as is by CREATE DATABASE; in-place
# statistics updates by VACUUM/ANALYZE keep it). Undone DDL (a table created, then dropped)
# leaves it as it was, as it leaves the schema.
CATALOG_SIGNATURE = """
CREATE FUNCTION devenv.catalog_signature() RETURNS text LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp AS $$
SELECT concat_ws(',',
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_class),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_attribute),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_constraint),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_index),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_trigger),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_proc),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_type),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_namespace),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_attrdef),
    (SELECT count(*) || ':' || coalesce(max(xmin::text::bigint), 0) FROM pg_rewrite))
$$;
"""

# Installed in every template, after the snapshots. `devenv.dirty` holds the tables written
# since the last reset: a statement trigger on every table (ENABLE ALWAYS: it fires under
# session_replication_role = replica too, and for cascaded foreign-key actions) adds its table,
# rolled back with the write it records. Once per transaction and table: the memo is a
# transaction-local setting holding the transaction's id (a session that sets it by hand
# cannot match a later transaction). Each transaction adds its own row (no look for one
# there already), so a reset that ran while it wrote never takes its mark for one it put
# back; no unique key, so concurrent writers never wait on each other. `whole` marks a write
# whose rows no key log saw (TRUNCATE; anything under session_replication_role = replica,
# where the key triggers, ENABLE ORIGIN, are quiet, the restore's own writes among them):
# that table is compared whole.
RESTORE_FUNCTIONS = """
CREATE TABLE devenv.dirty (rel regclass NOT NULL, whole boolean NOT NULL DEFAULT false);
CREATE FUNCTION devenv.mark_dirty() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    xact text := pg_catalog.pg_current_xact_id()::text;
BEGIN
    IF TG_OP = 'TRUNCATE' OR pg_catalog.current_setting('session_replication_role') = 'replica' THEN
        INSERT INTO devenv.dirty VALUES (TG_RELID, true);
    ELSIF pg_catalog.current_setting('devenv.dirty_' || TG_RELID, true) IS DISTINCT FROM xact THEN
        INSERT INTO devenv.dirty VALUES (TG_RELID);
        PERFORM pg_catalog.set_config('devenv.dirty_' || TG_RELID, xact, true);
    END IF;
    RETURN NULL;
END $$;

-- Put the written tables and every sequence back as in the snapshots, in the caller's
-- transaction. A table with a primary key (not partitioned, no inheritance) has a key log,
-- `devenv.keys_N`, which statement triggers fill with the keys of every row written (old and
-- new, from the transition tables): only those rows are put back, deleted and copied again
-- from the snapshot by key (its devenv.put_back_N, see track_keys), in time proportional to
-- the test's writes, not to the table.
-- The marks and logs read are taken out first (DELETE ... RETURNING): what a concurrent
-- writer commits meanwhile stays for the next reset. Any other written table is compared
-- whole (with the rest of its inheritance tree: a parent's statements reach its children's
-- rows): rows as text, as a multiset (for each distinct row whose count differs, its copies
-- here go by tableoid and ctid, and those of the snapshot come back by ctid), one conversion
-- per row; deleting and inserting the rest too would cost their index entries. The SET
-- clauses pin what text of a value depends on and bound the wait for another role's
-- session holding a lock (it cannot be ended here): the error makes the caller clone,
-- which ends every session.
-- status is 'restored', or why it cannot be ('stale': cloned from another template;
-- 'schema': DDL since the clone; 'too big': more than max_rows seeded rows to compare whole,
-- or more keys logged than a clone would cost, at most max_keys; NULLs: no limit; 'row
-- security': a written table forces row-level security, which hides rows from this role;
-- 'always triggers': a written table has triggers or rules of its own that fire even under
-- session_replication_role = replica, so would fire on the restore's writes) and nothing
-- changed. how is 'rows' when every written table went back by key, else 'tables'.
-- sessions counts the other client sessions on the database afterwards, but the caller's
-- own (known_sessions, their pids): PgBouncer's server connections are among them, so with
-- none there is nothing for it to reconnect.
-- What a clone drops besides the tables goes too, so that a restore leaves exactly what a clone
-- would: database-level settings (ALTER DATABASE / ALTER ROLE ... IN DATABASE ... SET, kept by
-- database oid: a clone has none) are reset, and large objects the template did not have are
-- unlinked. Where that cannot be exact (a template with large objects, whose in-place changes no
-- trigger sees; a setting or large object this role may not remove) status says so ('settings',
-- 'large objects') and a clone runs instead. A role that may not set session_replication_role
-- (an existing server's, without GRANT SET ON PARAMETER) gets 'privilege': a clone.
CREATE FUNCTION devenv.restore(expected_template text, max_rows bigint, max_keys bigint,
                               known_sessions integer[] DEFAULT '{}',
                               OUT status text, OUT sessions bigint, OUT how text)
LANGUAGE plpgsql
SET extra_float_digits = 1 SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET TimeZone = 'UTC'
SET bytea_output = 'hex' SET lock_timeout = '5s' AS $$
DECLARE
    meta record;
    tbl record;
    whole_rows bigint := 0;
    logged bigint := 0;
    n bigint;
    written regclass[];
    wholes regclass[];
    gone_tables oid[];
    gone_rows tid[];
    wanted tid[];
    setting record;
    role text := pg_catalog.current_setting('session_replication_role');
BEGIN
    how := 'rows';
    SELECT * INTO meta FROM devenv.snapshot_meta;
    IF meta.template IS DISTINCT FROM expected_template THEN
        status := 'stale';
        RETURN;
    END IF;
    -- Sessions idle inside a transaction hold locks the reload would wait on for as long as
    -- they like, and may be about to write: end them and wait for them to be gone. A statement
    -- running ends by itself (the reload waits for a lock it holds): ending it would fail a
    -- pooled client in the middle of its query. Idle ones are harmless; they are counted.
    SELECT count(*) FILTER (WHERE NOT ended AND pid <> ALL(coalesce(known_sessions, '{}'))) INTO sessions FROM (
        SELECT pid, CASE WHEN state LIKE 'idle in transaction%' THEN pg_catalog.pg_terminate_backend(pid, 5000)
                         ELSE false END AS ended
          FROM pg_catalog.pg_stat_get_activity(NULL) a  -- the view's joins cost 0.25 ms here
         WHERE a.datid = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
           AND pid <> pg_catalog.pg_backend_pid() AND backend_type = 'client backend') other;
    IF NOT EXISTS (SELECT 1 FROM devenv.ddl_changes
                    WHERE last_value = meta.ddl_mark_value AND is_called = meta.ddl_mark_called) THEN
        status := 'schema';
        RETURN;
    END IF;
    IF meta.catalog_signature IS NOT NULL THEN  -- no event triggers: the catalogue tells
        IF meta.catalog_signature <> devenv.catalog_signature() THEN
            status := 'schema';
            RETURN;
        END IF;
    END IF;
    -- First only a look at what reloading would take, changing nothing (nothing written: no look).
    IF EXISTS (SELECT 1 FROM devenv.dirty) THEN
        SELECT array_agg(DISTINCT f.rel) INTO written
          FROM devenv.snapshots f
         WHERE f.family IN (SELECT s.family FROM devenv.snapshots s JOIN devenv.dirty d
                               ON s.rel = coalesce(pg_catalog.pg_partition_root(d.rel), d.rel));
        -- Known since the template was made (any DDL since makes the restore refuse above).
        SELECT s.refuse INTO status FROM devenv.snapshots s WHERE s.rel = ANY(written) AND s.refuse IS NOT NULL LIMIT 1;
        IF status IS NOT NULL THEN
            RETURN;
        END IF;
        FOR tbl IN SELECT s.row_count, s.keys, s.keys IS NULL OR EXISTS (
                              SELECT 1 FROM devenv.dirty d
                               WHERE coalesce(pg_catalog.pg_partition_root(d.rel), d.rel) = s.rel AND d.whole) AS whole
                     FROM devenv.snapshots s WHERE s.rel = ANY(written) LOOP
            IF tbl.whole THEN
                whole_rows := whole_rows + tbl.row_count;
            ELSE
                EXECUTE pg_catalog.format('SELECT count(*) FROM devenv.%I', tbl.keys) INTO n;
                logged := logged + n;
            END IF;
        END LOOP;
        -- Putting back a logged key costs about as much as cloning 15 seeded rows (bench_reset.py):
        -- beyond that many keys (and never beyond max_keys) a clone is the cheaper reset.
        IF whole_rows > max_rows OR (max_keys IS NOT NULL AND logged > least(max_keys, greatest(max_rows,
                                             (SELECT sum(s.row_count) FROM devenv.snapshots s) / 15))) THEN
            status := 'too big';
            RETURN;
        END IF;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
                WHERE d.datname = pg_catalog.current_database()) THEN
        BEGIN
            FOR setting IN SELECT s.setrole, r.rolname FROM pg_catalog.pg_db_role_setting s
                             JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase
                             LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole
                            WHERE d.datname = pg_catalog.current_database() LOOP
                IF setting.setrole = 0 THEN
                    EXECUTE pg_catalog.format('ALTER DATABASE %I RESET ALL', pg_catalog.current_database());
                ELSE
                    EXECUTE pg_catalog.format('ALTER ROLE %I IN DATABASE %I RESET ALL',
                                              setting.rolname, pg_catalog.current_database());
                END IF;
            END LOOP;
        EXCEPTION WHEN insufficient_privilege THEN
            status := 'settings';
            RETURN;
        END;
    END IF;
    IF meta.large_objects IS NOT NULL AND meta.large_objects <> '{}' THEN
        status := 'large objects';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata) THEN
        BEGIN
            PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
        EXCEPTION WHEN insufficient_privilege THEN
            status := 'large objects';
            RETURN;
        END;
    END IF;
    -- The marks to act on, taken out: one committed while this runs stays for the next reset.
    IF written IS NOT NULL THEN
        WITH gone AS (DELETE FROM devenv.dirty RETURNING rel, whole)
        SELECT array_agg(DISTINCT s.rel), array_agg(DISTINCT s.rel) FILTER (WHERE g.whole) INTO written, wholes
          FROM gone g JOIN devenv.snapshots s ON s.rel = coalesce(pg_catalog.pg_partition_root(g.rel), g.rel);
    END IF;
    IF written IS NOT NULL THEN
        -- No triggers, no FK checks: the data is known good.
        BEGIN
            PERFORM pg_catalog.set_config('session_replication_role', 'replica', true);
        EXCEPTION WHEN insufficient_privilege THEN
            status := 'privilege';
            RETURN;
        END;
        FOR tbl IN SELECT s.rel, s.snapshot, s.keys, s.put_back, s.columns, s.only_rows,
                          s.keys IS NULL OR s.rel = ANY(coalesce(wholes, '{}')) AS whole
                     FROM devenv.snapshots s
                    WHERE s.family IN (SELECT f.family FROM devenv.snapshots f WHERE f.rel = ANY(written)) LOOP
            IF NOT tbl.whole THEN
                -- The keys taken out of the log, as an array of its row type, to the table's own
                -- function (track_keys): static statements, planned once a session.
                EXECUTE pg_catalog.format('WITH gone AS (DELETE FROM devenv.%I RETURNING *) SELECT devenv.%I('
                                          'pg_catalog.array_agg(DISTINCT ROW(g.*)::devenv.%I)) FROM gone g',
                                          tbl.keys, tbl.put_back, tbl.keys);
                CONTINUE;
            END IF;
            how := 'tables';
            -- ONLY: an inheritance parent's own rows (each child is compared as itself).
            EXECUTE pg_catalog.format(
                'WITH diff AS (SELECT cur.tables, cur.rows, seeded.rows AS wanted FROM '
                '(SELECT ROW(x.*)::text AS r, array_agg(x.tableoid) AS tables, array_agg(x.ctid) AS rows FROM %s %s x GROUP BY 1) cur '
                'FULL JOIN (SELECT ROW(x.*)::text AS r, array_agg(x.ctid) AS rows FROM devenv.%I x GROUP BY 1) seeded USING (r) '
                'WHERE cardinality(cur.rows) IS DISTINCT FROM cardinality(seeded.rows)) '
                'SELECT gone.tables, gone.rows, (SELECT array_agg(w) FROM diff, unnest(diff.wanted) w) FROM '
                '(SELECT array_agg(t) AS tables, array_agg(r) AS rows FROM diff, unnest(diff.tables, diff.rows) u(t, r)) gone',
                tbl.only_rows, tbl.rel, tbl.snapshot) INTO gone_tables, gone_rows, wanted;
            IF gone_rows IS NOT NULL THEN
                EXECUTE pg_catalog.format('DELETE FROM %s %s x WHERE (x.tableoid, x.ctid) IN (SELECT * FROM unnest($1, $2))',
                                          tbl.only_rows, tbl.rel) USING gone_tables, gone_rows;
            END IF;
            IF wanted IS NOT NULL THEN
                EXECUTE pg_catalog.format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM devenv.%I '
                                          'WHERE ctid = ANY($1)', tbl.rel, tbl.columns, tbl.columns, tbl.snapshot)
                  USING wanted;
            END IF;
            IF tbl.keys IS NOT NULL THEN  -- compared whole: what its log holds is put back already
                EXECUTE pg_catalog.format('DELETE FROM devenv.%I', tbl.keys);
            END IF;
        END LOOP;
        -- The marks this restore's own writes made (as a replica: whole), and only those.
        DELETE FROM devenv.dirty WHERE xmin = pg_catalog.pg_current_xact_id()::xid;
        PERFORM pg_catalog.set_config('session_replication_role', role, true);
    END IF;
    PERFORM pg_catalog.setval(sequence::regclass, last_value, is_called) FROM devenv.snapshot_sequences;
    status := 'restored';
END $$;
"""


def template_key(stack: Stack, major: int) -> str:
    """Content hash of the stack's steps (each `sql:` folder's files and checksums, each `run:`
    step's command and inputs: devenv.db.stepkeys), the server's major version and the scale.

    The default steps (seeds/schema then seeds/data) hash exactly as before steps existed, so
    the templates and caches of such stacks keep their keys."""
    from devenv.db.stepkeys import check_inputs, run_key

    check_inputs(stack)  # a missing input is exit 3 naming its line, never a key of its own
    scale = stack.seed_scale
    digest = hashlib.sha256(f"format{TEMPLATE_FORMAT}\0pg{major}\0{scale}\0".encode())
    digest.update((DDL_GUARD + GUARD_TRIGGERS + CATALOG_SIGNATURE + RESTORE_FUNCTIONS).encode())  # what every template carries besides the data
    for step in stack.steps:
        if step.kind == "sql":
            for seed in step_files(stack.replace(steps=(step,))):
                digest.update(f"{seed.key}\0{seed.checksum}\0".encode())
        else:
            digest.update(f"run\0{step.part}\0{step.index}\0{run_key(stack.root, step)}\0".encode())
    if scale:
        digest.update((stack.root / "seeds" / SCALE_FILE).read_bytes())
    return digest.hexdigest()[:12]


def template_prefix(stack: Stack) -> str:
    """What every template name of the stack's database starts with."""
    return f"{stack.postgres.database}__tpl_"


def template_name(stack: Stack, major: int) -> str:
    """The template the current steps make for this server major: `<db>__tpl_<key>`."""
    return template_prefix(stack) + template_key(stack, major)


def populate(conn: "psycopg.Connection[Any]", stack: Stack, seeds_dir: Path, name: str,
             install_guard: Callable[[], None], say: Callable[[str], None] | None = None) -> None:
    """Fill the database `conn` is on (a session of the application role, which owns it) as
    template `name`: the steps in order (`sql:` folders, `run:` commands, whose output goes to
    `say`: devenv.db.steps), the generated rows of a seed_scale profile, the DDL guard
    (its event triggers by `install_guard`, in an admin session), the snapshots and the
    restore function."""
    # Its commits need not wait for the disk: the template is used only once renamed, and the
    # rename's commit flushes the WAL up to it, theirs included.
    conn.execute("SET synchronous_commit = off")
    from devenv.db.steps import run_in_template

    run_in_template(conn, stack, say)
    if stack.seed_scale:
        generate(conn, stack, seeds_dir)
    conn.execute(DDL_GUARD)
    install_guard()
    make_snapshots(conn, name)


def generate(conn: "psycopg.Connection[Any]", stack: Stack, seeds_dir: Path) -> None:
    """Add `seed_scale` generated tasks (seeds/scale.sql) to the template being built."""
    path = seeds_dir / SCALE_FILE
    if not path.is_file():
        raise SchemaError(f"profile sets seed_scale but {path} does not exist",
                          hint="add seeds/scale.sql (a generator using :scale), or remove seed_scale.")
    text = read_sql(path).replace(":scale", str(int(stack.seed_scale)))
    with conn.transaction():
        for statement, line in split_statements(text):
            try:
                conn.execute(statement.encode())
            except Exception as exc:
                raise SchemaError(f"{path}:{line}: {exc}", hint="fix the generator.") from exc
    conn.execute("ANALYZE")


def make_snapshots(conn: "psycopg.Connection[Any]", template: str) -> None:
    """Copy every seeded table into `devenv.snap_*` so a clone can restore itself in place, and
    install what tells a reset what to reload: `devenv.dirty` (the tables written) and, for each
    table with a primary key, its key log (`devenv.keys_*`, see `track_keys`)."""
    conn.execute(
        "CREATE TABLE devenv.snapshots (schema_name text, table_name text, snapshot text, row_count bigint, rel regclass, "
        "keys text, put_back text, columns text, family regclass, only_rows text, refuse text);"
        "CREATE TABLE devenv.snapshot_sequences (sequence text, last_value bigint, is_called boolean);"
        "CREATE TABLE devenv.snapshot_meta (template text, ddl_mark_value bigint, ddl_mark_called boolean, "
        "large_objects oid[], catalog_signature text)"
    )
    conn.execute(CATALOG_SIGNATURE)
    conn.execute(RESTORE_FUNCTIONS)
    tables = conn.execute(
        "SELECT n.nspname, c.relname, format('%%I.%%I', n.nspname, c.relname), "
        # What an INSERT may set: not dropped, not generated.
        "(SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a "
        " WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), "
        # The primary key's columns, where rows can be put back by key: a plain table, no
        # partitions, no inheritance (a parent's statements reach its children's rows too).
        "(SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord) FROM pg_constraint p "
        " CROSS JOIN unnest(p.conkey) WITH ORDINALITY k(attnum, ord) "
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        " WHERE p.conrelid = c.oid AND p.contype = 'p' AND c.relkind = 'r' AND NOT c.relhassubclass "
        " AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)), "
        # Its inheritance tree's root (itself when it has no parent): written, the whole tree
        # is compared, each table by its own rows (ONLY; a partitioned table holds none itself).
        "(WITH RECURSIVE up(rel) AS (SELECT c.oid UNION SELECT i.inhparent FROM up JOIN pg_inherits i ON i.inhrelid = up.rel) "
        " SELECT min(up.rel)::regclass::text FROM up WHERE NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = up.rel)), "
        "CASE c.relkind WHEN 'r' THEN 'ONLY' ELSE '' END, "
        # Why an in-place restore cannot be exact for it (partitions included; pg_partition_tree
        # lists none for a plain table): row security forced on the owner hides rows from it, and
        # triggers or rules of its own enabled ALWAYS would fire on the restore's writes.
        "(WITH tree AS (SELECT c.oid AS rel UNION ALL SELECT p.relid FROM pg_partition_tree(c.oid) p) "
        " SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_class f JOIN tree ON f.oid = tree.rel WHERE f.relforcerowsecurity) "
        "             THEN 'row security' "
        "             WHEN EXISTS (SELECT 1 FROM pg_trigger t JOIN tree ON t.tgrelid = tree.rel WHERE t.tgenabled = 'A' "
        "                            AND NOT t.tgisinternal) "
        "               OR EXISTS (SELECT 1 FROM pg_rewrite r JOIN tree ON r.ev_class = tree.rel WHERE r.ev_enabled = 'A') "
        "             THEN 'always triggers' END) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname <> ALL(%s) "
        "AND n.nspname NOT LIKE 'pg_temp%%' ORDER BY 1, 2",
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    for index, (schema, table, qualified, columns, key_list, family, only_rows, refuse) in enumerate(tables):
        # Its own name in it for whoever looks (letters, digits and _ only: no quoting to get wrong).
        snapshot = f"snap_{index}_{re.sub(r'[^A-Za-z0-9_]', '_', table)}"[:63]
        conn.execute(f'CREATE TABLE devenv."{snapshot}" AS SELECT * FROM {only_rows} {qualified}')
        rows = conn.execute(f'SELECT count(*) FROM devenv."{snapshot}"').fetchone()[0]
        keys, put_back = track_keys(conn, index, qualified, snapshot, key_list, columns) if key_list else (None, None)
        conn.execute("INSERT INTO devenv.snapshots VALUES (%s, %s, %s, %s, %s::regclass, %s, %s, %s, %s::regclass, %s, %s)",
                     (schema, table, snapshot, rows, qualified, keys, put_back, columns, family, only_rows, refuse))
    # Partitions too: a write straight into one marks it, and a reset reloads its root.
    for (qualified,) in conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg_temp%%'",
        (list(SYSTEM_SCHEMAS),),
    ).fetchall():
        conn.execute(f"CREATE TRIGGER devenv_dirty AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {qualified} "
                     f"FOR EACH STATEMENT EXECUTE FUNCTION devenv.mark_dirty();"
                     f"ALTER TABLE {qualified} ENABLE ALWAYS TRIGGER devenv_dirty")
    for (qualified,) in conn.execute(
        "SELECT format('%%I.%%I', schemaname, sequencename) FROM pg_sequences WHERE schemaname <> ALL(%s)",
        (list(SYSTEM_SCHEMAS),),
    ).fetchall():
        value, called = conn.execute(f"SELECT last_value, is_called FROM {qualified}").fetchone()
        conn.execute("INSERT INTO devenv.snapshot_sequences VALUES (%s, %s, %s)", (qualified, value, called))
    # The DDL count after building the snapshots: any later DDL makes it differ.
    # The large objects the seed made: a restore cannot see their changes, so their presence
    # makes every reset a clone (none, as usual: a restore unlinks whatever a test created).
    # Without the DDL guard's event triggers (install_guard could not make them), the catalogue's
    # signature, taken last: nothing changes the catalogue after it.
    conn.execute("INSERT INTO devenv.snapshot_meta SELECT %s, last_value, is_called, "
                 "(SELECT coalesce(array_agg(oid), '{}') FROM pg_largeobject_metadata), "
                 "CASE WHEN EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'devenv_ddl_end') THEN NULL "
                 "ELSE devenv.catalog_signature() END FROM devenv.ddl_changes",
                 (template,))


def track_keys(conn: "psycopg.Connection[Any]", index: int, qualified: str, snapshot: str, key_list: str,
               columns: str) -> tuple[str, str]:
    """The key log of one table: `devenv.keys_<index>` (its primary key's columns), filled by
    statement triggers from their transition tables with the key of every row an INSERT,
    UPDATE, DELETE, MERGE or COPY wrote (old and new), a unique index on the snapshot's copy
    of the key, so that a reset finds the seeded rows by key, and `devenv.put_back_<index>`,
    which puts the rows of the keys it is given back. Returns the names of the log and of the function.

    ENABLE (ORIGIN), not ALWAYS: quiet under session_replication_role = replica, where the
    restore writes; what a test writes so, mark_dirty marks `whole`. One statement per write,
    not per row: a 10,000-row insert adds one INSERT ... SELECT of its keys."""
    from psycopg import sql

    keys, put_back = f"keys_{index}", f"put_back_{index}"
    log = f'devenv."{keys}"'
    # use_column: a key column named like one of PL/pgSQL's own variables (found, new, old,
    # tg_op) is the column in these statements, not an ambiguity that fails the test's write.
    body = ("#variable_conflict use_column\n"
            f"BEGIN IF TG_OP = 'INSERT' THEN INSERT INTO {log} SELECT {key_list} FROM devenv_new; "
            f"ELSIF TG_OP = 'DELETE' THEN INSERT INTO {log} SELECT {key_list} FROM devenv_old; "
            # An UPDATE: old and new keys, once each (most updates keep the key: half the log).
            f"ELSE INSERT INTO {log} SELECT {key_list} FROM devenv_old UNION SELECT {key_list} FROM devenv_new; "
            "END IF; RETURN NULL; END")
    conn.execute(f"CREATE TABLE {log} AS SELECT {key_list} FROM {qualified} WITH NO DATA;"
                 f'CREATE UNIQUE INDEX ON devenv."{snapshot}" ({key_list})')
    conn.execute(sql.SQL("CREATE FUNCTION devenv.{}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
                         "SET search_path = pg_catalog, pg_temp AS {}").format(sql.Identifier(f"log_{keys}"), sql.Literal(body)))
    for event, tables in (("INSERT", "NEW TABLE AS devenv_new"), ("UPDATE", "OLD TABLE AS devenv_old NEW TABLE AS devenv_new"),
                          ("DELETE", "OLD TABLE AS devenv_old")):
        conn.execute(f"CREATE TRIGGER devenv_keys_{event.lower()} AFTER {event} ON {qualified} REFERENCING {tables} "
                     f'FOR EACH STATEMENT EXECUTE FUNCTION devenv."log_{keys}"()')
    # Called by devenv.restore (replica role, its transaction) with the keys it took out of the
    # log. Static statements, not EXECUTE: the session plans them once, and the keys stay an
    # array of the log's row type (no trip through text: 5 ms for 1,000 uuids). The array is
    # $1, unnamed, and use_column makes a column named `found` a column: no column of the table
    # can be taken for a variable. No SET search_path: the INSERT evaluates the table's
    # expression indexes, defaults and constraints, whose functions may name others in the
    # caller's schemas, as the test's own writes did (every name here is qualified).
    put_back_body = (
        "#variable_conflict use_column\n"
        "BEGIN IF $1 IS NULL THEN RETURN; END IF; "
        f"DELETE FROM {qualified} WHERE ({key_list}) IN (SELECT {key_list} FROM pg_catalog.unnest($1)); "
        f'INSERT INTO {qualified} ({columns}) OVERRIDING SYSTEM VALUE SELECT {columns} FROM devenv."{snapshot}" '
        f"WHERE ({key_list}) IN (SELECT {key_list} FROM pg_catalog.unnest($1)); END")
    conn.execute(sql.SQL("CREATE FUNCTION devenv.{}(devenv.{}[]) RETURNS void LANGUAGE plpgsql AS {}").format(
        sql.Identifier(put_back), sql.Identifier(keys), sql.Literal(put_back_body)))
    return keys, put_back
