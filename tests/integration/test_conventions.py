"""Issue 16, items 4 and 6 on real stacks: `env_file:` kept by every `up` (other lines byte for
byte, 0600, the PG* values connect), `devenv env --format shell|dotenv` with libpq's variables
evaluated by a real shell and a dotenv parser, and `up --json` on the full and no-op paths."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from devenv import envfile
from tests.integration.test_lifecycle import cleanup

# What a developer's .env may hold already: comments, CRLF line ends, a line that sets one of
# devenv's variables (outside the block: left alone), and no newline at the end.
OTHER_LINES = b"# my settings\r\nSECRET_KEY='abc def'\r\nDATABASE_URL=sqlite:///local.db\r\n\r\nexport DEBUG=1"


@pytest.fixture
def proj(project: Any) -> Iterator[Any]:
    """`project`, and afterwards no server process of it left, tracked or not."""
    yield project
    cleanup(project)


def psql() -> str:
    found = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    assert os.path.exists(found), "psql is needed to check libpq's variables"
    return found


def block_values(data: bytes) -> tuple[str, dict[str, str]]:
    """The block's first line and its variables, read by python-dotenv as an application would."""
    from dotenv import dotenv_values

    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(envfile.BEGIN.encode()))
    end = next(j for j in range(start, len(lines)) if lines[j].startswith(envfile.END.encode()))
    body = b"\n".join(lines[start + 1:end]).decode()
    return lines[start].decode(), dict(dotenv_values(stream=io.StringIO(body)))


def libpq_env(values: dict[str, str]) -> dict[str, str]:
    """This process's environment without PG* variables of its own, with `values`' PG* ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return {**env, **{k: v for k, v in values.items() if k.startswith("PG")}}


def test_env_file_round_trip(proj: Any) -> None:
    env_file = proj.root / ".env"
    env_file.write_bytes(OTHER_LINES)
    env_file.chmod(0o644)
    proj.edit("devenv.yaml", "\nprofiles:\n", "\nenv_file: .env\nprofiles:\n")

    # The Python API's (the pytest plugin's) `up` leaves it alone: tests get their URLs otherwise.
    code = f"import devenv; devenv.Devenv.load(profile={proj.profile!r}, runtime={proj.runtime!r}).up()"
    api = subprocess.run([sys.executable, "-c", code], cwd=proj.root, env=proj.env, capture_output=True, text=True,
                         timeout=120)
    assert api.returncode == 0, api.stderr
    assert env_file.read_bytes() == OTHER_LINES and stat.S_IMODE(env_file.stat().st_mode) == 0o644

    first = proj.devenv("up")
    data = env_file.read_bytes()
    assert data.startswith(OTHER_LINES + b"\r\n"), "every other line stays, byte for byte"
    assert data.count(b"\n") == data.count(b"\r\n"), "a CRLF file gets a CRLF block"
    assert not data.endswith(b"\n"), "the file had no final newline, and still has none"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "0644 -> 0600" in first.stderr, first.stderr
    assert "sets DATABASE_URL outside devenv's block" in first.stderr, first.stderr
    head, values = block_values(data)
    assert head.startswith(f"# >>> devenv (profile {proj.profile}): written by `devenv up`")
    stack = proj.stack()
    assert values == stack.env()
    assert values["PGPORT"] == str(stack.postgres.port) and values["PGHOST"] == "127.0.0.1"

    # libpq (psql, no arguments) connects with the block's PG* values alone.
    who = subprocess.run([psql(), "-tAc", "SELECT current_user || ' ' || current_database()"],
                         env=libpq_env(values), capture_output=True, text=True, timeout=30)
    assert who.returncode == 0, who.stderr
    assert who.stdout.strip() == f"{stack.postgres.user} {stack.postgres.database}"

    # The no-op `up` leaves a current file alone...
    os.utime(env_file, (1_000_000, 1_000_000))
    again = proj.devenv("up")
    assert "nothing to do" in again.stderr, again.stderr
    assert env_file.stat().st_mtime == 1_000_000 and env_file.read_bytes() == data

    # ... and writes a stale block again (here: another profile's), still without loading the stack.
    env_file.write_bytes(data.replace(f"(profile {proj.profile})".encode(), b"(profile prod)").replace(
        values["PGPORT"].encode(), b"1"))
    stale = proj.devenv("up")
    assert "nothing to do" in stale.stderr, stale.stderr
    assert env_file.read_bytes() == data

    # A missing file is written again too; `down` (with --volumes too) leaves the block.
    env_file.unlink()
    proj.devenv("up")
    assert block_values(env_file.read_bytes())[1] == values
    proj.devenv("down", "--volumes")
    assert block_values(env_file.read_bytes())[1] == values


def test_a_planted_link_is_refused_and_its_target_untouched(proj: Any, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.env"
    target.write_text("KEEP=1\n")
    (proj.root / ".env").symlink_to(target)
    proj.edit("devenv.yaml", "\nprofiles:\n", "\nenv_file: .env\nprofiles:\n")
    result = proj.devenv("up", check=False)
    assert result.returncode == 8 and "symbolic link" in result.stderr and "hint:" in result.stderr, result.stderr
    assert target.read_text() == "KEEP=1\n"
    assert "Traceback" not in result.stderr


def test_env_shell_and_dotenv_give_libpq_variables(running: Any) -> None:
    from dotenv import dotenv_values

    proj = running("ci")
    stack = proj.stack()
    dotenv = dict(dotenv_values(stream=io.StringIO(proj.devenv("env", "--format", "dotenv").stdout)))
    assert dotenv == stack.env()
    assert {"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"} <= set(dotenv)
    script = f'eval "$("$PY" -m devenv env --format shell --profile ci)" && {psql()} -tAc "SELECT current_database()"'
    env = {k: v for k, v in proj.env.items() if not k.startswith("PG")}
    shell = subprocess.run(["bash", "-c", script], cwd=proj.root, env={**env, "PY": sys.executable},
                           capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip() == stack.postgres.database


def test_up_json_is_one_object_on_the_full_and_no_op_paths(proj: Any) -> None:
    full = proj.devenv("up", "--json")
    report = json.loads(full.stdout)  # the whole of stdout: one JSON object
    stack = proj.stack()
    assert report["runtime"] == proj.runtime and report["up_to_date"] is False
    assert set(report["started"]) == {"postgres", "pgbouncer", "redis"}
    assert report["database_created"] is True and report["seeded"] is True
    assert report["urls"] == stack.urls()
    assert report["ports"] == {s.name: s.port for s in stack.services}
    assert report["seconds"] > 0 and report["env_file"] is None
    assert "starting" in full.stderr, "progress stays on stderr"

    # Under GitHub Actions the masks go to stderr (the runner reads commands there too): stdout stays JSON.
    gha = dataclasses.replace(proj, env={**proj.env, "GITHUB_ACTIONS": "true"})
    noop = gha.devenv("up", "--json")
    again = json.loads(noop.stdout)
    assert f"::add-mask::{stack.postgres.password}" in noop.stderr.splitlines()
    assert again["up_to_date"] is True and again["started"] == [] and again["seeded"] is False
    assert again["urls"] == stack.urls() and again["ports"] == report["ports"]
    assert again["runtime"] == proj.runtime
