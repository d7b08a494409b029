"""What killed commands leave, and what a reset must put back exactly (issue 15, class 18):
scratch databases swept by the next `up`, a restore as exact as a clone (large objects,
ALTER DATABASE ... SET), and a seed file that is not UTF-8 named in the error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A child that dies by SIGKILL at one point of a real clone (Janitor's own code up to there):
# "new": the copy `<db>__new_<pid>` is built, not yet swapped in; "old": the swap is done, the
# old database `<db>__old_<pid>_0` not yet dropped.
_KILLED_CLONE = """
import os, signal, sys
from pathlib import Path
from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.db.janitor import Janitor

stack = build_stack(load_config(Path("devenv.yaml").resolve(), env=dict(os.environ)), sys.argv[1])
janitor = Janitor(stack)
template = janitor.ensure_template()
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "new":
    janitor.swap_in = die
else:
    janitor._drop_later = die
janitor.clone(stack.postgres.database, template)
"""


def _scratch(proj) -> list[str]:
    from devenv.db.janitor import SCRATCH_PATTERN

    with proj.connect(dbname="postgres") as conn:
        return [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname ~ %s ORDER BY 1", (SCRATCH_PATTERN,))]


@pytest.mark.parametrize("kill_point", ["new", "old"])
def test_the_next_up_sweeps_a_killed_commands_scratch_databases_and_says_so(project, kill_point: str) -> None:
    proj = project
    proj.devenv("up")
    assert "nothing to do" in proj.devenv("up").stderr
    child = subprocess.run([sys.executable, "-c", _KILLED_CLONE, proj.profile, kill_point], cwd=proj.root,
                           env=proj.env, capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr
    litter = _scratch(proj)
    assert len(litter) == 1 and f"__{kill_point}_" in litter[0], litter
    up = proj.devenv("up")
    assert "nothing to do" not in up.stderr, "the no-op `up` must notice a killed command's litter"
    assert f"swept 1 scratch database(s) left by killed commands: {litter[0]}" in up.stderr, up.stderr
    assert _scratch(proj) == []
    with proj.connect() as conn:  # the working database is whole
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    assert "nothing to do" in proj.devenv("up").stderr, "once swept, the no-op `up` is a no-op again"


def _extras(proj) -> dict[str, object]:
    """What a clone drops besides the tables: large objects and database-level settings, as a
    new session sees them."""
    with proj.connect() as conn:
        return {
            "large objects": conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0],
            "settings": conn.execute(
                "SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "WHERE d.datname = current_database()").fetchone()[0],
            "work_mem": conn.execute("SHOW work_mem").fetchone()[0],
            "statement_timeout": conn.execute("SHOW statement_timeout").fetchone()[0],
        }


def _litter_extras(proj) -> None:
    with proj.connect(autocommit=True) as conn:
        conn.execute("SELECT lo_from_bytea(0, 'written by a test')")
        conn.execute("ALTER DATABASE taskflow SET work_mem = '77MB'")
        conn.execute("ALTER ROLE CURRENT_USER IN DATABASE taskflow SET statement_timeout = '5s'")
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('extras@x', 'x')")


def test_a_restore_puts_back_exactly_what_a_clone_would(project) -> None:
    """Large objects and ALTER DATABASE / ALTER ROLE ... IN DATABASE settings: a clone drops
    them; the in-place restore (and the pooled sessions after it) must not keep them."""
    proj = project
    proj.devenv("up")
    seeded = _extras(proj)
    assert seeded == {"large objects": 0, "settings": 0, "work_mem": "4MB", "statement_timeout": "0"}
    for strategy in ("clone", "restore", "auto"):
        _litter_extras(proj)
        assert _extras(proj) != seeded
        result = proj.devenv("reset", "--strategy", strategy)
        ran = "clone" if strategy == "clone" else "restore, by key"  # the insert went into the key log
        assert f"reset taskflow ({ran})" in result.stderr, result.stderr
        assert _extras(proj) == seeded, f"--strategy {strategy}"
        with proj.connect(pooled=True) as pooled:
            assert pooled.execute("SHOW work_mem").fetchone()[0] == "4MB", f"--strategy {strategy}: pooled"
        with proj.connect() as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 8


def test_a_template_with_large_objects_resets_by_clone_and_says_so(project) -> None:
    """A restore cannot see changes inside the seed's own large objects: it falls back to a
    clone, and the summary names the clone."""
    proj = project
    (proj.root / "seeds" / "data" / "900_large_object.sql").write_text(
        "SELECT lo_from_bytea(424242, 'seeded');\n")
    proj.devenv("up")
    with proj.connect(autocommit=True) as conn:
        conn.execute("SELECT lo_put(424242, 0, 'changed')")
        assert conn.execute("SELECT convert_from(lo_get(424242), 'UTF8')").fetchone()[0] == "changed"
    result = proj.devenv("reset", "--strategy", "restore")
    assert "reset taskflow (clone)" in result.stderr, result.stderr
    with proj.connect() as conn:
        assert conn.execute("SELECT convert_from(lo_get(424242), 'UTF8')").fetchone()[0] == "seeded"


@pytest.mark.parametrize("when", ["first up", "later up"])
def test_a_seed_file_that_is_not_utf8_is_named_with_exit_7(project, when: str) -> None:
    """A Latin-1 seed file: `error:` naming the file and line, a `hint:`, exit 7 (SchemaError),
    no internal error; the data that was there is kept."""
    proj = project
    bad = proj.root / "seeds" / "data" / "900_latin1.sql"
    if when == "later up":
        proj.devenv("up")
    bad.write_bytes(b"-- Stra\xdfe\nINSERT INTO users (email, password_hash) VALUES ('m\xfcller@x', 'x');\n")
    result = proj.devenv("up", check=False)
    assert result.returncode == 7, result.stderr
    assert f"error: {bad}:1: not UTF-8 text (byte 0xdf at column 8)" in result.stderr, result.stderr
    assert "hint: save the file as UTF-8" in result.stderr and "internal error" not in result.stderr
    if when == "later up":
        with proj.connect() as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 8
    bad.write_bytes(bad.read_bytes().decode("latin-1").encode("utf-8"))
    proj.devenv("up")
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE email = 'müller@x'").fetchone()[0] == 1


@pytest.mark.native_only(reason="what is checked is the seed files on the host, before either runtime uses them")
@pytest.mark.parametrize("case", ["name not UTF-8", "NUL byte", "FIFO"])
def test_a_seed_file_devenv_cannot_apply_exactly_is_named_with_exit_7(project, case: str) -> None:
    """A file name that is not UTF-8 (an internal error in the no-op check before), a NUL byte
    (the server would silently ignore what follows it), a FIFO (it blocked `up` for ever): each
    is exit 7 naming the file, with a hint, fast, and the data that was there is kept."""
    import os

    proj = project
    proj.devenv("up")
    data = proj.root / "seeds" / "data"
    if case == "name not UTF-8":
        bad = Path(os.fsdecode(bytes(data) + b"/900_\xff.sql"))
        bad.write_bytes(b"SELECT 1;\n")
        expected = "the file name is not UTF-8"
    elif case == "NUL byte":
        bad = data / "900_nul.sql"
        bad.write_bytes(b"SELECT 1;\0SELECT no_such_function();\n")
        expected = f"{bad}:1: a NUL byte"
    else:
        bad = data / "900_fifo.sql"
        os.mkfifo(bad)
        expected = f"{bad}: not a regular file"
    result = proj.devenv("up", check=False, timeout=60)
    assert result.returncode == 7, result.stderr
    assert expected in result.stderr and "hint:" in result.stderr, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    bad.unlink()
    proj.devenv("up")
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 8


def test_a_seed_file_with_a_byte_order_mark_applies(project) -> None:
    """Editors on Windows write a UTF-8 byte-order mark; it is not SQL, and the file applies."""
    proj = project
    (proj.root / "seeds" / "data" / "900_bom.sql").write_bytes(
        "\ufeffINSERT INTO users (email, password_hash) VALUES ('bom@x', 'x');\n".encode())
    proj.devenv("up")
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE email = 'bom@x'").fetchone()[0] == 1
