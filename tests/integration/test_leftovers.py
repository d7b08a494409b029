"""What killed commands leave, and what a reset must put back exactly (issue 15, class 18):
scratch databases swept by the next `up`, a restore as exact as a clone (large objects,
ALTER DATABASE ... SET), and a seed file that is not UTF-8 named in the error."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A child that dies by SIGKILL at one point of a real clone (Janitor's own code up to there):
# "new": the copy `<db>__new_<pid>` is built, not yet swapped in; "old": the swap is done, the
# old database `<db>__old_<pid>_0` not yet dropped.
_KILLED_CLONE = """
import os, signal, sys
from pathlib import Path
from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.db.janitor import Janitor

stack = build_stack(load_config(Path("devenv.yaml").resolve(), env=dict(os.environ)), sys.argv[1])
janitor = Janitor(stack)
template = janitor.ensure_template()
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "new":
    janitor.swap_in = die
else:
    janitor._drop_later = die
janitor.clone(stack.postgres.database, template)
"""


def _scratch(proj) -> list[str]:
    from devenv.db.janitor import SCRATCH_PATTERN

    with proj.connect(dbname="postgres") as conn:
        return [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname ~ %s ORDER BY 1", (SCRATCH_PATTERN,))]


@pytest.mark.parametrize("kill_point", ["new", "old"])
def test_the_next_up_sweeps_a_killed_commands_scratch_databases_and_says_so(project, kill_point: str) -> None:
    proj = project
    proj.devenv("up")
    assert "nothing to do" in proj.devenv("up").stderr
    child = subprocess.run([sys.executable, "-c", _KILLED_CLONE, proj.profile, kill_point], cwd=proj.root,
                           env=proj.env, capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr
    litter = _scratch(proj)
    assert len(litter) == 1 and f"__{kill_point}_" in litter[0], litter
    up = proj.devenv("up")
    assert "nothing to do" not in up.stderr, "the no-op `up` must notice a killed command's litter"
    assert f"swept 1 scratch database(s) left by killed commands: {litter[0]}" in up.stderr, up.stderr
    assert _scratch(proj) == []
    with proj.connect() as conn:  # the working database is whole
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    assert "nothing to do" in proj.devenv("up").stderr, "once swept, the no-op `up` is a no-op again"
