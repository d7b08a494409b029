"""Pure logic of issue 15's fault classes: pause notes and their owners (15), the adopted state
entry (16), the port check for the servers' user (17). No servers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from devenv.errors import ConfigError
from devenv.runtime import ports
from devenv.state import clear_pause, note_pause, pause_notes


def test_a_pause_note_names_this_process_as_a_living_owner_and_is_private(tmp_path: Path) -> None:
    path = note_pause(tmp_path, "taskflow")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pause_notes(tmp_path) == [(path, "taskflow", os.getpid(), True)]
    clear_pause(path)
    assert pause_notes(tmp_path) == []


def test_a_note_whose_owner_is_gone_or_whose_pid_was_reused_has_no_living_owner(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    directory = tmp_path / "paused"
    directory.mkdir()
    (directory / "a.json").write_text(json.dumps({"database": "db_a", "pid": dead_pid, "start": 1}))
    # This very pid, but started at another time: a later process given a killed owner's pid.
    (directory / "b.json").write_text(json.dumps({"database": "db_b", "pid": os.getpid(), "start": 1}))
    found = {database: alive for _, database, _, alive in pause_notes(tmp_path)}
    assert found == {"db_a": False, "db_b": False}


def test_a_half_written_note_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "paused").mkdir()
    (tmp_path / "paused" / "x.json").write_text("")  # killed before it wrote: it paused nothing yet
    assert pause_notes(tmp_path) == []
    assert not list((tmp_path / "paused").iterdir())


def test_no_notes_costs_nothing_and_finds_nothing(tmp_path: Path) -> None:
    assert pause_notes(tmp_path / "missing") == []


def _stack(**ports_by_service: int) -> SimpleNamespace:
    return SimpleNamespace(**{name: SimpleNamespace(port=port) for name, port in ports_by_service.items()})


def test_a_port_below_the_unprivileged_start_is_a_config_error_when_the_servers_run_unprivileged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "unprivileged_port_start", lambda: 1024)
    with pytest.raises(ConfigError) as caught:
        ports.check_ports_free(_stack(postgres=80), ["postgres"], run_user="postgres")  # type: ignore[arg-type]
    assert caught.value.exit_code == 3
    assert "port 80 for postgres" in caught.value.message and "'postgres'" in caught.value.message
    assert "DEVENV_POSTGRES_PORT" in (caught.value.hint or "")


def test_a_machine_that_lets_everyone_bind_low_ports_is_believed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "unprivileged_port_start", lambda: 0)
    if os.geteuid() != 0:
        pytest.skip("binding port 1000 needs root here")
    ports.check_ports_free(_stack(redis=1000), ["redis"], run_user="postgres")  # type: ignore[arg-type]


def test_the_adopted_entry_is_current_only_when_the_files_on_disk_are_what_up_renders(tmp_path: Path) -> None:
    from devenv.runtime.plan import adopted_entry

    stack = SimpleNamespace(redis=SimpleNamespace(port=6400, settings={"maxmemory": "1mb"}))
    (tmp_path / "redis.conf").write_text("port 6400\n")
    notes: list[str] = []
    same = adopted_entry(stack, "redis", 42, tmp_path, {"redis.conf": "port 6400\n"}, "h1", notes)  # type: ignore[arg-type]
    assert same == {"pid": 42, "hash": "h1", "port": 6400, "settings": {"maxmemory": "1mb"}}
    changed = adopted_entry(stack, "redis", 42, tmp_path, {"redis.conf": "port 6401\n"}, "h2", notes)  # type: ignore[arg-type]
    assert changed["hash"] == "" and changed["pid"] == 42
    assert "adopted" in notes[0] and "restarting" in notes[1]
