"""What the command line prints, and how it exits: one way for both entry points.

CI mode, status lines on stderr (`say`), sizes and the reset summary for people, and every
error's message and exit code (`exit_for`). Without click at module level: the click-free
`devenv reset` (devenv.cli.entry) prints its errors here too, and an exception of click's is
recognised only once click has been loaded, which is the only way one can have been raised.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import IO, TYPE_CHECKING, Iterable, Mapping, NoReturn

from devenv.errors import DevenvError, Terminated

if TYPE_CHECKING:
    from devenv.db.janitor import ResetResult
    from devenv.config.stack import Stack

# click.style's codes for the colours `say` uses.
_COLOURS = {"error": "31", "warning": "33", "ok": "32"}


def ci_mode() -> bool:
    """CI mode: `--ci`, or the CI variable every CI system sets (not "false"/"0")."""
    return "--ci" in sys.argv[1:] or os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def github_actions() -> bool:
    """Under GitHub Actions (the runner sets GITHUB_ACTIONS=true): secrets are masked in its log."""
    return os.environ.get("GITHUB_ACTIONS", "").lower() == "true"


def secrets_in(urls: Mapping[str, str], extra: Iterable[str] = ()) -> list[str]:
    """Every secret the URLs carry, as they may appear in a log: each password as written in
    the URL and decoded, each whole URL holding one; then `extra` (other passwords). No duplicates."""
    from urllib.parse import unquote, urlsplit

    found: list[str] = []
    for url in urls.values():
        password = urlsplit(url).password
        if password:
            found += [password, unquote(password), url]
    found += extra
    out: list[str] = []
    for value in found:
        for line in value.splitlines():  # the runner masks a line at a time
            if line.strip() and line not in out:
                out.append(line)
    return out


def add_masks(values: Iterable[str], stream: IO[str] | None = None) -> None:
    """`::add-mask::VALUE` on stdout (or `stream`: stderr when stdout is JSON) for each value,
    flushed before anything prints them: the GitHub Actions runner, which reads workflow
    commands on both, then shows `***` in their place, in this step's log and later ones."""
    stream = sys.stdout if stream is None else stream
    for value in values:
        stream.write(f"::add-mask::{value}\n")
    stream.flush()


def debug_mode(args: list[str] | None = None) -> bool:
    """--debug (anywhere on the command line, `args` or sys.argv's) or DEVENV_DEBUG: show tracebacks."""
    args = sys.argv[1:] if args is None else args
    return "--debug" in args or os.environ.get("DEVENV_DEBUG", "") not in ("", "0")


def stamped(line: str) -> str:
    """A progress line as CI mode prints it: prefixed with the UTC time of day, to milliseconds."""
    from datetime import datetime, timezone

    return f"{datetime.now(timezone.utc).strftime('%H:%M:%S.%f')[:-3]} {line}"


def echo_err(line: str) -> None:
    """One line on stderr, flushed (as click.echo(err=True) writes it)."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def colour(stream: IO[str] | None = None) -> bool:
    """Whether to colour what goes to `stream` (stderr): the conventions people set once for
    every tool. NO_COLOR (any non-empty value, no-color.org) turns colour off everywhere;
    FORCE_COLOR (non-empty, not 0/false) turns it on even without a terminal or in CI mode;
    otherwise colour on a terminal, outside CI mode, unless TERM=dumb."""
    if os.environ.get("NO_COLOR"):
        return False
    force = os.environ.get("FORCE_COLOR", "")
    if force and force.lower() not in ("0", "false", "no"):
        return True
    stream = sys.stderr if stream is None else stream
    return not ci_mode() and os.environ.get("TERM") != "dumb" and stream.isatty()


def say(line: str, kind: str = "") -> None:
    """One progress or status line on stderr: timestamped in CI mode, coloured where `colour`
    says so (`kind`: "error", "warning" or "ok")."""
    if ci_mode():
        line = stamped(line)
    if kind and colour():
        line = f"\x1b[{_COLOURS[kind]}m{line}\x1b[0m"
    echo_err(line)


def load_stack(config_path: str | None, profile: str, need_secrets: bool = True) -> Stack:
    """devenv.yaml -> validated Stack for one profile; warnings go to stderr.

    Kept in .devenv/<profile>/stack.json while its inputs hash the same (resolve.load_stack_cached):
    PyYAML's import and the validation of every profile cost more than a cold `up`'s health checks.
    """
    from devenv.config.resolve import load_stack_cached

    stack = load_stack_cached(config_path, profile, need_secrets)
    for warning in stack.warnings:
        say(f"warning: {warning}", "warning")
    if need_secrets:  # sessions may follow (not `down`'s: it stops containers through the engine alone)
        ensure_forwards(stack)
    return stack


def reset_summary(stack: Stack, result: ResetResult) -> str:
    """The line `devenv reset` ends with, on either path."""
    how = f"{result.strategy}, {'by key' if result.detail == 'rows' else 'whole tables'}" if result.detail else result.strategy
    return f"{stack.name}: reset {result.database} ({how}) and Redis in {result.seconds * 1000:.0f} ms"


def client_binary(name: str, hint: str) -> str:
    """The path of a client program devenv hands over to (psql, redis-cli), else DependencyError."""
    import shutil

    from devenv.errors import DependencyError

    binary = shutil.which(name)
    if binary is None:
        raise DependencyError(f"{name} not found on PATH", hint=hint)
    return binary


def ensure_forwards(stack: Stack) -> None:
    """Before a command opens sessions to a stack whose ports reach this machine over SSH (an
    ssh:// engine: published on the remote's 127.0.0.1): the SSH connection lives and holds every
    port, started again if it died, or PortInUseError when another program took a port meanwhile
    (a session would give it the password). Nothing for any other stack."""
    if stack.reach_host or stack.bind_ip != "127.0.0.1":
        return
    from devenv.state import read_state

    engine = read_state(stack.state_dir).get("engine")
    if isinstance(engine, str) and engine.startswith("ssh://"):
        from devenv.runtime import sshtunnel

        sshtunnel.api_socket(engine, os.environ)  # a dead master started again, with every forward or none


def print_error(exc: DevenvError) -> None:
    """A DevenvError as users see it: `error: ...`, the log tail if any, `hint: ...`."""
    say(f"error: {exc.message}", "error")
    log_tail = getattr(exc, "log_tail", "")
    if log_tail:
        echo_err(log_tail.rstrip("\n"))
    if exc.hint:
        say(f"hint: {exc.hint}")


def _terminated(exc: BaseException) -> bool:
    """SIGTERM's exception (devenv.errors.Terminated), also as click re-raises it (an Abort from it)."""
    return isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated)


def error_object(exc: BaseException) -> dict[str, object]:
    """What `up --json` prints on stdout for an error: {"ok": false, "error", "hint", "exit_code"},
    the same message, hint and code as `exit_for` gives on stderr and as the exit status."""
    click = sys.modules.get("click")
    if _terminated(exc):
        error, hint, code = "terminated", None, 143
    elif isinstance(exc, KeyboardInterrupt) or (click is not None and isinstance(exc, click.Abort)):
        error, hint, code = "interrupted", None, 130
    elif click is not None and isinstance(exc, click.ClickException):
        error, hint, code = exc.format_message(), None, exc.exit_code
    elif isinstance(exc, DevenvError):
        error, hint, code = exc.message, exc.hint, exc.exit_code
    else:
        error, hint, code = f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug for the traceback, and report it.", 1
    return {"ok": False, "error": error, "hint": hint, "exit_code": code}


def print_json_error(exc: BaseException) -> None:
    """`error_object(exc)` as one JSON object on stdout (the error itself still goes to stderr)."""
    import json

    try:
        sys.stdout.write(json.dumps(error_object(exc), indent=2) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the reader left, or stdout is closed: stderr still says it
        pass


def exit_for(exc: BaseException, debug: bool | None = None) -> NoReturn:
    """Print an error the one way and exit with its code; with --debug, raise it (the traceback).

    A DevenvError: its message, hint (and log tail) and its class's exit code. A bug: one line
    saying so. click's own (usage errors, an aborted prompt) as click shows them.
    """
    if debug is None:
        debug = debug_mode()
    if isinstance(exc, SystemExit):
        raise exc
    click = sys.modules.get("click")  # not loaded: none of its exceptions can have been raised
    if _terminated(exc):  # SIGTERM (`devenv up`): 128 + 15, as the shell says it
        echo_err("terminated")
        sys.exit(143)
    if isinstance(exc, KeyboardInterrupt) or (click is not None and isinstance(exc, click.Abort)):
        echo_err("interrupted")
        sys.exit(130)
    if click is not None and isinstance(exc, click.ClickException):
        exc.show()
        sys.exit(exc.exit_code)
    if debug:
        raise exc
    if isinstance(exc, DevenvError):
        print_error(exc)
        sys.exit(exc.exit_code)
    # a bug: say so briefly; --debug shows the traceback
    echo_err(f"error: internal error: {type(exc).__name__}: {exc}")
    echo_err("hint: rerun with --debug for the traceback, and report it.")
    sys.exit(1)


def fast_exit(code: int | str | None = 0) -> NoReturn:
    """Exit as `sys.exit(code)` would, without tearing the interpreter down.

    Tearing down (freeing every module click and devenv loaded) costs ~25 ms here, a tenth of a
    cold `up`. This does the part of it that shows: wait for threads that are not daemons
    (threading's own shutdown, which also stops idle concurrent.futures workers), run atexit
    handlers, flush the output; then os._exit. Both steps are CPython's private functions:
    where either is missing, a plain sys.exit.
    """
    threading = sys.modules.get("threading")  # never imported: no threads to wait for
    shutdown = getattr(threading, "_shutdown", None) if threading is not None else lambda: None
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exitfuncs is None:
        sys.exit(code)
    message = None
    if code is not None and not isinstance(code, int):  # sys.exit's rule: printed, exit status 1
        message, code = str(code), 1
    try:
        if message is not None:
            echo_err(message)
        shutdown()  # what the interpreter calls first at exit
        run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # `devenv env | head -1`: the reader left; nothing more to say
        pass
    os._exit(code or 0)

