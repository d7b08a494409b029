"""The stack's lifecycle, runtime-agnostic: up (start, wait healthy, schema and seed), down, status."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from devenv import health
from devenv.errors import HealthCheckError
from devenv.runtime.base import Runtime, UpResult
from devenv.runtime.ports import reserve_ports
from devenv.config.identity import record_reach
from devenv.config.stack import Stack
from devenv.state import clear_state, dead_scratch_owners, forget_scratch_owners, locked, restore_login_note, write_state

Say = Callable[[str], None]


@dataclass
class UpReport:
    """What one `devenv up` did, for the CLI and the Python API."""

    runtime: str
    result: UpResult
    healthy_after: dict[str, float] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    database_created: bool = False
    template: str = ""
    template_built: bool = False  # a new template was built (steps or files changed), the data kept or not
    seconds: float = 0.0
    env_file: str = ""  # the env_file kept up to date (devenv.yaml's `env_file:`), if any
    stack: Stack | None = None  # the stack as it came up: its name and ports as this `up` settled them

    def did_something(self) -> bool:
        """Whether this `up` changed anything: started, restarted or reloaded a service, created
        the database, applied files or steps, or built a new template."""
        return bool(self.result.changed or self.applied or self.database_created or self.template_built)


def up(
    stack: Stack,
    runtime: Runtime,
    *,
    timeout: float = 60.0,
    seed: bool = True,
    say: Say = lambda line: None,
    fingerprint: str | Callable[[], str] | None = None,
    env_file: bool = False,
) -> UpReport:
    """Bring the stack up and seeded; idempotent. Records the state for the fast no-op path
    (`fingerprint`, or a function computing it once this `up` has written what it remembers).

    First the stack gets its name on the runtime (Runtime.identify) and its host ports
    (devenv.runtime.ports.reserve_ports: a port another checkout or program holds moves, and
    stays moved for this checkout); `UpReport.stack` is the stack with both.

    `env_file` (the CLI's `up`): keep devenv.yaml's `env_file:` block current. The Python API
    and the pytest plugin leave it alone: a test run's `ci` stack must not take over the .env
    a developer's application reads.
    """
    from devenv.db.pauses import resume_orphaned
    from devenv.db.seeds import ensure_database
    from devenv.db.janitor import Janitor
    from devenv.db.roles import ensure_roles

    start = time.monotonic()
    if seed:  # before anything starts: a missing migrations folder is exit 3 naming its line
        from devenv.db.stepkeys import check_inputs

        check_inputs(stack)
    # No driver is imported ahead: health checks and the "already seeded?" check speak pgwire,
    # so a cold `up` with data, or one from the cache, never loads psycopg (150-300 ms here).
    with contextlib.ExitStack() as scope:
        scope.enter_context(locked(stack.state_dir, on_wait=say))
        _refuse_second_place(stack, runtime)
        stack = runtime.identify(stack)
        # Where its ports are reached, for the commands after this one (they build the Stack from it).
        record_reach(stack.state_dir, stack.root, stack.reach_host, stack.bind_ip)
        running = {state.name: state.port for state in runtime.states(stack) if state.running}
        stack = reserve_ports(stack, runtime.name, running, say)
        scope.enter_context(_stop_started_on_failure(stack, runtime, say))
        for line in resume_orphaned(stack):  # pooled clients a killed devenv left paused
            say(line)
        # Commands killed since the last `up` (their scratch databases are swept below).
        killed = dead_scratch_owners(stack.state_dir)
        swept: list[list[str]] = []
        result = runtime.up(stack, say, use_cache=seed and not os.environ.get("DEVENV_NO_CACHE"))
        for note in result.notes:
            say(note)
        if result.started or result.restarted:
            verb = ", ".join(result.started + result.restarted)
            say(f"starting {verb}; waiting until healthy (timeout {timeout:.0f}s)")
        report = UpReport(runtime=runtime.name, result=result, stack=stack)

        forward: list[bool] = []  # an existing database to bring forward once every service is healthy

        def seed_database(fresh: bool = False) -> None:
            seed_start = time.monotonic()
            janitor = Janitor(stack, say=say)
            try:
                swept.append(janitor.sweep())
                # The template is built first (SchemaError names a failing file or step; nothing
                # else is touched then); in the image's empty POSTGRES_DB database when its entrypoint made one.
                report.database_created = janitor.create(stack.postgres.database, adopt=fresh)
                report.template = janitor.ensure_template()
                report.template_built = bool(janitor.built)
            finally:
                janitor.close()
            if report.database_created:
                say(f"schema+seed: created {stack.postgres.database} from {report.template} "
                    f"({time.monotonic() - seed_start:.2f}s)")
            else:
                if report.template_built:  # e.g. only a seed `run:` step changed: nothing else may show
                    say(f"schema+seed: built template {report.template} ({time.monotonic() - seed_start:.2f}s); "
                        f"`devenv reset` serves it")
                forward.append(True)

        def bring_forward() -> None:
            from devenv.db.steps import bring_forward as forward_steps

            # An existing database gets what it lacks: the SQL files, each in its own transaction,
            # and (in a copy swapped in: PgBouncer holds its clients meanwhile) the schema's run steps.
            seed_start = time.monotonic()
            janitor = Janitor(stack, say=say)
            try:
                report.applied = forward_steps(janitor, stack, say)
            finally:
                janitor.close()
            if report.applied:
                say(f"schema+seed: applied {', '.join(report.applied)} ({time.monotonic() - seed_start:.2f}s)")

        background: list[threading.Thread] = []
        failed: list[BaseException] = []
        seeding = threading.Event()  # set when the "seed check" thread is done (or never started)
        seeding.set()
        scope.enter_context(_end_steps_on_interrupt(seeding))

        def roles() -> None:
            handed = ensure_roles(stack)  # drops a cache save's one-time login too
            restore_login_note(stack.state_dir).unlink(missing_ok=True)
            if handed:
                say(f"postgres: handed {', '.join(handed)} and everything in them to {stack.postgres.user}")

        def check_then_seed() -> None:
            try:
                if result.roles_pending or restore_login_note(stack.state_dir).exists():
                    roles()
                if not seeded_and_current(stack):
                    roles()
                    seed_database()
            except BaseException as exc:  # re-raised in the main thread below
                failed.append(exc)
            finally:
                seeding.set()

        def on_healthy(service: str) -> None:
            if service != "postgres":
                return
            if not seed:
                roles()
                report.database_created = ensure_database(stack)
                return
            if result.from_cache:
                return  # the cached data directory holds this very template, database and roles
            if result.fresh_database:
                roles()  # initdb (or the image) made only devenv's admin role
                seed_database(fresh=True)  # before PgBouncer's pooled check, which needs the database
                return
            # An existing cluster is almost always seeded and current: find that out beside
            # PgBouncer's checks rather than before them (and seed there if it is not).
            thread = threading.Thread(target=check_then_seed, name="seed check", daemon=True)
            seeding.clear()
            thread.start()
            background.append(thread)

        def gone(service: str) -> str | None:
            if failed:
                return "was not waited for: seeding failed"  # the seeding error is raised instead
            return runtime.exit_status(stack, service)

        try:
            report.healthy_after = health.wait_until_healthy(
                health.stack_checks(stack),
                timeout=timeout,
                progress=say if result.changed else (lambda line: None),
                gone=gone,
                log_tail=lambda service: runtime.log_tail(stack, service),
                on_healthy=on_healthy,
                started=lambda service: runtime.started(stack, service),
            )
        except HealthCheckError:
            for thread in background:
                thread.join()
            if failed:
                raise failed[0] from None  # e.g. SchemaError naming the file, not "not healthy"
            raise
        for thread in background:
            thread.join()
        if failed:
            raise failed[0]
        if forward:
            bring_forward()
        if killed and not swept:  # seeding had nothing to do: sweep what the killed commands left
            janitor = Janitor(stack)
            try:
                swept.append(janitor.sweep())
            finally:
                janitor.close()
        litter = [name for names in swept for name in names]
        if litter:
            say(f"swept {len(litter)} scratch database(s) left by killed commands: {', '.join(litter)}")
        forget_scratch_owners(stack.state_dir, killed)
        if result.cache_key:
            # The first seeded start of this setup: keep it for the next cold `up` anywhere.
            runtime.save_cache(stack, result.cache_key, say)
            # The save may have restarted Postgres (and PgBouncer): ready means the pool reaches it again.
            health.wait_until_healthy(
                {"postgres": health.postgres_checks(stack), "pgbouncer": health.pgbouncer_checks(stack)},
                timeout=timeout, progress=lambda line: None,
                gone=lambda service: runtime.exit_status(stack, service),
                log_tail=lambda service: runtime.log_tail(stack, service),
            )
        _register(stack, runtime)
        report.seconds = time.monotonic() - start
        if fingerprint:
            from devenv.db.stepkeys import recorded_inputs
            from devenv.state import note_inputs

            note_inputs(stack.state_dir, recorded_inputs(stack))  # before the fingerprint, which reads it
            write_state(stack.state_dir, {
                "fingerprint": fingerprint() if callable(fingerprint) else fingerprint,
                "runtime": runtime.name,
                "engine": runtime.engine_address(),  # where `auto` looks for the stack's containers again
                "ports": [s.port for s in stack.services],
                "host": stack.host,  # where the ports are reached: 127.0.0.1 or a remote engine's host
                "urls": stack.urls(),
                # For the fast no-op path: checked against /proc without loading the runtime.
                "processes": {s.name: [s.pid, s.process_name] for s in runtime.states(stack) if s.pid},
                # A remote engine's processes are not in this /proc: its ports, published on its host,
                # answer only while the containers run. (Not so over SSH: this machine's ends of the
                # forwards accept whatever runs there; every `up` then asks the engine.)
                "liveness": "ports" if stack.reach_host else "processes",
                "seeded": seed,
                **({"env_file": env_file_record(stack)} if env_file and stack.env_file else {}),
            })
    if env_file and stack.env_file:  # after the lock: a bad env file is an error to fix, not a reason to stop the servers
        from devenv import envfile

        record = env_file_record(stack)
        envfile.sync(stack.root, record["path"], record["block"], say)
        report.env_file = str(stack.root / stack.env_file)
    return report


def env_file_record(stack: Stack) -> dict[str, str]:
    """Where the stack's env_file is, relative to the project root (the no-op `up` rebuilds it
    from there: an absolute path in state.json is never trusted), and the block it holds."""
    from devenv import envfile

    return {"path": stack.env_file, "block": envfile.block(stack.profile, stack.env())}


@contextlib.contextmanager
def _stop_started_on_failure(stack: Stack, runtime: Runtime, say: Say) -> Iterator[None]:
    """On any failure of `up`, what it started goes again (what ran before it stays): no
    half-started stack is left behind, e.g. PgBouncer and Redis beside a Postgres that failed."""
    try:
        yield
    except BaseException:
        try:
            stopped = runtime.stop_started(stack)
        except Exception as exc:  # noqa: BLE001  (the first error is the one to report)
            say(f"could not stop what this `up` started: {exc}")
        else:
            if stopped:
                say(f"stopped {', '.join(stopped)}, which this `up` had started")
        _remember_engine(stack, runtime)
        raise


def _remember_engine(stack: Stack, runtime: Runtime) -> None:
    """After a failed first `up` that left containers on an engine (created, or stopped again):
    record where, so that `down` (and `auto`) look there, not on the engine they would find now."""
    from devenv.state import read_state

    if runtime.name != "docker" or read_state(stack.state_dir).get("runtime"):
        return
    with contextlib.suppress(Exception):  # only a record: the first error is the one to report
        if any(state.detail != "not started" for state in runtime.states(stack)):
            write_state(stack.state_dir, {"runtime": "docker", "engine": runtime.engine_address()})


@contextlib.contextmanager
def _end_steps_on_interrupt(seeding: threading.Event, wait: float = 15.0) -> Iterator[None]:
    """Ctrl-C (or SIGTERM, devenv.errors.Terminated) lands in the main thread while a step may
    run in the "seed check" thread, whose cleanup would then never run: kill the running steps'
    process groups and give the thread `wait` seconds to drop what it was building (its
    `__building_*` database) before the exception goes on. (An Event, not Thread.is_alive:
    a join that Ctrl-C interrupts marks the thread stopped while it still runs, CPython < 3.13.)"""
    try:
        yield
    except BaseException:
        if not seeding.is_set():
            from devenv.db import steps

            steps.kill_running()  # and no new step starts meanwhile
            try:
                seeding.wait(wait)
            finally:
                steps.resume_steps()
        raise


def seeded_and_current(stack: Stack) -> bool:
    """Whether seeding would change nothing: the current template and the application database
    exist, no stale template or scratch database is left to sweep, and the ledger holds every
    SQL file of the steps with its checksum and every schema `run:` step with its key. Any
    doubt answers False and the full path (Janitor) decides.

    Two one-line queries in one devenv.clients.pgwire session: on a cold `up` with existing data this spares
    the psycopg import, which costs more than starting the three servers.
    """
    from devenv.clients import connect, pgwire
    from devenv.db.seeds import LEDGER_TABLE, step_files
    import re

    from devenv.db.janitor import SCRATCH_PATTERN, TEMPLATE_SHAPE
    from devenv.db.stepkeys import ledger_name, run_key, run_steps
    from devenv.db.versions import read_versions, template_versions, versions_behind
    from devenv.db.template import template_name, template_prefix

    pg = stack.postgres
    wanted = {seed.key: seed.checksum for seed in step_files(stack)}
    # Seed run steps are not run again on existing data: their row may rightly be old.
    wanted.update({ledger_name(step): run_key(stack.root, step) for step in run_steps(stack, "schema")})
    if not wanted:
        return False
    try:
        # pg_database is shared by every database: one session in the application database
        # answers both questions (and fails at once, 3D000, when it does not exist yet).
        with connect.postgres(stack, timeout=10.0, query_timeout=10.0) as conn:
            # The role stores the very secret PgBouncer's userlist holds (the application may
            # have set another password since): else roles.ensure_roles sets it again.
            if conn.scram_salt != pgwire.scram_salt_of(pg.password_secret):
                return False
            names = {row[0] for row in conn.query(
                f"SELECT datname FROM pg_database WHERE datname = {pgwire.literal(pg.database)} "
                f"OR datname ~ {pgwire.literal('^' + re.escape(template_prefix(stack)) + TEMPLATE_SHAPE)} "
                f"OR datname ~ {pgwire.literal(SCRATCH_PATTERN)}")}
            template = template_name(stack, conn.server_major)
            if names != {pg.database, template}:
                return False
            applied = dict(conn.query(f"SELECT file, checksum FROM {LEDGER_TABLE}"))
            # A migration tool's table moved since (a downgrade by hand): bring_forward runs it again.
            if versions_behind(read_versions(conn.query), template_versions(conn.query, template)):
                return False
    except (pgwire.PgError, OSError, ValueError):
        return False
    return all(applied.get(key) == checksum for key, checksum in wanted.items())


def _refuse_second_place(stack: Stack, runtime: Runtime, doing: str = "up") -> None:
    """StateError when the last `up` left this stack on another runtime or engine (state.json):
    a second copy there would take other ports and data, and later commands would see only one;
    a `down` there would stop nothing and forget the stack that runs (`doing`: "up" or "down").
    A recorded engine that does not answer is a DependencyError naming why (a dropped network,
    an ssh agent gone): never taken for an engine gone for good."""
    from devenv.errors import DevenvError, StateError
    from devenv.state import read_state

    recorded = read_state(stack.state_dir)
    was, engine = recorded.get("runtime"), recorded.get("engine")
    if was not in ("native", "docker"):
        return
    chosen = runtime.resolve(stack)
    if was == chosen.name and (was == "native" or not isinstance(engine, str) or engine in ("", chosen.engine_address())):
        return
    if was == "docker" and isinstance(engine, str) and engine:
        from devenv.runtime.auto import engine_silence, recorded_engine_error

        why = engine_silence(engine)
        if why:
            raise recorded_engine_error(stack, engine, why)
    from devenv.config.external import redact  # a password someone put in DOCKER_HOST is never shown

    where = f"the {was} runtime" + (f" (engine {redact(engine)})" if was == "docker" and engine else "")
    here = chosen.name
    if chosen.name == "docker":
        with contextlib.suppress(DevenvError):  # no engine found at all: named by the runtime alone
            here = f"docker (engine {redact(chosen.engine_address())})"
    if doing == "down":
        raise StateError(
            f"profile {stack.profile} of this checkout is up on {where}, not on {here}: nothing would stop there",
            hint=f"leave out --runtime (and DOCKER_HOST) so that `devenv down -p {stack.profile}` acts where the "
                 f"stack runs{f', or set DOCKER_HOST={redact(engine)}' if was == 'docker' and engine else ''}.")
    raise StateError(
        f"profile {stack.profile} of this checkout is up on {where}, not on {here}",
        hint=f"`devenv down -p {stack.profile}` first (without --runtime it finds the stack where it runs; "
             f"--volumes to drop its data), then `up` here; or leave out --runtime (and DOCKER_HOST) to keep "
             f"using it there.")


def down(stack: Stack, runtime: Runtime, *, volumes: bool = False) -> list[str]:
    """Stop the stack (data kept unless `volumes`; then its record in the registry goes too:
    nothing of it is left for `devenv ls` to show)."""
    with locked(stack.state_dir):
        _refuse_second_place(stack, runtime, "down")
        stopped = runtime.down(stack, volumes=volumes)
        clear_state(stack.state_dir)
        if volumes:  # its data gone, the stack holds nothing more: its ports are free for others
            from devenv import registry

            with registry.locked():
                registry.forget_checkout(stack.root.resolve(), stack.profile)
    return stopped


def _register(stack: Stack, runtime: Runtime) -> None:
    """Record the stack in the machine's registry (`devenv ls`): its checkout, ports and data."""
    from devenv import registry
    from devenv.config.project import CONFIG_NAME

    config = str(stack.root.resolve() / CONFIG_NAME)
    places = runtime.footprint(stack)
    registry.record(registry.Entry(
        checkout=str(stack.root.resolve()), config=config, project=stack.project, profile=stack.profile,
        runtime=runtime.name, name=stack.name, ports={s.name: s.port for s in stack.services},
        data=places if runtime.name == "native" else [], volumes=places if runtime.name == "docker" else [],
        engine=runtime.engine_address() if runtime.name == "docker" else ""))
