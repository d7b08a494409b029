"""Generated secrets: created once, even by processes that start together (two `devenv up`s)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize  # noqa: F401  (the Barrier annotation)
from pathlib import Path

from devenv.config.secrets import SECRET_NAMES, load_or_create_secrets


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
