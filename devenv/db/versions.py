"""Migration tools' version tables: each known tool's head in a database, and the heads a
template recorded when it was built (its database comment: readable from any database, unlike
the template itself, which takes no connections). Status compares the working database's
heads with the template's; `up` brings a database whose heads moved forward again.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

Query = Callable[[str], Sequence[Sequence[Any]]]  # one statement -> its rows (pgwire's or psycopg's)
# A template's tools' heads, as its database comment: `devenv versions {"alembic": "005"}`.
COMMENT_PREFIX = "devenv versions "

# A known tool's version table -> the query giving its head (the latest applied migration).
VERSION_TABLES = {
    "alembic": ("alembic_version", "SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version"),
    # Django applies apps' migrations in an order that differs between a fresh database and one
    # brought forward: each app's latest (by its numbered name) compares, the last applied would not.
    "django": ("django_migrations", "SELECT string_agg(app || '.' || latest, ', ' ORDER BY app) FROM "
               "(SELECT app, max(name) AS latest FROM django_migrations GROUP BY app) apps"),
    "prisma": ("_prisma_migrations", "SELECT migration_name FROM _prisma_migrations WHERE finished_at IS NOT NULL "
               "AND rolled_back_at IS NULL ORDER BY finished_at DESC, migration_name DESC LIMIT 1"),
    "flyway": ("flyway_schema_history", "SELECT coalesce(version, description) FROM flyway_schema_history "
               "WHERE success ORDER BY installed_rank DESC LIMIT 1"),
    "dbmate": ("schema_migrations", "SELECT max(version)::text FROM schema_migrations"),
    "sqitch": ("sqitch.changes", "SELECT change FROM sqitch.changes ORDER BY committed_at DESC LIMIT 1"),
}


def read_versions(query: Query) -> dict[str, str | None]:
    """{tool: head} of every known migration tool whose version table the database has."""
    from devenv.clients.pgwire import literal

    tables = [table for table, _ in VERSION_TABLES.values()]
    [found] = query("SELECT " + ", ".join(f"to_regclass({literal(t)}) IS NOT NULL" for t in tables))
    present = {table for table, value in zip(tables, found) if value in (True, "t")}  # one round trip for all
    heads: dict[str, str | None] = {}
    for tool, (table, sql) in VERSION_TABLES.items():
        if table in present:
            rows = query(sql)
            heads[tool] = rows[0][0] if rows else None
    return heads


def versions_comment(heads: dict[str, str | None]) -> str:
    """The template database's comment recording its tools' heads."""
    return COMMENT_PREFIX + json.dumps(heads, sort_keys=True)


def template_versions(query: Query, template: str) -> dict[str, str | None] | None:
    """The heads the template recorded when it was built (None: none recorded, or no template)."""
    from devenv.clients.pgwire import literal

    rows = query(f"SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = {literal(template)}")
    comment = rows[0][0] if rows else None
    if not comment or not comment.startswith(COMMENT_PREFIX):
        return None
    try:
        heads = json.loads(comment[len(COMMENT_PREFIX):])
    except ValueError:
        return None
    return heads if isinstance(heads, dict) else None


def versions_behind(working: dict[str, str | None], template: dict[str, str | None] | None) -> list[str]:
    """Where the working database's tools are not at the template's heads: `alembic at 004, the
    template at 005` (a downgrade, or a version table edited, since it was brought forward)."""
    if template is None:
        return []
    return [f"{tool} at {working.get(tool) or 'nothing'}, the template at {head}"
            for tool, head in sorted(template.items()) if working.get(tool) != head]
