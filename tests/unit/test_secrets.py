"""Generated secrets: created once, even by processes that start together (two `devenv up`s)."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize  # noqa: F401  (the Barrier annotation)
import os
from pathlib import Path
from typing import Any

import pytest

from devenv.config.secrets import SECRET_NAMES, load_or_create_secrets, read_secrets
from devenv.errors import StateError


def _create(root: str, start: "multiprocessing.synchronize.Barrier", queue: "multiprocessing.Queue[object]") -> None:
    start.wait()  # all at once, as two `devenv up`s typed together
    try:
        queue.put(load_or_create_secrets(Path(root)))
    except Exception as exc:  # reported to the test, not lost in a child's stderr
        queue.put(repr(exc))


def test_processes_racing_on_a_new_checkout_all_get_the_same_passwords(tmp_path: Path) -> None:
    for attempt in range(20):
        root = tmp_path / str(attempt)
        queue: multiprocessing.Queue[object] = multiprocessing.Queue()
        start = multiprocessing.Barrier(6)
        workers = [multiprocessing.Process(target=_create, args=(str(root), start, queue)) for _ in range(6)]
        for worker in workers:
            worker.start()
        results = [queue.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join()
        assert all(result == results[0] for result in results), f"one set of passwords for all: {results}"
        assert isinstance(results[0], dict) and set(results[0]) == set(SECRET_NAMES)
        assert [p.name for p in root.iterdir()] == ["secrets.json"], "no temporary file left behind"
        assert (root / "secrets.json").stat().st_mode & 0o077 == 0


def test_a_missing_name_is_added_and_the_others_kept(tmp_path: Path) -> None:
    first = load_or_create_secrets(tmp_path)
    (tmp_path / "secrets.json").write_text('{"postgres_password": "%s"}' % first["postgres_password"])
    again = load_or_create_secrets(tmp_path)
    assert again["postgres_password"] == first["postgres_password"]
    assert set(again) == set(SECRET_NAMES) and all(again.values())


# ---- a hand-edited or damaged secrets.json (issue 15, class 12) ------------------------------


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b'["postgres_password"]', "found a list"),
        (b"42", "found a int"),
        (b'{"postgres_password": 5}', "'postgres_password' is a int"),
        (b'{"redis_password": {"a": 1}}', "'redis_password' is a dict"),
        (b'{"redis_password": null}', "'redis_password' is a NoneType"),
        (b'{"redis_password": "pw\\nrequirepass \\"\\""}', "'redis_password' holds characters"),
        (b'{"postgres_password": "a b"}', "'postgres_password' holds characters"),
    ],
)
def test_a_bad_file_is_a_state_error_naming_what_is_wrong_with_a_data_keeping_hint(
    tmp_path: Path, content: bytes, named: str
) -> None:
    (tmp_path / "secrets.json").write_bytes(content)
    with pytest.raises(StateError) as caught:
        load_or_create_secrets(tmp_path)
    assert named in caught.value.message
    hint = caught.value.hint or ""
    assert "--volumes" not in hint and "devenv up" in hint and "keeping your data" in hint
    assert (tmp_path / "secrets.json").read_bytes() == content, "the file is left for the user to look at"


def test_unknown_names_are_kept_and_known_ones_added(tmp_path: Path) -> None:
    """Another devenv version may add a name (e.g. an admin role's password): kept as it is."""
    (tmp_path / "secrets.json").write_text('{"postgres_admin_password": "kept-as-is", "redis_password": ""}')
    got = load_or_create_secrets(tmp_path)
    assert got["postgres_admin_password"] == "kept-as-is"
    assert set(SECRET_NAMES) <= set(got) and all(got[name] for name in SECRET_NAMES)
    assert json.loads((tmp_path / "secrets.json").read_text()) == got


def test_an_empty_object_is_filled_in(tmp_path: Path) -> None:
    """`{}` (every name missing from an existing file) once recursed without end."""
    (tmp_path / "secrets.json").write_text("{}")
    got = load_or_create_secrets(tmp_path)
    assert set(got) == set(SECRET_NAMES) and read_secrets(tmp_path / "secrets.json") == got


def test_down_works_and_other_commands_explain_with_a_bad_file(project: Path, run_devenv: Any) -> None:
    (project / ".devenv" / "secrets.json").write_text('{"postgres_password": 5}')
    render = run_devenv("render")
    assert render.returncode == 8 and "Traceback" not in render.stderr, render.stderr
    assert render.stderr.startswith("error: ") and "'postgres_password' is a int" in render.stderr
    assert "\nhint: " in render.stderr and "--volumes" not in render.stderr
    down = run_devenv("down", "--runtime", "native")
    assert down.returncode == 0, down.stderr
    assert not (project / ".devenv" / "dev" / "stack.json").exists(), "no Stack without passwords is kept"


def test_a_fifo_in_place_of_the_file_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A FIFO blocked every command (`down` too) until someone wrote to it."""
    os.mkfifo(tmp_path / "secrets.json")
    with pytest.raises(StateError) as caught:
        load_or_create_secrets(tmp_path)
    assert "not a regular file" in caught.value.message and "devenv up" in (caught.value.hint or "")
