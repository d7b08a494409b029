"""NativeRuntime: the stack as local processes, the embedded default where Docker is absent.

Same rendered configs, ports and credentials as the containers; only the placement differs
(127.0.0.1, local paths). All state lives under `.devenv/<profile>/native/`: conf/, log/,
run/ (sockets, pid files, state.json) and data/ (PGDATA, Redis). The `ci` profile keeps
PGDATA on tmpfs. As root, the servers run as an unprivileged user (postgres and PgBouncer
refuse root): Debian's `postgres`, or DEVENV_NATIVE_USER.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from devenv import safefs
from devenv.errors import DependencyError, HealthCheckError, StateError
from devenv.registry import native_key
from devenv.runtime.base import Progress, ServiceState, UpResult
from devenv.runtime.plan import (
    PROGRAMS,
    adopted_entry,
    has_password,
    password_note_path,
    reload_suffices,
    remember_password,
    render_key,
    save_cache,
    save_live,
)
from devenv.runtime import trust
from devenv.runtime.procs import (
    end_writers,
    kill_and_wait,
    own_processes,
    kill_group,
    process_name,
    processes_in,
    scan_processes,
    send_signal,
    wait_gone,
    working_dir,
)
from devenv.config.stack import SERVICES, Stack

if TYPE_CHECKING:  # what only `up` needs is imported there: `status` and `down` load none of it
    import subprocess
    from devenv.render import Placement
    from devenv.runtime.discovery import Binaries
    from devenv.runtime.serverenv import RunUser

_STOP_SIGNAL = {"postgres": signal.SIGINT, "pgbouncer": signal.SIGINT, "redis": signal.SIGTERM}
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


@dataclass(frozen=True)
class Layout:
    """Where the native stack keeps its files."""

    base: Path
    run: Path  # unix sockets and pid files: kept short (sun_path is ~104 bytes)
    pgdata: Path
    redis_dir: Path

    @property
    def conf(self) -> Path:
        return self.base / "conf"

    @property
    def log(self) -> Path:
        return self.base / "log"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"

    def log_file(self, service: str) -> Path:
        return self.log / f"{service}.log"


class NativeRuntime:
    """Runs postgres, pgbouncer and redis-server as background processes."""

    name = "native"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._binaries: Binaries | None = None
        self._procs: dict[int, str] | None = None  # one /proc scan per `up` (see _process_table)
        self._started: set[str] = set()  # what `up` started (not restarted): stopped if it fails

    # ---- discovery ---------------------------------------------------------------------

    def binaries(self, stack: Stack) -> Binaries:
        """Find the servers: the image's Postgres major if installed, else the newest found."""
        from devenv.runtime.discovery import Binaries, discovery_key, find_binaries
        if self._binaries is None:
            cached = self._read_state(self.layout(stack)).get("_meta", {}).get("binaries", {})
            if cached.pop("key", None) == discovery_key(self.env):
                try:
                    found = Binaries(**cached)
                except TypeError:
                    found = None
                # As root, only programs no other user could have put there (trust.trusted_program).
                if found is not None and all(trust.trusted_program(p) for p in
                                             (found.postgres, found.initdb, found.pgbouncer, found.redis_server)):
                    self._binaries = found
                    return found
            self._binaries = find_binaries(stack.postgres.major, self.env)
        return self._binaries

    def resolve(self, stack: Stack) -> NativeRuntime:
        """This runtime: it runs any stack it is asked to."""
        return self

    def identify(self, stack: Stack) -> Stack:
        """The stack on 127.0.0.1 (not a remote engine's host); its directories are named by the checkout's path already."""
        return stack.replace(reach_host="", bind_ip="")

    def engine_address(self) -> str:
        """No engine: local processes."""
        return ""

    def describe(self, stack: Stack) -> str:
        """Which PostgreSQL binaries are used, and why (said once per `up`)."""
        b = self.binaries(stack)
        wanted = stack.postgres.major
        why = "" if b.pg_major == wanted else f"; devenv.yaml's image names {wanted}, which is not installed"
        return f"PostgreSQL {b.pg_version} from {Path(b.postgres).parent}{why}"

    def pg_tool(self, stack: Stack, tool: str) -> list[str]:
        """`pg_dump`/`pg_restore` from the bindir of the server this runtime starts (same major)."""
        binary = Path(self.binaries(stack).postgres).parent / tool
        if binary.is_file() and not trust.trusted_program(str(binary)):
            raise DependencyError(
                f"{binary} (or its directory) is not root's or is writable by others: devenv, as root, will not run it",
                hint="install the PostgreSQL client programs from packages (root-owned), or fix the ownership.")
        if not binary.is_file():
            raise DependencyError(
                f"{tool} not found in {binary.parent} (next to the postgres server devenv runs)",
                hint="install the PostgreSQL client programs of the same major version: Debian/Ubuntu "
                f"`sudo apt-get install postgresql-client-{self.binaries(stack).pg_major}`.",
            )
        # TCP on 127.0.0.1 as the application role, which owns the database and all in it.
        return [str(binary), "--host=127.0.0.1", f"--port={stack.postgres.port}", f"--username={stack.postgres.user}"]

    def run_user(self) -> RunUser | None:
        """The account to run servers as: None when not root."""
        if os.geteuid() != 0:
            return None
        import pwd
        from devenv.runtime.serverenv import RunUser

        name = self.env.get("DEVENV_NATIVE_USER", "postgres")
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise DependencyError(
                f"running as root, but the user '{name}' to run the servers as does not exist",
                hint="postgres and pgbouncer refuse to run as root: install postgresql (it creates the "
                "`postgres` user), create a user, or set DEVENV_NATIVE_USER to an existing one.",
            ) from exc
        if entry.pw_uid == 0:
            raise DependencyError(f"DEVENV_NATIVE_USER={name} is root", hint="choose an unprivileged user.")
        return RunUser(name, entry.pw_uid, entry.pw_gid)

    def layout(self, stack: Stack) -> Layout:
        """Paths for this stack: `.devenv/<profile>/native/`, tmpfs for ephemeral data.

        As root, the servers' user cannot enter the private `.devenv/<profile>/`, so the
        files live in /var/lib/devenv/ and `.devenv/<profile>/native` links there.
        """
        link = stack.state_dir / "native"
        key = native_key(link)  # devenv.prune checks a directory's key against its record
        base = _linked_dir(link, Path("/var/lib/devenv") / f"{stack.base_name}-{key}") if os.geteuid() == 0 else link
        run = base / "run"
        if len(str(run / ".s.PGSQL.65535")) > _SOCKET_PATH_MAX:
            run = Path(tempfile.gettempdir()) / f"devenv-{key}"
        pgdata = base / "data" / "postgres"
        if stack.ephemeral and Path("/dev/shm").is_dir():
            pgdata = Path("/dev/shm") / f"devenv-{key}" / "postgres"
        return Layout(base=base, run=run, pgdata=pgdata, redis_dir=base / "data" / "redis")

    def placement(self, stack: Stack, layout: Layout) -> Placement:
        """Local processes on 127.0.0.1, on the stack's host ports, files in conf/."""
        from devenv.render import Placement
        conf = str(layout.conf)
        return Placement(
            target="native",
            listen_address="127.0.0.1",
            postgres_host="127.0.0.1",
            postgres_port=stack.postgres.port,
            pgbouncer_port=stack.pgbouncer.port,
            redis_port=stack.redis.port,
            conf_dirs={"postgres": conf, "pgbouncer": conf, "redis": conf},
            redis_dir=str(layout.redis_dir),
            run_dir=str(layout.run),
        )

    # ---- up ----------------------------------------------------------------------------

    def up(self, stack: Stack, progress: Progress, use_cache: bool = False) -> UpResult:
        """Start what is not running, restart or reload what changed, leave the rest alone.

        `use_cache`: a new data directory comes from the seeded-data cache when it has one, and
        a new cluster's result names the key to save it under (see save_cache).
        """
        from devenv import certs, render  # what only `up` needs: `status` and `down` load none of it
        from devenv.config import pgcatalog
        from devenv.runtime import discovery, ports, serverenv

        binaries = self.binaries(stack)
        user = self.run_user()
        layout = self.layout(stack)
        self._procs, self._started = None, set()
        if binaries.pg_major != stack.postgres.major:
            # Settings were validated for the image's major; check them for the one that runs.
            for name, value in stack.postgres.settings.items():
                pgcatalog.normalize(name, value, binaries.pg_major, f"devenv.yaml: postgres.settings.{name}")
        # As root: the stack's directory, conf/, log/ and data/ are root's (the server user may pass
        # through, not write: nothing root reads later is the server user's to plant); run/ and
        # the data directories are the server user's.
        owner = (user.uid, user.gid) if user else None
        for directory in (layout.base, layout.conf, layout.log, layout.pgdata.parent):
            trust.make_dir(directory, None, trusted=(user.uid,) if user else ())  # an older devenv's were the user's
        for directory in (layout.run, layout.redis_dir):
            trust.make_dir(directory, owner)
        recorded = self._read_state(layout)
        if not (layout.pgdata / "PG_VERSION").exists():
            self._clear_scratch(layout)
        restoring = self._start_from_cache(stack, layout, binaries, recorded, progress) if use_cache else None
        placement = self.placement(stack, layout)
        rendered_from = render_key(stack, placement)
        meta = recorded.get("_meta", {})
        if (
            meta.get("render_key") == rendered_from
            and all(service in recorded for service in SERVICES)  # a killed `up` may have recorded fewer
            and all((layout.conf / n).exists() for n in meta.get("files", []))
        ):
            files, hashes = None, {s: recorded[s]["hash"] for s in SERVICES}  # unchanged: skip jinja
        else:
            files = render.render_files(stack, placement)
            hashes = render.service_hashes(files, stack)
        result = UpResult()
        adopted = self._own_servers(layout, recorded)  # state.json lost or damaged, or a killed `up`
        if adopted and files is None:
            files = render.render_files(stack, placement)
            hashes = render.service_hashes(files, stack)
        for service, pid in adopted.items():
            recorded[service] = adopted_entry(stack, service, pid, layout.conf, files or {}, hashes[service], result.notes)

        plan: dict[str, str] = {}  # service -> "start" | "restart" | "reload"
        for service in SERVICES:
            entry = recorded.get(service, {})
            alive = self._alive(entry, service)
            if not alive:
                plan[service] = "start"
            elif entry.get("hash") != hashes[service]:
                plan[service] = self._change_kind(service, entry, stack, binaries.pg_major)
        if layout.pgdata.exists() and (layout.pgdata / "PG_VERSION").exists():
            data_major = int(trust.read_small(layout.pgdata / "PG_VERSION").strip().split(".")[0])
            if data_major != binaries.pg_major:
                raise StateError(
                    f"the data directory {layout.pgdata} was created by PostgreSQL {data_major}, "
                    f"but PostgreSQL {binaries.pg_major} would run it",
                    hint="run `devenv down --volumes` to start afresh (drops the data), or install "
                    f"PostgreSQL {data_major}.",
                )
        to_bind = [s for s, action in plan.items() if action == "start"]
        # A `up` killed between a spawn and its state.json entry leaves a server of ours
        # running unrecorded: stop it, so its port does not look taken by someone else.
        if "postgres" in to_bind:
            self._cleanup_postgres(layout, stack.postgres.port)
        for service in to_bind:
            if service != "postgres":
                kill_and_wait(own_processes(service, self._process_table(), layout), signal.SIGKILL)
        moving = [s for s, a in plan.items() if a == "restart" and recorded[s].get("port", 0) not in (0, getattr(stack, s).port)]
        ports.check_ports_free(stack, to_bind + moving, user.name if user else None)

        if files is not None:
            self._write_conf(layout, files, user)
        if stack.postgres.ssl:
            certs.ensure_certificate(layout.conf, (user.uid, user.gid) if user else None)
        for service, action in plan.items():
            if action == "reload":
                os.kill(recorded[service]["pid"], signal.SIGHUP)
                result.reloaded.append(service)
            elif action == "restart":
                self._stop(service, recorded[service])
                result.restarted.append(service)
        # state.json is rewritten after every spawn: a `up` killed midway must leave no server
        # the next `up` does not know about.
        state: dict[str, Any] = {
            service: {**recorded[service], "hash": hashes[service]} for service in SERVICES if service not in plan
        }
        state["_meta"] = {
            "pgdata": str(layout.pgdata),
            "render_key": rendered_from,
            "files": sorted(files) if files is not None else meta.get("files", []),
            "binaries": {**asdict(binaries), "key": discovery.discovery_key(self.env)},
        }
        for service, action in plan.items():
            if action == "reload":
                state[service] = {**recorded[service], "hash": hashes[service], "settings": stack.postgres.settings}
        _write_json(layout.state_file, state)
        # Postgres takes longest to become ready: spawned first when its data exists, last when
        # it first needs initdb (~1 s), so that PgBouncer and Redis need not wait for that.
        needs_initdb = not (layout.pgdata / "PG_VERSION").exists()
        order = sorted(plan, key=lambda s: (s == "postgres") == needs_initdb)
        for service in order:
            if plan[service] not in ("start", "restart"):
                continue
            if service == "postgres":
                self._cleanup_postgres(layout, stack.postgres.port)
                if not (layout.pgdata / "PG_VERSION").exists():
                    self._create_cluster(stack, layout, binaries, user, progress, result, restoring, use_cache)
            else:
                # Not running (checked above), so a pid file left behind is stale.
                (layout.run / f"{service}.pid").unlink(missing_ok=True)
            argv = self._command(service, layout, binaries)
            self._children[service] = serverenv.spawn(argv, layout.log_file(service), user, cwd=layout.base)
            state[service] = {
                "pid": self._children[service].pid,
                "hash": hashes[service],
                "settings": getattr(stack, service).settings,
                "port": getattr(stack, service).port,
            }
            _write_json(layout.state_file, state)
            if service == "postgres" and not has_password(password_note_path(stack, layout.pgdata), stack):
                self._set_password(stack, layout, result)
            if plan[service] == "start":
                result.started.append(service)
                self._started.add(service)
        if plan.get("postgres") not in ("start", "restart") and not has_password(password_note_path(stack, layout.pgdata), stack):
            self._set_password(stack, layout, result)  # running already, on another checkout's data
        return result

    def _change_kind(self, service: str, entry: dict, stack: Stack, major: int) -> str:
        """Reload Postgres when every changed setting allows it; restart anything else."""
        if service != "postgres" or entry.get("port") != stack.postgres.port:
            return "restart"
        return "reload" if reload_suffices(entry.get("settings", {}), stack.postgres.settings, major) else "restart"

    def _start_from_cache(self, stack: Stack, layout: Layout, binaries: Binaries, recorded: dict,
                       progress: Progress) -> "Any":
        """If Postgres will need a new data directory and the cache has it, start extracting now."""
        if (layout.pgdata / "PG_VERSION").exists() or self._alive(recorded.get("postgres", {}), "postgres"):
            return None
        from devenv.db import cache  # tarfile and friends: only when there is something to restore

        archive = cache.find(self._data_key(stack, binaries))
        if archive is None or cache.usable(archive, progress, check=False) is None:
            return None  # the checksum is checked beside the extraction (Restore)
        progress(f"postgres   restoring seeded data from {archive}")
        layout.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # Until this checkout's password is set, every start must set it, even if this `up`
        # is killed before it gets there.
        password_note_path(stack, layout.pgdata).unlink(missing_ok=True)
        return cache.Restore(archive, layout.pgdata)

    def _data_key(self, stack: Stack, binaries: Binaries) -> str:
        from devenv.db import cache

        return cache.data_key(stack, binaries.pg_version, self._initdb_args(stack, Path("PGDATA"), Path("PWFILE")))

    def _create_cluster(self, stack: Stack, layout: Layout, binaries: Binaries, user: RunUser | None,
                        progress: Progress, result: UpResult, restoring: "Any", use_cache: bool) -> None:
        """A new data directory: from the cache when a seeded snapshot matches, else initdb."""
        if restoring is not None:
            from devenv.db.cache import CacheDamaged, said_quarantine

            try:
                seconds = restoring.finish((user.uid, user.gid) if user else None)
            except CacheDamaged as exc:  # a truncated or altered archive: never again, and initdb now
                said_quarantine(restoring.archive, exc, progress)
            else:
                progress(f"postgres   restored in {seconds:.2f}s (no initdb, schema or seed)")
                result.from_cache = True
                return
        progress(f"postgres   initdb ({binaries.pg_version})")
        from devenv.db.seeds import preload_driver

        preload_driver()  # seeding will need it; initdb takes longer than the import
        self._initdb(stack, layout, binaries, user)
        remember_password(password_note_path(stack, layout.pgdata), stack)
        result.fresh_database = True
        result.roles_pending = True
        result.cache_key = self._data_key(stack, binaries) if use_cache else ""

    def _set_password(self, stack: Stack, layout: Layout, result: UpResult, timeout: float = 30.0) -> None:
        """After a restore, or on data an earlier checkout left: this checkout's passwords, set
        over the (trusted) unix socket. On an older devenv's cluster (no admin role: the
        application role is the bootstrap superuser) that role is renamed to the admin role's
        name first (devenv.db.roles); `up` then makes the application role afresh and hands it
        its databases (roles.ensure_roles).

        Over pgwire, not psycopg: a start from the cache needs no database driver at all.
        """
        from devenv.db import roles

        def give_up(exc: BaseException) -> Exception | None:
            if not self.exit_status(stack, "postgres") and time.monotonic() <= deadline:
                return None
            return HealthCheckError(
                f"postgres did not answer on its unix socket to take this checkout's password "
                f"(data from the cache or from an earlier checkout): {exc}",
                hint="see `devenv logs postgres`; data from the cache: delete the cache entry "
                "(DEVENV_CACHE_DIR) and run `devenv up` again; else `devenv down --volumes` starts afresh.",
                log_tail=safefs.read_tail(layout.log_file("postgres"), 20),
            )

        deadline = time.monotonic() + timeout
        if roles.set_passwords_over_socket(stack, str(layout.run), give_up):
            result.notes.append(roles.MIGRATED_NOTE.format(app=stack.postgres.user, admin=stack.postgres.admin_user))
        result.roles_pending = True
        remember_password(password_note_path(stack, layout.pgdata), stack)

    def save_cache(self, stack: Stack, key: str, progress: Progress) -> None:
        """Snapshot the freshly seeded data directory into the cache: a base backup of the running
        server (cache.save_live)."""
        save_cache(progress, lambda: save_live(stack, self.layout(stack).pgdata, key))

    def _initdb_args(self, stack: Stack, pgdata: Path, pwfile: Path) -> list[str]:
        # The bootstrap superuser is devenv's admin role; `up` then makes the application's (roles.ensure_roles).
        return ["-D", str(pgdata), "-U", stack.postgres.admin_user, f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
                "--auth-local=trust", "--auth-host=scram-sha-256"]

    def _initdb(self, stack: Stack, layout: Layout, binaries: Binaries, user: RunUser | None) -> None:
        """initdb into a scratch directory, then rename: a killed initdb never leaves half a cluster."""
        scratch = layout.pgdata.with_name(layout.pgdata.name + ".initdb")
        self._clear_scratch(layout)
        # initdb fills a directory made for it: the data/ it lives in is root's.
        scratch.mkdir(mode=0o700)
        _chown(scratch, user)
        # devenv's superuser's, stored as is; in root's conf/ (no link planted in its place).
        pwfile = layout.conf / "initdb.pw"
        safefs.write_file(pwfile, (stack.postgres.admin_password_secret + "\n").encode(), 0o600, _ids(user))
        argv = [binaries.initdb, *self._initdb_args(stack, scratch, pwfile)]
        if stack.ephemeral:
            argv.append("--no-sync")  # tmpfs: there is nothing to sync to
        try:
            from devenv.runtime import serverenv
            proc = serverenv.run(argv, layout.log_file("postgres"), user)
        finally:
            pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise HealthCheckError(
                f"initdb failed with exit code {proc.returncode}",
                hint="see the log above; `devenv logs postgres` has the whole of it.",
                log_tail=safefs.read_tail(layout.log_file("postgres"), 20),
            )
        os.replace(scratch, layout.pgdata)

    def _clear_scratch(self, layout: Layout) -> None:
        """Before a new data directory: end what a killed `up` left writing into the scratch
        directories of initdb and of a restore (with their process groups), then delete them.
        Both make their directory before they write: without one there is nothing to end (and
        no /proc scan on the way of a cold start)."""
        for suffix in (".initdb", ".restore"):
            scratch = layout.pgdata.with_name(layout.pgdata.name + suffix)
            if os.path.lexists(scratch):
                end_writers(self._process_table(), scratch)
                shutil.rmtree(scratch, ignore_errors=True)

    def _command(self, service: str, layout: Layout, binaries: Binaries) -> list[str]:
        if service == "postgres":
            return [binaries.postgres, "-D", str(layout.pgdata), "-c", f"config_file={layout.conf / 'postgresql.conf'}"]
        if service == "pgbouncer":
            return [binaries.pgbouncer, str(layout.conf / "pgbouncer.ini")]
        return [binaries.redis_server, str(layout.conf / "redis.conf")]

    def _write_conf(self, layout: Layout, files: dict[str, str], user: RunUser | None) -> None:
        for name, content in files.items():
            path = layout.conf / name
            data = content.encode()
            if path.exists() and path.read_bytes() == data:
                continue
            safefs.write_file(path, data, 0o600, _ids(user))  # they hold passwords

    def _process_table(self) -> dict[int, str]:
        """Pid -> program name of every process, scanned once per `up`.

        Orphans are looked for before each of up to four spawns; a /proc scan costs ~30 ms on
        a busy machine, and a process that appears later is one of ours, not an orphan.
        """
        if self._procs is None:
            self._procs = scan_processes()
        return self._procs

    def _cleanup_postgres(self, layout: Layout, port: int) -> None:
        """Before a start: end a postmaster devenv lost track of, and clear what a SIGKILL left.

        A process counts as ours only if it runs in our data directory (every PostgreSQL
        process chdirs there): a pid in a stale postmaster.pid may now be someone else's.
        """
        pidfile = layout.pgdata / "postmaster.pid"
        try:
            pid = int(trust.read_small(pidfile).splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid and process_name(pid) == "postgres" and working_dir(pid) == layout.pgdata.resolve():
            # Ours but not in state.json, e.g. after a killed `up`: stop it cleanly.
            send_signal(pid, signal.SIGINT)
            if not wait_gone(pid, 10):
                send_signal(pid, signal.SIGKILL)
                wait_gone(pid, 5)
        # A SIGKILLed postmaster's backends live on (each leads its own session), holding the
        # shared memory a new postmaster needs.
        kill_and_wait(processes_in(self._process_table(), "postgres", layout.pgdata.resolve()), signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
        # Only Postgres's own socket: run/ also holds PgBouncer's.
        for leftover in (layout.run / f".s.PGSQL.{port}", layout.run / f".s.PGSQL.{port}.lock"):
            leftover.unlink(missing_ok=True)

    # ---- down, states, logs ------------------------------------------------------------

    def down(self, stack: Stack, volumes: bool = False) -> list[str]:
        """Stop the servers (all at once); with `volumes` delete their data too."""
        layout = self.layout(stack)
        recorded = self._read_state(layout)
        for service, pid in self._own_servers(layout, recorded).items():  # state.json lost or damaged
            recorded[service] = {**recorded.get(service, {}), "pid": pid}
        stopping = [s for s in SERVICES if self._alive(recorded.get(s, {}), s)]
        for service in stopping:
            send_signal(recorded[service]["pid"], _STOP_SIGNAL[service])
        for service in stopping:
            self._wait_stopped(service, recorded[service])
        if volumes:
            layout.state_file.unlink(missing_ok=True)
        elif recorded:
            # Keep what the rendered files were made from, without pids: the next `up` then
            # starts the servers on those files instead of importing jinja2 to render them again.
            _write_json(layout.state_file, {
                key: value if key == "_meta" else {"hash": value.get("hash")}
                for key, value in recorded.items() if isinstance(value, dict)
            })
        if volumes:
            # Only inside devenv's own directories of this stack (links resolved, never followed):
            # a recorded path elsewhere is not deleted, whoever wrote it.
            roots = [layout.base, layout.run]
            if layout.pgdata.parent.name.startswith("devenv-"):
                roots.append(layout.pgdata.parent)  # the per-stack tmpfs directory
            pgdata = Path(str(recorded.get("_meta", {}).get("pgdata", layout.pgdata)))
            for path in (pgdata, layout.pgdata, *roots[1:], layout.base):
                if path.parent.name.startswith("devenv-") and path.parent in roots:
                    path = path.parent
                trust.remove_within(path, roots)
            link = stack.state_dir / "native"
            if link.is_symlink():
                link.unlink()
        return stopping

    def stop_started(self, stack: Stack) -> list[str]:
        """After a failed `up`: stop the servers it started (its own children), data kept."""
        layout, stopped = self.layout(stack), [s for s, c in self._children.items() if s in self._started and c.poll() is None]
        state = self._read_state(layout)
        for service in stopped:
            self._stop(service, {"pid": self._children[service].pid})
            state[service] = {"hash": state.get(service, {}).get("hash")}  # the files stay; no pid
        if stopped:
            _write_json(layout.state_file, state)
        return stopped

    def _stop(self, service: str, entry: dict) -> None:
        send_signal(entry["pid"], _STOP_SIGNAL[service])
        self._wait_stopped(service, entry)

    def _wait_stopped(self, service: str, entry: dict) -> None:
        pid = entry["pid"]
        if not wait_gone(pid, 15, self._children.get(service)):
            kill_group(pid, signal.SIGKILL)  # did not stop in time: no data is lost by fast stop
            wait_gone(pid, 5, self._children.get(service))

    def footprint(self, stack: Stack) -> list[str]:
        """The stack's own directories: its base (in the checkout, or /var/lib/devenv as root),
        and its tmpfs and socket directories when they are elsewhere."""
        layout = self.layout(stack)
        places = [layout.base]
        if layout.pgdata.parent.name.startswith("devenv-"):
            places.append(layout.pgdata.parent)  # the per-stack tmpfs directory
        if not layout.run.is_relative_to(layout.base):
            places.append(layout.run)
        return [str(p) for p in places]

    def states(self, stack: Stack) -> list[ServiceState]:
        """Each service: running or not, its pid and port."""
        recorded = self._read_state(self.layout(stack))
        out = []
        for service in SERVICES:
            entry = recorded.get(service, {})
            alive = self._alive(entry, service)
            port = entry.get("port") if alive and type(entry.get("port")) is int else getattr(stack, service).port
            out.append(ServiceState(service, alive, port, entry.get("pid") if alive else None,
                                    PROGRAMS[service], "" if alive else ("exited" if entry else "not started")))
        return out

    def exit_status(self, stack: Stack, service: str) -> str | None:
        """"exited N" when a server this process started died; "exited" when an earlier `up`'s is gone (or a zombie)."""
        child = self._children.get(service)
        if child is not None:
            return f"exited with code {child.returncode}" if child.poll() is not None else None
        entry = self._read_state(self.layout(stack)).get(service, {})
        if entry.get("pid") and not self._alive(entry, service):
            return f"exited (pid {entry['pid']}, started by an earlier `devenv up`)"
        return None

    def started(self, stack: Stack, service: str) -> bool:
        """Always: a server process is spawned before `up` returns."""
        return True

    def log_tail(self, stack: Stack, service: str, lines: int = 20) -> str:
        """The last lines of the service's log file."""
        return safefs.read_tail(self.layout(stack).log_file(service), lines)

    def follow_logs(self, stack: Stack, service: str | None, follow: bool) -> Iterator[str]:
        """Lines of one or every log file; with `follow`, new lines as they come."""
        layout = self.layout(stack)
        services = [service] if service else list(SERVICES)
        handles = {}
        for name in services:
            path = layout.log_file(name)
            if path.exists():
                handles[name] = path.open("r", errors="replace")
        prefix = (lambda name: f"{name:<9} | ") if len(services) > 1 else (lambda name: "")
        for name, handle in handles.items():
            for line in handle:
                yield prefix(name) + line.rstrip("\n")
        while follow:
            quiet = True
            for name, handle in handles.items():
                for line in handle:
                    quiet = False
                    yield prefix(name) + line.rstrip("\n")
            if quiet:
                time.sleep(0.2)

    # ---- helpers -----------------------------------------------------------------------

    def _read_state(self, layout: Layout) -> dict:
        """state.json; {} when missing, damaged or not root's own (as root: one the server user planted is ignored)."""
        data = trust.read_json(layout.state_file)
        state = {k: v for k, v in data.items() if isinstance(v, dict)}
        return {k: v for k, v in state.items() if type(v.get("pid", 1)) is int and v.get("pid", 1) > 0}

    def _own_servers(self, layout: Layout, recorded: dict) -> dict[str, int]:
        """service -> pid of a running server of this stack that `recorded` does not name alive."""
        table = self._process_table()
        found = {s: own_processes(s, table, layout) for s in SERVICES if not self._alive(recorded.get(s, {}), s)}
        return {service: pids[0] for service, pids in found.items() if pids}

    def _alive(self, entry: dict, service: str) -> bool:
        pid = entry.get("pid")
        if not pid:
            return False
        child = self._children.get(service)
        if child is not None and child.pid == pid:
            return child.poll() is None
        return process_name(pid) == PROGRAMS[service]


# ---- module helpers (spawning servers: devenv.runtime.serverenv) -----------------------------


def _ids(user: RunUser | None) -> tuple[int, int] | None:
    return (user.uid, user.gid) if user else None


def _chown(path: Path, user: RunUser | None) -> None:
    if user is not None:
        os.chown(path, user.uid, user.gid)


def _linked_dir(link: Path, target: Path) -> Path:
    """`target`, made and linked from `link` (an existing real directory at `link` wins)."""
    target.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return target
    if link.exists() and not link.is_symlink():
        return link  # an existing real directory keeps working where it is
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    return target


def _write_json(path: Path, data: dict) -> None:
    safefs.write_file(path, json.dumps(data, indent=1, sort_keys=True).encode())


__all__ = ["NativeRuntime"]
