"""Bad input through the real CLI (a subprocess): exit codes, messages, no tracebacks.

Exit codes are documented in devenv/errors.py: 2 usage error, 3 ConfigError.
Also a guard that the light commands never import the heavy client libraries.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CONFIG_ERROR = 3
USAGE_ERROR = 2


def assert_config_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == CONFIG_ERROR, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"


@pytest.fixture(params=["render", "settings", "reset"])
def command(request: pytest.FixtureRequest) -> str:
    """Commands that read devenv.yaml report its errors the same way (`reset`: without click)."""
    return str(request.param)


def test_misspelled_setting(project: Path, edit_config: Any, run_devenv: Any, command: str) -> None:
    line = edit_config("    shared_buffers:", "    shared_bufers:")
    result = run_devenv(command)
    assert_config_error(
        result,
        "did you mean 'shared_buffers'",
        f"{project / 'devenv.yaml'}:{line}:",
        "postgres.settings.shared_bufers",
    )


@pytest.mark.parametrize("unit", ["4MiB", "4ms"])
def test_wrong_unit(edit_config: Any, run_devenv: Any, unit: str) -> None:
    line = edit_config("work_mem:                   {default: 4MB,", f"work_mem:                   {{default: {unit},")
    result = run_devenv("render")
    # The `default` column reaches dev first (profiles are checked in file order).
    assert_config_error(result, "work_mem", f"'{unit}'", "(profile 'dev')", f"devenv.yaml:{line}:", "B, kB, MB, GB, TB")


def test_wrong_unit_names_the_profile_whose_column_holds_it(edit_config: Any, run_devenv: Any) -> None:
    edit_config("rds: 64MB}", "rds: 64ms}")
    result = run_devenv("render", "--profile", "dev")
    assert_config_error(result, "work_mem", "(profile 'rds')", "B, kB, MB, GB, TB")


def test_out_of_range_value(edit_config: Any, run_devenv: Any) -> None:
    edit_config("{default: 100,   dev: 20,", "{default: 100,   dev: 0,")
    result = run_devenv("render")
    assert_config_error(result, "max_connections", "out of range", "(profile 'dev')", "allows 1 to 262143")


def test_unknown_key(project: Path, edit_config: Any, run_devenv: Any, command: str) -> None:
    line = edit_config("  limits: {memory: 1g", "  limts: {memory: 1g")
    result = run_devenv(command)
    assert_config_error(result, "postgres.limts", "did you mean 'limits'", f"devenv.yaml:{line}:")


def test_broken_yaml(edit_config: Any, run_devenv: Any, command: str) -> None:
    line = edit_config("  database: taskflow\n  user: taskflow\n", "  database: taskflow\n  user: taskflow: x\n") + 1
    result = run_devenv(command)
    assert_config_error(result, f"devenv.yaml:{line}:", "invalid YAML")


def test_unknown_profile(run_devenv: Any, command: str) -> None:
    result = run_devenv(command, "--profile", "staging")
    assert_config_error(result, "unknown profile 'staging'", "ci, dev, prod, rds")


def test_unknown_profile_from_the_environment(run_devenv: Any) -> None:
    result = run_devenv("render", env={"DEVENV_PROFILE": "prdo"})
    assert_config_error(result, "unknown profile 'prdo'", "did you mean 'prod'")


def test_non_numeric_port_in_the_environment(run_devenv: Any) -> None:
    result = run_devenv("render", env={"DEVENV_PGBOUNCER_PORT": "six"})
    assert_config_error(result, "DEVENV_PGBOUNCER_PORT='six'", "between 1 and 65535")


def test_missing_config_file(tmp_path: Path, run_devenv: Any) -> None:
    result = run_devenv("render", "--config", str(tmp_path / "nope.yaml"))
    assert_config_error(result, "nope.yaml does not exist")


def test_debug_shows_the_traceback(edit_config: Any, run_devenv: Any) -> None:
    edit_config("    shared_buffers:", "    shared_bufers:")
    result = run_devenv("--debug", "render")
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "devenv.errors.ConfigError" in result.stderr and "did you mean 'shared_buffers'" in result.stderr


@pytest.mark.parametrize("command", ["render", "reset"])
def test_debug_from_the_environment_shows_the_traceback(edit_config: Any, run_devenv: Any, command: str) -> None:
    edit_config("    shared_buffers:", "    shared_bufers:")
    result = run_devenv(command, env={"DEVENV_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_usage_error_exits_2_without_traceback(run_devenv: Any) -> None:
    result = run_devenv("rendr")
    assert result.returncode == USAGE_ERROR
    assert "No such command 'rendr'" in result.stderr and "Traceback" not in result.stderr


def test_warnings_go_to_stderr_and_do_not_fail(run_devenv: Any, project: Path) -> None:
    result = run_devenv("render", "--profile", "rds", "--out", str(project / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: postgres settings may not fit the 1024 MiB memory limit")
    assert all(Path(line).is_file() for line in result.stdout.splitlines()), "stdout lists only the written files"


# --------------------------------------------------------------------------- import guard

_PROBE = """
import json, sys
import devenv.cli.main
sys.argv = ["devenv", *{args!r}]
try:
    devenv.cli.main.main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = sorted({{name.split(".")[0] for name in sys.modules}})
print("\\n@@MODULES@@" + json.dumps({{"code": code, "modules": loaded}}))
"""


def loaded_modules(project: Path, *args: str) -> set[str]:
    """Run devenv's entry point in a fresh interpreter; the top-level modules it left loaded."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(args=list(args))],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(result.stdout.rpartition("@@MODULES@@")[2])
    assert report["code"] in (0, None), result.stderr
    return set(report["modules"])


HEAVY = {"docker", "psycopg", "redis"}


@pytest.mark.parametrize(
    "args",
    [("--help",), ("settings",), ("settings", "--diff", "dev", "prod"), ("render", "--out", "out")],
    ids=lambda args: " ".join(args),
)
def test_light_commands_do_not_import_client_libraries(project: Path, args: tuple[str, ...]) -> None:
    modules = loaded_modules(project, *args)
    assert "devenv" in modules and "click" in modules  # the probe really ran the CLI
    assert not modules & HEAVY, f"devenv {' '.join(args)} imported {sorted(modules & HEAVY)}"
    if args[0] == "render":
        assert (project / "out" / "docker-compose.yml").is_file()
        assert "jinja2" in modules


def test_help_imports_neither_jinja2_nor_yaml(project: Path) -> None:
    """devenv.cli.main promises `devenv --help` stays light: templates and YAML load only when needed."""
    modules = loaded_modules(project, "--help")
    assert not modules & {"jinja2", "yaml"}, sorted(modules & {"jinja2", "yaml"})


# --------------------------------------------------------------------------- the quick exit

# What an exit must keep: a thread that is not a daemon, an idle concurrent.futures worker
# (the interpreter stops it), an atexit handler; argv[1] is where the thread writes at its end.
_EXIT_SETUP = """
import atexit, concurrent.futures, os, sys, threading, time
from pathlib import Path
pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
pool.submit(lambda: None).result()  # an idle worker nobody shut down: the interpreter stops it
marker = Path(sys.argv[1])
def late_write():
    time.sleep(0.3)
    marker.write_text("done")
threading.Thread(target=late_write).start()  # not a daemon: the exit waits for it
atexit.register(lambda: print("atexit ran"))
"""

_QUICK_EXIT = _EXIT_SETUP + """
sys.argv = ["devenv", *sys.argv[2:]]
from devenv.cli.main import run
run()
"""


@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["rendr"], USAGE_ERROR)])
def test_the_quick_exit_keeps_what_the_interpreter_exit_does(tmp_path: Path, args: list[str], code: int) -> None:
    """devenv.cli.main.run skips the interpreter's teardown (os._exit): the exit code, threads that
    are not daemons (an idle concurrent.futures worker too), atexit handlers and buffered output
    remain."""
    marker = tmp_path / "thread-finished"
    result = subprocess.run([sys.executable, "-c", _QUICK_EXIT, str(marker), *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == code, result.stderr
    assert marker.read_text() == "done", "a non-daemon thread was cut off"
    assert result.stdout.rstrip().endswith("atexit ran"), result.stdout
    if code == 0:
        assert "Usage: devenv" in result.stdout
    else:
        assert "No such command 'rendr'" in result.stderr


# argv[2]: the private function to delete first ("" for none); argv[3]: the code, as JSON.
_FAST_EXIT = _EXIT_SETUP + """
import json
real_exit = os._exit
def noted_exit(status):  # the fast branch's last step, noted where the test can see it
    marker.with_name("os_exit").write_text(str(status))
    real_exit(status)
os._exit = noted_exit
if sys.argv[2]:
    module, name = sys.argv[2].split(".")
    delattr(sys.modules[module], name)
print("written before the exit", end="")  # stdout is a pipe: buffered until flushed
from devenv.cli.output import fast_exit
fast_exit(json.loads(sys.argv[3]))
"""


@pytest.mark.parametrize("missing", ["", "threading._shutdown", "atexit._run_exitfuncs"],
                         ids=["fast", "no threading._shutdown", "no atexit._run_exitfuncs"])
@pytest.mark.parametrize(("code", "status"), [(0, 0), (None, 0), (USAGE_ERROR, USAGE_ERROR), ("bye", 1)])
def test_fast_exit_exits_as_sys_exit_does_with_or_without_the_private_api(
        tmp_path: Path, missing: str, code: int | str | None, status: int) -> None:
    """output.fast_exit: os._exit after threading's shutdown and the atexit handlers; where either
    private function is missing, sys.exit. Either way: sys.exit's exit status (a string printed,
    then 1), the output flushed, atexit handlers run."""
    marker = tmp_path / "thread-finished"
    result = subprocess.run([sys.executable, "-c", _FAST_EXIT, str(marker), missing, json.dumps(code)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == status, result.stderr
    assert result.stdout == "written before the exit" + "atexit ran\n", result.stdout
    if code == "bye":
        assert "bye" in result.stderr.splitlines()
    took_fast_branch = (tmp_path / "os_exit").exists()
    assert took_fast_branch == (not missing), "the fallback is sys.exit, the fast branch os._exit"
    if took_fast_branch:
        assert (tmp_path / "os_exit").read_text() == str(status)
        assert result.stderr == ("bye\n" if code == "bye" else ""), result.stderr
    if missing != "threading._shutdown":  # without it the interpreter cannot wait for threads either
        assert marker.read_text() == "done", "a non-daemon thread was cut off"
