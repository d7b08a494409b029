"""Redis back to its seeded state: FLUSHDB on one index, then seeds/redis.json, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devenv.errors import SchemaError
from devenv.config.stack import Stack

REDIS_SEED_FILE = "redis.json"


def reset_redis(stack: Stack, db: int = 0, seeds_dir: Path | None = None) -> None:
    """FLUSHDB on index `db`, then load seeds/redis.json if there is one, in one MULTI/EXEC.

    seeds/redis.json maps keys to values: a string is SET, a list RPUSHed, an object HSET.
    """
    from devenv.clients import connect, resp

    seeds_dir = seeds_dir or stack.root / "seeds"
    commands = [["MULTI"], ["FLUSHDB"]]
    for key, value in redis_seed(seeds_dir).items():
        if isinstance(value, list):
            commands.append(["RPUSH", key, *map(str, value)])
        elif isinstance(value, dict):
            commands.append(["HSET", key, *(str(x) for pair in value.items() for x in pair)])
        else:
            commands.append(["SET", key, str(value)])
    commands.append(["EXEC"])
    try:
        with connect.redis(stack, db) as conn:
            replies = conn.call(*commands)
    except resp.ReplyError as exc:
        replies = [exc]
    errors = [reply for reply in [*replies, *(replies[-1] if isinstance(replies[-1], list) else [])]
              if isinstance(reply, resp.ReplyError)]
    if errors:
        raise SchemaError(f"Redis refused the reset: {errors[0]}",
                          hint=f"check {seeds_dir / REDIS_SEED_FILE} and `devenv status`.")


def redis_seed(seeds_dir: Path) -> dict[str, Any]:
    """seeds/redis.json as a dict ({} when there is none)."""
    path = seeds_dir / REDIS_SEED_FILE
    if not path.is_file():
        return {}
    import json

    try:
        keys = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SchemaError(f"{path}: not valid JSON: {exc}", hint="it maps key names to values.") from exc
    if not isinstance(keys, dict):
        raise SchemaError(f"{path}: expected an object mapping keys to values, found a {type(keys).__name__}",
                          hint='write e.g. {"feature:flags": {"beta": "on"}, "queue": ["a", "b"]}.')
    return keys
