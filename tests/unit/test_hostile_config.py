"""devenv.yaml as hostile input (issue 15, classes 8, 10, 11): every bad file is exit 3 with
`error:` naming the file, line and key, and a `hint:`; fast and bounded whatever the file holds.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from devenv.config import rules
from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.errors import ConfigError

CONFIG_ERROR = 3
DEVENV = Path(__file__).resolve().parents[2] / "devenv"


def assert_config_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == CONFIG_ERROR, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert "\nhint: " in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"


def stack_error(project: Path, profile: str = "dev") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build_stack(load_config(project / "devenv.yaml", {}), profile)
    assert caught.value.hint, f"no hint for: {caught.value.message}"
    return caught.value


# --------------------------------------------------------------------------- class 8: managed keys

_ROW_AFTER = {
    "postgres": "    wal_level:                  {default: logical}\n",
    "pgbouncer": "    pool_mode:                  {default: transaction}\n",
    "redis": "    maxmemory-policy:           {default: allkeys-lru}\n",
}


@pytest.mark.parametrize(
    ("service", "key", "value", "why"),
    [
        ("postgres", "listen_addresses", "'*'", "binds every server to 127.0.0.1"),
        ("postgres", "port", "5433", "127.0.0.1"),
        ("postgres", "unix_socket_directories", "/tmp", "unix sockets"),
        ("postgres", "hba_file", "/tmp/hba", "authentication"),
        ("postgres", "password_encryption", "md5", "authentication"),
        ("postgres", "data_directory", "/tmp/x", "files"),
        ("postgres", "log_filename", "../../../../tmp/pwn.log", "files"),
        ("postgres", "ssl_key_file", "/tmp/k", "TLS"),
        ("postgres", "archive_command", "'curl x | sh'", "shell command"),
        ("postgres", "dynamic_library_path", "/tmp", "load code"),
        ("postgres", "include", "/etc/passwd", "include"),
        ("pgbouncer", "listen_addr", "'*'", "127.0.0.1"),
        ("pgbouncer", "auth_type", "trust", "authentication"),
        ("pgbouncer", "admin_users", "taskflow", "authentication"),
        ("pgbouncer", "logfile", "/tmp/log", "files"),
        ("pgbouncer", "client_tls_sslmode", "disable", "TLS"),
        ("pgbouncer", "'%include'", "/tmp/x.ini", "include"),
        ("redis", "bind", "0.0.0.0", "127.0.0.1"),
        ("redis", "protected-mode", '"no"', "127.0.0.1"),
        ("redis", "requirepass", '""', "authentication"),
        ("redis", "dir", "/etc", "files"),
        ("redis", "tls-port", "6380", "TLS"),
        ("redis", "rename-command", "CONFIG", "authentication"),
        ("redis", "replicaof", "10.0.0.1 6379", "standalone"),
        ("redis", "enable-protected-configs", "yes", "REDIS_URL"),
        ("redis", "Bind", "0.0.0.0", "127.0.0.1"),  # Redis reads names in any case
    ],
)
def test_a_row_cannot_override_what_devenv_manages(
    project: Path, edit_config: Any, service: str, key: str, value: str, why: str
) -> None:
    line = edit_config(_ROW_AFTER[service], _ROW_AFTER[service] + f"    {key}: {{default: {value}}}\n") + 1
    error = stack_error(project)
    name = key.strip("'")
    assert f"devenv.yaml:{line}: {service}.settings.{name}: '{name}' is managed by devenv" in error.message
    assert why in error.message
    assert f"remove the `{name}` row" in (error.hint or "")


def test_a_managed_key_is_refused_even_in_a_column_of_another_profile(project: Path, edit_config: Any) -> None:
    edit_config(_ROW_AFTER["redis"], _ROW_AFTER["redis"] + "    protected-mode: {rds: \"no\"}\n")
    assert "protected-mode" in stack_error(project, "dev").message


def test_preload_libraries_are_named_not_pathed(project: Path, edit_config: Any) -> None:
    row = _ROW_AFTER["postgres"]
    edit_config(row, row + "    shared_preload_libraries: {default: \"pg_stat_statements, auto_explain\"}\n")
    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    assert stack.postgres.settings["shared_preload_libraries"] == "pg_stat_statements, auto_explain"
    (project / "devenv.yaml").write_text((project / "devenv.yaml").read_text().replace(
        "pg_stat_statements, auto_explain", "/tmp/evil.so"))
    assert "libraries are named, not given by path" in stack_error(project).message


def test_managed_key_through_the_cli(edit_config: Any, run_devenv: Any) -> None:
    row = _ROW_AFTER["pgbouncer"]
    line = edit_config(row, row + "    auth_type: {default: trust}\n") + 1
    assert_config_error(run_devenv("render"), f"devenv.yaml:{line}:", "pgbouncer.settings.auth_type", "managed by devenv")


# --------------------------------------------------------------------------- class 9: values


@pytest.mark.parametrize(
    ("service", "key", "value"),
    [
        ("redis", "maxmemory-policy", '"allkeys-lru\\nrequirepass \\"\\""'),
        ("pgbouncer", "pool_mode", '"transaction\\nauth_type = trust"'),
        ("pgbouncer", "server_reset_query", '"DISCARD ALL\\r"'),
        ("postgres", "application_name", '"x\\\\\'\\nlog_statement = none"'),
        ("postgres", "application_name", '"tab\\there"'),
        ("redis", "save", '"3600 1\\tinclude /etc/x"'),
    ],
)
def test_a_control_character_in_a_value_is_refused(
    project: Path, edit_config: Any, service: str, key: str, value: str
) -> None:
    row = _ROW_AFTER[service]
    text = row + f"    {key}: {{default: {value}}}\n" if key not in row else f"    {key}: {{default: {value}}}\n"
    line = edit_config(row, text) + (1 if key not in row else 0)
    error = stack_error(project)
    assert f"devenv.yaml:{line}: {service}.settings.{key} (profile 'dev')" in error.message
    assert "control character" in error.message


@pytest.mark.parametrize(
    ("service", "key", "value", "why"),
    [
        ("pgbouncer", "server_reset_query", '" DISCARD ALL"', "trims blanks"),
        ("redis", "save", '"3600 \\"1\\""', "single spaces"),
        ("redis", "client-output-buffer-limit", '"normal 0 0 0 # x"', "single spaces"),
    ],
)
def test_a_value_the_lexer_would_change_is_refused(
    project: Path, edit_config: Any, service: str, key: str, value: str, why: str
) -> None:
    row = _ROW_AFTER[service]
    edit_config(row, row + f"    {key}: {{default: {value}}}\n")
    assert why in stack_error(project).message


def test_a_setting_name_with_a_control_character_is_refused(project: Path, edit_config: Any) -> None:
    row = _ROW_AFTER["redis"]
    edit_config(row, row + '    "maxclients\\nrequirepass": {default: "10"}\n')
    assert "control character" in stack_error(project).message


@pytest.mark.parametrize("value", ["[1, 2]", "{a: 1}", "~", "!!binary aGk=", "2024-01-01"])
def test_a_cell_must_be_a_scalar(project: Path, edit_config: Any, value: str) -> None:
    edit_config("pool_mode:                  {default: transaction}", f"pool_mode:                  {{default: {value}}}")
    assert "pgbouncer.settings.pool_mode.default" in stack_error(project).message


def test_an_image_reference_cannot_carry_a_newline(project: Path, edit_config: Any) -> None:
    edit_config("image: redis:7", 'image: "redis:7\\n    privileged: true"')
    error = stack_error(project)
    assert "redis.image" in error.message and "not an image reference" in error.message


# --------------------------------------------------------------------------- class 10: the file itself


def test_non_utf8_bytes_name_line_and_column(project: Path, run_devenv: Any) -> None:
    path = project / "devenv.yaml"
    data = path.read_bytes()
    at = data.index(b"laptop development")
    path.write_bytes(data[:at] + b"\xff\xfe" + data[at:])
    line = data[:at].count(b"\n") + 1
    column = at - data.rfind(b"\n", 0, at)
    assert_config_error(run_devenv("render"), f"devenv.yaml:{line}:{column}: not UTF-8 (byte 0xff)", "UTF-8")


def test_an_alias_bomb_is_refused_fast(project: Path, run_devenv: Any) -> None:
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    text = (project / "devenv.yaml").read_text().replace(
        "    description: laptop development (CON-003 \"Development\" column)",
        "    description: *a9",
    )
    (project / "devenv.yaml").write_text("x-bomb:\n" + "\n".join("  " + line for line in levels) + "\n" + text)
    start = time.monotonic()
    result = run_devenv("render")
    assert time.monotonic() - start < 10
    assert_config_error(result, "expands to more than", "aliases")


def test_a_recursive_alias_is_refused(project: Path) -> None:
    path = project / "devenv.yaml"
    path.write_text("x: &a [*a]\n" + path.read_text())
    with pytest.raises(ConfigError, match="alias refers to a value that contains it"):
        load_config(path, {})


def test_aliases_of_modest_size_still_work(project: Path, edit_config: Any) -> None:
    row = _ROW_AFTER["pgbouncer"]
    edit_config(row, row + "    min_pool_size: &five {default: 5}\n    max_db_connections: *five\n")
    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    assert stack.pgbouncer.settings["min_pool_size"] == stack.pgbouncer.settings["max_db_connections"] == "5"


def test_a_huge_file_is_refused_fast(project: Path, run_devenv: Any) -> None:
    path = project / "devenv.yaml"
    with path.open("a") as handle:
        handle.write("# " + "x" * 1000 + "\n" * 1)
        handle.write(("# padding " + "x" * 100 + "\n") * 500_000)  # ~55 MB
    start = time.monotonic()
    result = run_devenv("render")
    assert time.monotonic() - start < 10
    assert_config_error(result, "larger than 1 MiB", "--config")


def test_deep_nesting_is_refused(project: Path) -> None:
    path = project / "devenv.yaml"
    path.write_text("x: " + "[" * 5000 + "]" * 5000 + "\n" + path.read_text())
    with pytest.raises(ConfigError, match="nested more than"):
        load_config(path, {})


def test_duplicate_keys_name_both_lines(project: Path, edit_config: Any, run_devenv: Any) -> None:
    first = edit_config("    work_mem:                   {default: 4MB,",
                        "    work_mem:                   {default: 8MB}\n    work_mem:                   {default: 4MB,")
    assert_config_error(run_devenv("render"), f"devenv.yaml:{first + 1}: duplicate key 'work_mem' (first at line {first})")


def test_duplicate_columns_in_a_flow_row(project: Path, edit_config: Any) -> None:
    edit_config("{default: transaction}", "{default: transaction, default: session}")
    with pytest.raises(ConfigError, match="duplicate key 'default'"):
        load_config(project / "devenv.yaml", {})


def test_every_config_error_in_the_code_has_a_hint() -> None:
    """A structural guard: each `ConfigError(...)` and `_Parser.fail(...)` passes a hint."""
    missing = []
    for path in DEVENV.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            has_hint = any(k.arg == "hint" for k in node.keywords)
            if name == "ConfigError" and not has_hint and len(node.args) < 2:
                missing.append(f"{path}:{node.lineno}")
            if name == "fail" and path.name == "settings.py" and not has_hint and len(node.args) < 3:
                missing.append(f"{path}:{node.lineno}")
    assert not missing, f"ConfigErrors without a hint: {missing}"


# --------------------------------------------------------------------------- class 11: derived names


@pytest.mark.parametrize("length", [28, 46, 63, 64, 100])
def test_a_database_name_whose_derived_names_do_not_fit_is_refused(
    project: Path, edit_config: Any, run_devenv: Any, length: int
) -> None:
    line = edit_config("  database: taskflow\n  user:", f"  database: {'d' * length}\n  user:")
    assert_config_error(run_devenv("render"), f"devenv.yaml:{line}: postgres.database", "at most 27 bytes fit")


def test_the_longest_database_name_allowed_derives_names_that_fit(project: Path, edit_config: Any) -> None:
    longest = "d" * rules.max_database_bytes()
    edit_config("  database: taskflow\n  user:", f"  database: {longest}\n  user:")
    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    for pattern in rules.DERIVED_DATABASES:
        for working in (longest, f"{longest}_test_gw13"):
            name = pattern.format(db=longest, w=working)
            assert len(name.encode()) <= rules.MAX_IDENTIFIER, name
    assert stack.postgres.database == longest


@pytest.mark.parametrize("name", ["app__new_123", "postgres", "template1", "x__tpl_abc", "pgbouncer"])
def test_a_database_name_that_clashes_with_devenvs_own_is_refused(project: Path, edit_config: Any, name: str) -> None:
    edit_config("  database: taskflow\n  user:", f"  database: {name}\n  user:")
    assert "postgres.database" in stack_error(project).message


@pytest.mark.parametrize(("old", "new"), [("user: taskflow", "user: " + "u" * 64), ("user: taskflow", "user: pg_monitor"),
                                          ("admin_user: pgbouncer_admin", "admin_user: postgres"),
                                          # PostgreSQL refuses these (an internal error after start before)
                                          ("user: taskflow", "user: public"), ("user: taskflow", "user: none")])
def test_role_names_must_be_usable(project: Path, edit_config: Any, old: str, new: str) -> None:
    edit_config(old, new)
    assert "cannot be used" in stack_error(project).message


def test_project_and_profile_must_make_a_container_name_that_fits(project: Path, edit_config: Any) -> None:
    edit_config("project: taskflow", "project: " + "p" * 50)
    error = stack_error(project)
    assert "container name" in error.message and "63" in error.message


def test_every_scratch_infix_in_the_code_is_covered_by_the_length_rule() -> None:
    """Each `<name>__<infix>_` devenv builds in code is among rules.DERIVED_DATABASES."""
    covered = {m.group(1) for p in rules.DERIVED_DATABASES for m in re.finditer(r"__([a-z]+)_", p)}
    used = set()
    for path in (DEVENV / "db").rglob("*.py"):
        used |= set(re.findall(r"\}__([a-z]+)_", path.read_text(encoding="utf-8")))
        used |= set(re.findall(r'"__([a-z]+)_"', path.read_text(encoding="utf-8")))
    assert used and used <= covered, f"not covered by the length rule: {used - covered}"


@pytest.mark.parametrize("name", ["_new_999999", "_old_1_2", "_building_7", "_restore_42", "-x" + "__new_1"])
def test_no_snapshot_name_can_look_like_a_scratch_database(name: str) -> None:
    from devenv.db.janitor import SCRATCH_PATTERN
    from devenv.db.snapshots import database_name

    try:
        database = database_name("taskflow", name)
    except ConfigError as exc:
        assert exc.hint
        return
    assert not re.search(SCRATCH_PATTERN, database), database


def test_the_snapshot_name_from_the_issue_is_refused() -> None:
    from devenv.db.snapshots import validate_name

    with pytest.raises(ConfigError, match="starting with a letter or digit"):
        validate_name("_new_999999")
    assert validate_name("before-migration_42") == "before-migration_42"


# --------------------------------------------------------------------------- devenv's own files in .devenv/


@pytest.mark.parametrize("content", [b"[]", b"\xff\xfe", b'"a string"', b"{\"fingerprint\": 1, \"stack\": []}"])
def test_a_damaged_stack_cache_is_rebuilt(project: Path, content: bytes) -> None:
    from devenv.config.resolve import STACK_CACHE, load_stack_cached

    first = load_stack_cached(project / "devenv.yaml", "dev")
    cache = project / ".devenv" / "dev" / STACK_CACHE
    cache.write_bytes(content)
    assert load_stack_cached(project / "devenv.yaml", "dev") == first


@pytest.mark.parametrize("content", [b"[]", b"\xff\xfe", b"42"])
def test_a_damaged_state_file_reads_as_none(tmp_path: Path, content: bytes) -> None:
    from devenv.state import STATE_FILE, read_state

    (tmp_path / STATE_FILE).write_bytes(content)
    assert read_state(tmp_path) == {}


def test_a_password_note_that_is_not_utf8_is_not_a_match(tmp_path: Path) -> None:
    from devenv.state import password_noted

    (tmp_path / "note").write_bytes(b"\xff\xfe")
    assert password_noted(tmp_path / "note", "secret") is False


def test_a_seed_file_name_that_is_not_utf8_is_a_schema_error_naming_it(tmp_path: Path) -> None:
    """The name goes into the ledger and the template key; it once crashed encoding the key."""
    from devenv.db.seeds import seed_files
    from devenv.errors import SchemaError

    schema = tmp_path / "schema"
    schema.mkdir()
    (schema / "001_ok.sql").write_text("SELECT 1;")
    bad = os.fsdecode(b"002_caf\xe9.sql")
    (schema / bad).write_text("SELECT 1;")
    with pytest.raises(SchemaError) as caught:
        seed_files(tmp_path)
    assert "002_caf" in caught.value.message and "not UTF-8" in caught.value.message and caught.value.hint


def test_up_refuses_a_managed_key_before_starting_anything(project: Path, edit_config: Any, run_devenv: Any) -> None:
    """The issue's case: `up` exited 0 with Redis listening beyond 127.0.0.1."""
    row = _ROW_AFTER["redis"]
    edit_config(row, row + "    bind: {default: 0.0.0.0}\n    protected-mode: {default: \"no\"}\n")
    result = run_devenv("up", "--runtime", "native")
    assert_config_error(result, "redis.settings.bind", "managed by devenv")
    assert not (project / ".devenv" / "dev" / "redis.conf").exists(), "nothing rendered, nothing started"


def test_the_docs_name_every_managed_key() -> None:
    doc = (DEVENV.parent / "docs" / "settings-rules.md").read_text(encoding="utf-8")
    missing = [f"{service}.{key}" for service, table in rules.MANAGED.items() for key in table if f"`{key}`" not in doc]
    assert not missing, f"docs/settings-rules.md does not name: {missing}"
    assert f"at most {rules.max_database_bytes()} bytes" in doc


def test_pgbouncer_s_name_for_the_database_needs_only_fit_63_bytes(project: Path, edit_config: Any) -> None:
    edit_config("  port: 6432\n  database: taskflow", "  port: 6432\n  database: " + "p" * 63)
    assert build_stack(load_config(project / "devenv.yaml", {}), "dev").pgbouncer.database == "p" * 63
    (project / "devenv.yaml").write_text((project / "devenv.yaml").read_text().replace("p" * 63, "p" * 64))
    assert "cut names at 63" in stack_error(project).message


def test_pgbouncer_counts_cannot_be_negative(project: Path, edit_config: Any) -> None:
    """`max_client_conn: -1` passed, and `up` then waited out its health timeout (exit 6)."""
    edit_config("max_client_conn:            {default: 100}", "max_client_conn:            {default: 100, dev: -1}")
    assert "0 or more" in stack_error(project).message


def test_a_port_override_takes_ascii_digits_only(project: Path) -> None:
    """Python's int() reads Arabic-Indic digits; a port written so is refused as `+27432` is."""
    with pytest.raises(ConfigError) as caught:
        load_config(project / "devenv.yaml", {"DEVENV_POSTGRES_PORT": "\u0662\u0667\u0664\u0663\u0662"})
    assert "is not a TCP port" in caught.value.message
