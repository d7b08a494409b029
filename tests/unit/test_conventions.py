"""Issue 16, items 4, 6 and 7 without servers: the env_file block (splice, quoting, file
rules), `devenv env`'s PG* variables, colour conventions, shell completion through the real
entry point, and devenv.sh's devenv.yaml told apart from ours."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from devenv import envfile
from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.errors import ConfigError, StateError

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BLOCK = envfile.block("dev", {"DATABASE_URL": "postgresql://u:p@127.0.0.1:6432/db", "PGPORT": "5432"})


def without_block(data: bytes) -> bytes:
    """The file as it was before devenv's block went in: the block's lines cut out."""
    lines = data.split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(envfile.BEGIN.encode()))
    end = next(j for j in range(start, len(lines)) if lines[j].startswith(envfile.END.encode()))
    return b"\n".join(lines[:start] + lines[end + 1:])


# ---- the block: spliced in, every other byte kept ------------------------------------------------


@pytest.mark.parametrize("original", [
    b"", b"A=1\n", b"A=1", b"# comment\r\nA=1\r\n", b"# comment\r\nA=1", b"\n\n",
    b"DATABASE_URL=sqlite:///x.db\n# keep me\nexport B='two words'\n",
], ids=["empty", "lf", "no-final-newline", "crlf", "crlf-no-final-newline", "blank-lines", "lookalike"])
def test_the_block_goes_in_and_every_other_byte_stays(original: bytes) -> None:
    once = envfile.splice(original, BLOCK, Path(".env"))
    assert BLOCK.splitlines()[1].encode() in once
    assert once.endswith(b"\n") == (original.endswith(b"\n") or not original), "the file ends as it did"
    crlf = original.startswith(b"# comment\r\n")
    assert (b"\r\n" + envfile.END.encode() in once) == crlf, "a CRLF file gets a CRLF block"
    if original:
        assert once.startswith(original if original.endswith(b"\n") else original + (b"\r\n" if crlf else b"\n"))
    assert envfile.splice(once, BLOCK, Path(".env")) == once, "the same block again changes nothing"
    other = envfile.block("prod", {"DATABASE_URL": "postgresql://u:p@127.0.0.1:7432/db"})
    twice = envfile.splice(once, other, Path(".env"))
    assert twice.count(envfile.BEGIN.encode()) == 1 and b"(profile prod)" in twice and b"6432" not in twice
    assert without_block(twice) == without_block(once), "replacing the block touches nothing else"


def test_a_block_in_the_middle_is_replaced_in_place() -> None:
    data = b"A=1\n" + BLOCK.encode() + b"\nB=2\n"
    new = envfile.splice(data, envfile.block("ci", {"X": "y"}), Path(".env"))
    assert new == b"A=1\n" + envfile.block("ci", {"X": "y"}).encode() + b"\nB=2\n"


def test_a_block_without_its_end_line_is_an_error_not_a_loss() -> None:
    with pytest.raises(StateError) as info:
        envfile.splice(b"A=1\n" + BLOCK.encode().rsplit(b"\n", 1)[0] + b"\nB=2\n", BLOCK, Path(".env"))
    assert ".env:2" in info.value.message and envfile.END in (info.value.hint or "")


def test_the_block_names_its_profile_and_who_writes_it() -> None:
    head = BLOCK.splitlines()[0]
    assert head == "# >>> devenv (profile dev): written by `devenv up`; edit devenv.yaml, not this block"
    assert BLOCK.splitlines()[-1] == "# <<< devenv"


@pytest.mark.parametrize("value", ["plain", "postgresql://u:p%2F@127.0.0.1:5432/db?sslmode=require",
                                   "two words", "has$dollar", "it's", "#hash", "a\"b"])
def test_dotenv_values_read_back_as_written(value: str) -> None:
    dotenv = pytest.importorskip("dotenv")
    import io

    line = envfile.dotenv_lines({"V": value})[0]
    assert dotenv.dotenv_values(stream=io.StringIO(line + "\n")) == {"V": value}, line


def test_quoting_means_the_same_to_every_loader() -> None:
    # python-dotenv decodes \\ in single quotes (so 'a\\b' came back as a\b); docker compose
    # expands $ in double quotes. Each quoted form avoids what some loader reads differently.
    assert envfile.dotenv_value("has$dollar") == "'has$dollar'"
    assert envfile.dotenv_value("it's") == '"it\'s"'
    for value in ["back\\slash", "a\\\\b", "it's $HOME", "both'\"", "two\nlines", "cr\r"]:
        with pytest.raises(StateError, match="cannot write .* in a dotenv file"):
            envfile.dotenv_value(value)


def test_lines_outside_the_block_that_set_its_variables_are_found() -> None:
    data = b"DATABASE_URL=x\n" + BLOCK.encode() + b"\n  export PGPORT=1\nPGPORTX=2\n"
    assert envfile.shadowed(data, ["DATABASE_URL", "PGPORT"]) == [(1, "DATABASE_URL"), (6, "PGPORT")]


# ---- the file: 0600, atomic, never through a link ----------------------------------------------


def test_sync_writes_0600_only_when_the_block_differs(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"A=1\r\n")
    path.chmod(0o644)
    said: list[str] = []
    assert envfile.sync(tmp_path, ".env", BLOCK, said.append) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("0644 -> 0600" in line for line in said), said
    os.utime(path, (1, 1))
    assert envfile.sync(tmp_path, ".env", BLOCK, said.append) is False
    assert path.stat().st_mtime == 1, "an unchanged block is not written again"


def test_sync_refuses_a_link_and_leaves_its_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("SECRET=1\n")
    (tmp_path / ".env").symlink_to(target)
    with pytest.raises(StateError, match="symbolic link"):
        envfile.sync(tmp_path, ".env", BLOCK)
    assert target.read_text() == "SECRET=1\n"


def test_sync_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".env")
    with pytest.raises(StateError, match="not a regular file"):
        envfile.sync(tmp_path, ".env", BLOCK)


def test_markers_match_exactly_so_lookalike_lines_stay() -> None:
    mine = b"# >>> devenvironment notes: see wiki\nA=1\n# <<< devenv-tools end\n"
    once = envfile.splice(mine, BLOCK, Path(".env"))
    assert once == mine + BLOCK.encode() + b"\n", "the user's lines are kept, the block appended"
    assert envfile.splice(once, BLOCK, Path(".env")) == once
    # Trailing whitespace and CR on devenv's own markers are tolerated.
    loose = b"A=1\n# >>> devenv  \nOLD=1\n# <<< devenv \t\r\nB=2\n"
    assert envfile.splice(loose, BLOCK, Path(".env")) == b"A=1\n" + BLOCK.encode() + b"\r\nB=2\n"
    assert envfile.shadowed(once, ["A"]) == [(2, "A")], "A=1 is outside the block"


def test_two_blocks_are_an_error_naming_both_lines() -> None:
    stale = envfile.block("dev", {"PGPORT": "1"}).encode()
    data = b"A=1\n" + BLOCK.encode() + b"\nB=2\n" + stale + b"\n"
    with pytest.raises(StateError) as info:
        envfile.splice(data, BLOCK, Path(".env"))
    assert "lines 2, 7" in info.value.message and info.value.exit_code == 8 and "delete" in (info.value.hint or "")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the project (as /etc is) holding a file that must stay as it is."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0\n")
    (tmp_path / "etc" / "passwd").chmod(0o644)
    (tmp_path / "proj").mkdir()
    return tmp_path / "etc"


@pytest.mark.parametrize(("links", "rel", "named"), [
    ({"cfg2": "../etc"}, "cfg2/devenv-test-file", "cfg2"),
    ({"cfg2": "../etc"}, "cfg2/passwd", "cfg2"),
    ({"a/b": "../../etc"}, "a/b/c/passwd", "a/b"),
    ({"a": "../etc"}, "a/b/.env", "a"),  # nothing made beyond the link either
])
def test_sync_never_follows_a_linked_directory(outside: Path, links: dict[str, str], rel: str, named: str) -> None:
    root = outside.parent / "proj"
    for link, target in links.items():
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to(target)
    with pytest.raises(StateError) as info:
        envfile.sync(root, rel, BLOCK)
    assert f"{root / named} is a symbolic link" in info.value.message and info.value.exit_code == 8
    assert info.value.hint
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
    assert (outside / "passwd").read_text() == "root:x:0:0\n" and stat.S_IMODE((outside / "passwd").stat().st_mode) == 0o644


@pytest.mark.parametrize("rel", ["/etc/passwd", "../etc/passwd", "a/../../etc/passwd", "", "dir/"])
def test_sync_refuses_a_path_outside_the_project(outside: Path, rel: str) -> None:
    with pytest.raises(StateError, match="not a path inside the project"):
        envfile.sync(outside.parent / "proj", rel, BLOCK)
    assert (outside / "passwd").read_text() == "root:x:0:0\n"


def test_sync_names_a_directory_as_one(tmp_path: Path) -> None:
    (tmp_path / ".env").mkdir()
    with pytest.raises(StateError, match=r"\.env: it is a directory") as info:
        envfile.sync(tmp_path, ".env", BLOCK)
    assert info.value.exit_code == 8


# ---- devenv.yaml: env_file ----------------------------------------------------------------------


def test_env_file_is_off_by_default_and_relative_to_the_project(project: Path, edit_config: Any) -> None:
    assert build_stack(load_config(project / "devenv.yaml", {}), "dev").env_file == ""
    edit_config("profiles:\n", "env_file: ./config/.env\nprofiles:\n")
    assert build_stack(load_config(project / "devenv.yaml", {}), "dev").env_file == "config/.env"


@pytest.mark.parametrize("value", ["/etc/environment", "../.env", "x/../../.env", "''", "3", "[a]", ".devenv/env",
                                   "devenv.yaml", "seeds/.env", "dir/"])
def test_a_bad_env_file_names_the_key_and_line(project: Path, value: str) -> None:
    path = project / "devenv.yaml"
    path.write_text(f"env_file: {value}\n" + path.read_text())
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert f"{path}:1: env_file:" in info.value.message and info.value.hint


def test_env_and_block_carry_libpq_variables(project: Path) -> None:
    config = load_config(project / "devenv.yaml", {})
    dev, prod = build_stack(config, "dev"), build_stack(config, "prod")
    env = dev.env()
    assert list(env)[:3] == ["DATABASE_URL", "DIRECT_DATABASE_URL", "REDIS_URL"]
    assert env["PGHOST"] == "127.0.0.1" and env["PGPORT"] == str(dev.postgres.port)
    assert (env["PGUSER"], env["PGDATABASE"], env["PGPASSWORD"]) == (
        dev.postgres.user, dev.postgres.database, dev.postgres.password)
    assert "PGSSLMODE" not in env and prod.env()["PGSSLMODE"] == "require"


# ---- `up --json`: one JSON object on stdout, an error's too --------------------------------------


@pytest.mark.parametrize(("args", "code", "says"), [
    (["up", "--json", "-p", "nosuch"], 3, "unknown profile"),
    (["--ci", "-p", "nosuch", "up", "--json"], 3, "unknown profile"),  # hoisted, after a group flag
    (["up", "--json", "--timeout", "x"], 2, "--timeout"),
])
def test_up_json_errors_are_one_json_object(run_devenv: Callable[..., Any], args: list[str], code: int,
                                             says: str) -> None:
    import json

    result = run_devenv(*args)
    assert result.returncode == code
    report = json.loads(result.stdout)  # the whole of stdout
    assert report["ok"] is False and report["exit_code"] == code and says in report["error"], report
    assert set(report) == {"ok", "error", "hint", "exit_code"}
    assert says in result.stderr, "the error still goes to stderr as well"


def test_an_error_object_for_each_kind_of_error() -> None:
    from devenv.cli.output import error_object

    assert error_object(StateError("m", hint="h")) == {"ok": False, "error": "m", "hint": "h", "exit_code": 8}
    assert error_object(KeyboardInterrupt())["exit_code"] == 130
    bug = error_object(IsADirectoryError(21, "Is a directory"))
    assert bug["exit_code"] == 1 and bug["error"].startswith("internal error: IsADirectoryError")


# ---- devenv.sh's devenv.yaml --------------------------------------------------------------------

CACHIX = "inputs:\n  nixpkgs:\n    url: github:cachix/devenv-nixpkgs/rolling\n"


@pytest.mark.parametrize("text", [CACHIX, "imports:\n  - ./frontend\n", CACHIX + "allowUnfree: true\nimports: []\n",
                                  # Only their other keys (devenv.sh/reference/yaml-options), none of ours:
                                  "allowUnfree: true\n", "permittedInsecurePackages:\n  - openssl-1.1.1w\n",
                                  "nixpkgs:\n  allow_unfree: true\nimpure: true\n", "clean:\n  enabled: true\n"])
def test_devenv_sh_yaml_is_named_with_a_way_out(tmp_path: Path, text: str) -> None:
    (tmp_path / "devenv.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("DEVENV_CONFIG", "CI")}
    result = subprocess.run([sys.executable, "-m", "devenv", "settings"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert f"error: {tmp_path / 'devenv.yaml'} is devenv.sh's devenv.yaml (cachix/devenv), not this devenv's" in result.stderr
    assert "hint:" in result.stderr and "--config PATH" in result.stderr and "DEVENV_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("extra", "key"), [("inputs: {}\n", "inputs"), ("inputs: []\n", "inputs"),
                                            ("allowUnfree: true\n", "allowUnfree")])
def test_ours_with_one_of_theirs_is_ours_and_the_hint_says_whose_key(project: Path, extra: str, key: str) -> None:
    path = project / "devenv.yaml"
    path.write_text(extra + path.read_text())
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert f"{path}:1: {key}: unknown key" in info.value.message and "cachix" not in info.value.message
    assert f"`{key}:` is a key of devenv.sh's devenv.yaml (cachix/devenv)" in (info.value.hint or "")
    assert "allowed here:" in (info.value.hint or "")


def test_a_typo_of_ours_is_not_called_theirs(project: Path) -> None:
    path = project / "devenv.yaml"
    path.write_text(path.read_text().replace("\nprofiles:\n", "\nprofiels:\n", 1))
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert "profiels: unknown key" in info.value.message and "devenv.sh" not in (info.value.hint or "")
    # The repository's own devenv.yaml is ours, of course.
    assert load_config(Path(__file__).parents[2] / "devenv.yaml", {}).project


def test_the_plain_reset_fast_path_says_so_too(tmp_path: Path) -> None:
    (tmp_path / "devenv.yaml").write_text(CACHIX)
    env = {k: v for k, v in os.environ.items() if k not in ("DEVENV_CONFIG", "CI")}
    result = subprocess.run([sys.executable, "-m", "devenv", "reset"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "devenv.sh's devenv.yaml" in result.stderr
    assert not (tmp_path / ".devenv").exists(), "nothing of ours is made in their project"


# ---- colour: NO_COLOR, FORCE_COLOR, a terminal --------------------------------------------------


def run_on_pty(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run `python -m devenv ARGS` with stdout and stderr on a pseudo-terminal; what it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdio is the terminal
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", "devenv", *args], env)
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    os.close(fd)
    return out.decode("utf-8", "replace")


@pytest.fixture
def bad_config_env(project: Path) -> dict[str, str]:
    """The environment for a command that fails with a (coloured) error: `settings -p nosuch`."""
    return {k: v for k, v in os.environ.items() if k not in ("CI", "NO_COLOR", "FORCE_COLOR", "TERM")}


def test_errors_are_coloured_on_a_terminal(project: Path, bad_config_env: dict[str, str]) -> None:
    out = run_on_pty(["settings", "-p", "nosuch"], bad_config_env, project)
    assert "unknown profile" in out and "\x1b[31m" in out, repr(out)


def test_no_color_means_no_escape_on_a_terminal(project: Path, bad_config_env: dict[str, str]) -> None:
    out = run_on_pty(["settings", "-p", "nosuch"], {**bad_config_env, "NO_COLOR": "1"}, project)
    assert "unknown profile" in out and "\x1b" not in out, repr(out)
    forced = run_on_pty(["settings", "-p", "nosuch"], {**bad_config_env, "NO_COLOR": "1", "FORCE_COLOR": "1"}, project)
    assert "\x1b" not in forced, "NO_COLOR wins over FORCE_COLOR"


@pytest.mark.parametrize(("extra", "coloured"), [({}, False), ({"FORCE_COLOR": "1"}, True), ({"FORCE_COLOR": "0"}, False),
                                                  ({"FORCE_COLOR": "1", "CI": "true"}, True), ({"NO_COLOR": ""}, False)])
def test_force_color_without_a_terminal(run_devenv: Callable[..., Any], extra: dict[str, str], coloured: bool) -> None:
    env = {"NO_COLOR": "", "FORCE_COLOR": "", "CI": "", **extra}  # run_devenv's environment, these set as given
    result = run_devenv("settings", "-p", "nosuch", env=env)
    assert result.returncode == 3
    assert bool(ANSI.search(result.stderr)) == coloured, result.stderr


# ---- shell completion through the real entry point ----------------------------------------------


def complete(words: str, cword: int | str, shell: str = "bash", cwd: Path | None = None) -> list[str]:
    """What `devenv` (the console script's code: devenv.cli.entry.run) offers for a command line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVENV_") or k == "DEVENV_REGISTRY_DIR"}
    env.update({"_DEVENV_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    code = "import sys; sys.argv[0] = 'devenv'; from devenv.cli.entry import run; run()"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if shell == "bash":  # type,value a line
        return [line.partition(",")[2] for line in result.stdout.splitlines()]
    return result.stdout.splitlines()


def test_bash_completion_of_commands_options_and_values(project: Path) -> None:
    assert complete("devenv st", 1) == ["status"]
    assert complete("devenv up --j", 2) == ["--json"]
    assert complete("devenv logs p", 2) == ["postgres", "pgbouncer"]
    assert "ci" in complete("devenv up -p ", 3, cwd=project), "profiles come from devenv.yaml"
    # Options typed before the command (issue 16, item 5) do not derail it.
    assert complete("devenv -p prod settings --d", 4) == ["--diff"]
    assert complete("devenv --config x.yaml -p ci up --no", 6) == ["--no-seed"]
    # A global option's value before any command: profiles, runtimes (not the command names).
    assert complete("devenv -p ", 2, cwd=project) == complete("devenv up -p ", 3, cwd=project)
    assert "ci" in complete("devenv -p ", 2, cwd=project) and "status" not in complete("devenv -p ", 2, cwd=project)
    assert complete("devenv --ci --profile c", 3, cwd=project) == ["ci"]
    assert complete("devenv --config devenv.yaml -r ", 4, cwd=project) == ["auto", "native", "docker", "podman"]
    assert complete("devenv -p ci st", 3) == ["status"], "after a value: the commands again"


def test_fish_and_zsh_completion(project: Path) -> None:
    # Both print type, value and help, a line each.
    assert complete("devenv st", 1, "zsh")[1::3] == ["status"]
    assert complete("devenv -p prod settings --d", "--d", "fish")[1::3] == ["--diff"]
    assert "ci" in complete("devenv -p c", "c", "fish", cwd=project)[1::3]
    assert "ci" in complete("devenv -p ", 2, "zsh", cwd=project)[1::3]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_generated(shell: str) -> None:
    env = {**os.environ, "_DEVENV_COMPLETE": f"{shell}_source"}
    code = "import sys; sys.argv[0] = 'devenv'; from devenv.cli.entry import run; run()"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "_DEVENV_COMPLETE" in result.stdout, result.stderr
    if shell == "bash" and shutil.which("bash"):  # the script is valid bash
        check = subprocess.run(["bash", "-n"], input=result.stdout, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(("record", "ok"), [(None, True), ({"path": "config/.env", "block": "# >>> devenv"}, True),
                                            ({"path": 3, "block": ""}, False), ("x", False), ({"path": ".env"}, False),
                                            # Never trusted: a path outside the project (an older state.json's
                                            # absolute one too) sends `up` the full way, which writes devenv.yaml's.
                                            ({"path": "/etc/passwd", "block": ""}, False),
                                            ({"path": "../x.env", "block": ""}, False),
                                            ({"path": "a/../../x.env", "block": ""}, False)])
def test_a_damaged_env_file_record_sends_up_the_full_way(record: Any, ok: bool) -> None:
    from devenv.cli.main import _recorded_env_file_ok

    assert _recorded_env_file_ok(record) is ok


def test_sync_makes_a_missing_directory_and_names_one_it_cannot_make(tmp_path: Path) -> None:
    assert envfile.sync(tmp_path, "config/.env", BLOCK) is True
    assert (tmp_path / "config" / ".env").read_text() == BLOCK + "\n"
    (tmp_path / "file").write_text("not a directory\n")
    with pytest.raises(StateError, match="cannot (read|write) env_file"):
        envfile.sync(tmp_path, "file/.env", BLOCK)
    assert (tmp_path / "file").read_text() == "not a directory\n"
