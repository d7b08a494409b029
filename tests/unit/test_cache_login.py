"""The one-time login's sidecar (found by an adversarial pass, adv19b) is written only once its
archive is whole (dockerdata.save_volume): a save that fails leaves no .login without an
archive, and one that fails to replace an archive leaves the old archive paired with its own
login (else every cold `up` from it would be refused and fall back to `docker exec`). The save
itself is replaced by one that fails (the order is what is tested, not the save)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from devenv.db import cache
from devenv.runtime import dockerdata, plan


def test_a_failed_save_leaves_no_login_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_CACHE_DIR", str(tmp_path / "cache"))

    def failing_save(stack: object, local: Path, key: str, login: str) -> Path:
        raise OSError("tar failed")  # e.g. the disk filled, or zstd died

    monkeypatch.setattr(plan, "save_live", failing_save)
    with pytest.raises(OSError):
        dockerdata.save_volume(None, SimpleNamespace(), None, "0123456789abcdef", tmp_path, restart=lambda: None)  # type: ignore[arg-type]
    archive = cache.archive_path("0123456789abcdef")
    assert not archive.exists()
    assert not cache.login_path(archive).exists(), "the one-time password outlives the save that failed"


def test_a_second_save_that_fails_keeps_the_archive_and_its_own_login_paired(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_CACHE_DIR", str(tmp_path / "cache"))
    archive = cache.archive_path("0123456789abcdef")
    first = cache.new_login()  # the first save's password, in the archive that landed
    cache.write_login(archive, first)
    archive.write_bytes(b"archive holding devenv_restore with the first password")

    def failing_save(stack: object, local: Path, key: str, login: str) -> Path:
        raise OSError("tar failed")

    monkeypatch.setattr(plan, "save_live", failing_save)
    with pytest.raises(OSError):
        dockerdata.save_volume(None, SimpleNamespace(), None, "0123456789abcdef", tmp_path, restart=lambda: None)  # type: ignore[arg-type]
    assert cache.read_login(archive) == first, "the archive in place no longer matches its login: cold ups fall back to exec"
