"""What both runtimes decide the same way (devenv.runtime.plan): reload or restart, the render key,
the note of the superuser's password, the shared names."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from devenv.render import compose_placement
from devenv.runtime.plan import (
    PROGRAMS,
    RUNTIME_NAMES,
    changed_settings,
    conf_values,
    has_password,
    password_note_path,
    reload_suffices,
    remember_password,
    render_key,
)
from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.config.stack import SERVICES
from devenv.state import note_password

# ---- reload or restart ---------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "reload"), [
    ({"work_mem": "4MB"}, {"work_mem": "4MB"}, True),  # nothing changed (e.g. only pg_hba.conf): a reload
    ({"work_mem": "4MB"}, {"work_mem": "8MB"}, True),  # user
    ({}, {"checkpoint_timeout": "10min"}, True),  # sighup, added
    ({"log_min_duration_statement": "250ms"}, {}, True),  # superuser, removed
    ({"shared_buffers": "128MB"}, {"shared_buffers": "256MB"}, False),  # postmaster
    ({"work_mem": "4MB", "max_connections": "100"}, {"work_mem": "8MB", "max_connections": "200"}, False),
    ({}, {"no_such_setting": "1"}, False),  # unknown to the catalogue: the safe side
], ids=["unchanged", "user", "sighup-added", "superuser-removed", "postmaster", "one-of-two-postmaster", "unknown"])
def test_reload_only_when_every_changed_setting_allows_it(old: dict[str, str], new: dict[str, str], reload: bool) -> None:
    assert reload_suffices(old, new, 16) is reload


def test_changed_settings_are_added_removed_or_different() -> None:
    assert changed_settings({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "9", "d": "4"}) == {"b", "c", "d"}


def test_conf_values_reads_setting_lines_and_skips_comments() -> None:
    text = "# a comment\nshared_buffers = 128MB\n  Work_Mem='4MB'  \nlisten_addresses '*'\n#port = 5433\nempty =\n"
    assert conf_values(text) == {"shared_buffers": "128MB", "work_mem": "'4MB'", "listen_addresses": "'*'"}


def test_a_postgresql_conf_change_reloads_as_the_settings_would() -> None:
    """Docker decides from the rendered postgresql.conf, native from the settings: the same answer."""
    before = "work_mem = 4MB\nshared_buffers = 128MB\n"
    assert reload_suffices(conf_values(before), conf_values(before.replace("4MB", "8MB")), 16)
    assert not reload_suffices(conf_values(before), conf_values(before.replace("128MB", "256MB")), 16)


# ---- the render key -------------------------------------------------------------------------------


def test_the_render_key_follows_the_model_the_placement_and_the_templates(project: Path) -> None:
    config = load_config(project / "devenv.yaml", {})
    dev, prod = build_stack(config, "dev"), build_stack(config, "prod")
    key = render_key(dev, compose_placement(dev))
    assert key == render_key(build_stack(config, "dev"), compose_placement(dev)), "stable"
    assert key != render_key(prod, compose_placement(prod))
    assert key != render_key(dev, dataclasses.replace(compose_placement(dev), target="native"))
    (project / "redis.conf.j2").write_text("# the project's own template\n")  # found before devenv's
    assert key != render_key(dev, compose_placement(dev))


# ---- the superuser's password ----------------------------------------------------------------------


def test_the_password_note_beside_a_data_directory_or_in_the_state_directory(project: Path, tmp_path: Path) -> None:
    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    pgdata = tmp_path / "data" / "postgres"
    assert password_note_path(stack, pgdata) == tmp_path / "data" / "postgres.password-sha256"
    assert password_note_path(stack) == stack.state_dir / "docker-volume-password"
    note = password_note_path(stack, pgdata)
    assert not has_password(note, stack), "no note: the password is set again"
    remember_password(note, stack)
    assert has_password(note, stack)
    note_password(note, "another checkout's secret")
    assert not has_password(note, stack)


# ---- names ------------------------------------------------------------------------------------------


def test_the_shared_names() -> None:
    assert SERVICES == ("postgres", "pgbouncer", "redis")
    assert set(PROGRAMS) == set(SERVICES) and PROGRAMS["redis"] == "redis-server"
    assert RUNTIME_NAMES == ("auto", "native", "docker", "podman")


def test_plan_loads_nothing_heavy() -> None:
    """devenv.cli imports it for the runtime names on every command, `--help` included."""
    probe = ("import json, sys; import devenv.runtime.plan; "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('devenv') or m == 'dataclasses')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["devenv", "devenv.errors", "devenv.runtime", "devenv.runtime.plan"]
