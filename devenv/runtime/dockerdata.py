"""Postgres's data in a Docker volume: filled from the seeded-data cache and saved to it, a failed
initialisation wiped, this checkout's password set, the TLS key handed to the image's postgres user.

Each function takes a connected client; the docker SDK is imported inside them. What decides
when each is done is DockerRuntime.up's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Iterator, Mapping

from devenv.db import cache
from devenv.certs import PGBOUNCER_KEY, ensure_certificate, ensure_key_copy
from devenv.errors import DependencyError, HealthCheckError, StateError
from devenv.runtime.base import Progress
from devenv.runtime.compose import COMPOSE_ONEOFF, COMPOSE_PROJECT, COMPOSE_SERVICE, devenv_labels
from devenv.runtime.dockerapi import api_message, log_tail_of, logs, remove, stop, stop_timeout
from devenv.runtime.plan import password_note_path, remember_password

if TYPE_CHECKING:
    import subprocess

    from docker import DockerClient
    from docker.models.containers import Container

    from devenv.config.stack import Stack

    Unpacking = tuple[float, list[subprocess.Popen[bytes]]]  # begin_unpack's: since when, zstd and tar

# In .devenv/<profile>/: "restoring" while a cached data directory is being unpacked into the
# volume (a killed `up` leaves half a cluster: the next one wipes it).
RESTORE_MARKER = "docker-restore-pending"
# What is printed when an empty data directory is initialised (initdb's first line) and when that
# is done: by the image's entrypoint (shared/image-contracts.md), and the same by the compose
# file's own first-start initdb (docker-compose.yml.j2).
_INIT_STARTED = "The files belonging to this database system"
_INIT_DONE = "init process complete"


# ---- the restore marker --------------------------------------------------------------------------


def read_marker(stack: Stack) -> str:
    """The restore marker's phase ("restoring"), "" when there is none."""
    try:
        return (stack.state_dir / RESTORE_MARKER).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):  # ValueError: not UTF-8 (then not a phase devenv wrote)
        return ""


def write_marker(stack: Stack, phase: str) -> None:
    """Set the restore marker (atomically)."""
    path = stack.state_dir / RESTORE_MARKER
    from devenv.safefs import write_file

    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, (phase + "\n").encode())


def clear_marker(stack: Stack) -> None:
    """Remove the restore marker: the volume's data is complete (or gone)."""
    (stack.state_dir / RESTORE_MARKER).unlink(missing_ok=True)


# ---- volumes -------------------------------------------------------------------------------------


def data_volumes(container: Container) -> list[str]:
    """The named volumes a postgres container keeps its data in (mounted under /var/lib/postgresql)."""
    return [m["Name"] for m in container.attrs.get("Mounts", []) if m.get("Type") == "volume"
            and str(m.get("Destination", "")).startswith("/var/lib/postgresql")]


def remove_volumes(client: DockerClient, names: Iterable[str]) -> list[str]:
    """Remove named volumes; the ones that were removed (one the engine refuses is left)."""
    from docker.errors import DockerException

    removed = []
    for name in names:
        try:
            client.volumes.get(name).remove(force=True)
            removed.append(name)
        except DockerException:
            pass
    return removed


def init_failed(log: str) -> bool:
    """The postgres entrypoint's last initialisation of an empty data directory never finished."""
    started = log.rfind(_INIT_STARTED)
    return started >= 0 and log.rfind(_INIT_DONE) < started


def wipe_failed_init(client: DockerClient, container: Container) -> tuple[str, str | None]:
    """After Postgres exited: if it never finished initialising its data volume, remove the
    container and the volume (the image skips init when PG_VERSION exists).

    Returns what was done (to append to "exited ...") and the container's last log lines when
    it was removed (they leave with it). A tmpfs (ci) starts empty anyway: that container stays.
    """
    log = logs(container, tail=1000)  # a failed init is the end of the log; all of it can be huge
    if not init_failed(log):
        return "", None
    volumes = data_volumes(container)
    if not volumes:
        return " while initialising its data", None
    tail = "\n".join(log.splitlines()[-20:])
    remove(container)
    removed = remove_volumes(client, volumes)
    if not removed:
        return (f" while initialising its data; its volume {', '.join(volumes)} could not be removed: "
                "run `devenv down --volumes` before the next `up`"), tail
    return (f" while initialising its data; its half-initialised volume {', '.join(removed)} was removed, "
            "so the next `up` starts afresh"), tail


# ---- the seeded-data cache -----------------------------------------------------------------------


def data_key(stack: Stack, image_id: str) -> str:
    """The cache key: as native's, with the image id (its exact PostgreSQL build, locales and
    data path) in place of initdb's arguments; so Docker and native entries never mix."""
    return cache.data_key(stack, str(stack.postgres.major),
                          ["docker", image_id, f"PGDATA={stack.postgres.pgdata}", f"user={stack.postgres.user}",
                           f"admin={stack.postgres.admin_user}"])


def local_data_dir(client: DockerClient, host: str, rootless: Callable[[], bool], stack: Stack,
                   volumes: Collection[str], mountpoints: Mapping[str, str]) -> Path | None:
    """The data volume's directory when this process can use it directly: an engine on this
    machine (`host` a unix socket; not Docker Desktop's or colima's VM, whose paths are not here),
    the volume holding PGDATA itself (17 and below), and root (the engine's files are root's;
    not a `rootless` engine's, whose uids are mapped: files written here would be nobody's there).
    `mountpoints`: the volumes' directories as the engine said when they were made or found."""
    from docker.errors import DockerException

    if not host.startswith("unix://") or os.geteuid() != 0 or len(volumes) != 1 \
            or stack.postgres.pgdata != stack.postgres.volume_path or rootless():
        return None
    name = next(iter(volumes))
    mountpoint = mountpoints.get(name)
    if mountpoint is None:
        try:
            mountpoint = client.volumes.get(name).attrs.get("Mountpoint") or ""
        except DockerException:
            return None
    path = Path(mountpoint)
    return path if mountpoint and path.is_dir() and os.access(path, os.W_OK) else None


def begin_unpack(archive: Path, local: Path | None) -> Unpacking | None:
    """Start unpacking a cached .zst archive straight into `local`, the new volume's directory
    (when it is here), before the container exists: it runs beside the network's creation and
    the containers' (unpack_cached waits for it). None when it cannot begin now."""
    if local is None or not archive.name.endswith(".zst"):
        return None
    try:
        return time.perf_counter(), cache.start_unpacking(archive, local, numeric_owner=True)
    except OSError:  # e.g. no zstd: unpack_cached says so
        return None


def unpack_cached(client: DockerClient, stack: Stack, container_id: str, archive: Path, local: Path | None,
                  progress: Progress, begun: Unpacking | None = None) -> None:
    """Unpack a cached data directory into the new volume of the created, not yet started,
    container: straight into `local`, the volume's directory, when it is here (`begun`: already
    under way, waited for); else through the engine's archive API (the engine mounts the volumes
    for the copy). The image's entrypoint then finds PG_VERSION and skips initdb, and chowns the
    files to its postgres user."""
    from docker.errors import DockerException

    start = begun[0] if begun is not None else time.perf_counter()
    try:
        if begun is not None:
            cache.wait_unpacked(begun[1], archive)
        elif local is not None:
            _untar_into(archive, local)
        else:
            with _Decompressed(archive) as chunks:
                client.api.put_archive(container_id, stack.postgres.pgdata, chunks)
    except cache.CacheDamaged as exc:
        # Its checksum matched (checked before): written broken. Never again; the marker makes the
        # next `up` wipe the half-filled volume, and with the archive gone it runs initdb.
        cache.said_quarantine(archive, exc, progress)
        raise StateError(f"could not restore {archive} into the postgres volume: {exc}",
                         hint="run `devenv up` again: the damaged archive was moved aside, so it runs initdb and seeds.") from exc
    except (DockerException, OSError) as exc:
        raise StateError(f"could not restore {archive} into the postgres volume: {api_message(exc)}",
                         hint=f"delete {archive} and run `devenv up` again (it then runs initdb and seeds).") from exc
    clear_marker(stack)  # the data is complete; it still has another checkout's password (plan.has_password)
    progress(f"postgres   restored in {time.perf_counter() - start:.2f}s (no initdb, schema or seed)")


def save_volume(client: DockerClient, stack: Stack, container: Container, key: str, local: Path | None,
                restart: Callable[[], None]) -> Path:
    """The running postgres container's data into the cache, with a one-time login for the cold
    `up` it serves (give_password): a base backup of the running server when the volume's
    directory (`local`) is here, no stop and start (~1 s less); else save_through_api."""
    from devenv.runtime.plan import save_live

    login = cache.new_login()
    if local is not None:
        path = save_live(stack, local, key, login)
    else:
        path = save_through_api(client, stack, container, key, login, restart)
    cache.write_login(path, login)  # once the archive is whole: it and its login go together
    return path


def save_through_api(client: DockerClient, stack: Stack, container: Container, key: str, login: str,
                     restart: Callable[[], None]) -> Path:
    """A clean stop of the postgres container (no recovery needed later), its data directory
    through the engine's archive API into the cache, then `restart`; the archive's path. The
    copy has the one-time login with password `login`; the restarted cluster then loses it."""
    from devenv.clients import connect, pgwire
    from devenv.db import roles

    with connect.postgres(stack, "postgres", admin=True) as conn:
        roles.add_restore_login(conn, login, stack.state_dir)
    stop(container, stop_timeout(container))
    saved = False
    try:
        stream, _ = client.api.get_archive(container.id, stack.postgres.pgdata + "/.")
        with cache.compressed(cache.archive_path(key)) as (sink, path):
            for chunk in stream:
                sink.write(chunk)
        saved = True
    finally:
        restart()
        try:
            _drop_login_when_up(stack)
        except (pgwire.PgError, OSError):
            if saved:  # else the save's own error is the one to say
                raise
    return path


def restart_pool(pgbouncer: Container | None) -> None:
    """Restart PgBouncer's container (if running) after Postgres's restarted (save_through_api) on
    Podman: its lookups of `postgres` then timed out for up to ~70 s (rootless Podman 4.3, netavark,
    about one restart in two: "(bad-af):0 closing because: connect timeout" in its log), while a
    new PgBouncer, or getent in its container, resolved the new address at once. ~0.7 s, once per cache fill."""
    if pgbouncer is not None and pgbouncer.status == "running":
        pgbouncer.restart(timeout=stop_timeout(pgbouncer))


def _drop_login_when_up(stack: Stack, timeout: float = 60.0) -> None:
    """Drop the one-time login from the restarted live cluster, waiting for it to take sessions."""
    from devenv.clients import connect, pgwire
    from devenv.db import roles

    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect.postgres(stack, "postgres", admin=True, timeout=2.0) as conn:
                roles.drop_restore_login(conn, stack.state_dir)
            return
        except (pgwire.PgError, OSError) as exc:
            starting = not isinstance(exc, pgwire.PgError) or isinstance(exc, pgwire.ServerClosedError) \
                or exc.sqlstate == "57P03"
            if not starting or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _Decompressed:
    """The chunks of a cached archive's tar stream (zstd in another process, or gzip), for
    put_archive's chunked upload; the decompressor is reaped on exit, killed on failure."""

    CHUNK = 1 << 20

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.proc: subprocess.Popen[bytes] | None = None

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
                raise cache.CacheDamaged(f"{self.archive} is corrupt or unreadable")


def _untar_into(archive: Path, directory: Path) -> None:
    """Unpack a cached archive into a directory, numeric owners kept (the image's postgres uid)."""
    import subprocess

    if archive.name.endswith(".zst"):
        cache.wait_unpacked(cache.start_unpacking(archive, directory, numeric_owner=True), archive)
    else:
        subprocess.run(["tar", "-C", str(directory), "--numeric-owner", "-xzf", str(archive)], check=True)


# ---- the superuser's password, the TLS key -------------------------------------------------------


# Run in the postgres container as its postgres user, over the unix socket (trusted locally):
# both roles get this checkout's passwords. On an older devenv's volume (no admin role: the
# application role is the bootstrap superuser) that role is first renamed to the admin's name
# through a superuser of the moment (as devenv.db.roles.rename_bootstrap does natively), and
# MIGRATED is printed; `up` then makes the application role afresh (roles.ensure_roles).
_PASSWORD_SCRIPT = """\
i=0; until pg_isready -q -h /var/run/postgresql -p "$PORT"; do i=$((i+1)); [ "$i" -gt "$TRIES" ] && exit 9; sleep 0.05; done
q() { psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$PORT" -d postgres -v admin="$DEVENV_ADMIN" \
      -v app="$DEVENV_USER" -v apw="$DEVENV_ADMIN_PASSWORD" -v pw="$DEVENV_PASSWORD" -v m="$DEVENV_MIGRATING" \
      -v r="$DEVENV_RESTORE" "$@"; }
if ! q -U "$DEVENV_ADMIN" -Atc 'SELECT 1' >/dev/null 2>&1; then
  q -U "$DEVENV_USER" <<'SQL' || exit 3
SET log_statement = 'none';
DROP ROLE IF EXISTS :"m";
CREATE ROLE :"m" SUPERUSER LOGIN;
SQL
  q -U "$DEVENV_MIGRATING" <<'SQL' || exit 4
SET log_statement = 'none';
SELECT pg_catalog.pg_terminate_backend(pid, 2000) FROM pg_catalog.pg_stat_activity WHERE usename = :'app';
ALTER ROLE :"app" RENAME TO :"admin";
SQL
  echo MIGRATED
fi
q -U "$DEVENV_ADMIN" <<'SQL'
SET log_statement = 'none';
ALTER ROLE :"admin" PASSWORD :'apw';
SELECT pg_catalog.format('ALTER ROLE %I PASSWORD %L', :'app', :'pw') FROM pg_catalog.pg_roles WHERE rolname = :'app' \\gexec
DROP ROLE IF EXISTS :"m", :"r";
SQL
"""


def give_password(client: DockerClient, stack: Stack, container_id: str, restored: Path | None,
                  timeout: float = 60.0) -> bool:
    """This checkout's passwords for both roles of a data directory that lacks them (see
    plan.has_password); True when an older devenv's cluster was migrated.

    Restored from a cache entry with a one-time login (save_through_api, plan.save_live): as
    the started server's first session over its published port (roles.take_over_restored), no
    `docker exec`. Else, or when that login is refused, over the container's unix socket
    (set_password), which also migrates an older devenv's cluster.
    """
    from devenv.db.roles import take_over_restored

    login = cache.read_login(restored) if restored is not None else None
    if login and take_over_restored(stack, login, timeout, alive=lambda: _running(client, container_id)):
        remember_password(password_note_path(stack), stack)
        return False
    return set_password(client, stack, container_id, timeout)


def _running(client: DockerClient, container_id: str) -> bool:
    """Whether the container is running (asked of the engine; an error answers yes: the caller waits on)."""
    from docker.errors import DockerException, NotFound

    try:
        return bool((client.api.inspect_container(container_id).get("State") or {}).get("Running"))
    except NotFound:
        return False
    except DockerException:
        return True


def set_password(client: DockerClient, stack: Stack, container_id: str, timeout: float = 60.0) -> bool:
    """This checkout's passwords for both roles of a restored data directory (or of one an
    earlier checkout or an older devenv left; see plan.has_password): set over the container's
    unix socket, the passwords passed in the exec's environment, never on a command line, and
    kept out of the server log. True when an older devenv's cluster was migrated (its
    bootstrap role renamed to the admin role's name)."""
    from docker.errors import DockerException

    from devenv.db.roles import MIGRATING_ROLE, RESTORE_ROLE

    pg = stack.postgres
    env = {"PORT": str(pg.container_port), "TRIES": str(int(timeout / 0.05)), "DEVENV_USER": pg.user,
           "DEVENV_PASSWORD": pg.password_secret,  # the SCRAM secret PgBouncer's userlist holds
           "DEVENV_ADMIN": pg.admin_user, "DEVENV_ADMIN_PASSWORD": pg.admin_password_secret,
           "DEVENV_MIGRATING": MIGRATING_ROLE, "DEVENV_RESTORE": RESTORE_ROLE}
    api = client.api
    try:
        exec_id = api.exec_create(container_id, ["sh", "-c", _PASSWORD_SCRIPT], user="postgres", environment=env)["Id"]
        output = api.exec_start(exec_id).decode(errors="replace").strip()
        code = api.exec_inspect(exec_id).get("ExitCode")
    except DockerException as exc:
        output, code = api_message(exc), None
    if code != 0:
        raise HealthCheckError(
            f"postgres did not take this checkout's password (data from the cache or from an earlier "
            f"checkout; exit {code}): {output or 'no output'}",
            hint="delete the cache entry (DEVENV_CACHE_DIR) and run `devenv down --volumes && devenv up`.",
            log_tail=log_tail_of(client, container_id))
    remember_password(password_note_path(stack), stack)
    return "MIGRATED" in output.split()


def prepare_tls(client: DockerClient, stack: Stack, images: dict[str, str], progress: Progress,
                hand_over: bool = True) -> None:
    """The certificate the compose file mounts, each key owned by the user of the image reading it.

    `images`: the services starting now (postgres, pgbouncer) and their images. Postgres refuses
    a key that is not its own with mode 0600 (or root's 0640), and a bind mount keeps the host's
    owner: a one-off container of the same image (as root, so it knows the image's uid: 999 on
    Debian tags, 70 on alpine) hands the key over, once. PgBouncer (TLS required on TCP both
    ways) reads its own copy, handed to its image's configured user (edoburu: uid 70).
    """
    ssl_dir = stack.state_dir / "ssl"
    ensure_certificate(ssl_dir)
    ensure_key_copy(ssl_dir)
    if not hand_over:  # copied into the containers with their owner (devenv.runtime.delivery)
        return
    if "postgres" in images:
        _hand_key_over(client, stack, "postgres", images["postgres"], ssl_dir / "server.key",
                       '"$(id -u postgres):$(id -g postgres)"', progress)
    if "pgbouncer" in images:
        user = (client.api.inspect_image(images["pgbouncer"]).get("Config") or {}).get("User") or "0"
        if user.split(":")[0] not in ("0", "root"):
            _hand_key_over(client, stack, "pgbouncer", images["pgbouncer"], ssl_dir / PGBOUNCER_KEY,
                           "'" + user.replace("'", "") + "'", progress)


def _hand_key_over(client: DockerClient, stack: Stack, service: str, image: str, key: Path, owner: str,
                   progress: Progress) -> None:
    """chown `key` (in the ssl directory) to `owner` (a shell word) inside a one-off root container of `image`."""
    if key.stat().st_uid != os.geteuid():
        return  # handed over already
    progress(f"{service:<10} giving the TLS key to the image's user")
    from docker.errors import DockerException

    script = f"chown {owner} /ssl/{key.name} && chmod 0600 /ssl/{key.name}"
    body = {
        "Image": image, "Entrypoint": ["sh", "-c", script], "Cmd": [], "User": "0:0",
        "Labels": {COMPOSE_PROJECT: stack.name, COMPOSE_SERVICE: service, COMPOSE_ONEOFF: "True",
                   **devenv_labels(stack)},
        "HostConfig": {"NetworkMode": "none",
                       "Mounts": [{"Type": "bind", "Source": str(key.parent), "Target": "/ssl", "ReadOnly": False}]},
    }
    api = client.api
    container_id = None
    try:
        container_id = api.create_container_from_config(body, name=f"{stack.name}-{service}-tls")["Id"]
        api.start(container_id)
        code = api.wait(container_id, timeout=60).get("StatusCode", 1)
        output = api.logs(container_id).decode(errors="replace").strip()
    except DockerException as exc:
        raise DependencyError(f"could not hand the TLS key to the {service} user: {api_message(exc)}") from exc
    finally:
        if container_id:
            try:
                api.remove_container(container_id, force=True, v=True)  # v: the image's VOLUME
            except DockerException:
                pass
    if code != 0:
        raise DependencyError(
            f"could not hand {key} to the {service} user of {image} (exit {code}): {output}",
            hint=f"the image needs its user and `sh`, like the official {service} images.",
        )

