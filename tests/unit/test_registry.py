"""The machine's registry of stacks (devenv.registry): records, their trust, the lock."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from devenv import registry


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "registry"
    monkeypatch.setenv("DEVENV_REGISTRY_DIR", str(directory))
    return directory


def entry(checkout: Path, profile: str = "dev", **ports: int) -> registry.Entry:
    checkout.mkdir(parents=True, exist_ok=True)
    (checkout / "devenv.yaml").write_text("project: taskflow\n")
    return registry.Entry(checkout=str(checkout), config=str(checkout / "devenv.yaml"), project="taskflow",
                          profile=profile, runtime="native", name="taskflow-dev", ports=dict(ports))


def test_a_record_round_trips_private_and_one_per_checkout_and_profile(reg: Path, tmp_path: Path) -> None:
    first = entry(tmp_path / "a", postgres=5432)
    registry.record(first)
    registry.record(entry(tmp_path / "a", postgres=5433))  # renewed, not added
    registry.record(entry(tmp_path / "a", profile="ci", postgres=5434))
    registry.record(entry(tmp_path / "b", postgres=5435))
    found = registry.entries()
    assert [(Path(e.checkout).name, e.profile, e.ports["postgres"]) for e in found] == [
        ("a", "ci", 5434), ("a", "dev", 5433), ("b", "dev", 5435)]
    assert registry.find(tmp_path / "a", "dev").ports == {"postgres": 5433}
    assert registry.find(tmp_path / "a", "prod") is None
    assert oct(os.stat(reg).st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in reg.glob("*.json"))


def test_checkout_ids_are_stable_short_and_differ_by_path(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    ida = registry.checkout_id(tmp_path / "a")
    assert len(ida) == 6 and ida == registry.checkout_id(tmp_path / "link")
    assert ida != registry.checkout_id(tmp_path / "b")


def test_a_stack_whose_checkout_is_gone_is_orphaned(reg: Path, tmp_path: Path) -> None:
    gone = entry(tmp_path / "gone")
    registry.record(gone)
    assert not registry.entries()[0].orphaned
    import shutil

    shutil.rmtree(tmp_path / "gone")
    assert registry.entries()[0].orphaned
    registry.forget(gone)
    assert registry.entries() == []


def test_records_of_another_shape_or_not_ours_alone_are_ignored(reg: Path, tmp_path: Path) -> None:
    registry.record(entry(tmp_path / "a"))
    (reg / "junk.json").write_text("[1, 2]")
    (reg / "other.json").write_text(json.dumps({"checkout": "/x", "surprise": 1}))
    (reg / "ports.json").write_text(json.dumps(dict(json.loads((reg / f"{registry.entries()[0].key}.json").read_text()),
                                                    ports={"postgres": "5432"})))
    shared = reg / "shared.json"
    shared.write_text((reg / f"{registry.entries()[0].key}.json").read_text())
    os.chmod(shared, 0o666)  # others could have written it
    assert [Path(e.checkout).name for e in registry.entries()] == ["a"]


def test_the_lock_lets_one_holder_in_at_a_time(reg: Path) -> None:
    inside: list[int] = []
    overlaps: list[int] = []

    def hold(n: int) -> None:
        with registry.locked():
            if inside:
                overlaps.append(n)
            inside.append(n)
            time.sleep(0.05)
            inside.remove(n)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


def test_the_lock_gives_up_with_an_error_naming_it(reg: Path) -> None:
    from devenv.errors import StateError

    with registry.locked():
        done: list[BaseException] = []

        def wait() -> None:
            try:
                with registry.locked(timeout=0.1):
                    pass
            except StateError as exc:
                done.append(exc)

        t = threading.Thread(target=wait)
        t.start()
        t.join()
    assert done and ".lock" in str(done[0])
