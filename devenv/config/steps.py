"""devenv.yaml's `schema:` and `seed:` lists -> the Stack's steps (devenv.config.stack.Step).

A step is `{sql: FOLDER}` (its `*.sql` files, with the ledger) or `{run: COMMAND, inputs: [PATHS]}`
(a command split like a shell line, no shell, or a list of words; `inputs`, the files and folders
whose content keys the template). Every error names the file, the line and the key, with a hint.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Protocol

from devenv.config.rules import control_character
from devenv.config.stack import DEFAULT_STEPS, Step
from devenv.errors import ConfigError


class Parser(Protocol):
    """What of devenv.config.settings' parser this module uses."""

    path: Path

    def fail(self, keypath: str, message: str, hint: str) -> ConfigError: ...

    def mapping(self, value: Any, keypath: str, allowed: set[str] | None) -> dict[str, Any]: ...

PARTS = ("schema", "seed")
STEP_KEYS = {"sql", "run", "inputs"}
_EXAMPLE = "e.g. `- run: alembic upgrade head` with `inputs: [alembic.ini, migrations]`, or `- sql: seeds/schema`"


def parse_steps(parser: Parser, top: dict[str, Any]) -> tuple[Step, ...]:
    """The steps of devenv.yaml (`schema:` then `seed:`); each part absent is its default."""
    steps: list[Step] = []
    for part in PARTS:
        if part not in top:
            steps += [step for step in DEFAULT_STEPS if step.part == part]
            continue
        raw = top[part]
        if not isinstance(raw, list):
            raise parser.fail(part, f"expected a list of steps, got {'nothing' if raw is None else type(raw).__name__}",
                              hint=f"write each step on a `- ` line below `{part}:`, {_EXAMPLE}; "
                              f"remove `{part}:` for the default.")
        steps += [_step(parser, part, index, body) for index, body in enumerate(raw)]
    return tuple(steps)


def _step(parser: Parser, part: str, index: int, body: Any) -> Step:
    keypath = f"{part}.{index}"
    name = f"{part} step {index + 1}"
    if not isinstance(body, dict):
        raise parser.fail(keypath, f"{name}: expected `sql:` or `run:`, got {type(body).__name__}",
                          hint=f"a step is a mapping, {_EXAMPLE}.")
    body = parser.mapping(body, keypath, STEP_KEYS)
    if ("sql" in body) == ("run" in body):
        raise parser.fail(keypath, f"{name}: {'both `sql:` and `run:`' if 'sql' in body else 'neither `sql:` nor `run:`'}",
                          hint=f"a step either applies a folder of SQL files or runs a command: {_EXAMPLE}; "
                          "write two steps for both.")
    if "sql" in body:
        if "inputs" in body:
            raise parser.fail(f"{keypath}.inputs", f"{name}: `inputs:` belongs to a `run:` step",
                              hint="a `sql:` folder's files key the template themselves: remove `inputs:`.")
        path = _path(parser, f"{keypath}.sql", name, body["sql"], folder=True)
        return Step(part, "sql", index + 1, path=path, source=str(parser.path), keypath=keypath)
    argv = _argv(parser, f"{keypath}.run", name, body["run"])
    raw_inputs = body.get("inputs", [])
    if not isinstance(raw_inputs, list):
        raise parser.fail(f"{keypath}.inputs", f"{name}: expected a list of paths, got {type(raw_inputs).__name__}",
                          hint="write e.g. `inputs: [alembic.ini, migrations]` (files or folders, relative to the project).")
    inputs = tuple(_path(parser, f"{keypath}.inputs", name, value) for value in raw_inputs)
    return Step(part, "run", index + 1, argv=argv, inputs=inputs, source=str(parser.path), keypath=keypath)


def _argv(parser: Parser, keypath: str, name: str, value: Any) -> tuple[str, ...]:
    hint = "write the command as on a shell line (`run: alembic upgrade head`; no pipes or `&&`: no shell runs it) " \
           "or as a list of words (`run: [alembic, upgrade, head]`)."
    if isinstance(value, str):
        bad = control_character(value)
        if bad is not None:
            raise parser.fail(keypath, f"{name}: the command contains a control character ({bad})", hint=hint)
        try:
            words = shlex.split(value)
        except ValueError as exc:  # "No closing quotation"
            raise parser.fail(keypath, f"{name}: cannot split {value!r}: {exc}", hint=hint) from None
    elif isinstance(value, list):
        if not all(isinstance(word, str) for word in value):
            raise parser.fail(keypath, f"{name}: every word of the command must be a string", hint=hint + " Quote numbers.")
        for word in value:
            bad = control_character(word)
            if bad is not None or "\0" in word:
                raise parser.fail(keypath, f"{name}: {word!r} contains a control character ({bad})", hint=hint)
        words = list(value)
    else:
        raise parser.fail(keypath, f"{name}: {'an empty command' if value is None else 'a ' + type(value).__name__ + ' is not a command'}",
                          hint=hint)
    if not words or not words[0].strip():
        raise parser.fail(keypath, f"{name}: an empty command", hint=hint)
    return tuple(words)


def _path(parser: Parser, keypath: str, name: str, value: Any, folder: bool = False) -> str:
    """A path relative to the project root (for `sql:` not a file), as posix text. Whether it
    exists is checked when the steps are needed (devenv.db.stepkeys.check_inputs), not here."""
    what = "a folder of .sql files" if folder else "a file or folder"
    hint = (f"write {what} relative to the project directory (where devenv.yaml is), "
            + ("e.g. `sql: seeds/schema`." if folder else "e.g. `inputs: [alembic.ini, migrations]`."))
    if not isinstance(value, str) or not value.strip():
        raise parser.fail(keypath, f"{name}: {value!r} is not a path", hint=hint)
    bad = control_character(value)
    if bad is not None:
        raise parser.fail(keypath, f"{name}: {value!r} contains a control character ({bad})", hint=hint)
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        raise parser.fail(keypath, f"{name}: {value!r} is outside the project directory", hint=hint)
    full = parser.path.parent / path
    if folder and full.exists() and not full.is_dir():
        raise parser.fail(keypath, f"{name}: {value!r} is not a folder", hint=hint + " Fix the path.")
    text = path.as_posix()
    return "." if text in ("", ".") else text

