"""The `devenv` console script: `devenv reset` and `devenv status` in their plain forms and
`devenv ls [--json]` straight away, all else by click.

`devenv reset` runs between tests, so its start-up is paid once per test, and importing click
(~35 ms here) costs more than the reset it parses the arguments of (~10 ms). The plain form,
`devenv reset [-p P | --profile P] [--config C]`, is read here and restored in place. Anything
else goes to devenv.cli.main: other arguments (`--hard`, `--strategy`, `--help`, `--debug` ...),
a warning to print and a reset that needs a clone. `devenv status [-p P] [--config C] [-r R]
[--json]` runs devenv.cli.statuscmd, as the click command does. Errors are printed by
devenv.cli.output, the one way for both. This module imports neither click nor psycopg.
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping, NoReturn

from devenv.cli.output import ensure_forwards, exit_for, fast_exit, reset_summary, say

RESET_OPTIONS = {"-p": "profile", "--profile": "profile", "--config": "config"}
STATUS_OPTIONS = {**RESET_OPTIONS, "-r": "runtime", "--runtime": "runtime"}
STATUS_FLAGS = {"--json": "json"}
# Options of the commands that users type before the command, as `docker compose -f F -p P up`
# users do; and the group's own flags, which stay where they are.
GLOBAL_OPTIONS = frozenset({"-p", "--profile", "--config", "-r", "--runtime"})
GROUP_FLAGS = frozenset({"--debug", "--ci"})
GROUPS = frozenset({"snapshot"})  # commands whose options belong to their subcommand


def hoist_global_options(args: list[str]) -> list[str]:
    """`devenv -p prod settings` as `devenv settings -p prod`: the profile, config and runtime
    options given before the command moved after it (after `snapshot save` for a group), where
    click reads them. Anything else is left as it is, for click's own messages."""
    moved: list[str] = []
    flags: list[str] = []
    rest = list(args)
    while rest:
        arg = rest[0]
        if arg in GROUP_FLAGS:
            flags.append(rest.pop(0))
        elif arg.partition("=")[0] in GLOBAL_OPTIONS and not (arg.startswith("-p=") or arg.startswith("-r=")):
            moved.append(rest.pop(0))
            if "=" not in arg:
                if not rest:
                    return args
                moved.append(rest.pop(0))
        else:
            break
    if not moved or not rest or rest[0].startswith("-"):
        return args
    command = 2 if rest[0] in GROUPS and len(rest) > 1 and not rest[1].startswith("-") else 1
    return [*flags, *rest[:command], *moved, *rest[command:]]


def hoist_completion_words(environ: MutableMapping[str, str]) -> None:
    """Shell completion (click's `_DEVENV_COMPLETE=<shell>_complete`, the words so far in
    COMP_WORDS): those words hoisted as `run` hoists argv, so that `devenv -p prod settings --<TAB>`
    offers settings' options. The word being completed stays last, at the same index."""
    mode = environ.get("_DEVENV_COMPLETE", "")
    words = environ.get("COMP_WORDS")
    if not mode.endswith("_complete") or not words:
        return
    import shlex

    from click.shell_completion import split_arg_string

    cwords = split_arg_string(words)
    if mode == "fish_complete":  # COMP_WORDS: the line up to the cursor; COMP_CWORD: the word there
        typed, tail = cwords[1:], []
        if environ.get("COMP_CWORD") and typed and typed[-1] == environ["COMP_CWORD"]:
            tail = [typed.pop()]
    else:  # bash, zsh: the whole line and the index of the word being completed
        try:
            cword = int(environ.get("COMP_CWORD", ""))
        except ValueError:
            return
        typed, tail = cwords[1:cword], cwords[cword:]
    hoisted = hoist_global_options(typed)
    if hoisted == typed and _value_of_a_global_option(typed):
        # `devenv -p <TAB>`: no command yet, and the group has no -p, so click would offer the
        # command names. `up` has every global option: it completes the value as `up -p <TAB>` does.
        hoisted = ["up", *typed]
        if mode != "fish_complete":  # the index of the word being completed moves with it
            environ["COMP_CWORD"] = str(len(hoisted) + 1)
    if hoisted != typed and cwords:
        environ["COMP_WORDS"] = shlex.join([cwords[0], *hoisted, *tail])


def _value_of_a_global_option(typed: list[str]) -> bool:
    """Whether the word after `typed` is the value of a global option given before any command:
    `typed` is group flags and global options with their values, ending in such an option."""
    rest = [arg for arg in typed if arg not in GROUP_FLAGS]
    while rest:
        arg = rest.pop(0)
        if arg not in GLOBAL_OPTIONS:
            return False
        if not rest:
            return True
        rest.pop(0)
    return False


def run() -> NoReturn:
    """The `devenv` command (console script, `python -m devenv`)."""
    if "_DEVENV_COMPLETE" in os.environ:  # shell completion: click's, through devenv.cli.main
        hoist_completion_words(os.environ)
    sys.argv[1:] = hoist_global_options(sys.argv[1:])
    if sys.argv[1:] in (["ls"], ["ls", "--json"]):  # click's import would be a third of its time
        try:
            from devenv.stacks import show

            show(sys.argv[2:] == ["--json"], print, say)
        except BaseException as exc:  # noqa: BLE001  (every error gets its message and code)
            exit_for(exc)
        fast_exit(0)
    status = plain_status_options(sys.argv[1:])
    if status is not None:  # click's import would be a third of its time
        try:
            from devenv.cli.statuscmd import status_command

            code = status_command(str(status["profile"]), status["config"] or None, str(status["runtime"]),
                                  bool(status["json"]))
            sys.stdout.flush()  # a reader that left (`| head -1`) is found here
        except BrokenPipeError:  # as click: nothing said, exit 1
            fast_exit(1)
        except BaseException as exc:  # noqa: BLE001  (every error gets its message and code)
            exit_for(exc)
        fast_exit(code)
    options = plain_reset_options(sys.argv[1:])
    if options is not None:
        try:
            done = _reset_in_place(options["profile"], options["config"])
        except BaseException as exc:  # noqa: BLE001  (every error gets its message and code)
            exit_for(exc)
        if done:
            fast_exit(0)
    from devenv.cli.main import run as run_click  # the hand-over: click is imported from here on

    run_click()


def plain_reset_options(args: list[str]) -> dict[str, str | None] | None:
    """`reset` with only --profile/-p and --config (as `X` or `=X`) -> their values; else None.

    Unset options come from DEVENV_PROFILE and DEVENV_CONFIG, as click's envvar would take them.
    """
    found = _plain_options(args, "reset", RESET_OPTIONS)
    if found is None:
        return None
    return {"profile": str(found.get("profile") or os.environ.get("DEVENV_PROFILE") or "dev"),
            "config": str(found.get("config") or os.environ.get("DEVENV_CONFIG") or "") or None}


def plain_status_options(args: list[str]) -> dict[str, str | bool | None] | None:
    """`status` with only --profile/-p, --config, --runtime/-r (as `X` or `=X`) and --json -> their
    values; else None (click's: --help, a runtime it does not know, a folder as --config ...).

    Unset options come from DEVENV_PROFILE, DEVENV_CONFIG and DEVENV_RUNTIME, as click's envvar would take them.
    """
    from devenv.runtime.plan import RUNTIME_NAMES

    found = _plain_options(args, "status", STATUS_OPTIONS, STATUS_FLAGS)
    if found is None:
        return None
    config = str(found.get("config") or os.environ.get("DEVENV_CONFIG") or "") or None
    runtime = found.get("runtime") or os.environ.get("DEVENV_RUNTIME") or "auto"
    if runtime not in RUNTIME_NAMES or (config is not None and os.path.isdir(config)):
        return None  # click's messages
    return {"profile": str(found.get("profile") or os.environ.get("DEVENV_PROFILE") or "dev"),
            "config": config, "runtime": str(runtime), "json": bool(found.get("json"))}


def _plain_options(args: list[str], command: str, options: dict[str, str],
                   flags: dict[str, str] | None = None) -> dict[str, str | bool] | None:
    """`command` followed by `options` (each once, as `--name X` or `--name=X`; short ones as `-p X`)
    and `flags` -> {key: value, flag key: True}; None for anything else (click's business)."""
    if not args or args[0] != command:
        return None
    found: dict[str, str | bool] = {}
    flags = flags or {}
    rest = args[1:]
    while rest:
        arg = rest.pop(0)
        if arg in flags and flags[arg] not in found:
            found[flags[arg]] = True
            continue
        name, eq, value = arg.partition("=")
        if name not in options or (not name.startswith("--") and eq) or options[name] in found:
            return None  # click's business: its forms, its messages
        if not eq:
            if not rest or rest[0].startswith("-"):
                return None  # click's message for a missing value, or an option we do not take
            value = rest.pop(0)
        if not value:
            return None
        found[options[name]] = value
    return found


def _reset_in_place(profile: str, config: str | None) -> bool:
    """`devenv reset` by an in-place restore; False, having changed nothing, when it takes more."""
    from devenv.db.reset import reset
    from devenv.config.resolve import load_stack_cached

    stack = load_stack_cached(config, profile)
    if stack.warnings:  # printed by devenv.cli.main
        return False
    ensure_forwards(stack)  # an ssh:// engine's ports: ours, or exit 5
    result = reset(stack, in_place_only=True, say=say)
    if result is None:  # a clone: devenv.cli.main's reset, with psycopg
        return False
    say(reset_summary(stack, result))
    return True
