"""Setting catalogues shipped as data: PostgreSQL per major (pgNN.json), PgBouncer and Redis names."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def known_settings(service: str) -> frozenset[str]:
    """Setting names PgBouncer or Redis accept in their config file."""
    lines = (_HERE / f"{service}.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))
