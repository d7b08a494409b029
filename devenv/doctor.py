"""`devenv doctor`: what is wrong with the machine or the stack (devenv.status says how it is doing).

doctor: `run_checks` returns a list of Check(name, status, detail), status one of ok, warn,
FAIL: the Docker engine (which endpoint, answering or not), the native binaries and their
versions, the stack's ports (free, held by this stack, or held by another program, named),
free disk for the data and the cache, the stack's health, and settings drift: every setting
of the profile compared with what the running servers report (Postgres `pg_settings` in base
units, PgBouncer `SHOW CONFIG`, Redis `CONFIG GET`), so a server changed by hand is caught.

Nothing here prints: the CLI formats the results (`format_checks`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from devenv import humanize
from devenv.config.stack import SERVICES
from devenv.errors import DevenvError

if TYPE_CHECKING:
    from devenv.runtime.base import Runtime, ServiceState
    from devenv.runtime.engine import Endpoint
    from devenv.config.stack import Stack

OK, WARN, FAIL = "ok", "warn", "FAIL"
LOW_DISK_BYTES = 1 << 30  # warn under 1 GiB free: a seeded data directory plus a cached snapshot
PING_TIMEOUT = 2.0
# Programs that hold a published port for a container, not the container's own process.
_DOCKER_PORT_HOLDERS = {"docker-proxy", "conmon", "rootlesskit", "rootlessport", "vpnkit", "com.docker.backend", "slirp4netns"}
_REDIS_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


@dataclass(frozen=True)
class Check:
    """One finding of `devenv doctor`: what was checked, ok/warn/FAIL, and what was seen."""

    name: str
    status: str
    detail: str

    def to_json(self) -> dict[str, str]:
        """The check as a JSON object."""
        return asdict(self)


# ---- doctor ------------------------------------------------------------------------------------


def run_checks(stack: "Stack", runtime: "Runtime", requested: str = "auto",
               env: Mapping[str, str] | None = None) -> list[Check]:
    """Every doctor check for a stack, in reading order. `requested` is the --runtime asked for."""
    from devenv.state import read_state

    env = dict(os.environ if env is None else env)
    if requested == "podman":  # every question to the engine below goes to Podman's socket
        from devenv.runtime.engines import find_podman

        podman = find_podman(env)
        env["DOCKER_HOST"] = podman.host if podman is not None else env.get("DOCKER_HOST", "")
    # A stack that `up` recorded on Docker needs the engine as much as `--runtime docker` does.
    on_docker = requested == "docker" or read_state(stack.state_dir).get("runtime") == "docker"
    checks = [docker_check(env, "docker" if on_docker and requested != "podman" else requested)]
    runtime_name = _resolved_name(stack, runtime, checks)
    if runtime_name == "docker" and checks[0].status == OK and checks[0].detail.startswith("engine"):
        checks += engine_checks(stack, env, requested)
    checks += binary_checks(stack, runtime_name, env)
    try:
        states = runtime.states(stack)
    except Exception as exc:  # DependencyError, or the SDK's own: a finding, not a crash
        reason = exc.message if isinstance(exc, DevenvError) else f"{type(exc).__name__}: {exc}"
        checks.append(Check("stack", FAIL, f"cannot ask the {runtime_name} runtime: {reason}"))
        states = []
    checks += port_checks(stack, states, runtime_name)
    checks += disk_checks(stack, runtime_name, env)
    checks += health_and_drift_checks(stack, states)
    checks += step_checks(stack, states)
    return checks


def step_checks(stack: "Stack", states: list["ServiceState"]) -> list[Check]:
    """The schema and seed steps, and whether the working database is at the template's key
    (warn when not: `up` brings it forward), with a migration tool's head (devenv.db.stepstatus)."""
    from devenv.db import stepstatus
    from devenv.db.stepkeys import check_inputs

    check_inputs(stack)  # a missing input or sql folder: exit 3 naming its line
    steps = "; ".join(f"{s['part']} {s['index']}: {s['kind']} {s['what']}" for s in stepstatus.describe(stack))
    checks = [Check("steps", OK, steps)]
    if not any(state.running and state.name == "postgres" for state in states):
        return checks
    view = stepstatus.report(stack, timeout=PING_TIMEOUT)
    ok = view["at_template_key"] is True
    checks.append(Check("working database", OK if ok else WARN, stepstatus.summary(view)))
    return checks


def failed(checks: Iterable[Check]) -> bool:
    """Whether any check FAILed (doctor then exits non-zero)."""
    return any(check.status == FAIL for check in checks)


def format_checks(checks: Iterable[Check]) -> list[str]:
    """One line per check: `ok|warn|FAIL  <check>: <detail>`."""
    return [f"{check.status:<4}  {check.name}: {check.detail}" for check in checks]


def _resolved_name(stack: "Stack", runtime: "Runtime", checks: list[Check]) -> str:
    """The runtime the stack is (or would be) on: `auto` resolves like `up` does."""
    try:
        return runtime.resolve(stack).name
    except DevenvError as exc:
        checks.append(Check("runtime", FAIL, exc.message))
        return "native"


# ---- the Docker engine -------------------------------------------------------------------------


def docker_check(env: Mapping[str, str], requested: str = "auto", sockets: list[Path] | None = None) -> Check:
    """Which Docker endpoint applies (DOCKER_HOST, a context, a socket) and whether it answers.

    With no DOCKER_HOST, no context and no socket file there is obviously no engine: decided
    from the filesystem, without the docker SDK. A unix socket is pinged with a raw `GET
    /_ping`; only other endpoints (tcp with TLS, ssh) need the SDK.
    """
    severity = FAIL if requested in ("docker", "podman") else WARN  # only a Docker stack needs the engine
    try:
        endpoint = _endpoint(env, requested, sockets)
    except DevenvError as exc:  # a Docker context without a readable endpoint
        return Check("docker", severity, exc.message)
    if endpoint is None:
        where = ", ".join(str(s) for s in (sockets if sockets is not None else _default_sockets(env)))
        status = FAIL if requested == "docker" else OK
        return Check("docker", status, f"no engine: no DOCKER_HOST, no Docker context, no socket ({where}); "
                     "`--runtime auto` uses the native runtime")
    answer = ping_engine(endpoint)
    if answer.startswith("answers"):
        return Check("docker", OK, f"engine at {endpoint.shown} (from {endpoint.origin}) {answer}")
    fallback = "" if requested == "docker" else "; `--runtime auto` uses the native runtime"
    return Check("docker", severity, f"engine at {endpoint.shown} (from {endpoint.origin}) {answer}{fallback}")


def _endpoint(env: Mapping[str, str], requested: str, sockets: list[Path] | None = None) -> "Endpoint | None":
    """The engine `--runtime` would use: Podman's socket for `podman`; else as the docker CLI,
    and Podman's when no Docker engine is configured (as `--runtime auto` does)."""
    from devenv.runtime.engine import find_endpoint
    from devenv.runtime.engines import find_podman

    if requested == "podman":
        return find_podman(env, sockets)
    return find_endpoint(env, sockets) or (find_podman(env) if sockets is None else None)


def engine_checks(stack: "Stack", env: Mapping[str, str], requested: str) -> list[Check]:
    """What devenv needs of the engine: its kind and API version, DNS between containers (PgBouncer
    reaches `postgres` by name), SELinux labels, rootless uid mapping; a hint for each gap."""
    from devenv.runtime.dockerapi import connect
    from devenv.runtime.engines import engine_facts, needs_copy, probe_dns

    endpoint = _endpoint(env, requested)
    if endpoint is None:
        return []
    try:
        client = connect(endpoint)
        facts = engine_facts(client, backend=True)
    except Exception as exc:  # a finding, not a crash
        return [Check("engine", FAIL, f"cannot ask the engine at {endpoint.shown}: {exc}")]
    api = tuple(int(p) for p in re.findall(r"\d+", facts.api_version)[:2])
    checks = [Check("engine", OK if api >= (1, 41) else FAIL,
                    f"{facts.name}, Docker API {facts.api_version}, {'rootless' if facts.rootless else 'rootful'}"
                    + ("" if api >= (1, 41) else ": devenv needs API 1.41 or newer (Docker 20.10, Podman 3); upgrade it")
                    + ("; health checks without start_interval (API < 1.44): the first check waits one interval"
                       if (1, 41) <= api < (1, 44) else ""))]
    if facts.selinux:
        checks.append(Check("engine selinux", OK, "SELinux enabled: devenv labels its bind mounts `:z`"))
    if needs_copy(facts):
        checks.append(Check("engine rootless", OK, "rootless Podman: the configs and keys the images read are "
                            "copied into the containers (under uid mapping a bind-mounted 0600 file is unreadable)"))
    if facts.kind == "podman":
        try:  # the probe runs psql: the Postgres image's
            present = stack.postgres.image if client.images.list(name=stack.postgres.image) else None
            gap = probe_dns(client, facts, present) if present else None
        except Exception as exc:
            return [*checks, Check("engine dns", WARN, f"could not probe DNS between containers: {exc}")]
        if present is None:
            checks.append(Check("engine dns", WARN, f"not probed: {stack.postgres.image} is not on the engine yet"))
        elif gap:
            checks.append(Check("engine dns", FAIL, f"containers cannot find each other by name: {gap}"))
        else:
            checks.append(Check("engine dns", OK, "containers find each other by name (PgBouncer reaches postgres)"))
    return checks


def _default_sockets(env: Mapping[str, str]) -> list[Path]:
    from devenv.runtime.engine import default_sockets

    return default_sockets(env)


def ping_engine(endpoint: "Endpoint") -> str:
    """'answers /_ping (Docker/27.3.1, API 1.47)', or why it does not."""
    from devenv.runtime.engine import unix_http_get

    if endpoint.host.startswith("unix://"):
        path = endpoint.host[len("unix://"):]
        try:
            status, headers, body = unix_http_get(path, "/_ping", timeout=PING_TIMEOUT)
        except PermissionError:
            return f"refuses this user: no permission on {path} (join the `docker` group, or use rootless Docker)"
        except Exception as exc:  # refused, timed out, not HTTP (http.client.HTTPException): no engine here
            return f"does not answer: {type(exc).__name__}: {exc}"
        if status != 200 or body.strip() != b"OK":
            return f"answers /_ping with HTTP {status} {body[:80]!r}"
        server = headers.get("server", "Docker")
        api = headers.get("api-version")
        return f"answers /_ping ({server}{f', API {api}' if api else ''})"
    # tcp:// (maybe TLS) and ssh:// need the SDK's transport; an engine is configured, so load it.
    from devenv.runtime.dockerapi import connect
    from devenv.runtime.engine import PING_TIMEOUT as SDK_PING_TIMEOUT

    try:
        client = connect(endpoint, timeout=SDK_PING_TIMEOUT)
    except DevenvError as exc:
        return f"does not answer: {exc.message.split(': ', 1)[-1]}"
    try:
        return f"answers ping (API {client.api.api_version})"
    finally:
        client.close()


# ---- binaries ----------------------------------------------------------------------------------


def binary_checks(stack: "Stack", runtime_name: str, env: Mapping[str, str]) -> list[Check]:
    """The programs devenv runs: where each is found and its version.

    The servers matter for the native runtime (a FAIL there, a warn under Docker); psql and
    pg_dump for `devenv psql`/`dump` (pg_dump must be at least the server's major version);
    openssl for profiles with ssl on. Discovery is the native runtime's, without its state
    file: doctor creates nothing.
    """
    from devenv.runtime.discovery import postgres_candidates as _postgres_candidates, which as _which

    native = runtime_name == "native"
    server_missing = FAIL if native else WARN
    only_native = "" if native else "; only the native runtime needs it"
    checks: list[Check] = []
    server_major = stack.postgres.major
    candidates = _postgres_candidates(env)
    if candidates:
        # As NativeRuntime.binaries chooses: the image's major when installed, else the newest.
        major, version, bindir = next((c for c in candidates if c[0] == stack.postgres.major), candidates[0])
        if native:
            server_major = major
        note = "" if major == stack.postgres.major else (
            f"; devenv.yaml's image {stack.postgres.image} is PostgreSQL {stack.postgres.major}")
        checks.append(Check("binary postgres", WARN if note and native else OK,
                            f"PostgreSQL {version} at {bindir / 'postgres'}{note}"))
        initdb = bindir / "initdb"
        checks.append(Check("binary initdb", OK, str(initdb)) if initdb.exists() else
                      Check("binary initdb", server_missing, f"not found next to postgres in {bindir}{only_native}"))
    else:
        checks.append(Check("binary postgres", server_missing,
                            f"not found (PATH, `pg_config --bindir`, /usr/lib/postgresql/*/bin){only_native}"))
    for program in ("pgbouncer", "redis-server"):
        path = _which(program, env)
        checks.append(Check(f"binary {program}", OK, f"{_version(path)} at {path}") if path else
                      Check(f"binary {program}", server_missing, f"not found on PATH or in /usr/sbin{only_native}"))
    for program in ("psql", "pg_dump"):
        path = _which(program, env)
        if path is None:
            checks.append(Check(f"binary {program}", WARN, f"not found on PATH: `devenv {program.replace('pg_', '')}` needs it"))
            continue
        version = _version(path)
        client_major = _major(version)
        if program == "pg_dump" and client_major is not None and client_major < server_major:
            checks.append(Check(f"binary {program}", WARN, f"{version} at {path} is older than PostgreSQL "
                                f"{server_major}, which it cannot dump: install postgresql-client-{server_major}"))
        else:
            checks.append(Check(f"binary {program}", OK, f"{version} at {path}"))
    openssl = _which("openssl", env)
    if openssl is None:
        checks.append(Check("binary openssl", FAIL if stack.postgres.ssl else WARN,
                            "not found: profiles with ssl on need it for the local certificate"))
    else:
        checks.append(Check("binary openssl", OK, f"{_version(openssl, 'version')} at {openssl}"))
    return checks


def _version(path: str, flag: str = "--version") -> str:
    """A program's version number as it reports it ('1.18.0', '7.0.15'), or '?'."""
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=5,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "version unknown"
    return parse_version(out) or "version unknown"


def parse_version(text: str) -> str | None:
    """The first version number in a program's `--version` output ('Redis server v=7.0.15' -> '7.0.15')."""
    match = re.search(r"(?<![\w.])v?=?(\d+\.\d+(?:\.\d+)?)", text.splitlines()[0] if text.strip() else "")
    return match.group(1) if match else None


def _major(version: str) -> int | None:
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else None


# ---- ports -------------------------------------------------------------------------------------


def port_checks(stack: "Stack", states: list["ServiceState"], runtime_name: str) -> list[Check]:
    """Each port: free, held by this stack's server, or held by another program (named)."""
    from devenv.errors import PortInUseError
    from devenv.runtime.ports import check_ports_free, describe_entry, port_holder, stack_holding
    from devenv.state import read_state

    by_service = {state.name: state for state in states}
    checks = []
    if stack.bind_ip:  # a remote engine publishes them on its host: this machine's ports say nothing
        via = "forwarded here over SSH" if not stack.reach_host else f"reached as {stack.host}"
        return [Check(f"port {getattr(stack, service).port}", OK, f"{service}: published by the remote engine on "
                      f"{stack.bind_ip} ({via})") for service in SERVICES]
    for service in SERVICES:
        port = getattr(stack, service).port
        try:
            check_ports_free(stack, [service])
            free, holder = True, None
        except PortInUseError:  # another checkout's stack (the registry), else the program /proc names
            other = stack_holding(port, stack)
            free, holder = False, describe_entry(other) if other is not None else port_holder(port)
        except OSError as exc:  # not "in use": e.g. a privileged port for a non-root user
            checks.append(Check(f"port {port}", FAIL, f"{service} cannot bind 127.0.0.1:{port}: {exc.strerror or exc}"))
            continue
        checks.append(classify_port(service, port, free, holder, by_service.get(service), runtime_name,
                                    pinned=bool(getattr(stack, service).pinned_by)))
    recorded = read_state(stack.state_dir).get("ports")
    wanted = [s.port for s in stack.services]
    if recorded and recorded != wanted:
        checks.append(Check("ports", WARN, f"the running stack was started on {recorded}; the settings now give "
                            f"{wanted}: `devenv up` moves it"))
    return checks


def classify_port(service: str, port: int, free: bool, holder: str | None,
                  state: "ServiceState | None", runtime_name: str, pinned: bool = True) -> Check:
    """The verdict on one port from what was seen: bind test, /proc's holder (or the checkout whose
    stack holds it), the runtime's state; a port that is not `pinned` moves at `up` instead."""
    name = f"port {port}"
    running = state is not None and state.running
    if free:
        if running:
            return Check(name, WARN, f"{service} runs but nothing listens on 127.0.0.1:{port}: "
                         "it was started with another port? `devenv up` restarts it")
        return Check(name, OK, f"free for {service}")
    holder_pid, holder_name = _parse_holder(holder)
    if running and state is not None:
        own = f"{service} (pid {state.pid})" if state.pid else service
        if state.pid and holder_pid == state.pid:
            return Check(name, OK, f"held by this stack's {own}")
        if runtime_name == "docker" and (holder_pid is None or holder_name in _DOCKER_PORT_HOLDERS):
            return Check(name, OK, f"held by this stack's {service}, published by Docker"
                         + (f" ({holder})" if holder_pid else ""))
        if holder_pid is None:  # e.g. not root: /proc does not show other users' sockets
            return Check(name, OK, f"in use, by this stack's {own} as far as can be seen")
        return Check(name, FAIL, f"held by {holder}, not by this stack's {own}")
    who = holder or "another program"
    if not pinned:
        return Check(name, WARN, f"held by {who}, not by this stack: `devenv up` takes the next free port for "
                     f"{service} and keeps it for this checkout")
    return Check(name, FAIL, f"held by {who}, not by this stack: `devenv up` would fail; stop it, or give "
                 f"{service} another port (DEVENV_{service.upper()}_PORT)")


def _parse_holder(holder: str | None) -> tuple[int | None, str]:
    """'pid 123 (python3)' -> (123, 'python3'); anything else -> (None, '')."""
    match = re.match(r"pid (\d+) \((.*)\)$", holder or "")
    return (int(match.group(1)), match.group(2)) if match else (None, "")


# ---- disk --------------------------------------------------------------------------------------


def disk_checks(stack: "Stack", runtime_name: str, env: Mapping[str, str]) -> list[Check]:
    """Free space where the data lives and in the cache directory; warn under 1 GiB."""
    from devenv.db.cache import cache_dir  # the one definition: DEVENV_CACHE_DIR or the platform's

    places: list[tuple[str, Path | None, str]] = []
    if runtime_name == "docker":
        root = _docker_root(env)
        places.append(("disk data", root, "" if root else "in the engine's volumes (not on this machine's "
                       "filesystem, or the engine did not say where)"))
    else:
        places.append(("disk data", _native_data_dir(stack, env), ""))
    places.append(("disk cache", cache_dir(), ""))
    checks = []
    for name, path, why_not in places:
        if path is None:
            checks.append(Check(name, OK, why_not))
            continue
        existing = _existing(path)
        usage = shutil.disk_usage(existing)
        text = f"{humanize.size(usage.free)} free at {path}" + ("" if existing == path else f" (on {existing}'s filesystem)")
        checks.append(Check(name, WARN if usage.free < LOW_DISK_BYTES else OK,
                            text + (": under 1 GiB" if usage.free < LOW_DISK_BYTES else "")))
    return checks


def _native_data_dir(stack: "Stack", env: Mapping[str, str]) -> Path:
    """Where native Postgres keeps its data; without creating anything for a stack never started."""
    if (stack.state_dir / "native").exists():
        from devenv.runtime.native import NativeRuntime

        return NativeRuntime(env).layout(stack).pgdata
    if stack.ephemeral and Path("/dev/shm").is_dir():
        return Path("/dev/shm")
    return Path("/var/lib/devenv") if os.geteuid() == 0 else stack.state_dir


def _docker_root(env: Mapping[str, str]) -> Path | None:
    """The engine's data root (its volumes) when the engine is local and says where."""
    import json

    from devenv.runtime.engine import find_endpoint, unix_http_get

    try:
        endpoint = find_endpoint(env)
        if endpoint is None or not endpoint.host.startswith("unix://"):
            return None
        status, _, body = unix_http_get(endpoint.host[len("unix://"):], "/info", timeout=PING_TIMEOUT)
        root = json.loads(body).get("DockerRootDir") if status == 200 else None
    except Exception:  # no local answer (or not JSON): the data root is then not known here
        return None
    # Docker Desktop, colima: the root is inside their VM, not on this machine.
    return Path(root) if isinstance(root, str) and root.startswith("/") and Path(root).is_dir() else None


def _existing(path: Path) -> Path:
    """The path, or its nearest ancestor that exists (whose filesystem it would be on)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


# ---- health and settings drift -----------------------------------------------------------------


def health_and_drift_checks(stack: "Stack", states: list["ServiceState"]) -> list[Check]:
    """Each service's health (when the stack is up), then its settings compared with the profile."""
    from devenv import health
    from devenv.db.pauses import paused_problem

    running = {state.name for state in states if state.running}
    if not running:
        return [Check("stack", OK, f"not running (`devenv up -p {stack.profile}` starts it); health and drift not checked")]
    checks: list[Check] = []
    healthy = set()
    all_checks = health.stack_checks(stack)
    for state in states:
        if not state.running:
            checks.append(Check(f"health {state.name}", FAIL, f"{state.detail or 'not running'} while the rest of "
                                "the stack runs: `devenv up` starts it"))
            continue
        paused = paused_problem(stack, PING_TIMEOUT) if state.name == "pgbouncer" else None
        problem = paused or health.check_once(all_checks[state.name])
        if problem is None:
            healthy.add(state.name)
            checks.append(Check(f"health {state.name}", OK, "healthy"))
        else:
            checks.append(Check(f"health {state.name}", FAIL, problem))
    drift = {"postgres": postgres_drift, "pgbouncer": pgbouncer_drift, "redis": redis_drift}
    for service in SERVICES:
        if service not in healthy:
            continue
        try:
            checks += drift[service](stack)
        except Exception as exc:  # a probe that breaks is a finding, never a crash
            checks.append(Check(f"settings {service}", FAIL, f"could not read its settings: {type(exc).__name__}: {exc}"))
    return checks


def postgres_drift(stack: "Stack") -> list[Check]:
    """Each setting of the profile's postgres column against `pg_settings` of the running server.

    Asked in the application's database, so per-database and per-role settings count too.
    """
    from devenv.config import pgcatalog
    from devenv.clients import connect, pgwire

    pg = stack.postgres
    names = ", ".join(pgwire.literal(name) for name in pg.settings) or "NULL"
    try:
        conn = connect.postgres(stack, timeout=PING_TIMEOUT, query_timeout=PING_TIMEOUT, application_name="devenv-doctor")
    except pgwire.PgError as exc:
        if exc.sqlstate != "3D000":  # invalid_catalog_name: no application database (yet)
            raise
        conn = connect.postgres(stack, "postgres", timeout=PING_TIMEOUT, query_timeout=PING_TIMEOUT,
                                application_name="devenv-doctor")
    with conn:
        major = conn.server_major
        rows = {name: [setting, shown, source, None, pending == "t"] for name, setting, shown, source, pending
                in conn.query("SELECT name, setting, current_setting(name), source, pending_restart "
                              f"FROM pg_settings WHERE name IN ({names})")}
    # Which file a value comes from (ALTER SYSTEM's postgresql.auto.conf?) only a superuser may
    # see: asked as devenv's admin role; without it the finding just names no file.
    try:
        with connect.postgres(stack, "postgres", admin=True, timeout=PING_TIMEOUT, query_timeout=PING_TIMEOUT,
                              application_name="devenv-doctor") as admin:
            for name, sourcefile in admin.query(f"SELECT name, sourcefile FROM pg_settings WHERE name IN ({names})"):
                if name in rows:
                    rows[name][3] = sourcefile
    except (pgwire.PgError, OSError):
        pass
    if major not in pgcatalog.SUPPORTED_MAJORS:
        major = pg.major
    return compare_postgres_settings(stack.profile, pg.settings, {k: tuple(v) for k, v in rows.items()}, major)


def compare_postgres_settings(profile: str, wanted: Mapping[str, str], rows: Mapping[str, tuple[Any, ...]],
                              major: int) -> list[Check]:
    """Drift findings from pg_settings rows: {name: (setting, shown, source, sourcefile, pending_restart)}."""
    from devenv.config import pgcatalog

    checks = []
    for name, expected in wanted.items():
        row = rows.get(name)
        if row is None:
            checks.append(Check(f"setting postgres.{name}", FAIL, f"expected {expected}; the server has no such setting"))
            continue
        setting, shown, source, sourcefile, pending = row
        if pending:
            checks.append(Check(f"setting postgres.{name}", WARN, f"changed in the configuration, applied only after "
                                "a restart (pending_restart): `devenv down && devenv up`"))
        if pgcatalog.same_setting(name, expected, setting, major):
            continue
        checks.append(Check(f"setting postgres.{name}", FAIL,
                            f"expected {expected} (devenv.yaml, profile {profile}), actual {shown}{_origin(name, source, sourcefile)}"))
    if not any(c.status == FAIL for c in checks):
        checks.insert(0, Check("settings postgres", OK, f"all {len(wanted)} settings as devenv.yaml's {profile} column"))
    return checks


def _origin(name: str, source: str | None, sourcefile: str | None) -> str:
    """Where a drifted value comes from, and how to undo it."""
    if sourcefile and sourcefile.endswith("postgresql.auto.conf"):
        return f" (set by ALTER SYSTEM in postgresql.auto.conf: `ALTER SYSTEM RESET {name}; SELECT pg_reload_conf()`)"
    if source == "configuration file":
        return f" (from {sourcefile or 'the configuration file'}: devenv.yaml changed since `devenv up`? run it)"
    if source in ("database", "user", "database user"):
        return f" (ALTER {'ROLE' if 'user' in source else 'DATABASE'} ... SET: `ALTER ... RESET {name}`)"
    return f" (source: {source})" if source else ""


def pgbouncer_drift(stack: "Stack") -> list[Check]:
    """Each setting of the profile's pgbouncer column against `SHOW CONFIG` on the admin console."""
    from devenv.clients import connect

    pgb = stack.pgbouncer
    with connect.pgbouncer_admin(stack, timeout=PING_TIMEOUT, query_timeout=PING_TIMEOUT) as console:
        config = console.show("CONFIG")
    reported = {row["key"]: row.get("value") or "" for row in config}
    return compare_named_settings("pgbouncer", stack.profile, pgb.settings, reported, "SHOW CONFIG")


def redis_drift(stack: "Stack") -> list[Check]:
    """Each setting of the profile's redis column against `CONFIG GET`."""
    from devenv.clients import connect

    with connect.redis(stack, timeout=PING_TIMEOUT) as conn:
        replies = conn.call(*[["CONFIG", "GET", name] for name in stack.redis.settings])
    reported = {}
    for reply in replies:
        if isinstance(reply, list):
            reported.update(dict(zip(reply[::2], reply[1::2])))
    return compare_named_settings("redis", stack.profile, stack.redis.settings, reported, "CONFIG GET")


def compare_named_settings(service: str, profile: str, wanted: Mapping[str, str], reported: Mapping[str, str],
                           how: str) -> list[Check]:
    """Drift findings for PgBouncer or Redis: same value as text, as a number or as a Redis size."""
    checks = []
    for name, expected in wanted.items():
        if name not in reported:
            checks.append(Check(f"setting {service}.{name}", WARN, f"expected {expected}; {how} does not report it"))
        elif not same_plain_value(expected, reported[name]):
            checks.append(Check(f"setting {service}.{name}", FAIL,
                                f"expected {expected} (devenv.yaml, profile {profile}), actual {reported[name]}"))
    if not checks:
        checks.append(Check(f"settings {service}", OK, f"all {len(wanted)} settings as devenv.yaml's {profile} column ({how})"))
    return checks


def same_plain_value(expected: str, reported: str) -> bool:
    """PgBouncer/Redis values: equal ignoring case, as numbers, or as Redis sizes ('256mb' == '268435456')."""
    if expected.strip().lower() == reported.strip().lower():
        return True
    want, got = redis_bytes(expected), redis_bytes(reported)
    return want is not None and want == got


def redis_bytes(value: str) -> int | None:
    """A Redis memory value in bytes ('256mb' -> 268435456, '1g' -> 10**9); None if not one."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _REDIS_UNITS:
        return None
    return int(match.group(1)) * _REDIS_UNITS[match.group(2).lower()]
