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


def _good(checkout: Path) -> dict:
    return {"checkout": str(checkout), "config": f"{checkout}/devenv.yaml", "project": "taskflow", "profile": "dev",
            "runtime": "native", "name": "taskflow-dev", "ports": {"postgres": 5432}, "data": [], "volumes": [],
            "updated": 1.5}


@pytest.mark.parametrize("change", [
    {"checkout": 123}, {"checkout": None}, {"checkout": ""}, {"checkout": "relative/path"}, {"checkout": "/a/../b"},
    {"profile": 5}, {"profile": "../x"}, {"runtime": "podman"}, {"data": [1, None]}, {"data": None}, {"data": "/usr"},
    {"volumes": {"a": 1}}, {"ports": {"postgres": True}}, {"ports": {"postgres": 70000}}, {"ports": []},
    {"updated": "yesterday"}, {"name": ["x"]}, {"config": None},
])
def test_a_record_with_a_field_of_the_wrong_type_is_skipped_and_the_rest_listed(reg: Path, tmp_path: Path,
                                                                               change: dict) -> None:
    registry.record(entry(tmp_path / "a"))
    (reg / "bad.json").write_text(json.dumps({**_good(tmp_path / "b"), **change}))
    skipped: list[str] = []
    assert [Path(e.checkout).name for e in registry.entries(skipped)] == ["a"]
    assert skipped == ["bad.json"]


def test_a_record_with_more_keys_is_kept_and_one_nested_deep_is_skipped(reg: Path, tmp_path: Path) -> None:
    (reg).mkdir()
    (reg / "newer.json").write_text(json.dumps({**_good(tmp_path / "b"), "surprise": {"from": "a newer devenv"}}))
    (reg / "deep.json").write_text("[" * 500_000 + "]" * 500_000)
    (reg / "deep2.json").write_text('{"a":' * 200_000 + "1" + "}" * 200_000)
    skipped: list[str] = []
    found = registry.entries(skipped)
    assert [(Path(e.checkout).name, e.ports) for e in found] == [("b", {"postgres": 5432})]
    assert sorted(skipped) == ["deep.json", "deep2.json"]


def test_forget_removes_the_file_a_record_was_read_from_whatever_it_says(reg: Path, tmp_path: Path) -> None:
    reg.mkdir()
    (reg / "000000-dev.json").write_text(json.dumps(_good(tmp_path / "gone")))  # not its key's name
    found, = registry.entries()
    assert found.source == reg / "000000-dev.json"
    registry.forget(found)
    assert registry.entries() == [] and not (reg / "000000-dev.json").exists()


def test_forget_checkout_removes_a_checkouts_record_of_one_profile(reg: Path, tmp_path: Path) -> None:
    registry.record(entry(tmp_path / "a"))
    registry.record(entry(tmp_path / "a", profile="ci"))
    registry.forget_checkout(tmp_path / "a", "dev")
    assert [e.profile for e in registry.entries()] == ["ci"]
    registry.forget_checkout(tmp_path / "a", "dev")  # none: nothing to do


def test_an_empty_or_relative_checkout_is_never_orphaned() -> None:
    for checkout in ("", "relative"):
        assert not registry.Entry(checkout, "", "p", "dev", "native", "p-dev").orphaned
