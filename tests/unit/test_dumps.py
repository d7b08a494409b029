"""What `devenv dump` may do with its FILE, decided from lstat alone (no server)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from devenv.db.dumps import destination_kind
from devenv.errors import UsageError


def test_new_and_regular_files_are_written_whole(tmp_path: Path) -> None:
    assert destination_kind(tmp_path / "new.dump") == "new"
    (tmp_path / "old.dump").write_bytes(b"x")
    assert destination_kind(tmp_path / "old.dump") == "file"


def test_fifos_and_character_devices_are_written_through(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert destination_kind(tmp_path / "pipe") == "fifo"
    assert destination_kind(Path("/dev/null")) == "character device"


@pytest.mark.parametrize("what", ["link to a file", "dangling link", "directory", "socket"])
def test_anything_else_is_refused_with_a_usage_error(tmp_path: Path, what: str) -> None:
    path = tmp_path / "target"
    if what == "link to a file":
        (tmp_path / "real").write_text("x")
        path.symlink_to(tmp_path / "real")
    elif what == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    elif what == "directory":
        path.mkdir()
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    with pytest.raises(UsageError) as caught:
        destination_kind(path)
    assert caught.value.exit_code == 2 and str(path) in caught.value.message and caught.value.hint
