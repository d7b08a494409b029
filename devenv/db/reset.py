"""One reset: a database back to the freshly seeded state and a Redis index flushed and re-seeded,
under the profile's lock.

Every reset goes through `reset`: the click-free `devenv reset` (devenv.cli.entry), the click
command, `Devenv.reset` (the Python API) and the pytest plugin's fixtures. Which ways it tries,
in order, is `plan`'s choice:

- "in place": janitor.restore_quick, over devenv.clients.pgwire: no psycopg, whose import costs
  more than the restore. For one-shot callers (the CLI), which have no connection open.
- "janitor": Janitor.reset, in place over the session it keeps, else a clone (or copy) of the
  template (psycopg). A
  caller's long-lived Janitor (the API's, the plugin's) keeps its connections open between
  resets, which is what makes them ~1-3 ms; without one a temporary Janitor, closed after.
- "hard": Janitor.reset_hard, the template rebuilt from the schema and seed files first.

This module is on the `reset` path: Record, not dataclasses (devenv/record.py), and psycopg
only once a Janitor is needed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable, Collection

if TYPE_CHECKING:
    from devenv.db.janitor import Janitor, ResetResult
    from devenv.config.stack import Stack

# The strategies a restore in place may serve (Janitor.reset's `auto` restores when it can).
IN_PLACE_STRATEGIES = ("auto", "restore")


def plan(strategy: str = "auto", hard: bool = False, *, janitor_open: bool = False,
         in_place_only: bool = False) -> tuple[str, ...]:
    """The ways a reset is tried, in order, each when the one before could not do it.

    "in place" (restore_quick, no psycopg), "janitor" (Janitor.reset) or "hard"
    (Janitor.reset_hard). A Janitor already open restores in place itself, over the connections
    it keeps: cheaper than connecting afresh. `in_place_only`: only what needs no psycopg.
    """
    in_place = not hard and strategy in IN_PLACE_STRATEGIES
    if in_place_only:
        return ("in place",) if in_place else ()
    if hard:
        return ("hard",)
    return ("in place", "janitor") if in_place and not janitor_open else ("janitor",)


def reset(stack: Stack, database: str | None = None, *, hard: bool = False, strategy: str = "auto",
          redis_db: int | None = 0, janitor: Janitor | None = None, in_place_only: bool = False,
          redis_only: bool = False, say: Callable[[str], None] | None = None,
          known_sessions: Collection[int] = ()) -> ResetResult | None:
    """Reset `database` (default: the working one) and then Redis index `redis_db` (None: leave
    Redis), holding the profile's lock so that no `up`/`down` runs meanwhile.

    `janitor`: a long-lived Janitor to use (left open); without one, a temporary one if needed.
    `in_place_only`: None, having changed nothing, when the database needs more than a restore
    in place (the caller then hands over to one that may import psycopg). `redis_only`: leave
    the database, reset only the Redis index (None). `say`: where a PgBouncer pause that a killed
    devenv left is reported as resumed (default stderr). `known_sessions`: backend pids of the
    caller's own connections to the database, which do not make PgBouncer reconnect.
    """
    from devenv.db.pauses import resume_orphaned
    from devenv.db.janitor import Janitor, restore_quick
    from devenv.db.redis_seed import reset_redis
    from devenv.state import locked

    steps = () if redis_only else plan(strategy, hard, janitor_open=janitor is not None, in_place_only=in_place_only)
    temporary: Janitor | None = None
    try:
        with locked(stack.state_dir):
            for line in resume_orphaned(stack):  # pooled clients a killed devenv left paused
                (say or _stderr)(line)
            result = None
            for step in steps:
                if step == "in place":
                    result = restore_quick(stack, database, strategy)
                else:
                    if janitor is None:
                        janitor = temporary = Janitor(stack)
                        import psycopg  # noqa: F401  (loaded before the reset's clock starts: start-up, not reset)
                    result = (janitor.reset_hard(database) if step == "hard"
                              else janitor.reset(database, strategy, known_sessions))
                if result is not None:
                    break
            if result is None and not redis_only:
                return None  # in_place_only, and it takes a clone: nothing changed
            if redis_db is not None:
                reset_redis(stack, redis_db, janitor.seeds_dir if janitor is not None else None)
            return result
    finally:
        if temporary is not None:
            temporary.close()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
