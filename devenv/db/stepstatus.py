"""Where the working database is against the steps: for `devenv status` and `devenv doctor`.

The ledger (`devenv.applied_files`) says which SQL files and which `run:` steps (with their
key: devenv.db.stepkeys) the database has; a migration tool's own version table, where there is
one, gives its head. One pgwire session (no psycopg: `status` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from devenv.db.versions import read_versions, template_versions, versions_behind

if TYPE_CHECKING:
    from devenv.config.stack import Stack

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
            [[ledger]] = conn.query(f"SELECT to_regclass({pgwire.literal(LEDGER_TABLE)}) IS NOT NULL")
            applied: dict[str, str | None] = {}
            if ledger == "t":
                applied = dict(conn.query(f"SELECT file, checksum FROM {LEDGER_TABLE}"))
            out["versions"] = read_versions(conn.query)
            recorded = template_versions(conn.query, out["template"])
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
    out["behind"] += versions_behind(out["versions"], recorded)
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
    moved = any("the template at" in item for item in view["behind"])
    return (f"working database NOT at the template's key ({view['template']}): lacks {behind}{versions}; "
            "`devenv up` brings it forward (seed steps: `devenv reset`)"
            + ("; a version table moved since (a downgrade by hand?): run the tool's upgrade with `devenv env`'s "
               "DIRECT_DATABASE_URL, or `devenv reset`" if moved else ""))
