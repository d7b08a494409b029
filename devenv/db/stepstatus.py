"""Where the working database is against the steps: for `devenv status` and `devenv doctor`.

The ledger (`devenv.applied_files`) says which SQL files and which `run:` steps (with their
key: devenv.db.stepkeys) the database has; a migration tool's own version table, where there is
one, gives its head. One pgwire session (no psycopg: `status` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devenv.config.stack import Stack

# A known tool's version table -> the query giving its head (the latest applied migration).
VERSION_TABLES = {
    "alembic": ("alembic_version", "SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version"),
    "django": ("django_migrations",
               "SELECT app || '.' || name FROM django_migrations ORDER BY applied DESC, id DESC LIMIT 1"),
    "prisma": ("_prisma_migrations", "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL "
               "AND rolled_back_at IS NULL ORDER BY finished_at DESC, migration_name DESC LIMIT 1"),
    "flyway": ("flyway_schema_history", "SELECT coalesce(version, description) FROM flyway_schema_history "
               "WHERE success ORDER BY installed_rank DESC LIMIT 1"),
    "dbmate": ("schema_migrations", "SELECT max(version)::text FROM schema_migrations"),
    "sqitch": ("sqitch.changes", "SELECT change FROM sqitch.changes ORDER BY committed_at DESC LIMIT 1"),
}


def describe(stack: "Stack") -> list[dict[str, Any]]:
    """The steps as data: part, index, kind, what (the folder or the command), inputs."""
    return [{"part": step.part, "index": step.index, "kind": step.kind,
             "what": step.path if step.kind == "sql" else step.command, "inputs": list(step.inputs)}
            for step in stack.steps]


def report(stack: "Stack", timeout: float = 2.0) -> dict[str, Any]:
    """{"steps": describe(), "template": the name the steps give the template, "at_template_key":
    whether the working database holds every step as it is now (None when it cannot be asked),
    "behind": the labels of the steps it lacks, "versions": {tool: head}, "error": why not asked}."""
    from devenv.clients import connect, pgwire
    from devenv.db.seeds import LEDGER_TABLE, step_files
    from devenv.db.stepkeys import ledger_name, run_key
    from devenv.db.template import template_name

    out: dict[str, Any] = {"steps": describe(stack), "template": None, "at_template_key": None, "behind": [],
                           "versions": {}}
    try:
        with connect.postgres(stack, timeout=timeout, query_timeout=timeout, application_name="devenv-status") as conn:
            out["template"] = template_name(stack, conn.server_major)
            tables = [LEDGER_TABLE, *(table for table, _ in VERSION_TABLES.values())]
            [found] = conn.query("SELECT " + ", ".join(f"to_regclass({pgwire.literal(t)}) IS NOT NULL" for t in tables))
            present = dict(zip(tables, (value == "t" for value in found)))  # one round trip for all of them
            applied: dict[str, str | None] = {}
            if present[LEDGER_TABLE]:
                applied = dict(conn.query(f"SELECT file, checksum FROM {LEDGER_TABLE}"))
            for tool, (table, query) in VERSION_TABLES.items():
                if present[table]:
                    head = conn.query(query)
                    out["versions"][tool] = head[0][0] if head else None
    except (pgwire.PgError, OSError, ValueError) as exc:
        out["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return out
    for step in stack.steps:
        if step.kind == "sql":
            files = step_files(stack.replace(steps=(step,)))
            current = all(applied.get(seed.key) == seed.checksum for seed in files)
        else:
            current = applied.get(ledger_name(step)) == run_key(stack.root, step)
        if not current:
            out["behind"].append(step.label)
    out["at_template_key"] = not out["behind"]
    return out


def format_report(view: dict[str, Any]) -> list[str]:
    """`devenv status`'s lines for the steps."""
    lines = ["steps:"]
    for step in view["steps"]:
        inputs = f"  (inputs: {', '.join(step['inputs'])})" if step["inputs"] else ""
        lines.append(f"  {step['part']} {step['index']}: {step['kind']} {step['what']}{inputs}")
    lines.append("  " + summary(view))
    return lines


def summary(view: dict[str, Any]) -> str:
    """One line: at the template's key or not (and why), and the tools' heads."""
    versions = ", ".join(f"{tool} at {head}" for tool, head in view["versions"].items())
    versions = f"; {versions}" if versions else ""
    if view.get("error"):
        return f"working database not asked: {view['error']}"
    if view["at_template_key"]:
        return f"working database at the template's key ({view['template']}){versions}"
    behind = "; ".join(view["behind"])
    return (f"working database NOT at the template's key ({view['template']}): lacks {behind}{versions}; "
            "`devenv up` brings it forward (seed steps: `devenv reset`)")
