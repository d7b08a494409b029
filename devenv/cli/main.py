"""The `devenv` click commands: the only module that imports click.

Each command is a thin shell over the domain modules, imported inside the command so that
`devenv --help` loads neither docker, psycopg, redis, jinja2 nor yaml. Every DevenvError is
printed as `error: ...` plus a hint and exits with its class's code (see devenv.errors and
devenv.cli.output, which prints for both entry points).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click

from devenv import errors, humanize
from devenv.cli.output import (add_masks, ci_mode, client_binary, debug_mode, ensure_forwards, exit_for, fast_exit,
                               github_actions, load_stack, print_json_error, reset_summary, say, secrets_in)
from devenv.config.stack import SERVICES
from devenv.runtime.plan import RUNTIME_NAMES

if TYPE_CHECKING:
    from devenv.config.stack import Stack

ENV_FORMATS = ("dotenv", "shell", "json", "github")


def _complete_profiles(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of --profile: the profiles of the devenv.yaml in use (none if it is unusable)."""
    from devenv.config.project import find_config
    from devenv.config.settings import load_config
    from devenv.errors import DevenvError

    try:
        config = load_config(find_config(ctx.params.get("config_path") or os.environ.get("DEVENV_CONFIG")))
    except DevenvError:
        return []
    return [name for name in config.profiles if name.startswith(incomplete)]


def _profile_option(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--config", "config_path", envvar="DEVENV_CONFIG", type=click.Path(dir_okay=False),
        help="Path to devenv.yaml (default: the nearest one upwards) [env: DEVENV_CONFIG].",
    )(func)
    return click.option(
        "--profile", "-p", envvar="DEVENV_PROFILE", default="dev", show_default=True, shell_complete=_complete_profiles,
        help="Settings profile: a column of the settings tables [env: DEVENV_PROFILE].",
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, envvar="DEVENV_DEBUG", help="Show tracebacks [env: DEVENV_DEBUG].")
@click.option("--ci", "ci_mode", is_flag=True,
              help="Plain timestamped lines, no colours, no prompts (on by default when CI is set).")
@click.version_option(package_name="devenv", prog_name="devenv")
def cli(debug: bool, ci_mode: bool) -> None:
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
    from devenv.config.project import find_config
    from devenv.config.settings import load_config
    from devenv.config.resolve import build_stack

    config = load_config(find_config(config_path))
    profiles = list(diff) if diff else [profile]
    stacks = [build_stack(config, name) for name in profiles]
    for stack in stacks:
        for warning in stack.warnings:
            say(f"warning: {stack.profile}: {warning}", "warning")
    click.echo(format_settings_table(stacks))


def format_settings_table(stacks: list["Stack"]) -> str:
    """A Markdown table, one row per setting, one column per profile (like CON-003's table)."""
    header = ["Service", "Setting", *(s.profile for s in stacks)]
    rows: list[list[str]] = []
    for service in SERVICES:
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


def _runtime_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--runtime", "-r", envvar="DEVENV_RUNTIME", default="auto", show_default=True,
        type=click.Choice(RUNTIME_NAMES),
        help="Where the services run: auto picks Docker when an engine answers, else native [env: DEVENV_RUNTIME].",
    )(func)


def stack_secrets(stack: Any) -> list[str]:
    """What a CI log must mask for a stack: its URLs, their passwords and the admin console's."""
    return secrets_in(stack.urls(), [stack.pgbouncer.admin_password])


def _emit_urls(urls: dict[str, str]) -> None:
    for key, value in urls.items():
        click.echo(f"{key}={value}")


@cli.command()
@_profile_option
@_runtime_option
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=1), help="Seconds to wait for health.")
@click.option("--no-seed", is_flag=True, help="Start the services but apply no schema or seed files.")
@click.option("--json", "as_json", is_flag=True,
              help="Print what it did and the URLs as one JSON object (progress stays on stderr).")
def up(profile: str, config_path: str | None, runtime: str, timeout: float, no_seed: bool, as_json: bool) -> None:
    """Start the stack, wait until healthy, apply schema and seed; print the URLs.

    Idempotent: with nothing changed it starts nothing, applies nothing and returns at once;
    a changed setting restarts (or reloads) only the service it belongs to.
    """
    import time

    from devenv.config.project import find_config, state_dir as profile_dir
    from devenv.clients.connect import ports_answer
    from devenv.state import dead_scratch_owners, fingerprint, pause_notes, processes_alive, read_state, restore_login_note

    started = time.monotonic()
    config = find_config(config_path)
    root = config.parent
    state_dir = profile_dir(root, profile)
    options = {"runtime": runtime, "seed": not no_seed}
    recorded = read_state(state_dir)
    masks = sys.stderr if as_json else None  # stdout holds nothing but the JSON object
    if (
        recorded.get("fingerprint") == fingerprint(root, config, profile, options)
        and (processes_alive(recorded.get("processes", {})) or recorded.get("liveness") == "ports")
        and _recorded_ports_answer(recorded.get("ports"), ports_answer, recorded.get("host"))
        and not dead_scratch_owners(state_dir)  # a killed command's scratch databases: the full path sweeps them
        and not restore_login_note(state_dir).exists()  # a killed cache save's login: the full path drops it
        # A PAUSE whose devenv was killed: the full path RESUMEs it (one listdir when there is none).
        and all(alive for *_, alive in pause_notes(state_dir))
        and isinstance(recorded.get("urls"), dict)
        and _recorded_env_file_ok(recorded.get("env_file"))
    ):
        if github_actions():
            add_masks(secrets_in(recorded["urls"]), masks)
        env_file = recorded.get("env_file")
        if isinstance(env_file, dict):  # missing or stale (another profile's, edited): written again
            from devenv import envfile

            envfile.sync(root, env_file["path"], env_file["block"], say)  # checked again, from the root
        seconds = time.monotonic() - started
        say(f"{profile}: up to date on {recorded.get('runtime')}, nothing to do ({seconds:.2f}s)")
        if as_json:
            _emit_json({"profile": profile, "runtime": recorded.get("runtime"), "up_to_date": True,
                        **_NOTHING_DONE, "seconds": round(seconds, 3), "urls": recorded["urls"],
                        "ports": dict(zip(SERVICES, recorded["ports"])),
                        "env_file": str(root / env_file["path"]) if isinstance(env_file, dict) else None})
        else:
            _emit_urls(recorded["urls"])
        return

    from devenv import lifecycle
    from devenv.config.resolve import load_stack_cached
    from devenv.runtime import get_runtime

    errors.sigterm_as_interrupt()  # every cleanup runs: a step's group killed, a half-built template dropped

    stack = load_stack(str(config), profile)
    if github_actions():  # before anything this `up` prints could hold them
        add_masks(stack_secrets(stack), masks)
    backend = get_runtime(runtime, say=say)
    say(f"{stack.name}: {backend.describe(stack)}")
    # Hashed once `up` has written what it remembers (secrets.json on first use, the stack's
    # name and ports: devenv.config.identity).
    report = lifecycle.up(stack, backend, timeout=timeout, seed=not no_seed, say=say,
                          fingerprint=lambda: fingerprint(root, config, profile, options), env_file=True)
    # Its name and ports as `up` settled them; what `up` remembered of them (identity.json,
    # ports.json) is an input of stack.json, renewed now rather than by the next `reset`.
    stack = report.stack or stack
    load_stack_cached(str(config), profile)  # (its warnings were said above)
    summary = "ready" if report.did_something() else "nothing changed"
    say(f"{stack.name}: {summary} on {report.runtime} in {report.seconds:.2f}s")
    if as_json:
        result = report.result
        _emit_json({"profile": profile, "runtime": report.runtime, "up_to_date": False,
                    "started": result.started, "restarted": result.restarted, "reloaded": result.reloaded,
                    "database_created": report.database_created, "applied": report.applied,
                    "seeded": report.database_created or bool(report.applied), "from_cache": result.from_cache,
                    "seconds": round(report.seconds, 3), "urls": stack.urls(),
                    "ports": {service.name: service.port for service in stack.services},
                    "env_file": report.env_file or None})
    else:
        _emit_urls(stack.urls())


# `up --json`'s fields for what a no-op `up` did: nothing.
_NOTHING_DONE: dict[str, Any] = {"started": [], "restarted": [], "reloaded": [], "database_created": False,
                                 "applied": [], "seeded": False, "from_cache": False}


def _emit_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps({"ok": True, **data}, indent=2))


def _json_errors(args: list[str]) -> bool:
    """Whether the command line is `up --json` (group flags first, as `main` puts them): its
    errors are a JSON object on stdout too (output.error_object)."""
    words = [arg for arg in args if arg not in ("--debug", "--ci")]
    return words[:1] == ["up"] and "--json" in words


def _recorded_env_file_ok(env_file: Any) -> bool:
    """Whether state.json's env_file record is absent or of the shape `up` writes: a path inside
    the project, relative to it, and a block (else the full path, which writes it anew)."""
    if env_file is None:
        return True
    from devenv.envfile import relative_parts

    return (isinstance(env_file, dict) and isinstance(env_file.get("path"), str)
            and relative_parts(env_file["path"]) is not None and isinstance(env_file.get("block"), str))


def _recorded_ports_answer(ports: Any, answer: Callable[..., bool], host: Any = None) -> bool:
    """The no-op `up`'s look at the recorded ports on the recorded host; False for a damaged record."""
    return isinstance(ports, list) and all(type(p) is int and 0 < p < 65536 for p in ports) and answer(ports, host=host)


@cli.command()
@_profile_option
@click.option("--hard", is_flag=True, help="Rebuild the template from the schema and seed files first.")
@click.option("--strategy", type=click.Choice(["auto", "restore", "clone", "copy"]), default="auto", show_default=True,
              help="restore: reload in place what was written (small data); clone: WAL_LOG copy of the template; copy: FILE_COPY.")
def reset(profile: str, config_path: str | None, hard: bool, strategy: str) -> None:
    """Put the database and Redis back to the freshly seeded state."""
    from devenv.db.reset import reset as reset_stack

    stack = load_stack(config_path, profile)
    result = reset_stack(stack, hard=hard, strategy=strategy, say=say)
    assert result is not None  # only in_place_only or redis_only leave the database
    say(reset_summary(stack, result))


# ---- snapshots, dump, restore (domain logic: devenv/snapshots.py, devenv/dumps.py) -----------


def _with_snapshots(config_path: str | None, profile: str, action: Callable[[Any], Any], lock: bool = True) -> Any:
    """Run `action(Snapshots)` for a profile, under its lock unless `lock` is False (reads)."""
    import contextlib

    from devenv.db.pauses import resume_orphaned
    from devenv.db.janitor import Janitor
    from devenv.db.snapshots import Snapshots
    from devenv.db.stepkeys import check_inputs
    from devenv.state import locked

    stack = load_stack(config_path, profile)
    check_inputs(stack)  # snapshots are of the template's key: a missing input is exit 3 naming its line
    janitor = Janitor(stack)
    import psycopg  # noqa: F401  (loaded before any clock starts: it is start-up, as for reset)

    try:
        with locked(stack.state_dir, on_wait=say) if lock else contextlib.nullcontext():
            if lock:
                for line in resume_orphaned(stack):  # pooled clients a killed devenv left paused
                    say(line)
            return action(Snapshots(janitor, say=say))
    finally:
        janitor.close()


def _timed(action: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """`action`'s result and the seconds it took (start-up and connecting excluded, as for reset)."""
    import time

    start = time.monotonic()
    return action(*args, **kwargs), time.monotonic() - start


@cli.group()
def snapshot() -> None:
    """Named copies of the database, near-instant: save before a migration, restore to go back.

    A snapshot is a template database on the same server (`<db>__snap_<NAME>`): it survives
    `down`/`up`, not `down --volumes`.
    """


@snapshot.command("save")
@_profile_option
@click.argument("name")
@click.option("--force", "-f", is_flag=True, help="Overwrite a snapshot of that name.")
def snapshot_save(profile: str, config_path: str | None, name: str, force: bool) -> None:
    """Save the database as snapshot NAME (a-z, 0-9, '_', '-'; up to 40)."""
    from devenv.db.snapshots import validate_name

    validate_name(name)  # before connecting: a bad name is an error even with the stack down
    snap, seconds = _with_snapshots(config_path, profile, lambda store: _timed(store.save, name, force=force))
    say(f"saved snapshot {snap.name} ({humanize.size(snap.size)}) in {seconds * 1000:.0f} ms")


@snapshot.command("restore")
@_profile_option
@click.argument("name")
def snapshot_restore(profile: str, config_path: str | None, name: str) -> None:
    """Replace the database with snapshot NAME (the snapshot is kept)."""
    from devenv.db.snapshots import validate_name

    validate_name(name)
    snap, seconds = _with_snapshots(config_path, profile, lambda store: _timed(store.restore, name))
    say(f"restored {snap.name} in {seconds * 1000:.0f} ms")


@snapshot.command("list")
@_profile_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def snapshot_list(profile: str, config_path: str | None, as_json: bool) -> None:
    """The snapshots: name, size and when each was saved (oldest first)."""
    from devenv.db.snapshots import Snapshots

    def listing(store: Snapshots) -> tuple[str, list[Any]]:
        return store.database, store.list_all()

    database, snaps = _with_snapshots(config_path, profile, listing, lock=False)
    if as_json:
        click.echo(json.dumps({"profile": profile, "database": database,
                               "snapshots": [s.as_json() for s in snaps]}, indent=2))
        return
    if not snaps:
        say(f"no snapshots of {database} (profile {profile}); `devenv snapshot save NAME` takes one")
        return
    rows = [("NAME", "SIZE", "CREATED")] + [
        (s.name, humanize.size(s.size), s.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if s.created_at else "?")
        for s in snaps]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@snapshot.command("rm")
@_profile_option
@click.argument("name")
def snapshot_rm(profile: str, config_path: str | None, name: str) -> None:
    """Delete snapshot NAME (its database)."""
    from devenv.db.snapshots import validate_name

    validate_name(name)
    snap = _with_snapshots(config_path, profile, lambda store: store.remove(name))
    say(f"removed snapshot {snap.name} ({snap.database})")


@cli.command()
@_profile_option
@_runtime_option
@click.argument("file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
def dump(profile: str, config_path: str | None, runtime: str, file: str | None) -> None:
    """Write a pg_dump (custom format) of the database to FILE, or to stdout with `-`.

    Default FILE: .devenv/dumps/<profile>-<timestamp>.dump, whose path is printed.
    `devenv restore FILE` loads it back.
    """
    from devenv.db import dumps
    from devenv.runtime import get_runtime

    stack = load_stack(config_path, profile)
    if file == "-":
        if sys.stdout.isatty():
            raise click.UsageError("refusing to write a binary archive to a terminal: redirect stdout, or name a FILE")
        dumps.dump(stack, get_runtime(runtime), click.get_binary_stream("stdout"), say=say)
        return
    if file and not Path(file).resolve().parent.is_dir():
        raise click.BadParameter(f"directory {Path(file).resolve().parent} does not exist", param_hint="FILE")
    path = Path(file) if file else dumps.default_dump_path(stack)
    dumps.dump(stack, get_runtime(runtime), path, say=say)
    click.echo(str(path))


@cli.command()
@_profile_option
@_runtime_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Replace the database without asking (required when stdin is not a terminal).")
def restore(profile: str, config_path: str | None, runtime: str, file: str, yes: bool) -> None:
    """Replace the database with FILE, a dump made by `devenv dump`.

    The dump is restored into a scratch database and swapped in only once complete: a
    failed restore leaves the data as it was. Asks first unless --yes.
    """
    from devenv.db.pauses import resume_orphaned
    from devenv.db import dumps
    from devenv.db.janitor import Janitor
    from devenv.runtime import get_runtime
    from devenv.state import locked

    stack = load_stack(config_path, profile)
    database = stack.postgres.database
    if not yes:
        if not sys.stdin.isatty() or ci_mode():  # CI mode never prompts
            raise click.UsageError(f"restore replaces database '{database}' (profile {profile}) and "
                                   f"{'CI mode does not ask' if ci_mode() else 'stdin is not a terminal'} "
                                   "to confirm it: pass --yes")
        if not click.confirm(f"Replace database '{database}' (profile {profile}) with {file}?", default=False, err=True):
            say("restore cancelled: nothing changed")
            sys.exit(1)
    janitor = Janitor(stack)
    try:
        with locked(stack.state_dir, on_wait=say):
            for line in resume_orphaned(stack):  # pooled clients a killed devenv left paused
                say(line)
            dumps.restore(stack, get_runtime(runtime), janitor, Path(file), say=say)
    finally:
        janitor.close()


@cli.command()
@_profile_option
@_runtime_option
@click.option("--volumes", "-v", is_flag=True, help="Also delete the data (database and Redis).")
def down(profile: str, config_path: str | None, runtime: str, volumes: bool) -> None:
    """Stop the stack; data is kept unless --volumes."""
    from devenv import lifecycle
    from devenv.runtime import get_runtime

    stack = load_stack(config_path, profile, need_secrets=False)  # stopping needs no password
    stopped = lifecycle.down(stack, get_runtime(runtime), volumes=volumes)
    what = f"stopped {', '.join(stopped)}" if stopped else "nothing was running"
    say(f"{stack.name}: {what}{'; data deleted' if volumes else ''}")


@cli.command()
@_profile_option
@_runtime_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(profile: str, config_path: str | None, runtime: str, as_json: bool) -> None:
    """Each service: its state, health and port; when up, the monitoring view (connections,
    PgBouncer pools, Redis memory, slow queries). Exits 1 when something is not healthy."""
    from devenv.cli.statuscmd import status_command  # devenv.cli.entry runs it without click

    if status_command(profile, config_path, runtime, as_json, click.echo):
        sys.exit(1)


@cli.command()
@_profile_option
@_runtime_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(profile: str, config_path: str | None, runtime: str, as_json: bool) -> None:
    """Check the machine and the stack: Docker, binaries, ports, disk, health, settings drift.

    One line per check (ok, warn or FAIL); exits 1 when any check FAILs. Drift compares each
    setting of the profile with what the running servers report, so a value changed by hand
    (ALTER SYSTEM, CONFIG SET) is caught.
    """
    from devenv import doctor as checks_module
    from devenv.runtime import get_runtime

    stack = load_stack(config_path, profile)
    checks = checks_module.run_checks(stack, get_runtime(runtime), requested=runtime)
    failed = checks_module.failed(checks)
    if as_json:
        click.echo(json.dumps({"profile": profile, "ok": not failed,
                               "checks": [check.to_json() for check in checks]}, indent=2))
    else:
        for line in checks_module.format_checks(checks):
            click.echo(line)
    if failed:
        sys.exit(1)


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per stack (keys in the README).")
def ls_command(as_json: bool) -> None:
    """Every devenv stack on this machine, across checkouts, profiles and runtimes: its checkout,
    profile, runtime, ports, state (running, partial, stopped, orphaned: its checkout is gone)
    and the size of its data."""
    from devenv import stacks

    stacks.show(as_json, click.echo, say)


@cli.command()
@click.argument("checkouts", nargs=-1, type=click.Path(file_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Remove without asking (required when stdin is not a terminal).")
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be removed.")
@click.option("--unrecorded", is_flag=True,
              help="Also Docker stacks that have no record (found by labels), on a local engine only. "
              "Careful on an engine others share: their checkouts are not on this disk.")
def prune(checkouts: tuple[str, ...], yes: bool, dry_run: bool, unrecorded: bool) -> None:
    """Remove the stacks whose checkout no longer exists (of CHECKOUTS only, when given):
    containers, network and volumes, native servers and data, and their records. Asks first."""
    from devenv import prune as pruning
    from devenv import stacks
    from devenv.errors import UsageError

    found, engine = stacks.gather(warn=say)
    notes: list[str] = []
    removals = pruning.plan(found, engine, list(checkouts) or None, unrecorded=unrecorded, notes=notes)
    for note in notes:
        say(note)
    if not removals:
        say("nothing to prune: no stack's checkout is gone" + (" (of those named)" if checkouts else ""))
        return
    click.echo(f"{'would remove' if dry_run else 'to remove'} {len(removals)} stack(s) whose checkout is gone:")
    for removal in removals:
        for line in removal.lines(humanize.size):
            click.echo(line)
    if dry_run:
        return
    if not yes:
        if not sys.stdin.isatty() or ci_mode():  # CI mode never prompts
            reason = "CI mode does not ask" if ci_mode() else "stdin is not a terminal"
            raise UsageError(f"prune removes the stacks above and {reason} to confirm it",
                             hint="pass --yes to remove them, or --dry-run to only list them.")
        if not click.confirm("Remove them?", default=False, err=True):
            say("prune cancelled: nothing removed")
            sys.exit(1)
    done = [removal for removal in removals if pruning.execute(removal, say)]
    for removal in done:
        entry = removal.stack.entry
        say(f"removed {stacks.printable(entry.checkout)} ({stacks.printable(entry.profile)}, {entry.runtime})")
    if len(done) < len(removals):
        say(f"{len(removals) - len(done)} stack(s) kept (see above); `devenv ls` shows them")


@cli.command("env")
@_profile_option
@click.option("--format", "fmt", type=click.Choice(ENV_FORMATS), default="dotenv", show_default=True,
              help="dotenv lines, shell `export` lines (for eval), JSON (the URLs), or the URLs appended to $GITHUB_ENV.")
def env_command(profile: str, config_path: str | None, fmt: str) -> None:
    """Print DATABASE_URL (pooled), DIRECT_DATABASE_URL and REDIS_URL; dotenv and shell also
    libpq's PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD (and PGSSLMODE with ssl on)."""
    import shlex

    from devenv.envfile import dotenv_lines

    stack = load_stack(config_path, profile)
    urls = stack.urls()
    if fmt == "json":
        click.echo(json.dumps(urls, indent=2))
    elif fmt == "shell":
        for key, value in stack.env().items():
            click.echo(f"export {key}={shlex.quote(value)}")
    elif fmt == "github":
        target = os.environ.get("GITHUB_ENV")
        if not target:
            raise click.UsageError("--format github appends to the file named by $GITHUB_ENV, which is not set")
        # $GITHUB_ENV's values are not masked by the runner: every later step could print them.
        add_masks(stack_secrets(stack))
        with open(target, "a", encoding="utf-8") as handle:
            for key, value in urls.items():
                handle.write(f"{key}={value}\n")
        say(f"wrote {', '.join(urls)} to {target}")
    else:
        for line in dotenv_lines(stack.env()):
            click.echo(line)


@cli.command()
@_profile_option
@_runtime_option
@click.argument("service", required=False, type=click.Choice(SERVICES))
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", "-n", "lines", type=int, default=None, help="Only the last N lines.")
def logs(profile: str, config_path: str | None, runtime: str, service: str | None, follow: bool, lines: int | None) -> None:
    """Print a service's log (all three, prefixed, without SERVICE)."""
    from devenv.runtime import get_runtime

    stack = load_stack(config_path, profile)
    backend = get_runtime(runtime)
    if lines is not None and service and not follow:
        click.echo(backend.log_tail(stack, service, lines))
        return
    try:
        for line in backend.follow_logs(stack, service, follow):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@cli.command(context_settings={"ignore_unknown_options": True})
@_profile_option
@click.option("--pooled", is_flag=True, help="Connect through PgBouncer instead of directly.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def psql(profile: str, config_path: str | None, pooled: bool, args: tuple[str, ...]) -> None:
    """Open psql on the database (extra arguments go to psql)."""
    stack = load_stack(config_path, profile)
    binary = client_binary("psql", "install the PostgreSQL client: `apt-get install postgresql-client` or `brew install libpq`.")
    url = stack.urls()["DATABASE_URL" if pooled else "DIRECT_DATABASE_URL"]
    # The password goes in psql's environment, not on its command line, where `ps` shows it to everyone.
    scheme, _, rest = url.partition("://")
    userinfo, _, where = rest.partition("@")
    env = dict(os.environ, PGPASSWORD=stack.postgres.password)
    os.execve(binary, [binary, f"{scheme}://{userinfo.partition(':')[0]}@{where}", *args], env)


@cli.command("redis-cli", context_settings={"ignore_unknown_options": True})
@_profile_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def redis_cli(profile: str, config_path: str | None, args: tuple[str, ...]) -> None:
    """Open redis-cli on the stack's Redis (extra arguments go to redis-cli)."""
    stack = load_stack(config_path, profile)
    binary = client_binary("redis-cli", "install it: `apt-get install redis-tools` or `brew install redis`.")
    env = dict(os.environ, REDISCLI_AUTH=stack.redis.password)  # not on the command line, where ps shows it
    os.execve(binary, [binary, "-h", stack.host, "-p", str(stack.redis.port), *args], env)


def run() -> NoReturn:
    """The `devenv` command through click (devenv.cli.entry.run, the console script, hands over
    every form but a plain `devenv reset`): `main`, then a quick exit (output.fast_exit)."""
    try:
        main()
    except SystemExit as exc:
        fast_exit(exc.code)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI and map errors to messages and exit codes (raises SystemExit; see `run`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_mode(args)
    if "--debug" in args:  # accepted anywhere, e.g. `devenv up --debug`
        args = ["--debug", *(a for a in args if a != "--debug")]
    try:
        code = cli.main(args=args, prog_name="devenv", standalone_mode=False)
    except (Exception, KeyboardInterrupt) as exc:
        if _json_errors(args):  # `up --json`: stdout holds one JSON object, an error's too
            print_json_error(exc)
        exit_for(exc, debug)
    sys.exit(code if isinstance(code, int) else 0)
