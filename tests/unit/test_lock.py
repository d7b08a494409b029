"""devenv.state.locked: the profile's lock every reset, `up` and `down` takes (no servers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import devenv
from devenv.state import locked

_HOLD = """
import sys, time
from pathlib import Path
from devenv.state import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(0.5)
"""


def test_the_note_names_the_holder_and_nothing_of_a_longer_one_is_left(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("devenv pid 123456789012345, a longer note from before")
    with locked(tmp_path):
        assert (tmp_path / "lock").read_text() == f"devenv pid {os.getpid()}"
    with locked(tmp_path / "new"):  # a lock file made on first use
        assert (tmp_path / "new" / "lock").read_text() == f"devenv pid {os.getpid()}"


def test_a_second_taker_waits_and_is_told_who_holds_it(tmp_path: Path) -> None:
    tree = str(Path(devenv.__file__).resolve().parents[1])  # the devenv under test, in the child too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        said: list[str] = []
        start = time.monotonic()
        with locked(tmp_path, on_wait=said.append):
            waited = time.monotonic() - start
            assert (tmp_path / "lock").read_text() == f"devenv pid {os.getpid()}"
    finally:
        holder.wait(timeout=30)
    assert said == [f"waiting for devenv pid {holder.pid} to finish (lock {tmp_path / 'lock'})"]
    assert waited > 0.2, "it did not wait for the holder"
