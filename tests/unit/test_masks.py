"""CI log masking: which values count as secrets (pure logic; the CLI is tested in integration)."""

from __future__ import annotations

from devenv.cli.output import secrets_in


def test_secrets_in_covers_each_password_as_written_and_decoded_and_each_url() -> None:
    urls = {"DATABASE_URL": "postgresql://app:p%40ss%2Fw@127.0.0.1:6432/db?sslmode=require",
            "REDIS_URL": "redis://:r3dis@127.0.0.1:6379/0"}
    found = secrets_in(urls, ["admin-pw", "multi\nline"])
    assert found == ["p%40ss%2Fw", "p@ss/w", urls["DATABASE_URL"], "r3dis", urls["REDIS_URL"], "admin-pw", "multi", "line"]


def test_secrets_in_skips_urls_without_password_and_empty_values() -> None:
    assert secrets_in({"X": "redis://127.0.0.1:6379/0"}, [""]) == []
