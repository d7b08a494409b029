"""DockerRuntime: the stack as containers, through the docker SDK, built from the compose file.

`up` renders `.devenv/<profile>/` exactly as `devenv render` does, parses the rendered
docker-compose.yml and sends each service's `POST /containers/create` body (devenv.runtime.compose):
what runs is what the compose file says, and a test compares `docker inspect` with the file.
Everything carries devenv's labels (from the compose file) and Compose's own
(`com.docker.compose.*`), so `docker compose -p <name> ps` shows the stack.

As `docker compose up` does, `up` observes (the containers the file wants, those the project
has), plans (per service: create, start, recreate, reload or nothing) and executes the plan.
The SDK calls shared by all of it are in devenv.runtime.dockerapi; what is done to Postgres's
data volume (the seeded-data cache, the password, the TLS key) in devenv.runtime.dockerdata.

The docker SDK is imported only when an engine is really used: `find_endpoint` decides from
the environment and the filesystem alone whether there is an engine to ask.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterator, Mapping

from devenv.db import cache
from devenv.db.roles import MIGRATED_NOTE
from devenv.errors import DependencyError, HealthCheckError, StateError
from devenv.render import COMPOSE_FILE, write_files
from devenv.runtime.base import Progress, ServiceState, UpResult
from devenv.runtime.compose import (
    COMPOSE_CONFIG_HASH,
    COMPOSE_NETWORK,
    COMPOSE_ONEOFF,
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    COMPOSE_WORKING_DIR,
    DEVENV_HASH,
    ContainerSpec,
    devenv_labels,
)
from devenv.runtime import sshtunnel
from devenv.runtime.dockerapi import (
    api_message,
    connect,
    docker_cli,
    ensure_images,
    ensure_network,
    log_tail_of,
    follow_container_logs,
    logs,
    quietly,
    remove,
    start_failure,
    stop,
    stop_timeout,
)
from devenv.runtime.dockerdata import (
    begin_unpack,
    clear_marker,
    data_key,
    data_volumes,
    give_password,
    local_data_dir,
    prepare_tls,
    read_marker,
    remove_volumes,
    restart_pool,
    save_volume,
    set_password,
    unpack_cached,
    wipe_failed_init,
    write_marker,
)
from devenv.runtime.delivery import deliver, write_reload
from devenv.runtime.dockerfiles import has_files, parsed, reloadable, remember_render, rendered
from devenv.runtime.engine import Endpoint, find_endpoint, forwards_ports, is_remote, no_engine_error, reach
from devenv.runtime.engines import EngineFacts, dns_error, engine_facts, engine_specs, lookup_failure
from devenv.runtime.plan import (
    PROGRAMS,
    has_password,
    password_note_path,
    remember_password,
    save_cache,
)
from devenv.runtime.ports import check_ports_free
from devenv.runtime.procs import read_stat
from devenv.config.identity import record_name, recorded_name
from devenv.config.stack import CONTAINER_PORTS, SERVICES, Stack
from devenv.runtime.dockername import decide_name, holds_ports, published_port, refuse_foreign

if TYPE_CHECKING:  # the SDK loads only when an engine is used
    from docker import DockerClient
    from docker.models.containers import Container

    from devenv.runtime.dockerdata import Unpacking

STARTING = ("create", "start", "recreate")  # the actions of a plan that start a container


@dataclass
class Observed:
    """What `up` found: the containers the rendered compose file wants, and the project's."""

    out_dir: Path  # .devenv/<profile>/, absolute: the compose file's directory
    files: dict[str, str]  # the rendered files, docker-compose.yml among them
    compose: dict[str, Any]  # docker-compose.yml, parsed
    specs: dict[str, ContainerSpec]  # service -> the container it wants
    image_ids: Mapping[str, str]  # image -> its id on the engine
    current: dict[str, Container] = field(default_factory=dict)  # service -> the container it has
    leftovers: list[Container] = field(default_factory=list)  # the project's others (an interrupted `up`'s)


@dataclass
class UpPlan:
    """What `up` does: per service create, start, recreate or reload (a service not named: nothing)."""

    actions: dict[str, str] = field(default_factory=dict)
    reload_files: dict[str, str] = field(default_factory=dict)  # Postgres files a reload rewrites in place
    to_bind: list[str] = field(default_factory=list)  # services whose host ports must be free

    @property
    def starting(self) -> list[str]:
        """The services whose container is started (created or recreated first, or not)."""
        return [service for service, action in self.actions.items() if action in STARTING]


class DockerRuntime:
    """Runs postgres, pgbouncer and redis as containers of one Compose-compatible project."""

    name = "docker"

    def __init__(self, env: Mapping[str, str] | None = None, endpoint: Endpoint | None = None,
                 client: DockerClient | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self._endpoint = endpoint
        self._client = client
        # Log tails of containers removed after a failed initialisation (their logs go with them).
        self._removed_tails: dict[str, str] = {}
        self._pending: dict[str, Future[None]] = {}  # containers still being started by `up`
        self._started: dict[str, str] = {}  # service -> container id `up` started (not recreated)
        self._password_step: bool | None = None  # set_password's answer in this `up` (True: migrated)
        self._facts: EngineFacts | None = None
        self._dns_checked = False  # Podman: whether PgBouncer's network was found to have DNS
        self._mountpoints: dict[str, str] = {}  # volume -> its directory on the engine's host
        self._begun: Unpacking | None = None  # a restore from the cache under way (dockerdata.begin_unpack)
        self._listed: tuple[str, float, list[Container]] | None = None  # states()'s listing: (stack, when, containers)

    # ---- engine --------------------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        """The engine this runtime talks to (DependencyError when nothing suggests one)."""
        if self._endpoint is None:
            found = find_endpoint(self.env)
            if found is None:
                raise no_engine_error(self.env)
            self._endpoint = found
        return self._endpoint

    def client(self) -> DockerClient:
        """A connected client (pinged once per runtime object)."""
        if self._client is None:
            self._client = connect(self.endpoint(), env=self.env)
        return self._client

    @property
    def api_version(self) -> str:
        """The API version negotiated with the engine."""
        return str(self.client().api.api_version)

    def facts(self) -> EngineFacts:
        """The engine's kind (Docker, Podman), version, rootless, SELinux (asked once)."""
        self._facts = self._facts or engine_facts(self.client())
        return self._facts

    def resolve(self, stack: Stack) -> DockerRuntime:
        """This runtime: it runs any stack it is asked to."""
        return self

    def identify(self, stack: Stack) -> Stack:
        """The stack under this checkout's recorded name (without a record, decided once and kept),
        published where this machine reaches the engine (engine.reach: 127.0.0.1 unless remote)."""
        if recorded_name(stack.state_dir, stack.root, stack.project) is None:
            stack = stack.replace(identity=decide_name(self.client(), stack))
            record_name(stack.state_dir, stack.root, stack.project, stack.name)
        host, ip = reach(self.endpoint(), self.env)
        return stack.replace(reach_host=host, bind_ip=ip)

    def engine_address(self) -> str:
        """The engine's endpoint (DOCKER_HOST, a context's, Podman's socket)."""
        return self.endpoint().host

    def describe(self, stack: Stack) -> str:
        """The engine and the images (said once per `up`)."""
        try:
            engine = self.facts().name
        except Exception:  # only a description: never fail `up` over it
            engine = "Docker ?"
        images = ", ".join(s.image for s in stack.services)
        return f"{engine} (API {self.api_version}) at {self.endpoint().shown}; images {images}"

    def ensure_images(self, stack: Stack, progress: Progress) -> dict[str, str]:
        """Each service's image id; a missing image is pulled (progress per layer, in bytes)."""
        return ensure_images(self.client(), stack, progress)

    # ---- up: observe, plan, execute -------------------------------------------------------------

    def up(self, stack: Stack, progress: Progress, use_cache: bool = False) -> UpResult:
        """Start what is not running, recreate (or reload) what changed, leave the rest alone.

        `use_cache`: a new data volume is filled from the seeded-data cache when it has an
        entry, and a new cluster's result names the key to save it under (see save_cache).
        """
        result = UpResult()
        image_ids = self.ensure_images(stack, progress)
        # Making a network takes the engine ~0.2 s: meanwhile render and plan. Compose calls it
        # <name>_default (checked against the parsed file before the starts).
        network_pool = ThreadPoolExecutor(max_workers=1)
        network_job = network_pool.submit(self._ensure_network, stack, f"{stack.name}_default")
        network_pool.shutdown(wait=False)
        seen = self._observe(stack, image_ids)
        self._clear_leftovers(stack, seen, result)
        plan = self._plan(stack, seen)
        if not stack.bind_ip:  # a remote engine's ports are on its host: its own start says if one is taken
            check_ports_free(stack, plan.to_bind)
        elif forwards_ports(self.endpoint(), self.env):  # ssh://: this machine's 127.0.0.1:P through the master
            sshtunnel.forward_ports(self.endpoint().host, self.env, stack)
        self._execute(stack, seen, plan, network_job, progress, result, use_cache)
        return result

    def _observe(self, stack: Stack, image_ids: Mapping[str, str]) -> Observed:
        """The wanted containers (the compose file rendered, parsed, translated) and the project's
        current ones; StateError when this project runs from another checkout."""
        out_dir = stack.state_dir.absolute()
        files = rendered(stack, out_dir)
        compose = parsed(out_dir, files[COMPOSE_FILE])
        specs = engine_specs(compose, out_dir / COMPOSE_FILE, self.api_version, image_ids, self.env,
                             self.endpoint(), self.facts())
        seen = Observed(out_dir, files, compose, specs, image_ids)
        existing = self._project_containers(stack, recent=True)
        refuse_foreign(stack, existing, out_dir)
        wanted = {spec.name: service for service, spec in specs.items()}
        for container in existing:
            labels = container.labels
            if wanted.get(container.name) == labels.get(COMPOSE_SERVICE) and labels.get(COMPOSE_ONEOFF) == "False":
                seen.current[labels[COMPOSE_SERVICE]] = container
            else:  # left by an interrupted `up` (a helper, a renamed service): found by label
                seen.leftovers.append(container)
        return seen

    def _clear_leftovers(self, stack: Stack, seen: Observed, result: UpResult) -> None:
        """Remove what interrupted `up`s left: stray containers, the data of a restore from the
        cache that never finished, a data volume whose initialisation failed."""
        for container in seen.leftovers:
            remove(container)
            result.notes.append(f"removed leftover container {container.name}")
        if read_marker(stack) == "restoring":  # an `up` killed while restoring: the volume is half full
            local = self._local_data_dir(stack, seen.specs["postgres"].volumes)
            if local is not None:
                cache.end_unpackers(local)  # its tar and zstd would write on into the volume
            postgres = seen.current.pop("postgres", None)
            if postgres is not None:
                remove(postgres)
            remove_volumes(self.client(), seen.specs["postgres"].volumes)
            clear_marker(stack)
            result.notes.append("postgres: discarded the data of an interrupted restore from the cache")
        postgres = seen.current.get("postgres")
        if postgres is not None and postgres.status != "running":
            wiped = self._wipe_failed_init(postgres)  # an earlier `up` failed (or was killed) during init
            if "removed" in wiped:
                del seen.current["postgres"]
                result.notes.append(f"postgres had exited{wiped}")

    def _plan(self, stack: Stack, seen: Observed) -> UpPlan:
        """Per service: create (none), recreate (its definition or files changed), reload
        (Postgres, when a SIGHUP applies the changed files), start (stopped) or nothing."""
        plan = UpPlan()
        for service in SERVICES:
            spec, container = seen.specs[service], seen.current.get(service)
            if container is None:
                plan.actions[service] = "create"
            elif container.labels.get(COMPOSE_CONFIG_HASH) != spec.config_hash:
                plan.actions[service] = "recreate"
            elif container.labels.get(DEVENV_HASH) != spec.files_hash and not has_files(container, spec, seen.files, stack):
                if service == "postgres" and container.status == "running":
                    plan.reload_files = reloadable(container, spec, seen.files, stack)
                plan.actions[service] = "reload" if service == "postgres" and plan.reload_files else "recreate"
            elif container.status != "running":
                plan.actions[service] = "start"
        plan.to_bind = [s for s, action in plan.actions.items() if action in ("create", "start")
                        or (action == "recreate" and not holds_ports(seen.current[s], seen.specs[s]))]
        return plan

    def _execute(self, stack: Stack, seen: Observed, plan: UpPlan, network_job: Future[None], progress: Progress,
                 result: UpResult, use_cache: bool) -> None:
        """Write the files, prepare what the starts need, start (in the background where it can),
        reload; `result` says what was done."""
        from docker.errors import NotFound

        # The files: a reload's where the container reads them (delivery); the rest atomically.
        if plan.reload_files:
            write_reload(seen.out_dir, seen.specs["postgres"], seen.current["postgres"], plan.reload_files)
        write_files(seen.files, seen.out_dir)
        remember_render(stack, seen.out_dir, seen.files, seen.compose)
        tls_images = {s: seen.specs[s].image for s in ("postgres", "pgbouncer") if plan.actions.get(s) in STARTING}
        if stack.postgres.ssl and tls_images:
            prepare_tls(self.client(), stack, tls_images, progress, hand_over=not seen.specs["postgres"].copies)
        starting = plan.starting
        restoring = self._prepare_data(stack, seen, plan, progress, result, use_cache)  # a restore begins
        if starting:
            network_job.result()
            network = seen.specs["postgres"].body["HostConfig"]["NetworkMode"]
            if network != f"{stack.name}_default":
                self._ensure_network(stack, network)
        for service in ("pgbouncer", "redis"):
            if plan.actions.get(service) in ("create", "recreate"):
                self._ensure_volumes(stack, seen.specs[service])
        self._password_step = None
        self._start_all(stack, seen, plan, restoring, progress, result)
        if "postgres" not in starting and "postgres" in seen.current and not has_password(password_note_path(stack), stack):
            # a restore whose `up` was killed, or old data
            self._password_step = set_password(self.client(), stack, seen.current["postgres"].id)
        if self._password_step is not None:
            result.roles_pending = True  # `up` then makes sure of the application role (roles.ensure_roles)
            if self._password_step:
                result.notes.append(MIGRATED_NOTE.format(app=stack.postgres.user, admin=stack.postgres.admin_user))
        for service in starting:
            (result.restarted if plan.actions[service] == "recreate" else result.started).append(service)
        if plan.actions.get("postgres") == "reload":
            try:
                seen.current["postgres"].kill(signal="SIGHUP")
            except NotFound as exc:
                raise StateError("the postgres container disappeared during `up`", hint="run `devenv up` again.") from exc
            result.reloaded.append("postgres")

    def _prepare_data(self, stack: Stack, seen: Observed, plan: UpPlan, progress: Progress, result: UpResult,
                      use_cache: bool) -> Path | None:
        """When Postgres starts on a new volume: the cached seeded data to restore into it (its
        container is then recreated), or initdb at its first start. Returns the archive."""
        spec = seen.specs["postgres"]
        if plan.actions.get("postgres") not in STARTING:
            return None
        fresh = self._ensure_volumes(stack, spec) or not spec.volumes
        # Only into a named volume: a tmpfs (the ci profile's) exists only inside a running container.
        cacheable = use_cache and bool(spec.volumes)
        key = data_key(stack, seen.image_ids.get(spec.image) or spec.image) if fresh and cacheable else ""
        found = cache.find(key) if key else None
        # Checked before the restore is chosen: a damaged archive is quarantined and initdb runs.
        restoring = cache.usable(found, progress) if found is not None else None
        if restoring is not None:
            write_marker(stack, "restoring")  # until the data is complete: a killed restore is wiped
            password_note_path(stack).unlink(missing_ok=True)  # another checkout's, until it is set
            progress(f"postgres   restoring seeded data from {restoring} into volume {', '.join(spec.volumes)}")
            if plan.actions["postgres"] == "start":  # a container of the old volume: the restore needs a new one
                plan.actions["postgres"] = "recreate"
            result.from_cache = True
            self._begun = begin_unpack(restoring, self._local_data_dir(stack, spec.volumes))
        elif fresh:
            clear_marker(stack)
            remember_password(password_note_path(stack), stack)  # initdb's, from the env
            where = f"volume {', '.join(spec.volumes)}" if spec.volumes else "tmpfs"
            progress(f"postgres   initdb into a new {where}")
            result.fresh_database = True
            result.cache_key = key
        return restoring

    def _start_all(self, stack: Stack, seen: Observed, plan: UpPlan, restoring: Path | None, progress: Progress,
                   result: UpResult) -> None:
        """Start the plan's containers; return once Postgres's start is done, the others' may go on.

        PgBouncer needs Postgres only to serve queries, not to start: all three at once. `up` waits
        for Postgres's start (errors, a restore, the password); the others' go on while the health
        checks poll (exit_status reports their failures). For a new cluster initdb is the long pole,
        and the engine starts one container in ~0.3 s, three at once in ~0.7 s: Postgres first, then
        the others one at a time during its initdb (2 cores: 0.26 s slower beside two starts, 0.16 s beside one).
        """
        starting = plan.starting

        def run(service: str) -> None:
            self._bring_up(stack, service, plan.actions[service], seen, restoring if service == "postgres" else None,
                           progress)

        initdb = result.fresh_database and "postgres" in starting
        pool = ThreadPoolExecutor(max_workers=1 if initdb else 3)
        futures = {}
        if initdb:
            futures["postgres"] = pool.submit(run, "postgres")
            futures["postgres"].exception()  # raised below
            from devenv.db.seeds import preload_driver

            preload_driver()  # seeding will need it; now, not to slow the start down (the GIL)
        futures.update({service: pool.submit(run, service) for service in starting if service not in futures})
        pool.shutdown(wait=False)
        if "postgres" in futures:
            self._pending = {s: f for s, f in futures.items() if s != "postgres"}
            futures["postgres"].result()
        else:
            for future in futures.values():
                future.result()

    def _bring_up(self, stack: Stack, service: str, action: str, seen: Observed, restoring: Path | None,
                  progress: Progress) -> None:
        """One service's part of the plan: replace, create or reuse its container, fill a new
        Postgres volume from the cache, start it, give Postgres this checkout's password."""
        spec = seen.specs[service]
        if action == "recreate":
            stop(seen.current[service], spec.stop_timeout)
            remove(seen.current[service])
        container_id = self._create(spec) if action in ("create", "recreate") else seen.current[service].id
        if spec.copies and action in ("create", "recreate"):
            deliver(self.client(), container_id, spec)  # the engine does not see this machine's files
        if restoring is not None:
            begun, self._begun = self._begun, None
            unpack_cached(self.client(), stack, container_id, restoring, self._local_data_dir(stack, spec.volumes),
                          progress, begun)
        if action in ("create", "start"):
            self._started[service] = container_id  # before the start: a failed one is stopped too
        self._start(service, container_id, stack)
        if service == "postgres" and not has_password(password_note_path(stack), stack):
            self._password_step = give_password(self.client(), stack, container_id, restoring)

    # ---- the seeded-data cache (devenv.db.cache): saved from, restored into the named volume -----

    def save_cache(self, stack: Stack, key: str, progress: Progress) -> None:
        """Keep the freshly seeded volume in the cache: a base backup of the running server when the
        volume's directory is here (cache.save_live), else dockerdata.save_through_api."""
        from docker.errors import DockerException

        if (container := self._container(stack, "postgres")) is None:
            return
        local = self._local_data_dir(stack, data_volumes(container))
        def restart() -> None:  # Postgres, stopped for the copy (save_through_api); on Podman PgBouncer too
            self._start("postgres", container.id, stack)
            if self.facts().kind == "podman":
                restart_pool(self._container(stack, "pgbouncer"))

        save_cache(progress, lambda: save_volume(self.client(), stack, container, key, local, restart=restart),
                   (DockerException,), api_message)

    def _local_data_dir(self, stack: Stack, volumes: Collection[str]) -> Path | None:
        """dockerdata.local_data_dir on this engine (the volume's directory, when usable here)."""
        return local_data_dir(self.client(), self.endpoint().host, lambda: self.facts().rootless, stack, volumes,
                              self._mountpoints)

    def _wipe_failed_init(self, container: Container) -> str:
        """dockerdata.wipe_failed_init, keeping the removed container's last log lines for log_tail."""
        done, tail = wipe_failed_init(self.client(), container)
        if tail is not None:
            self._removed_tails["postgres"] = tail
        return done

    def pg_tool(self, stack: Stack, tool: str) -> list[str]:
        """`docker exec -i` of a PostgreSQL client program in the postgres container: the
        server's own major version, connected over the container's loopback.

        PGPASSWORD, PGSSLMODE, PGCONNECT_TIMEOUT and PGAPPNAME pass as `-e NAME` (their values
        from the caller's environment, never on the command line); archives go through stdin
        and stdout.
        """
        cli = docker_cli(self.endpoint(), self.env, tool)
        container = self._container(stack, "postgres")
        if container is None or container.status != "running":
            raise StateError(f"the postgres container {stack.name}-postgres-1 is not running",
                             hint="start the stack first: `devenv up`.")
        passed = [arg for name in ("PGPASSWORD", "PGSSLMODE", "PGCONNECT_TIMEOUT", "PGAPPNAME") for arg in ("-e", name)]
        return [*cli, "exec", "-i", *passed, container.name, tool,
                "--host=127.0.0.1", f"--port={stack.postgres.container_port}", f"--username={stack.postgres.user}"]

    # ---- down, states, logs --------------------------------------------------------------------

    def down(self, stack: Stack, volumes: bool = False) -> list[str]:
        """Stop and remove the containers (in parallel); `volumes` deletes the data and the network too."""
        client = self.client()
        for future in self._pending.values():
            future.exception()  # wait: a start still in flight would bring a container back
        self._pending = {}
        containers = self._project_containers(stack, own=True)
        running = {c.labels.get(COMPOSE_SERVICE, c.name) for c in containers if c.status in ("running", "paused", "restarting")}

        def stop_and_remove(container: Container) -> None:
            if container.status in ("running", "paused", "restarting"):
                stop(container, stop_timeout(container))
            remove(container)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(stop_and_remove, containers))
        label = f"{COMPOSE_PROJECT}={stack.name}"
        if volumes:
            # The network stays with the volumes: an empty bridge costs nothing, and making it
            # again is on the way of the next `up` (0.2-0.6 s of the engine's time here).
            for network in client.networks.list(filters={"label": label}):
                quietly(network.remove)
            clear_marker(stack)  # a restore's data went with the volume
            for volume in client.volumes.list(filters={"label": label}):
                quietly(lambda: volume.remove(force=True))
        self._removed_tails.clear()
        if self.endpoint().host.startswith("ssh://"):  # its forwards go; the last `down` there closes the master
            sshtunnel.release(self.endpoint().host, self.env, stack.name)
        return [s for s in SERVICES if s in running]

    def stop_started(self, stack: Stack) -> list[str]:
        """After a failed `up`: stop the containers it started (not those it recreated), data kept."""
        for future in self._pending.values():
            future.exception()  # wait: a start still in flight would bring a container back
        started, self._pending, self._started = self._started, {}, {}
        running = [c for c in self._project_containers(stack, own=True)
                   if c.id in started.values() and c.status in ("running", "restarting")]
        for container in running:
            stop(container, stop_timeout(container))
        return [service for service, cid in started.items() if cid in {c.id for c in running}]

    def _settle(self) -> None:
        """Wait for the starts `up` left running; raise the first failure."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            future.result()

    def footprint(self, stack: Stack) -> list[str]:
        """The stack's named volumes (by their Compose project label)."""
        return sorted(v.name for v in self.client().volumes.list(filters={"label": f"{COMPOSE_PROJECT}={stack.name}"}))

    def states(self, stack: Stack) -> list[ServiceState]:
        """Each service's container: running or not, its main process's host pid and port."""
        self._settle()
        found = self._project_containers(stack)
        self._listed = (stack.name, time.monotonic(), found)  # `up` may follow at once (_observe)
        by_service = {c.labels.get(COMPOSE_SERVICE): c for c in _of_this_checkout(stack, found)
                      if c.labels.get(COMPOSE_ONEOFF) == "False"}
        out = []
        for service in SERVICES:
            container, port = by_service.get(service), getattr(stack, service).port
            if container is None:
                out.append(ServiceState(service, False, port, detail="not started"))
                continue
            state = container.attrs.get("State", {})
            running = bool(state.get("Running")) and not state.get("Restarting")
            port = (published_port(container, CONTAINER_PORTS[service]) or port) if running else port
            pid = state.get("Pid") or None
            found = read_stat(pid) if running and pid and not is_remote(self.endpoint()) else None
            comm = found[0] if found else None
            if running:
                health = (state.get("Health") or {}).get("Status")
                detail = f"container {container.short_id}" + (f", docker health {health}" if health else "")
            else:
                detail = f"exited {state.get('ExitCode')}" if state.get("Status") == "exited" else state.get("Status", "?")
            # A pid only where this machine sees the container's processes (not a VM, not remote).
            out.append(ServiceState(service, running, port, pid if comm else None, comm or PROGRAMS[service], detail))
        return out

    def exit_status(self, stack: Stack, service: str) -> str | None:
        """Why a container is out of the race: it exited, vanished, or Docker found it unhealthy.

        A start that `up` left running in the background and that failed raises its error here.
        """
        future = self._pending.get(service)
        if future is not None:
            if not future.done():
                return None
            del self._pending[service]
            future.result()
        if (container := self._container(stack, service)) is None:
            return None if service in self._removed_tails else "is gone (its container was removed)"
        state = container.attrs.get("State", {})
        if service == "pgbouncer" and not self._dns_checked and self.facts().kind == "podman":
            # Podman without DNS: say so now, not after the 60 s timeout
            self._dns_checked, gap = lookup_failure(self.client(), self.facts(), container, stack.postgres.image)
            if gap:
                raise dns_error(gap)
        if state.get("Status") in ("exited", "dead"):
            reason = f"exited with code {state.get('ExitCode')}"
            if state.get("OOMKilled"):
                reason += " (killed: out of memory; raise the profile's limits.memory)"
            if service == "postgres":
                reason += self._wipe_failed_init(container)
            return reason
        if (state.get("Health") or {}).get("Status") == "unhealthy":
            return "is unhealthy by its Docker health check"
        return None

    def started(self, stack: Stack, service: str) -> bool:
        """Whether the container's start, which `up` may leave running in the background, is done.

        Probed earlier, a published port answers through docker-proxy, whose connection to the
        container's address, not reachable yet, fails its ARP: every connection then waits for
        the next ARP try, 1 s later (probe timeouts of 0.25 and 0.5 s, then an answer at 1.1 s).
        """
        future = self._pending.get(service)
        return future is None or future.done()

    def log_tail(self, stack: Stack, service: str, lines: int = 20) -> str:
        """The container's last log lines; while Docker's health check fails, also its last output."""
        if service in self._removed_tails:
            return self._removed_tails[service]
        container = self._container(stack, service)
        if container is None:
            return ""
        text = logs(container, tail=lines).rstrip("\n")
        health = container.attrs.get("State", {}).get("Health") or {}
        results = health.get("Log") or []
        if health.get("Status") != "healthy" and results and results[-1].get("ExitCode") != 0:
            last = results[-1]
            output = (last.get("Output") or "").strip() or "(no output)"
            text += (f"\n--- Docker health check: {health.get('Status')}, {len(results)} recent checks, "
                     f"last exited {last.get('ExitCode')}: {output}")
        return text

    def follow_logs(self, stack: Stack, service: str | None, follow: bool) -> Iterator[str]:
        """Lines of one or every container's log; with `follow`, new lines as they come."""
        services = [service] if service else list(SERVICES)
        containers = {s: c for s in services if (c := self._container(stack, s)) is not None}
        prefix = (lambda name: f"{name:<9} | ") if len(services) > 1 else (lambda name: "")
        if not follow:
            for name, container in containers.items():
                for line in logs(container).splitlines():
                    yield prefix(name) + line
            return
        yield from follow_container_logs(containers, prefix)

    # ---- containers, networks, volumes ---------------------------------------------------------

    def _create(self, spec: ContainerSpec) -> str:
        from docker.errors import APIError

        client = self.client()
        try:
            created = client.api.create_container_from_config(spec.body, name=spec.name)
        except APIError as exc:
            if exc.status_code == 409:
                raise StateError(
                    f"a container named {spec.name} already exists and is not this stack's",
                    hint=f"remove it (`docker rm -f {spec.name}`) or rename the project in devenv.yaml.",
                ) from exc
            raise DependencyError(f"Docker could not create {spec.name}: {api_message(exc)}",
                                  hint="see the message; `devenv up --debug` shows the request.") from exc
        return created["Id"]

    def _start(self, service: str, container_id: str, stack: Stack) -> None:
        from docker.errors import APIError

        try:
            self.client().api.start(container_id)
        except APIError as exc:
            message = api_message(exc)
            known = start_failure(service, message, stack)
            if known is not None:
                raise known from exc
            raise HealthCheckError(f"{service} did not start: {message}", hint=f"see `devenv logs {service}`.",
                                   log_tail=log_tail_of(self.client(), container_id)) from exc

    def _ensure_network(self, stack: Stack, name: str) -> None:
        """Compose's default network of the project, made if missing."""
        ensure_network(self.client(), name, {COMPOSE_PROJECT: stack.name, COMPOSE_NETWORK: "default",
                                             **devenv_labels(stack)})

    def _ensure_volumes(self, stack: Stack, spec: ContainerSpec) -> bool:
        """Create the spec's named volumes that are missing; True if any was created."""
        from docker.errors import NotFound

        client = self.client()
        created = False
        for name, labels in spec.volumes.items():
            try:
                volume = client.volumes.get(name)
            except NotFound:
                volume = client.volumes.create(name, labels={**labels, **devenv_labels(stack)})
                created = True
            self._mountpoints[name] = str(volume.attrs.get("Mountpoint") or "")  # for _local_data_dir
        return created

    def _project_containers(self, stack: Stack, own: bool = False, recent: bool = False) -> list[Container]:
        """The containers of the stack's Compose project; `own`: only those of this checkout.
        `recent`: those states() listed, if it did so a moment ago (`up` asks right after it)."""
        listed, self._listed = self._listed, None
        if recent and listed and listed[0] == stack.name and time.monotonic() - listed[1] < 2.0:
            found = listed[2]
        else:
            found = self.client().containers.list(all=True, filters={"label": f"{COMPOSE_PROJECT}={stack.name}"})
        return _of_this_checkout(stack, found) if own else found

    def _container(self, stack: Stack, service: str) -> Container | None:
        from docker.errors import NotFound

        try:
            return self.client().containers.get(f"{stack.name}-{service}-1")
        except NotFound:
            return None


def _of_this_checkout(stack: Stack, containers: list[Container]) -> list[Container]:
    """The containers Compose made from this checkout's state directory (or with no such label)."""
    here = str(stack.state_dir.absolute())
    return [c for c in containers if c.labels.get(COMPOSE_WORKING_DIR, here) == here]


__all__ = ["DockerRuntime"]

