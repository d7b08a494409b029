"""The rendered configs and keys, delivered to containers through the engine's API.

An engine that does not see this machine's files (GitLab's `docker:dind`, a tcp:// or ssh://
DOCKER_HOST) would give each bind mount an empty directory of its own host. For such an engine
(devenv.runtime.engine.copies_files) the compose file's bind mounts become the spec's
`copies` (devenv.runtime.compose) and are written into the container's filesystem after it
is created and before it starts (PUT /containers/{id}/archive), owned by the user the server
runs as: 0600 where they hold a secret (SECRET_SUFFIXES), else 0644. A reload
writes the changed files into the running container the same way. The rendered compose file,
for humans, keeps its bind mounts.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from devenv.errors import DependencyError, StateError
from devenv.runtime.dockerapi import api_message, read_file

# The copied files that hold a secret: TLS keys, PgBouncer's SCRAM secrets, Redis's password.
SECRET_SUFFIXES = (".key", "/userlist.txt", "/redis.conf")

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from devenv.runtime.compose import ContainerSpec


def deliver(client: DockerClient, container_id: str, spec: ContainerSpec) -> None:
    """Copy the spec's files (`copies`: host path -> path in the container) into a created container."""
    container = client.containers.get(container_id)
    owner = _server_user(client, container, spec)
    contents = {target: Path(source).read_bytes() for source, target in spec.copies}
    _put(container, contents, owner, spec.name)


def write_reload(out_dir: Path, spec: ContainerSpec, container: Container, files: Mapping[str, str]) -> None:
    """A reload's changed files (name -> text), where the running container reads them: into
    the container itself when it has copies, else rewritten in place on this machine (a file
    bind mount pins its inode, so an atomic rename would not reach the container)."""
    if spec.copies:
        targets = {Path(source).name: target for source, target in spec.copies}
        _put(container, {targets[name]: text.encode("utf-8") for name, text in files.items()},
             _server_user(container.client, container, spec), spec.name)
        return
    for name, content in files.items():
        with open(out_dir / name, "r+", encoding="utf-8") as handle:
            handle.write(content)
            handle.truncate()


def _put(container: Container, contents: Mapping[str, bytes], owner: tuple[int, int], name: str) -> None:
    """One tar of `contents` (absolute path in the container -> bytes), extracted at `/`."""
    from docker.errors import DockerException

    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for target, data in contents.items():
            info = tarfile.TarInfo(target.lstrip("/"))
            info.size, info.mtime = len(data), now
            info.uid, info.gid = owner
            # Readable by the server's user only where they hold a secret (a key, which Postgres
            # refuses looser; SCRAM secrets; Redis's password), the other configs by all.
            info.mode = 0o600 if target.endswith(SECRET_SUFFIXES) else 0o644
            tar.addfile(info, io.BytesIO(data))
    try:
        if not container.put_archive("/", buffer.getvalue()):
            raise StateError(f"the engine did not take {name}'s config files")
    except DockerException as exc:
        raise DependencyError(f"Docker could not copy the config files into {name}: {api_message(exc)}",
                              hint="see the message; `devenv up --debug` shows the request.") from exc


def _server_user(client: DockerClient, container: Container, spec: ContainerSpec) -> tuple[int, int]:
    """(uid, gid) the server runs as: the container's configured user, else (an entrypoint that
    drops root, as the postgres and redis images do) the user named after the service, as the
    image's /etc/passwd has it; root when neither is known."""
    user = str(spec.body.get("User") or "")
    if not user:
        user = str((client.api.inspect_image(spec.image).get("Config") or {}).get("User") or "")
    name, _, group = user.partition(":")
    if name in ("", "0", "root"):
        name, group = spec.service, ""
    if name.isdigit():
        return int(name), int(group) if group.isdigit() else int(name)
    for line in (read_file(container, "/etc/passwd") or "").splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == name and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(group) if group.isdigit() else int(fields[3])
    return 0, 0
