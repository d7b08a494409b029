"""DockerRuntime: the stack as containers, through the docker SDK, built from the compose file.

`up` renders `.devenv/<profile>/` exactly as `devenv render` does, parses the rendered
docker-compose.yml and turns each service into one `POST /containers/create` body
(`compose_specs`): what runs is what the compose file says, and a test compares `docker
inspect` with the file. Everything carries devenv's labels (from the compose file) and
Compose's own (`com.docker.compose.*`), so `docker compose -p <name> ps` shows the stack.

The docker SDK is imported only when an engine is really used: `find_endpoint` decides from
the environment and the filesystem alone whether there is an engine to ask.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import tarfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from devenv import cache
from devenv.certs import ensure_certificate
from devenv.errors import ConfigError, DependencyError, DevenvError, HealthCheckError, StateError
from devenv.render import COMPOSE_FILE, SERVICE_FILES, compose_placement, render_files, service_hashes, write_files
from devenv.runtime.base import Progress, ServiceState, UpResult
from devenv.runtime.compose import (
    COMPOSE_CONFIG_HASH,
    COMPOSE_NETWORK,
    COMPOSE_ONEOFF,
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    COMPOSE_WORKING_DIR,
    DEVENV_HASH,
    DEVENV_PROFILE,
    DEVENV_PROJECT,
    ContainerSpec,
    compose_specs,
    load_compose,
)
from devenv.runtime.engine import Endpoint, engine_unreachable, find_endpoint, no_engine_error
from devenv.runtime.plan import (
    PROGRAMS,
    SERVICES,
    conf_values,
    has_password,
    password_note_path,
    reload_suffices,
    remember_password,
    render_key,
    save_cache,
    save_live,
)
from devenv.runtime.ports import check_ports_free, port_in_use
from devenv.runtime.procs import read_stat
from devenv.stack import Stack

if TYPE_CHECKING:  # the SDK loads only when an engine is used
    from docker import DockerClient
    from docker.models.containers import Container

IMAGE_VARS = {service: f"DEVENV_{service.upper()}_IMAGE" for service in SERVICES}

API_TIMEOUT = 120.0
# What the postgres image's entrypoint prints when it initialises an empty data directory
# (initdb's first line) and when it is done (shared/image-contracts.md).
_INIT_STARTED = "The files belonging to this database system"
_INIT_DONE = "init process complete"
CACHE_FILE = ".docker-render.json"  # in .devenv/<profile>/: the inputs the rendered files came from


# ---- connecting (where the engine is, without the SDK: devenv.runtime.engine) -------------------


def connect(endpoint: Endpoint, timeout: float = API_TIMEOUT) -> "DockerClient":
    """A client for the endpoint that has answered a ping; DependencyError naming the host if not."""
    import docker
    from docker.errors import DockerException

    kwargs: dict[str, Any] = {"base_url": endpoint.host, "timeout": timeout}
    if endpoint.host.startswith("ssh://"):
        kwargs["use_ssh_client"] = True  # the system's ssh: its config and agent, no paramiko
    if endpoint.tls_dir and (endpoint.host.startswith("tcp://") or endpoint.host.startswith("https://")):
        tls_dir = Path(endpoint.tls_dir)
        cert = (str(tls_dir / "cert.pem"), str(tls_dir / "key.pem")) if (tls_dir / "cert.pem").exists() else None
        ca = str(tls_dir / "ca.pem") if (tls_dir / "ca.pem").exists() else None
        kwargs["tls"] = docker.tls.TLSConfig(client_cert=cert, ca_cert=ca if endpoint.tls_verify else None,
                                             verify=endpoint.tls_verify and (ca or True))
    try:
        client = docker.DockerClient(**kwargs)  # negotiates the API version: one request
        client.ping()
    except (DockerException, OSError) as exc:
        raise engine_unreachable(endpoint, exc) from exc
    return client


# ---- the runtime -------------------------------------------------------------------------------------


class DockerRuntime:
    """Runs postgres, pgbouncer and redis as containers of one Compose-compatible project."""

    name = "docker"

    def __init__(self, env: Mapping[str, str] | None = None, endpoint: Endpoint | None = None,
                 client: "DockerClient | None" = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self._endpoint = endpoint
        self._client = client
        # Log tails of containers removed after a failed initialisation (their logs go with them).
        self._removed_tails: dict[str, str] = {}
        self._pending: dict[str, Future[None]] = {}  # containers still being started by `up`

    # ---- engine --------------------------------------------------------------------------------

    def endpoint(self) -> Endpoint:
        """The engine this runtime talks to (DependencyError when nothing suggests one)."""
        if self._endpoint is None:
            self._endpoint = find_endpoint(self.env)
            if self._endpoint is None:
                raise no_engine_error(self.env)
        return self._endpoint

    def client(self) -> "DockerClient":
        """A connected client (pinged once per runtime object)."""
        if self._client is None:
            self._client = connect(self.endpoint())
        return self._client

    @property
    def api_version(self) -> str:
        """The API version negotiated with the engine."""
        return str(self.client().api.api_version)

    def resolve(self, stack: Stack) -> DockerRuntime:
        """This runtime: it runs any stack it is asked to."""
        return self

    def describe(self, stack: Stack) -> str:
        """The engine and the images (said once per `up`)."""
        client = self.client()
        try:
            version = client.api.version().get("Version", "?")
        except Exception:  # only a description: never fail `up` over it
            version = "?"
        images = ", ".join(s.image for s in stack.services)
        return f"Docker {version} (API {self.api_version}) at {self.endpoint().host}; images {images}"

    # ---- images --------------------------------------------------------------------------------

    def ensure_images(self, stack: Stack, progress: Progress) -> dict[str, str]:
        """Each service's image id; a missing image is pulled (progress per layer, in bytes)."""
        from docker.errors import ImageNotFound

        client = self.client()
        ids: dict[str, str] = {}
        for service in stack.services:
            if service.image in ids:
                continue
            try:
                ids[service.image] = client.images.get(service.image).id
            except ImageNotFound:
                ids[service.image] = self._pull(service.name, service.image, progress)
        return ids

    def _pull(self, service: str, image: str, progress: Progress) -> str:
        from docker.errors import DockerException
        from docker.utils import parse_repository_tag

        client = self.client()
        repository, tag = parse_repository_tag(image)  # the tag may be a digest: the API takes both
        progress(f"{service:<10} pulling {image} (not found locally)")
        report = PullProgress(f"{service:<10} {image}", progress)
        try:
            for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if event.get("error"):
                    raise pull_error(service, image, str(event["error"]))
                report.feed(event)
            report.finish()
            return client.images.get(image).id
        except DevenvError:
            raise
        except (DockerException, OSError) as exc:
            raise pull_error(service, image, _api_message(exc)) from exc

    # ---- up ------------------------------------------------------------------------------------

    def up(self, stack: Stack, progress: Progress, use_cache: bool = False) -> UpResult:
        """Start what is not running, recreate (or reload) what changed, leave the rest alone.

        `use_cache`: a new data volume is filled from the seeded-data cache when it has an
        entry, and a new cluster's result names the key to save it under (see save_cache).
        """
        from docker.errors import NotFound

        client = self.client()
        result = UpResult()
        image_ids = self.ensure_images(stack, progress)
        # Making a network takes the engine ~0.2 s: meanwhile render and plan. Compose calls it
        # <name>_default (checked against the parsed file below).
        network_pool = ThreadPoolExecutor(max_workers=1)
        network_job = network_pool.submit(self._ensure_network, stack, f"{stack.name}_default")
        network_pool.shutdown(wait=False)
        out_dir = stack.state_dir.absolute()
        files = self._rendered(stack, out_dir)
        compose_file = out_dir / COMPOSE_FILE
        compose = self._parsed(out_dir, files[COMPOSE_FILE])
        specs = compose_specs(compose, compose_file, self.api_version, image_ids, self.env)
        missing = set(SERVICES) - set(specs)
        if missing:
            raise ConfigError(f"the rendered {COMPOSE_FILE} has no service {', '.join(sorted(missing))}",
                              hint="docker-compose.yml.j2 must define postgres, pgbouncer and redis.")

        existing = self._project_containers(stack)
        self._refuse_foreign(stack, existing, out_dir)
        wanted = {spec.name: service for service, spec in specs.items()}
        current: dict[str, "Container"] = {}
        for container in existing:
            labels = container.labels
            if wanted.get(container.name) == labels.get(COMPOSE_SERVICE) and labels.get(COMPOSE_ONEOFF) == "False":
                current[labels[COMPOSE_SERVICE]] = container
            else:  # left by an interrupted `up` (a helper, a renamed service): found by label, removed
                _remove(container)
                result.notes.append(f"removed leftover container {container.name}")

        if _read_marker(stack) == "restoring":  # an `up` killed while restoring: the volume is half full
            self._discard_volume(stack, current.pop("postgres", None), specs["postgres"])
            result.notes.append("postgres: discarded the data of an interrupted restore from the cache")
        postgres = current.get("postgres")
        if postgres is not None and postgres.status != "running":
            wiped = self._wipe_failed_init(postgres)  # an earlier `up` failed (or was killed) during init
            if "removed" in wiped:
                del current["postgres"]
                result.notes.append(f"postgres had exited{wiped}")

        plan: dict[str, str] = {}  # service -> create | start | recreate | reload
        reload_files: dict[str, str] = {}
        for service in SERVICES:
            spec, container = specs[service], current.get(service)
            if container is None:
                plan[service] = "create"
            elif container.labels.get(COMPOSE_CONFIG_HASH) != spec.config_hash:
                plan[service] = "recreate"
            elif container.labels.get(DEVENV_HASH) != spec.files_hash and not self._has_files(container, spec, files, stack):
                if service == "postgres" and container.status == "running":
                    reload_files = self._reloadable(container, spec, files, stack)
                plan[service] = "reload" if service == "postgres" and reload_files else "recreate"
            elif container.status != "running":
                plan[service] = "start"

        to_bind = [s for s, action in plan.items()
                   if action in ("create", "start") or (action == "recreate" and not _holds_ports(current[s], specs[s]))]
        check_ports_free(stack, to_bind)

        # The files: a reload writes in place (a file bind mount pins its inode); the rest atomically.
        for name, content in reload_files.items():
            _write_in_place(out_dir / name, content)
        write_files(files, out_dir)
        self._remember_render(stack, out_dir, files, compose)
        if stack.postgres.ssl and plan.get("postgres") in ("create", "recreate", "start"):
            self._prepare_tls(stack, specs["postgres"], progress)

        starting = [s for s, action in plan.items() if action in ("create", "start", "recreate")]
        if starting:
            network_job.result()
            network = specs["postgres"].body["HostConfig"]["NetworkMode"]
            if network != f"{stack.name}_default":
                self._ensure_network(stack, network)
        restoring: Path | None = None  # a cached seeded data directory to put into the new volume
        if plan.get("postgres") in ("create", "recreate", "start"):
            fresh = self._ensure_volumes(stack, specs["postgres"]) or not specs["postgres"].volumes
            # Only into a named volume: a tmpfs (the ci profile's) exists only inside a running container.
            cacheable = use_cache and bool(specs["postgres"].volumes)
            key = self._data_key(stack, specs["postgres"], image_ids) if fresh and cacheable else ""
            restoring = cache.find(key) if key else None
            if restoring is not None:
                _write_marker(stack, "restoring")  # until the data is complete: a killed restore is wiped
                password_note_path(stack).unlink(missing_ok=True)  # another checkout's, until it is set
                progress(f"postgres   restoring seeded data from {restoring} into volume "
                         f"{', '.join(specs['postgres'].volumes)}")
                if plan["postgres"] == "start":  # a container of the old volume: the restore needs a new one
                    plan["postgres"] = "recreate"
                result.from_cache = True
            elif fresh:
                _clear_marker(stack)
                remember_password(password_note_path(stack), stack)  # initdb's, from the env
                where = f"volume {', '.join(specs['postgres'].volumes)}" if specs["postgres"].volumes else "tmpfs"
                progress(f"postgres   initdb into a new {where} (the image's entrypoint)")
                result.fresh_database = True
                result.cache_key = key
        for service in ("pgbouncer", "redis"):
            if plan.get(service) in ("create", "recreate"):
                self._ensure_volumes(stack, specs[service])

        def run(service: str) -> None:
            action, spec = plan[service], specs[service]
            if action == "recreate":
                _stop(current[service], spec.stop_timeout)
                _remove(current[service])
            if action in ("create", "recreate"):
                container_id = self._create(spec)
            else:
                container_id = current[service].id
            if service == "postgres" and restoring is not None:
                self._restore(stack, spec, container_id, restoring, progress)
            self._start(service, container_id, stack)
            if service == "postgres" and not has_password(password_note_path(stack), stack):
                self._set_password(stack, container_id)

        # PgBouncer needs Postgres only to serve queries, not to start: all three at once. `up`
        # waits for Postgres's start (its errors, a restore, the password); the others' starts go
        # on while the health checks poll: exit_status reports their failures, states() waits.
        # For a new cluster the entrypoint's initdb is the long pole, and the engine starts one
        # container in ~0.3 s but three at once in ~0.7 s: Postgres first, then the others during
        # its initdb one at a time (one worker), as the engine's work slows initdb down (on 2
        # cores its phases took 0.26 s longer beside two starts at once, 0.16 s beside one).
        initdb = result.fresh_database and "postgres" in starting
        pool = ThreadPoolExecutor(max_workers=1 if initdb else 3)
        futures = {}
        if initdb:
            futures["postgres"] = pool.submit(run, "postgres")
            futures["postgres"].exception()  # raised below
            from devenv.database import preload_driver

            preload_driver()  # seeding will need it; now, not to slow the start down (the GIL)
        futures.update({service: pool.submit(run, service) for service in starting if service not in futures})
        pool.shutdown(wait=False)
        if "postgres" in futures:
            self._pending = {s: f for s, f in futures.items() if s != "postgres"}
            futures["postgres"].result()
        else:
            for future in futures.values():
                future.result()
        if "postgres" not in starting and "postgres" in current and not has_password(password_note_path(stack), stack):
            self._set_password(stack, current["postgres"].id)  # a restore whose `up` was killed, or old data
        for service in starting:
            (result.restarted if plan[service] == "recreate" else result.started).append(service)

        if plan.get("postgres") == "reload":
            container = current["postgres"]
            try:
                container.kill(signal="SIGHUP")
            except NotFound as exc:
                raise StateError("the postgres container disappeared during `up`", hint="run `devenv up` again.") from exc
            result.reloaded.append("postgres")
        return result

    # ---- the seeded-data cache (devenv.cache): saved from, restored into the named volume -----

    def _data_key(self, stack: Stack, spec: ContainerSpec, image_ids: Mapping[str, str]) -> str:
        """The cache key: as native's, with the image id (its exact PostgreSQL build, locales and
        data path) in place of initdb's arguments; so Docker and native entries never mix."""
        image_id = image_ids.get(spec.image) or spec.image
        return cache.data_key(stack, str(stack.postgres.major),
                              ["docker", image_id, f"PGDATA={stack.postgres.pgdata}", f"user={stack.postgres.user}"])

    def _restore(self, stack: Stack, spec: ContainerSpec, container_id: str, archive: Path, progress: Progress) -> None:
        """Unpack a cached data directory into the new volume of the created, not yet started,
        container (the engine mounts its volumes for the copy); the image's entrypoint then finds
        PG_VERSION and skips initdb, and chowns the files to its postgres user."""
        from docker.errors import DockerException

        start = time.perf_counter()
        local = self._local_data_dir(stack, spec)
        try:
            if local is not None:  # the engine's volume is a directory here: unpack straight into it
                _untar_into(archive, local)
            else:
                with _decompressed(archive) as chunks:
                    self.client().api.put_archive(container_id, stack.postgres.pgdata, chunks)
        except (DockerException, OSError) as exc:
            raise StateError(f"could not restore {archive} into the postgres volume: {_api_message(exc)}",
                             hint=f"delete {archive} and run `devenv up` again (it then runs initdb and seeds).") from exc
        _clear_marker(stack)  # the data is complete; it still has another checkout's password (has_password)
        progress(f"postgres   restored in {time.perf_counter() - start:.2f}s (no initdb, schema or seed)")

    def _set_password(self, stack: Stack, container_id: str, timeout: float = 60.0) -> None:
        """This checkout's password for the superuser of a restored data directory (or of one an
        earlier checkout left; see plan.has_password): set over the container's unix socket (trusted
        locally), the password passed in the exec's environment, never on a command line, and kept
        out of the server log."""
        from docker.errors import DockerException

        pg = stack.postgres
        script = (
            'i=0; until pg_isready -q -h /var/run/postgresql -p "$PORT"; do '
            'i=$((i+1)); [ "$i" -gt "$TRIES" ] && exit 9; sleep 0.05; done\n'
            'psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$PORT" -U "$DEVENV_USER" -d postgres '
            '-v u="$DEVENV_USER" -v pw="$DEVENV_PASSWORD" <<\'SQL\'\n'
            "SET log_statement = 'none';\n"
            "ALTER ROLE :\"u\" PASSWORD :'pw';\n"
            "SQL\n"
        )
        env = {"PORT": str(pg.container_port), "TRIES": str(int(timeout / 0.05)), "DEVENV_USER": pg.user,
               "DEVENV_PASSWORD": pg.password_secret}  # the SCRAM secret PgBouncer's userlist holds
        api = self.client().api
        try:
            exec_id = api.exec_create(container_id, ["sh", "-c", script], user="postgres", environment=env)["Id"]
            output = api.exec_start(exec_id).decode(errors="replace").strip()
            code = api.exec_inspect(exec_id).get("ExitCode")
        except DockerException as exc:
            output, code = _api_message(exc), None
        if code != 0:
            raise HealthCheckError(
                f"postgres did not take this checkout's password (data from the cache or from an earlier "
                f"checkout; exit {code}): {output or 'no output'}",
                hint="delete the cache entry (DEVENV_CACHE_DIR) and run `devenv down --volumes && devenv up`.",
                log_tail=self._logs_of(container_id))
        remember_password(password_note_path(stack), stack)

    def save_cache(self, stack: Stack, key: str, progress: Progress) -> None:
        """Keep the freshly seeded volume in the cache. When the volume's directory is here, a base
        backup of the running server (cache.save_live); else a clean stop of the container, its
        data directory through the engine's archive API into zstd, then the container starts again."""
        from docker.errors import DockerException

        container = self._container(stack, "postgres")
        if container is None:
            return
        local = self._local_data_dir(stack, _spec_of(container))
        if local is not None:  # no stop and start: ~1 s less than the archive API's way
            save_cache(progress, lambda: save_live(stack, local, key), (DockerException,), _api_message)
        else:
            save_cache(progress, lambda: self._save_through_api(stack, container, key), (DockerException,), _api_message)

    def _save_through_api(self, stack: Stack, container: "Container", key: str) -> Path:
        """The stopped container's data directory, read through the engine's archive API into the cache."""
        _stop(container, int(container.attrs.get("Config", {}).get("StopTimeout") or 10))  # no recovery needed later
        try:
            stream, _ = self.client().api.get_archive(container.id, stack.postgres.pgdata + "/.")
            with cache.compressed(cache.archive_path(key)) as (sink, path):
                for chunk in stream:
                    sink.write(chunk)
        finally:
            self._start("postgres", container.id, stack)
        return path

    def _local_data_dir(self, stack: Stack, spec: ContainerSpec) -> Path | None:
        """The data volume's directory when this process can use it directly: an engine on this
        machine (a unix socket; not Docker Desktop's or colima's VM, whose paths are not here),
        the volume holding PGDATA itself (17 and below), and root (the engine's files are root's)."""
        from docker.errors import DockerException

        if not self.endpoint().host.startswith("unix://") or os.geteuid() != 0 or len(spec.volumes) != 1 \
                or stack.postgres.pgdata != stack.postgres.volume_path:
            return None
        try:
            mountpoint = self.client().volumes.get(next(iter(spec.volumes))).attrs.get("Mountpoint") or ""
        except DockerException:
            return None
        path = Path(mountpoint)
        return path if mountpoint and path.is_dir() and os.access(path, os.W_OK) else None

    def _discard_volume(self, stack: Stack, container: "Container | None", spec: ContainerSpec) -> None:
        """Remove the postgres container and its data volume (a restore that never finished)."""
        from docker.errors import DockerException

        if container is not None:
            _remove(container)
        for name in spec.volumes:
            try:
                self.client().volumes.get(name).remove(force=True)
            except DockerException:
                pass
        _clear_marker(stack)

    def _rendered(self, stack: Stack, out_dir: Path) -> dict[str, str]:
        """The compose target's files: as `devenv render` makes them, or read back when its inputs are unchanged.

        Jinja2 costs ~0.2 s per `up`; the key covers the model, the placement and the templates.
        """
        record = _read_json(out_dir / CACHE_FILE)
        key = render_key(stack, compose_placement(stack))
        if record.get("render_key") == key and record.get("files"):
            files = {}
            for name, digest in record["files"].items():
                try:
                    text = (out_dir / name).read_text(encoding="utf-8")
                except OSError:
                    break
                if hashlib.sha256(text.encode()).hexdigest() != digest:
                    break  # edited by hand or rewritten: render again
                files[name] = text
            else:
                return files
        return render_files(stack, compose_placement(stack))

    def _parsed(self, out_dir: Path, text: str) -> dict[str, Any]:
        """The rendered compose file, parsed: read back from the render record while the text
        is the same (PyYAML's import and parse take ~15 ms of every `up` that starts a container)."""
        record = _read_json(out_dir / CACHE_FILE)
        if record.get("compose_sha256") == hashlib.sha256(text.encode()).hexdigest():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                compose = json.loads(record["compose"])
                if isinstance(compose, dict):
                    return compose
        return load_compose(text)

    def _remember_render(self, stack: Stack, out_dir: Path, files: dict[str, str], compose: dict[str, Any]) -> None:
        _write_json(out_dir / CACHE_FILE, {
            "render_key": render_key(stack, compose_placement(stack)),
            "files": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()},
            "compose_sha256": hashlib.sha256(files[COMPOSE_FILE].encode()).hexdigest(),
            "compose": json.dumps(compose),  # a string: the record's keys are sorted, the mappings' order counts (Env)
        })

    def _has_files(self, container: "Container", spec: ContainerSpec, files: dict[str, str], stack: Stack) -> bool:
        """Whether the container already sees the wanted config files (e.g. after a reload)."""
        if spec.service != "postgres":
            return False  # only Postgres is ever changed in place; elsewhere the label is the truth
        seen = self._container_files(container, spec)
        if seen is None:
            return False
        return service_hashes({**files, **seen}, stack)[spec.service] == spec.files_hash

    def _container_files(self, container: "Container", spec: ContainerSpec) -> dict[str, str] | None:
        out = {}
        for name in SERVICE_FILES[spec.service]:
            target = spec.mounts.get(name)
            text = _read_file(container, target) if target else None
            if text is None:
                return None
            out[name] = text
        return out

    def _reloadable(self, container: "Container", spec: ContainerSpec, files: dict[str, str], stack: Stack) -> dict[str, str]:
        """The changed Postgres files to write in place when a SIGHUP applies them, else {}."""
        seen = self._container_files(container, spec)
        if seen is None:
            return {}
        changed = {name: files[name] for name in seen if seen[name] != files[name]}
        for name in changed:
            try:  # in place reaches the container only if the host file is still the mounted one
                if (stack.state_dir / name).read_text(encoding="utf-8") != seen[name]:
                    return {}
            except OSError:
                return {}
        old, new = conf_values(seen["postgresql.conf"]), conf_values(files["postgresql.conf"])
        return changed if reload_suffices(old, new, stack.postgres.major) else {}

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
            raise DependencyError(f"Docker could not create {spec.name}: {_api_message(exc)}",
                                  hint="see the message; `devenv up --debug` shows the request.") from exc
        return created["Id"]

    def _start(self, service: str, container_id: str, stack: Stack) -> None:
        from docker.errors import APIError

        try:
            self.client().api.start(container_id)
        except APIError as exc:
            message = _api_message(exc)
            if "port is already allocated" in message or "address already in use" in message:
                raise port_in_use(service, getattr(stack, service).port, message) from exc
            if "bind source path does not exist" in message or "not a directory" in message:
                raise DependencyError(
                    f"Docker could not mount {service}'s config files: {message}",
                    hint="the engine must see this machine's files: a remote DOCKER_HOST needs the project "
                    "directory shared at the same path (Docker Desktop, colima and lima share $HOME).",
                ) from exc
            raise HealthCheckError(f"{service} did not start: {message}", hint=f"see `devenv logs {service}`.",
                                   log_tail=self._logs_of(container_id)) from exc

    def _logs_of(self, container_id: str) -> str:
        try:
            return self.client().api.logs(container_id, tail=20).decode(errors="replace")
        except Exception:  # the log is an extra for an error already being raised
            return ""

    def _ensure_network(self, stack: Stack, name: str) -> None:
        """Compose's default network of the project, made if missing."""
        from docker.errors import APIError, NotFound

        client = self.client()
        try:
            client.networks.get(name)
            return
        except NotFound:
            pass
        labels = {COMPOSE_PROJECT: stack.name, COMPOSE_NETWORK: "default", **_devenv_labels(stack)}
        try:
            client.networks.create(name, driver="bridge", labels=labels, check_duplicate=True)
        except APIError as exc:
            if exc.status_code != 409:  # created meanwhile: fine
                raise DependencyError(f"Docker could not create the network {name}: {_api_message(exc)}") from exc

    def _ensure_volumes(self, stack: Stack, spec: ContainerSpec) -> bool:
        """Create the spec's named volumes that are missing; True if any was created."""
        from docker.errors import NotFound

        client = self.client()
        created = False
        for name, labels in spec.volumes.items():
            try:
                client.volumes.get(name)
            except NotFound:
                client.volumes.create(name, labels={**labels, **_devenv_labels(stack)})
                created = True
        return created

    def _prepare_tls(self, stack: Stack, spec: ContainerSpec, progress: Progress) -> None:
        """The certificate the compose file mounts, its key owned by the image's postgres user.

        Postgres refuses a key that is not its own with mode 0600 (or root's 0640), and a bind
        mount keeps the host's owner: a one-off container of the same image (as root, so it
        knows the image's uid: 999 on Debian tags, 70 on alpine) hands the key over, once.
        """
        ssl_dir = stack.state_dir / "ssl"
        ensure_certificate(ssl_dir)
        key = ssl_dir / "server.key"
        if key.stat().st_uid != os.geteuid():
            return  # handed over already
        progress("postgres   giving the TLS key to the image's postgres user")
        from docker.errors import DockerException

        script = 'chown "$(id -u postgres):$(id -g postgres)" /ssl/server.key && chmod 0600 /ssl/server.key'
        body = {
            "Image": spec.image, "Entrypoint": ["sh", "-c", script], "Cmd": [], "User": "0:0",
            "Labels": {COMPOSE_PROJECT: stack.name, COMPOSE_SERVICE: "postgres", COMPOSE_ONEOFF: "True",
                       **_devenv_labels(stack)},
            "HostConfig": {"NetworkMode": "none",
                           "Mounts": [{"Type": "bind", "Source": str(ssl_dir), "Target": "/ssl", "ReadOnly": False}]},
        }
        api = self.client().api
        container_id = None
        try:
            container_id = api.create_container_from_config(body, name=f"{stack.name}-postgres-tls")["Id"]
            api.start(container_id)
            code = api.wait(container_id, timeout=60).get("StatusCode", 1)
            output = api.logs(container_id).decode(errors="replace").strip()
        except DockerException as exc:
            raise DependencyError(f"could not hand the TLS key to the postgres user: {_api_message(exc)}") from exc
        finally:
            if container_id:
                try:
                    api.remove_container(container_id, force=True, v=True)  # v: the image's VOLUME
                except DockerException:
                    pass
        if code != 0:
            raise DependencyError(
                f"could not hand {key} to the postgres user of {spec.image} (exit {code}): {output}",
                hint="the image needs a `postgres` user and `sh`, like the official postgres images.",
            )

    def _wipe_failed_init(self, container: "Container") -> str:
        """After Postgres exited: if it never finished initialising its data volume, remove the
        container and the volume (the image skips init when PG_VERSION exists); say what was done.

        Its last log lines are kept for log_tail: they leave with the container. A tmpfs (ci)
        starts empty anyway, so there the container stays, logs and all.
        """
        from docker.errors import DockerException

        logs = _logs(container, tail=1000)  # a failed init is the end of the log; all of it can be huge
        if not _init_failed(logs):
            return ""
        volumes = [m["Name"] for m in container.attrs.get("Mounts", []) if m.get("Type") == "volume"
                   and str(m.get("Destination", "")).startswith("/var/lib/postgresql")]
        if not volumes:
            return " while initialising its data"
        self._removed_tails["postgres"] = "\n".join(logs.splitlines()[-20:])
        _remove(container)
        removed = []
        for name in volumes:
            try:
                self.client().volumes.get(name).remove(force=True)
                removed.append(name)
            except DockerException:
                pass
        if not removed:
            return f" while initialising its data; its volume {', '.join(volumes)} could not be removed: " \
                   "run `devenv down --volumes` before the next `up`"
        return (f" while initialising its data; its half-initialised volume {', '.join(removed)} was removed, "
                "so the next `up` starts afresh")

    def _refuse_foreign(self, stack: Stack, containers: list["Container"], out_dir: Path) -> None:
        for container in containers:
            working_dir = container.labels.get(COMPOSE_WORKING_DIR)
            if container.status == "running" and working_dir and working_dir != str(out_dir):
                raise StateError(
                    f"the Docker stack {stack.name} is already running from {working_dir} ({container.name})",
                    hint=f"stop it there (`devenv down` in that project), or give this checkout another "
                    f"`project:` name in devenv.yaml; `docker compose -p {stack.name} down` removes it.",
                )

    def pg_tool(self, stack: Stack, tool: str) -> list[str]:
        """`docker exec -i` of a PostgreSQL client program in the postgres container: the
        server's own major version, connected over the container's loopback.

        PGPASSWORD, PGSSLMODE, PGCONNECT_TIMEOUT and PGAPPNAME pass as `-e NAME` (their values
        from the caller's environment, never on the command line); archives go through stdin
        and stdout.
        """
        import shutil

        docker = shutil.which("docker")
        if docker is None:
            raise DependencyError(
                f"the docker command-line client is not installed: {tool} runs in the postgres container "
                "through `docker exec`",
                hint="install the docker CLI (Debian/Ubuntu `apt-get install docker.io` or docker-ce-cli), or "
                "run the stack with `--runtime native`.",
            )
        container = self._container(stack, "postgres")
        if container is None or container.status != "running":
            raise StateError(f"the postgres container {stack.name}-postgres-1 is not running",
                             hint="start the stack first: `devenv up`.")
        passed = [arg for name in ("PGPASSWORD", "PGSSLMODE", "PGCONNECT_TIMEOUT", "PGAPPNAME") for arg in ("-e", name)]
        return [docker, *self.endpoint().cli_args(), "exec", "-i", *passed, container.name, tool,
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

        def stop_and_remove(container: "Container") -> None:
            timeout = int(container.attrs.get("Config", {}).get("StopTimeout") or 10)
            if container.status in ("running", "paused", "restarting"):
                _stop(container, timeout)
            _remove(container)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(stop_and_remove, containers))
        label = f"{COMPOSE_PROJECT}={stack.name}"
        if volumes:
            # The network stays with the volumes: an empty bridge costs nothing, and making it
            # again is on the way of the next `up` (0.2-0.6 s of the engine's time here).
            for network in client.networks.list(filters={"label": label}):
                _quietly(network.remove)
            _clear_marker(stack)  # a restore's data went with the volume
            for volume in client.volumes.list(filters={"label": label}):
                _quietly(lambda: volume.remove(force=True))
        self._removed_tails.clear()
        return [s for s in SERVICES if s in running]

    def _settle(self) -> None:
        """Wait for the starts `up` left running; raise the first failure."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            future.result()

    def states(self, stack: Stack) -> list[ServiceState]:
        """Each service's container: running or not, its main process's host pid and port."""
        self._settle()
        by_service = {c.labels.get(COMPOSE_SERVICE): c for c in self._project_containers(stack, own=True)
                      if c.labels.get(COMPOSE_ONEOFF) == "False"}
        out = []
        for service in SERVICES:
            container = by_service.get(service)
            port = getattr(stack, service).port
            if container is None:
                out.append(ServiceState(service, False, port, detail="not started"))
                continue
            state = container.attrs.get("State", {})
            running = bool(state.get("Running")) and not state.get("Restarting")
            pid = state.get("Pid") or None
            found = read_stat(pid) if running and pid else None
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
        from docker.errors import NotFound

        future = self._pending.get(service)
        if future is not None:
            if not future.done():
                return None
            del self._pending[service]
            future.result()
        try:
            container = self.client().containers.get(f"{stack.name}-{service}-1")
        except NotFound:
            return None if service in self._removed_tails else "is gone (its container was removed)"
        state = container.attrs.get("State", {})
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
        text = _logs(container, tail=lines).rstrip("\n")
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
                for line in _logs(container).splitlines():
                    yield prefix(name) + line
            return
        lines: "queue.Queue[str]" = queue.Queue()

        def pump(name: str, container: "Container") -> None:
            pending = ""
            for chunk in container.logs(stream=True, follow=True):
                pending += chunk.decode(errors="replace")
                *complete, pending = pending.split("\n")
                for line in complete:
                    lines.put(prefix(name) + line)

        for name, container in containers.items():
            threading.Thread(target=pump, args=(name, container), daemon=True).start()
        while True:
            yield lines.get()

    # ---- helpers -------------------------------------------------------------------------------

    def _project_containers(self, stack: Stack, own: bool = False) -> list["Container"]:
        """The containers of the stack's Compose project; `own`: only those of this checkout."""
        found = self.client().containers.list(all=True, filters={"label": f"{COMPOSE_PROJECT}={stack.name}"})
        if own:
            here = str(stack.state_dir.absolute())
            found = [c for c in found if c.labels.get(COMPOSE_WORKING_DIR, here) == here]
        return found

    def _container(self, stack: Stack, service: str) -> "Container | None":
        from docker.errors import NotFound

        try:
            return self.client().containers.get(f"{stack.name}-{service}-1")
        except NotFound:
            return None


class PullProgress:
    """Turns the engine's pull events into lines: each layer when done, totals every second."""

    def __init__(self, prefix: str, progress: Progress, interval: float = 1.0) -> None:
        self.prefix = prefix
        self.progress = progress
        self.interval = interval
        self.layers: dict[str, dict[str, Any]] = {}
        self._last = time.monotonic()

    def feed(self, event: dict[str, Any]) -> None:
        """Take one decoded event of `POST /images/create`."""
        layer, status = event.get("id"), str(event.get("status", ""))
        if not layer or status.startswith("Pulling from") or status.startswith("Digest") or status.startswith("Status"):
            return
        entry = self.layers.setdefault(layer, {"status": "", "current": 0, "total": 0})
        detail = event.get("progressDetail") or {}
        if status == "Downloading":
            entry["current"], entry["total"] = detail.get("current", 0), detail.get("total", entry["total"])
        if status in ("Download complete", "Already exists", "Pull complete") and entry["status"] != status:
            entry["current"] = entry["total"] = max(entry["total"], entry["current"])
            if status != "Pull complete":
                self.progress(f"{self.prefix}: layer {layer} {status.lower()}"
                              + (f" ({_size(entry['total'])})" if entry["total"] else ""))
        entry["status"] = status
        if time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self.progress(f"{self.prefix}: {self.summary()}")

    def summary(self) -> str:
        """Layers done and bytes downloaded so far."""
        done = sum(1 for e in self.layers.values() if e["status"] in ("Download complete", "Already exists", "Pull complete",
                                                                      "Extracting", "Verifying Checksum"))
        current = sum(e["current"] for e in self.layers.values())
        total = sum(e["total"] for e in self.layers.values())
        return f"{done}/{len(self.layers)} layers, {_size(current)} of {_size(total) if total else '?'}"

    def finish(self) -> None:
        """Say the final totals."""
        self.progress(f"{self.prefix}: pulled, {self.summary()}")


def pull_error(service: str, image: str, reason: str) -> DependencyError:
    """The error for an image that is neither here nor pullable: what to do offline."""
    var = IMAGE_VARS.get(service, "DEVENV_<SERVICE>_IMAGE")
    return DependencyError(
        f"image {image} for {service} is not available locally and could not be pulled: {reason}",
        hint=f"offline? Get {image} onto this engine (`docker load` an image saved elsewhere, or build one and "
        f"`docker tag` it {image}), or set {var} to an image you have (`docker images`), or use the native "
        "runtime: `devenv up --runtime native`.",
    )


def _api_message(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = explanation.decode(errors="replace") if isinstance(explanation, bytes) else (explanation or str(exc))
    return " ".join(str(text).split())


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def _devenv_labels(stack: Stack) -> dict[str, str]:
    return {DEVENV_PROJECT: stack.project, DEVENV_PROFILE: stack.profile}


def _holds_ports(container: "Container", spec: ContainerSpec) -> bool:
    """Whether a running container already publishes the ports its replacement wants."""
    if container.status != "running":
        return False
    have = container.attrs.get("HostConfig", {}).get("PortBindings") or {}
    return have == spec.body.get("HostConfig", {}).get("PortBindings")


def _logs(container: "Container", tail: int | str = "all") -> str:
    from docker.errors import DockerException

    try:
        return container.logs(stdout=True, stderr=True, tail=tail).decode(errors="replace")
    except DockerException:
        return ""


def _init_failed(logs: str) -> bool:
    """The postgres entrypoint's last initialisation of an empty data directory never finished."""
    started = logs.rfind(_INIT_STARTED)
    return started >= 0 and logs.rfind(_INIT_DONE) < started


def _stop(container: "Container", timeout: int) -> None:
    from docker.errors import DockerException

    try:
        container.stop(timeout=timeout)  # the container's own stop signal, then SIGKILL
    except DockerException:
        pass


def _remove(container: "Container") -> None:
    from docker.errors import NotFound

    try:
        container.remove(force=True, v=True)  # v: anonymous volumes (the images' VOLUME /data)
    except NotFound:
        pass


def _quietly(action: Callable[[], Any]) -> None:
    from docker.errors import DockerException

    try:
        action()
    except DockerException:
        pass


def _read_file(container: "Container", path: str) -> str | None:
    """A file inside a container (running or not), None if it is not there."""
    from docker.errors import DockerException

    try:
        stream, _ = container.get_archive(path)
        data = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next((m for m in tar.getmembers() if m.isfile()), None)
            handle = tar.extractfile(member) if member else None
            return handle.read().decode("utf-8", errors="replace") if handle else None
    except (DockerException, tarfile.TarError, OSError):
        return None


def _write_in_place(path: Path, content: str) -> None:
    """Rewrite a file keeping its inode, so a container's bind mount of it sees the change."""
    with open(path, "r+", encoding="utf-8") as handle:
        handle.write(content)
        handle.truncate()


# The restore marker, in .devenv/<profile>/: "restoring" while a cached data directory is being
# unpacked into the volume (a killed `up` leaves half a cluster: the next one wipes it).
RESTORE_MARKER = "docker-restore-pending"


def _read_marker(stack: Stack) -> str:
    try:
        return (stack.state_dir / RESTORE_MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _write_marker(stack: Stack, phase: str) -> None:
    path = stack.state_dir / RESTORE_MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(phase + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _clear_marker(stack: Stack) -> None:
    (stack.state_dir / RESTORE_MARKER).unlink(missing_ok=True)


class _decompressed:
    """The chunks of a cached archive's tar stream (zstd in another process, or gzip), for
    put_archive's chunked upload; the decompressor is reaped on exit, killed on failure."""

    CHUNK = 1 << 20

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.proc: "subprocess.Popen[bytes] | None" = None

    def __enter__(self) -> Iterator[bytes]:
        import gzip
        import shutil
        import subprocess

        if self.archive.name.endswith(".zst"):
            zstd = shutil.which("zstd")
            if zstd is None:
                raise OSError("zstd is needed to read the cached data directory")
            self.proc = subprocess.Popen([zstd, "-d", "-q", "-c", str(self.archive)], stdout=subprocess.PIPE)
            handle = self.proc.stdout
        else:
            handle = gzip.open(self.archive, "rb")
        self.handle = handle
        return iter(lambda: handle.read(self.CHUNK), b"")  # type: ignore[union-attr]

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.handle.close()  # type: ignore[union-attr]
        if self.proc is not None:
            if kind is not None:
                self.proc.kill()
            if self.proc.wait() != 0 and kind is None:
                raise OSError(f"{self.archive} is corrupt or unreadable")


def _spec_of(container: "Container") -> ContainerSpec:
    """Enough of a spec for _local_data_dir: the container's named volumes."""
    volumes = {m["Name"]: {} for m in container.attrs.get("Mounts", []) if m.get("Type") == "volume"
               and str(m.get("Destination", "")).startswith("/var/lib/postgresql")}
    return ContainerSpec(service="postgres", name=container.name, image="", body={}, config_hash="", files_hash="",
                         volumes=volumes)


def _untar_into(archive: Path, directory: Path) -> None:
    """Unpack a cached archive into a directory, numeric owners kept (the image's postgres uid)."""
    import subprocess

    if archive.name.endswith(".zst"):
        cache.wait_unpacked(cache.start_unpacking(archive, directory, numeric_owner=True), archive)
    else:
        subprocess.run(["tar", "-C", str(directory), "--numeric-owner", "-xzf", str(archive)], check=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


__all__ = ["DockerRuntime", "connect"]
