"""Snapshots (template databases, near-instant) and dumps (pg_dump archives): what is saved comes
back exactly, a failed restore changes nothing, and nothing devenv sweeps ever drops a snapshot."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devenv.errors import ConfigError
from devenv.db.janitor import SCRATCH_PATTERN
from devenv.db.snapshots import database_name, validate_name

TASK_ID = "00000000-0000-4000-9000-000000000001"  # seeded task 01 (seeds/data/002_tasks.sql), in_progress


def _rows(proj: Any) -> tuple[list[tuple], list[tuple]]:
    """Every row of users and tasks, in id order: the data, compared whole."""
    with proj.connect() as conn:
        return (conn.execute("SELECT * FROM users ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM tasks ORDER BY id").fetchall())


def _counts(proj: Any) -> tuple[int, int]:
    users, tasks = _rows(proj)
    return len(users), len(tasks)


def _title(proj: Any, task_id: str = TASK_ID) -> str | None:
    with proj.connect() as conn:
        row = conn.execute("SELECT title FROM tasks WHERE id = %s", (task_id,)).fetchone()
    return row[0] if row else None


def _change(proj: Any, tag: str) -> None:
    """Delete, insert and update: every kind of change a restore must undo."""
    with proj.connect() as conn:
        conn.execute("SET synchronous_commit = on")  # the ci profile turns it off
        conn.execute("DELETE FROM tasks WHERE status = 'done'")
        conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, 'x')", (f"{tag}@taskflow.dev",))
        conn.execute("UPDATE tasks SET title = %s WHERE id = %s", (f"changed {tag}", TASK_ID))
        conn.commit()


def _databases(proj: Any, like: str) -> list[str]:
    with proj.connect() as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (like,))]


def _snapshot_list(proj: Any) -> list[dict[str, Any]]:
    return json.loads(proj.devenv("snapshot", "list", "--json").stdout)["snapshots"]


@pytest.fixture
def seeded_task_title(project: Any) -> str:
    project.devenv("up")
    title = _title(project)
    assert title, f"seeded task {TASK_ID} missing: the test's anchor row moved"
    return title


# ---- names: no database devenv sweeps can ever be a snapshot ------------------------------------


@pytest.mark.parametrize("name", ["before-migration", "v2", "a_b", "x" * 40, "new_123", "old_1_2", "building_9"])
def test_valid_names_never_look_like_scratch_or_template_databases(name: str) -> None:
    database = database_name("taskflow", name)
    assert re.search(SCRATCH_PATTERN, database) is None, "sweep() would drop it"
    assert not database.startswith("taskflow__tpl_"), "ensure_template() would drop it"


@pytest.mark.parametrize("name", ["", "Upper", "with space", "x" * 41, "a__b", "x__new_123", "semi;colon", "é",
                                  "_new_999999", "_old_1_2", "_restore_7"])  # `__snap_` + `_new_1` = `__new_1`
def test_invalid_names_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError):
        validate_name(name)


# ---- snapshots ----------------------------------------------------------------------------------


@pytest.mark.every_engine
def test_snapshot_restore_gives_the_saved_data(project: Any, seeded_task_title: str) -> None:
    _change(project, "kept")
    saved = _rows(project)
    result = project.devenv("snapshot", "save", "before")
    assert "saved snapshot before" in result.stderr

    _change(project, "lost")
    with project.connect() as conn:
        conn.execute("CREATE TABLE scratch (a int)")  # DDL too
        conn.commit()
    assert _rows(project) != saved

    result = project.devenv("snapshot", "restore", "before")
    assert "restored before" in result.stderr
    assert _rows(project) == saved
    assert _counts(project) == (9, len(saved[1]))
    assert _title(project) == "changed kept"
    with project.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE email = 'lost@taskflow.dev'").fetchone()[0] == 0
        assert conn.execute("SELECT to_regclass('scratch')").fetchone()[0] is None
    for _ in range(3):  # pooled clients reconnect to the restored database at once
        with project.connect(pooled=True, autocommit=True) as pooled:
            assert pooled.execute("SELECT count(*) FROM users").fetchone()[0] == 9

    # Restoring keeps the snapshot: a second restore gives the same data again.
    _change(project, "again")
    project.devenv("snapshot", "restore", "before")
    assert _rows(project) == saved
    # And `reset` still goes back to the seeded state.
    project.devenv("reset")
    assert _counts(project) == (8, 40) and _title(project) == seeded_task_title


def test_snapshot_save_holds_pooled_clients_and_they_reconnect(project: Any, seeded_task_title: str) -> None:
    import psycopg

    with project.connect(pooled=True, autocommit=True) as pooled, project.connect(autocommit=True) as direct:
        pooled.execute("SELECT 1")  # a server connection sits in PgBouncer's pool
        direct.execute("SELECT 1")  # an idle direct session on the working database
        project.devenv("snapshot", "save", "busy")
        with pytest.raises(psycopg.OperationalError):  # direct sessions are terminated (documented)
            direct.execute("SELECT 1")
    with project.connect(pooled=True, autocommit=True) as pooled:
        assert pooled.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    assert [s["name"] for s in _snapshot_list(project)] == ["busy"]


def test_snapshots_survive_down_and_up(project: Any) -> None:
    project.profile = "dev"  # ci's compose `tmpfs:` dies with its container
    project.devenv("up")
    _change(project, "saved")
    saved = _rows(project)
    project.devenv("snapshot", "save", "across-restart")
    project.devenv("down")
    project.devenv("up")
    assert [s["name"] for s in _snapshot_list(project)] == ["across-restart"]
    _change(project, "after")
    project.devenv("snapshot", "restore", "across-restart")
    assert _rows(project) == saved


def test_list_shows_name_size_and_time_and_rm_removes(project: Any, seeded_task_title: str) -> None:
    assert project.devenv("snapshot", "list").stdout == ""
    started = datetime.now().astimezone()
    project.devenv("snapshot", "save", "first")
    project.devenv("snapshot", "save", "second")

    table = project.devenv("snapshot", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "CREATED"]
    assert [line.split()[0] for line in table[1:]] == ["first", "second"]
    listed = _snapshot_list(project)
    assert [s["name"] for s in listed] == ["first", "second"]
    for snap in listed:
        assert snap["database"] == f"taskflow__snap_{snap['name']}"
        assert snap["size"] > 1_000_000  # a real database, not an empty one
        assert abs((datetime.fromisoformat(snap["created_at"]) - started).total_seconds()) < 120
    with project.connect() as conn:  # a template nobody connects to: it cannot change
        assert conn.execute("SELECT datistemplate, datallowconn FROM pg_database "
                            "WHERE datname = 'taskflow__snap_first'").fetchone() == (True, False)

    result = project.devenv("snapshot", "rm", "first")
    assert "removed snapshot first" in result.stderr
    assert [s["name"] for s in _snapshot_list(project)] == ["second"]
    assert _databases(project, "taskflow__snap_%") == ["taskflow__snap_second"]


def test_unknown_existing_and_invalid_names_are_clear_errors(project: Any, seeded_task_title: str) -> None:
    for command in ("restore", "rm"):
        result = project.devenv("snapshot", command, "nope", check=False)
        assert result.returncode == 8, result.stderr
        assert "error: no snapshot 'nope'" in result.stderr and "hint: " in result.stderr

    result = project.devenv("snapshot", "save", "Not/Valid", check=False)
    assert result.returncode == 3 and "invalid snapshot name" in result.stderr and "hint: " in result.stderr

    project.devenv("snapshot", "save", "dup")
    _change(project, "newer")
    result = project.devenv("snapshot", "save", "dup", check=False)
    assert result.returncode == 8 and "already exists" in result.stderr and "--force" in result.stderr
    project.devenv("snapshot", "save", "dup", "--force")
    project.devenv("reset")
    project.devenv("snapshot", "restore", "dup")
    assert _title(project) == "changed newer", "--force saved the newer data"
    assert _databases(project, "taskflow__snapshot%") == [], "no scratch database left behind"


def test_template_rebuild_and_sweep_never_drop_snapshots(project: Any) -> None:
    project.profile = "dev"  # the data must outlive `down` on every runtime
    project.devenv("up")
    project.devenv("snapshot", "save", "new_1")  # looks like a scratch suffix, but is not one
    project.devenv("snapshot", "save", "keep")
    (project.root / "seeds" / "data" / "003_more.sql").write_text(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES "
        "('00000000-0000-4000-8000-0000000000a1', 'ivan@taskflow.dev', 'x', '2025-01-01');\n")
    project.devenv("reset")  # a new template: the stale ones are dropped
    project.devenv("reset", "--hard")
    project.devenv("down")
    project.devenv("up")  # sweeps scratch databases of dead processes
    assert [s["name"] for s in _snapshot_list(project)] == ["new_1", "keep"]
    project.devenv("snapshot", "restore", "keep")
    assert _counts(project) == (8, 40), "the snapshot predates the new seed file"


# ---- dump and restore ---------------------------------------------------------------------------


@pytest.mark.every_engine
def test_dump_down_volumes_up_restore_gives_the_same_rows(project: Any, seeded_task_title: str) -> None:
    _change(project, "dumped")
    dumped = _rows(project)
    result = project.devenv("dump")
    path = Path(result.stdout.strip())
    assert path.parent == project.root / ".devenv" / "dumps" and path.name.startswith("ci-")
    assert path.read_bytes()[:5] == b"PGDMP"
    assert re.search(r"dump: \d+ bytes in [\d.]+s", result.stderr), result.stderr

    project.devenv("down", "--volumes")
    project.devenv("up")
    assert _rows(project) != dumped and _counts(project) == (8, 40)

    result = project.devenv("restore", str(path), "--yes")
    assert "restored from" in result.stderr
    assert _rows(project) == dumped
    with project.connect(pooled=True, autocommit=True) as pooled:
        assert pooled.execute("SELECT title FROM tasks WHERE id = %s", (TASK_ID,)).fetchone()[0] == "changed dumped"
    assert _databases(project, "taskflow__restore_%") == []
    project.devenv("reset")  # the restored database resets like any other
    assert _counts(project) == (8, 40)


def test_failed_restore_leaves_the_data_in_place(project: Any, seeded_task_title: str, tmp_path: Path) -> None:
    good = tmp_path / "good.dump"
    project.devenv("dump", str(good))
    _change(project, "current")
    current = _rows(project)

    truncated = tmp_path / "truncated.dump"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_a_dump = tmp_path / "plain.sql"
    not_a_dump.write_text("DROP TABLE tasks;\n")
    corrupt = bytearray(good.read_bytes())
    corrupt[len(corrupt) // 3:] = bytes(len(corrupt) - len(corrupt) // 3)  # zeroed from a third on
    corrupted = tmp_path / "corrupt.dump"
    corrupted.write_bytes(bytes(corrupt))
    expected = {truncated: "is as it was", corrupted: "is as it was", not_a_dump: "not a pg_dump custom-format archive"}
    for bad, message in expected.items():
        result = project.devenv("restore", str(bad), "--yes", check=False)
        assert result.returncode == 7, result.stderr
        assert result.stderr.count("error: ") == 1 and message in result.stderr
        assert "hint: " in result.stderr
        assert _rows(project) == current, f"{bad.name}: the previous data must stay"
    assert _databases(project, "taskflow__restore_%") == [], "the scratch database is dropped"

    project.devenv("restore", str(good), "--yes")  # the good one still works afterwards
    assert _counts(project) == (8, 40) and _title(project) == seeded_task_title


def test_restore_without_yes_refuses_when_stdin_is_not_a_terminal(project: Any, seeded_task_title: str,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "x.dump"
    project.devenv("dump", str(path))
    _change(project, "current")
    current = _rows(project)
    result = project.devenv("restore", str(path), check=False, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "--yes" in result.stderr and "not a terminal" in result.stderr
    assert _rows(project) == current


def test_dump_to_stdout_is_a_valid_archive(project: Any, seeded_task_title: str, tmp_path: Path) -> None:
    _change(project, "streamed")
    streamed = _rows(project)
    argv = [sys.executable, "-m", "devenv", "dump", "-", "--profile", project.profile]
    result = subprocess.run(argv, cwd=project.root, env=project.env, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b"PGDMP")
    assert f"dump: {len(result.stdout)} bytes in".encode() in result.stderr
    path = tmp_path / "streamed.dump"
    path.write_bytes(result.stdout)
    project.devenv("reset")
    project.devenv("restore", str(path), "--yes")
    assert _rows(project) == streamed


def test_dump_writes_through_a_fifo_and_a_device_and_never_replaces_them(project: Any, seeded_task_title: str,
                                                                      tmp_path: Path) -> None:
    """A FIFO and a character device are written into and stay what they were (a dump once
    replaced a machine's /dev/null with a regular file); a symlink is refused, its target untouched;
    a `.partial` link planted beside FILE is never written through."""
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    project.devenv("dump", str(fifo))
    reader.join(60)
    assert received and received[0].startswith(b"PGDMP"), "the archive went through the FIFO"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO is still a FIFO"

    if os.geteuid() == 0:  # a null device of our own (mknod needs root), not the machine's
        null = tmp_path / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        project.devenv("dump", str(null))
        assert stat.S_ISCHR(os.lstat(null).st_mode), "the device is still a device"

    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "link.dump"
    link.symlink_to(victim)
    refused = project.devenv("dump", str(link), check=False)
    assert refused.returncode == 2, refused.stderr
    assert "is a symbolic link" in refused.stderr and "hint: " in refused.stderr and "Traceback" not in refused.stderr
    assert link.is_symlink() and victim.read_text() == "keep me\n"

    target = tmp_path / "x.dump"
    (tmp_path / "x.dump.partial").symlink_to(victim)  # where the old code wrote, following links
    project.devenv("dump", str(target))
    assert target.read_bytes().startswith(b"PGDMP") and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert victim.read_text() == "keep me\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial") and not p.is_symlink()] == []
