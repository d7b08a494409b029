"""The docker SDK, always imported lazily: connecting to an engine, pulling images, and the calls
on containers that every part of the Docker runtime makes the same way.

Where the engine is (DOCKER_HOST, a context, a socket) and whether anything answers there is
devenv.runtime.engine's business, without the SDK (~250 ms to import); this module imports it
only inside the functions that talk to an engine.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from devenv import humanize
from devenv.errors import DependencyError, DevenvError
from devenv.runtime.base import Progress
from devenv.runtime.engine import Endpoint, engine_unreachable
from devenv.config.stack import SERVICES

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from devenv.config.stack import Stack

API_TIMEOUT = 120.0
HANDSHAKE_TIMEOUT = 10.0  # the API version and a ping: a live engine answers in well under a second (Podman ~0.4 s)
IMAGE_VARS = {service: f"DEVENV_{service.upper()}_IMAGE" for service in SERVICES}


# ---- connecting --------------------------------------------------------------------------------


def connect(endpoint: Endpoint, timeout: float = API_TIMEOUT, env: Mapping[str, str] | None = None) -> DockerClient:
    """A client for the endpoint that has answered (its API version); DependencyError naming the host if not.

    An ssh:// engine is reached through the local end of its API socket forwarded by an SSH
    master (devenv.runtime.sshtunnel: started, or started again, here)."""
    import os

    import docker
    from docker.errors import DockerException

    base_url = endpoint.host
    if base_url.startswith("ssh://"):
        from devenv.runtime.sshtunnel import api_socket

        base_url = f"unix://{api_socket(endpoint.host, os.environ if env is None else env)}"
    # The handshake (API version, ping) gets a short timeout of its own: a port that accepts and
    # never answers must not hold a command for the operations' timeout (120 s), twice.
    kwargs: dict[str, Any] = {"base_url": base_url, "timeout": min(timeout, HANDSHAKE_TIMEOUT)}
    if endpoint.tls_dir and (endpoint.host.startswith("tcp://") or endpoint.host.startswith("https://")):
        tls_dir = Path(endpoint.tls_dir)
        cert = (str(tls_dir / "cert.pem"), str(tls_dir / "key.pem")) if (tls_dir / "cert.pem").exists() else None
        ca = str(tls_dir / "ca.pem") if (tls_dir / "ca.pem").exists() else None
        kwargs["tls"] = docker.tls.TLSConfig(client_cert=cert, ca_cert=ca if endpoint.tls_verify else None,
                                             verify=endpoint.tls_verify and (ca or True))
    try:
        # Negotiates the API version: GET /version, the one request that proves the engine answers
        # (a ping after it would be a second round trip on every command).
        client = docker.DockerClient(**kwargs)
    except (DockerException, OSError) as exc:
        raise engine_unreachable(endpoint, exc) from exc
    client.api.timeout = timeout
    return client


def docker_cli(endpoint: Endpoint, env: Mapping[str, str], tool: str) -> list[str]:
    """The docker command-line client pointed at the engine (`tool` runs through `docker exec`):
    an ssh:// engine through the local end of its forwarded API socket, as the SDK reaches it."""
    import shutil

    docker = shutil.which("docker")
    if docker is None:
        raise DependencyError(
            f"the docker command-line client is not installed: {tool} runs in the postgres container "
            "through `docker exec`",
            hint="install the docker CLI (Debian/Ubuntu `apt-get install docker.io` or docker-ce-cli), or "
            "run the stack with `--runtime native`.",
        )
    if endpoint.host.startswith("ssh://"):
        from devenv.runtime.sshtunnel import api_socket

        return [docker, "--host", f"unix://{api_socket(endpoint.host, env)}"]
    return [docker, *endpoint.cli_args()]


def api_message(exc: BaseException) -> str:
    """What the engine said about a failed request (its explanation), on one line."""
    explanation = getattr(exc, "explanation", None)
    text = explanation.decode(errors="replace") if isinstance(explanation, bytes) else (explanation or str(exc))
    return " ".join(str(text).split())


def start_failure(service: str, message: str, stack: Stack) -> DevenvError | None:
    """The error for a container the engine would not start, where its message names a cause
    devenv knows (a taken port, config files the engine cannot see, an address its host lacks);
    None for any other."""
    if "port is already allocated" in message or "address already in use" in message:
        from devenv.errors import PortInUseError
        from devenv.runtime.ports import port_in_use

        port = getattr(stack, service).port
        if stack.bind_ip and not stack.reach_host:  # ssh://: published on the remote's loopback, held there
            return PortInUseError(f"port {port} for {service} is taken on the engine's host ({message})",
                                  hint=f"stop what holds it there, or give {service} another port: "
                                       f"DEVENV_{service.upper()}_PORT=<port> devenv up")
        return port_in_use(service, port, message, stack=stack)
    if "bind source path does not exist" in message or "not a directory" in message:
        return DependencyError(f"Docker could not mount {service}'s config files: {message}",
                               hint="the engine does not see this machine's files: unset DEVENV_DOCKER_FILES "
                               "(a remote engine gets copies) or set DEVENV_DOCKER_FILES=copy.")
    if "cannot assign requested address" in message:
        from devenv.runtime.engine import HOST_OVERRIDE

        return DependencyError(
            f"{service}'s port cannot be published on {stack.bind_ip or '127.0.0.1'}: the engine's host has no "
            f"such address ({message})",
            hint=f"set {HOST_OVERRIDE} to an address of the engine's host that this machine reaches, or unset "
                 "it (a remote engine's host is then taken from DOCKER_HOST).")
    return None


# ---- images --------------------------------------------------------------------------------------


def ensure_images(client: DockerClient, stack: Stack, progress: Progress) -> dict[str, str]:
    """Each service's image id; a missing image is pulled (progress per layer, in bytes)."""
    from docker.errors import ImageNotFound

    ids: dict[str, str] = {}
    for service in stack.services:
        if service.image in ids:
            continue
        try:
            ids[service.image] = client.images.get(service.image).id
        except ImageNotFound:
            ids[service.image] = pull(client, service.name, service.image, progress)
    return ids


def pull(client: DockerClient, service: str, image: str, progress: Progress) -> str:
    """Pull an image, saying how it goes; its id, or pull_error."""
    from docker.errors import DockerException
    from docker.utils import parse_repository_tag

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
        raise pull_error(service, image, api_message(exc)) from exc


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
                              + (f" ({humanize.size(entry['total'], decimal=True)})" if entry["total"] else ""))
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
        return f"{done}/{len(self.layers)} layers, {humanize.size(current, decimal=True)} of {humanize.size(total, decimal=True) if total else '?'}"

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


# ---- containers ----------------------------------------------------------------------------------


def stop_timeout(container: Container) -> int:
    """The seconds the container's stop waits before SIGKILL (its StopTimeout; Compose's 10)."""
    return int(container.attrs.get("Config", {}).get("StopTimeout") or 10)


def stop(container: Container, timeout: int) -> None:
    """Stop a container (its own stop signal, then SIGKILL); one already gone is no error."""
    from docker.errors import DockerException

    try:
        container.stop(timeout=timeout)
    except DockerException:
        pass


def remove(container: Container) -> None:
    """Remove a container, running or not, with its anonymous volumes (the images' VOLUME /data)."""
    from docker.errors import NotFound

    try:
        container.remove(force=True, v=True)
    except NotFound:
        pass


def quietly(action: Callable[[], Any]) -> None:
    """Run an engine call whose failure changes nothing for the caller (a cleanup)."""
    from docker.errors import DockerException

    try:
        action()
    except DockerException:
        pass


def logs(container: Container, tail: int | str = "all") -> str:
    """A container's log (stdout and stderr), "" when the engine cannot give it."""
    from docker.errors import DockerException

    try:
        return container.logs(stdout=True, stderr=True, tail=tail).decode(errors="replace")
    except DockerException:
        return ""


def follow_container_logs(containers: "Mapping[str, Container]", prefix: Callable[[str], str]) -> "Iterator[str]":
    """New lines of the containers' logs as they come, interleaved, each after `prefix(name)`."""
    import queue
    import threading

    lines: "queue.Queue[str]" = queue.Queue()

    def pump(name: str, container: Container) -> None:
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


def log_tail_of(client: DockerClient, container_id: str) -> str:
    """The last 20 log lines of a container by id, for an error being raised ("" if there are none)."""
    try:
        return client.api.logs(container_id, tail=20).decode(errors="replace")
    except Exception:  # the log is an extra for an error already being raised
        return ""


def read_file(container: Container, path: str) -> str | None:
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


def ensure_network(client: DockerClient, name: str, labels: dict[str, str]) -> None:
    """A bridge network, made if missing (Compose's default network of a project)."""
    from docker.errors import APIError, NotFound

    try:
        client.networks.get(name)
        return
    except NotFound:
        pass
    try:
        # The API's own call: the SDK's networks.create asks for the new network once more.
        client.api.create_network(name, driver="bridge", labels=labels, check_duplicate=True)
    except APIError as exc:
        if exc.status_code != 409:  # created meanwhile: fine
            raise DependencyError(f"Docker could not create the network {name}: {api_message(exc)}") from exc
