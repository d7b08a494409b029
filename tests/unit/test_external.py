"""An existing server's URL (the pytest plugin's --devenv-url): parsing, redaction, names, URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.config.external import ServerUrl, database_base, redact, server_stack
from devenv.errors import ConfigError


def test_the_password_comes_from_the_url_or_pgpassword_and_is_redacted() -> None:
    url = ServerUrl("postgresql://app:s3cret@db.example:6543/ci?sslmode=verify-full&sslrootcert=/ca.pem", {})
    assert (url.host, url.port, url.user, url.password, url.database) == ("db.example", 6543, "app", "s3cret", "ci")
    assert (url.sslmode, url.sslrootcert) == ("verify-full", "/ca.pem")
    assert "s3cret" not in url.shown and "app:***@db.example:6543" in url.shown
    from_env = ServerUrl("postgresql://app@127.0.0.1/postgres", {"PGPASSWORD": "pw", "PGSSLMODE": "require"})
    assert (from_env.password, from_env.port, from_env.sslmode) == ("pw", 5432, "require")
    assert redact("postgresql://app@h/db") == "postgresql://app@h/db"


@pytest.mark.parametrize("url, words", [
    ("mysql://app:pw@h/db", "not a postgresql:// URL"),
    ("postgresql://app:pw@h:port/db", "port is not a number"),
    ("postgresql://app:pw@h/db?sslmode=sometimes", "unknown sslmode"),
    ("postgresql://h/db", "no user"),
])
def test_a_bad_url_is_a_config_error_without_the_password(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerUrl(url, {})
    assert words in caught.value.message and ":pw@" not in caught.value.message


def test_names_on_a_shared_server_carry_the_project_and_the_checkout(tmp_path: Path) -> None:
    one, two = tmp_path / "one" / "app", tmp_path / "two" / "app"
    assert database_base("TaskFlow-API", one).startswith("taskflow_api_")
    assert database_base("app", one) != database_base("app", two)
    assert len(database_base("x" * 80, one)) <= 31


def test_a_stack_on_an_existing_server_has_direct_urls_and_no_pgbouncer(tmp_path: Path) -> None:
    stack = server_stack(tmp_path, "ci", "postgresql://app:p%40ss@10.0.0.5:5433/postgres?sslmode=require",
                         "redis://:rpw@10.0.0.6:6380/3", None, {})
    assert not stack.has_pgbouncer and stack.host == "10.0.0.5" and stack.maintenance_database == "postgres"
    assert stack.postgres.admin_user == stack.postgres.user == "app"
    urls = stack.urls("db_test_gw0", 4)
    assert urls["DATABASE_URL"] == urls["DIRECT_DATABASE_URL"] == \
        "postgresql://app:p%40ss@10.0.0.5:5433/db_test_gw0?sslmode=require"
    assert urls["REDIS_URL"] == "redis://:rpw@10.0.0.6:6380/4"
    assert stack.libpq_env()["PGSSLMODE"] == "require"
    no_redis = server_stack(tmp_path, "ci", "postgresql://app@h/postgres", None, None, {})
    assert "REDIS_URL" not in no_redis.urls()
    assert not (tmp_path / ".devenv").exists()  # nothing written: no secrets, no state


# ---- redaction of hostile URLs -------------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@pytest.mark.parametrize("url, shown", [
    ("postgresql://weird:p@ss:w%rd/x?#@127.0.0.1:21500/postgres", "postgresql://weird:***@127.0.0.1:21500/postgres"),
    ("redis://:a@b/c?d#e@10.0.0.6:6380/3", "redis://:***@10.0.0.6:6380/3"),
    ("postgresql://app:pw@h/db?application_name=a@b", "postgresql://app:***@b"),
    ("postgresql://app@h/db?password=s3cret&sslmode=require", "postgresql://app@h/db?password=***&sslmode=require"),
    ("postgresql://app@h:5432/db", "postgresql://app@h:5432/db"),
    ("app:pw@h:5432/db", "app:***@h:5432/db"),
])
def test_redact_hides_all_between_the_user_and_the_last_at(url: str, shown: str) -> None:
    assert redact(url) == shown


_NO_AT = st.text(st.characters(blacklist_characters="@", blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(["postgresql", "postgres", "redis", "rediss"]),
       user=st.text(st.characters(blacklist_characters=":", blacklist_categories=("Cs",)), max_size=10),
       password=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
       rest=_NO_AT)
def test_redact_never_shows_any_of_an_unencoded_password(scheme: str, user: str, password: str, rest: str) -> None:
    """Whatever the password holds (`:`, `@`, `/`, `?`, `#`, `%`, `password=`), nothing of it shows."""
    url = f"{scheme}://{user}:{password}@127.0.0.1:5432/{rest}"
    expected = f"{scheme}://{user}:***@127.0.0.1:5432/{rest}"
    import re
    assert redact(url) == re.sub(r"(?i)(password=)[^&#]*", r"\1***", expected)


def test_a_bad_url_names_where_it_came_from() -> None:
    from devenv.config.external import RedisUrl

    with pytest.raises(ConfigError) as caught:
        ServerUrl("postgresql://h/db", {}, "ini key devenv_url in /p/pytest.ini")
    assert caught.value.message.startswith("ini key devenv_url in /p/pytest.ini: postgresql://h/db")
    with pytest.raises(ConfigError) as caught:
        RedisUrl("redis://:pw@h:port", "environment variable DEVENV_REDIS_URL")
    assert caught.value.message.startswith("environment variable DEVENV_REDIS_URL: redis://:***@h:port")
