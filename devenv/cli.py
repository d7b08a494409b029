"""The `devenv` command line: the only module that imports click.

Each command is a thin shell over the domain modules, imported inside the command so that
`devenv --help` loads neither docker, psycopg, redis, jinja2 nor yaml. Every DevenvError is
printed as `error: ...` plus a hint and exits with its class's code (see devenv.errors).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from devenv.errors import DevenvError

if TYPE_CHECKING:
    from devenv.stack import Stack

RUNTIMES = ("auto", "native", "docker")
ENV_FORMATS = ("dotenv", "shell", "json", "github")


def _profile_option(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--config", "config_path", envvar="DEVENV_CONFIG", type=click.Path(dir_okay=False),
        help="Path to devenv.yaml (default: the nearest one upwards) [env: DEVENV_CONFIG].",
    )(func)
    return click.option(
        "--profile", "-p", envvar="DEVENV_PROFILE", default="dev", show_default=True,
        help="Settings profile: a column of the settings tables [env: DEVENV_PROFILE].",
    )(func)


def load_stack(config_path: str | None, profile: str) -> "Stack":
    """devenv.yaml -> validated Stack for one profile; warnings go to stderr."""
    from devenv.settings import find_config, load_config
    from devenv.stack import build_stack

    config = load_config(find_config(config_path))
    stack = build_stack(config, profile)
    for warning in stack.warnings:
        click.echo(f"warning: {warning}", err=True)
    return stack


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, envvar="DEVENV_DEBUG", help="Show tracebacks [env: DEVENV_DEBUG].")
@click.version_option(package_name="devenv", prog_name="devenv")
def cli(debug: bool) -> None:
    """TaskFlow's PostgreSQL + PgBouncer + Redis stack in one command.

    Settings come from the tables in devenv.yaml; `devenv up` renders the config files,
    starts the three servers (Docker containers or local processes), waits until they are
    healthy and applies the schema and seed data.
    """


@cli.command()
@_profile_option
@click.option("--out", type=click.Path(file_okay=False), help="Directory to write into (default .devenv/<profile>/).")
def render(profile: str, config_path: str | None, out: str | None) -> None:
    """Write docker-compose.yml and the server config files for a profile."""
    from devenv.render import render as render_stack

    stack = load_stack(config_path, profile)
    for path in render_stack(stack, Path(out) if out else None):
        click.echo(str(path))


@cli.command()
@_profile_option
@click.option("--diff", nargs=2, metavar="A B", help="Show two profiles side by side, differing rows marked.")
def settings(profile: str, config_path: str | None, diff: tuple[str, str] | None) -> None:
    """Print the settings tables for a profile (or two profiles side by side)."""
    from devenv.settings import find_config, load_config
    from devenv.stack import build_stack

    config = load_config(find_config(config_path))
    profiles = list(diff) if diff else [profile]
    stacks = [build_stack(config, name) for name in profiles]
    click.echo(format_settings_table(stacks))


def format_settings_table(stacks: list["Stack"]) -> str:
    """A Markdown table, one row per setting, one column per profile (like CON-003's table)."""
    header = ["Service", "Setting", *(s.profile for s in stacks)]
    rows: list[list[str]] = []
    for service in ("postgres", "pgbouncer", "redis"):
        names: list[str] = []
        for stack in stacks:
            for name in getattr(stack, service).settings:
                if name not in names:
                    names.append(name)
        for name in names:
            values = [getattr(s, service).settings.get(name, "(server default)") for s in stacks]
            rows.append([service, f"`{name}`", *values])
    if len(stacks) > 1:
        header.append("differs")
        for row in rows:
            row.append("*" if len(set(row[2:])) > 1 else "")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


def _print_error(exc: DevenvError) -> None:
    click.echo(f"error: {exc.message}", err=True)
    log_tail = getattr(exc, "log_tail", "")
    if log_tail:
        click.echo(log_tail.rstrip("\n"), err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map errors to messages and exit codes."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("DEVENV_DEBUG", "") not in ("", "0")
    try:
        code = cli.main(args=args, prog_name="devenv", standalone_mode=False)
    except DevenvError as exc:
        if debug:
            raise
        _print_error(exc)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: say so briefly; --debug shows the traceback
        if debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: rerun with --debug for the traceback, and report it.", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
