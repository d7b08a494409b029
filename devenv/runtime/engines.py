"""Which engine speaks the Docker API behind a socket (Docker or Podman), and what it can do.

Podman serves the Docker-compatible API (Debian 12's 4.3: API 1.41), so the Docker runtime
drives it; what differs is said here, once: where its socket is (`--runtime podman`), its
kind and API version (for `doctor` and `describe`), whether its networks have DNS (PgBouncer
reaches Postgres by name; without aardvark-dns or CNI's dnsname it cannot), SELinux (bind
mounts need a `:z` label) and rootless (uid mapping: files are copied in, see `needs_copy`).
Finding the socket reads the filesystem only; the facts cost two or three API calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from devenv.errors import DependencyError
from devenv.runtime.engine import Endpoint

if TYPE_CHECKING:
    from docker import DockerClient

    from devenv.runtime.compose import ContainerSpec

LIBPOD = "/v4.0.0/libpod"  # Podman's own API, beside the compat one: served by every Podman 4 and 5


def podman_sockets(env: Mapping[str, str]) -> list[Path]:
    """Where a Podman API service listens without configuration: rootless, then rootful."""
    sockets = []
    if env.get("XDG_RUNTIME_DIR"):
        sockets.append(Path(env["XDG_RUNTIME_DIR"]) / "podman" / "podman.sock")
    sockets.append(Path("/run/podman/podman.sock"))
    return sockets


def find_podman(env: Mapping[str, str] | None = None, sockets: list[Path] | None = None) -> Endpoint | None:
    """Podman's API endpoint: CONTAINER_HOST, a default socket that exists, or (macOS) the
    socket of the running `podman machine`; None when there is none."""
    env = os.environ if env is None else env
    if env.get("CONTAINER_HOST"):
        return Endpoint(env["CONTAINER_HOST"], "CONTAINER_HOST")
    for sock in podman_sockets(env) if sockets is None else sockets:
        if sock.exists():
            return Endpoint(f"unix://{sock}", "Podman's socket")
    if sys.platform == "darwin" and shutil.which("podman"):
        try:  # the VM's socket, forwarded to this Mac by `podman machine start`
            out = subprocess.run(["podman", "machine", "inspect", "--format", "{{.ConnectionInfo.PodmanSocket.Path}}"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        path = out.splitlines()[0] if out else ""
        if path and Path(path).exists():
            return Endpoint(f"unix://{path}", "`podman machine`")
    return None


def no_podman_error(env: Mapping[str, str]) -> DependencyError:
    """The error for `--runtime podman` when no Podman socket is found."""
    tried = ", ".join(str(s) for s in podman_sockets(env))
    return DependencyError(
        f"no Podman API socket found: CONTAINER_HOST is not set and no socket exists ({tried})",
        hint="start Podman's API service: rootless `systemctl --user start podman.socket`, rootful "
        "`sudo systemctl start podman.socket` (or `podman system service --time=0 &`), macOS "
        "`podman machine start`; or set CONTAINER_HOST.",
    )


@dataclass(frozen=True)
class EngineFacts:
    """What devenv needs to know of the engine behind the Docker API."""

    kind: str  # "docker" or "podman"
    version: str  # the engine's own version (Podman 4.3.1, Docker 27.1)
    api_version: str  # the Docker API version it serves (1.41)
    rootless: bool
    selinux: bool  # SELinux enabled: bind mounts need a `:z` label
    network_backend: str = ""  # Podman: "netavark" or "cni"

    @property
    def name(self) -> str:
        """"Podman 4.3.1" or "Docker 27.1.1"."""
        return f"{self.kind.capitalize()} {self.version}"


def engine_facts(client: DockerClient, backend: bool = False) -> EngineFacts:
    """The engine's kind and version (from `/_ping`'s headers: Podman's `/version` takes ~0.4 s),
    the negotiated API version, rootless and SELinux (`/info`'s SecurityOptions); `backend`: also
    Podman's network backend (its own `libpod/info`, ~0.35 s more: for doctor and DNS errors)."""
    import re

    headers = client.api.get(f"{client.api.base_url}/_ping", timeout=30).headers
    podman = "Libpod-Api-Version" in headers
    server = re.search(r"/(\S+)", headers.get("Server", ""))
    version = headers.get("Libpod-Api-Version") if podman else (server.group(1) if server else "?")
    info = client.info()
    options = " ".join(str(o) for o in info.get("SecurityOptions") or [])
    # Docker says rootless in SecurityOptions; Podman 4 in a `Rootless` field of its own.
    facts = EngineFacts("podman" if podman else "docker", str(version), str(client.api.api_version),
                        "name=rootless" in options or info.get("Rootless") is True, "name=selinux" in options)
    return with_backend(client, facts) if backend else facts


def with_backend(client: DockerClient, facts: EngineFacts) -> EngineFacts:
    """The facts with Podman's network backend ("netavark", "cni") filled in."""
    from dataclasses import replace

    if facts.kind != "podman" or facts.network_backend:
        return facts
    return replace(facts, network_backend=str(libpod_get(client, "/info").get("host", {}).get("networkBackend", "")))


def libpod_get(client: DockerClient, path: str) -> Any:
    """GET from Podman's own API (its network's dns_enabled, its info), through the same connection."""
    response = client.api.get(f"{client.api.base_url}{LIBPOD}{path}", timeout=30)
    response.raise_for_status()
    return response.json()


def needs_copy(facts: EngineFacts) -> bool:
    """Whether the rendered configs and keys must be copied into the containers rather than
    bind-mounted: under rootless Podman's uid mapping, a 0600 file of this user is root's in the
    container, unreadable by the `postgres` user the images run as. (A remote engine, which does
    not see this machine's files at all, decides the same in the delivery of configs.)"""
    return facts.kind == "podman" and facts.rootless


def selinux_binds(body: dict[str, Any], facts: EngineFacts) -> dict[str, Any]:
    """The container body with its bind mounts relabelled (`:z`, shared) where SELinux enforces:
    the Mounts API has no relabel option, so bind mounts move to HostConfig.Binds."""
    if not facts.selinux:
        return body
    host = dict(body.get("HostConfig") or {})
    mounts = host.get("Mounts") or []
    binds = [m for m in mounts if m.get("Type") == "bind"]
    if not binds:
        return body
    host["Mounts"] = [m for m in mounts if m.get("Type") != "bind"]
    host["Binds"] = [*(host.get("Binds") or []),
                     *(f"{m['Source']}:{m['Target']}:{'ro,' if m.get('ReadOnly') else ''}z" for m in binds)]
    return {**body, "HostConfig": host}


def _fix(facts: EngineFacts) -> str:
    if facts.network_backend == "cni":
        return ("switch Podman to the netavark backend with aardvark-dns (`network_backend = \"netavark\"` in "
                "containers.conf, `apt-get install netavark aardvark-dns`, then `podman system reset`), or install "
                "CNI's dnsname plugin (golang-github-containernetworking-plugin-dnsname, podman-plugins)")
    return ("install aardvark-dns (Debian/Ubuntu `apt-get install aardvark-dns`, Fedora `dnf install "
            "aardvark-dns`) and restart Podman's API service")


def dns_gap(client: DockerClient, facts: EngineFacts, network: str) -> str | None:
    """Why containers on `network` cannot find each other by name as far as its definition
    says (a Podman network made without dns_enabled: CNI without dnsname), or None.

    Docker's user networks always have DNS. A Podman network with dns_enabled still has none
    when aardvark-dns is missing (netavark only warns): `probe_dns` finds that out.
    """
    if facts.kind != "podman":
        return None
    facts = with_backend(client, facts)
    if not libpod_get(client, f"/networks/{network}/json").get("dns_enabled"):
        return f"Podman's network {network} has no DNS ({facts.network_backend or '?'} backend): {_fix(facts)}"
    return None


def probe_dns(client: DockerClient, facts: EngineFacts, image: str, network: str | None = None) -> str | None:
    """Whether a container finds another by name, tried for real: a throwaway container of a
    PostgreSQL `image` (psql is in every one) on `network` (or a throwaway one) resolves its own
    network alias. Returns why not, or None; RuntimeError when the probe tells neither (psql
    missing from the image, another failure). About a second on Podman; nothing on Docker."""
    import uuid

    if facts.kind != "podman":
        return None
    name = f"devenv-dns-probe-{uuid.uuid4().hex[:8]}"
    own_network = network is None
    if own_network:
        client.networks.create(name, driver="bridge", labels={"dev.devenv.probe": "dns"})
    network = network or name
    container = None
    try:
        facts = with_backend(client, facts)
        gap = dns_gap(client, facts, network)
        if gap:
            return gap
        alias = f"{name}-alias"  # an alias is in DNS only (a container's own name may be in /etc/hosts)
        config = client.api.create_networking_config({network: client.api.create_endpoint_config(aliases=[alias])})
        created = client.api.create_container(
            image, entrypoint=["psql"], command=["-w", "-h", alias, "-p", "9", "-c", ""],
            labels={"dev.devenv.probe": "dns"}, networking_config=config,
            host_config=client.api.create_host_config(network_mode=network))
        container = created["Id"]
        client.api.start(container)
        client.api.wait(container, timeout=30)
        said = client.api.logs(container, stdout=True, stderr=True).decode(errors="replace")
        if "translate host name" in said or "Name or service not known" in said:
            return f"Podman's network {network} has no name server (aardvark-dns is not running): {_fix(facts)}"
        if "Connection refused" not in said:  # the name resolved only if psql got as far as the port
            raise RuntimeError(f"the DNS probe with {image} was inconclusive: {' '.join(said.split())[:200]}")
        return None
    finally:
        if container is not None:
            client.api.remove_container(container, force=True, v=True)  # with the image's VOLUME
        if own_network:
            client.api.remove_network(name)


def lookup_failure(client: DockerClient, facts: EngineFacts, pgbouncer: Any, image: str) -> tuple[bool, str | None]:
    """While PgBouncer is not healthy: (whether DNS was probed, why PgBouncer cannot resolve
    postgres). Probed once its log says a lookup failed (a lookup can also fail while the
    postgres container is not started yet: the probe then finds DNS working)."""
    from devenv.runtime.dockerapi import logs

    if "DNS lookup failed" not in logs(pgbouncer, tail=20):
        return False, None
    networks = list((pgbouncer.attrs.get("NetworkSettings") or {}).get("Networks") or {})
    try:
        return True, probe_dns(client, facts, image, networks[0] if networks else None)
    except RuntimeError:  # inconclusive: leave it to the health checks' own timeout and report
        return True, None


def dns_error(gap: str) -> DependencyError:
    """The error `up` raises at once when PgBouncer could never resolve `postgres`."""
    message, _, fix = gap.partition(": ")
    return DependencyError(f"PgBouncer cannot reach postgres by name: {message}",
                           hint=f"{fix}; `devenv doctor` checks the engine.")


def engine_specs(compose: dict[str, Any], compose_path: Path, api_version: str, image_ids: Mapping[str, str],
                 env: Mapping[str, str], endpoint: Endpoint, facts: EngineFacts) -> dict[str, ContainerSpec]:
    """The rendered compose file's services as this engine needs them: the configs and keys copied
    in through the API where the engine cannot see them (remote) or its user namespace would not
    let the images' users read them (rootless Podman), else bind-mounted (`:z` under SELinux).
    ConfigError when a service devenv runs is missing from the file."""
    from dataclasses import replace

    from devenv.errors import ConfigError
    from devenv.render import COMPOSE_FILE
    from devenv.runtime.compose import compose_specs
    from devenv.runtime.engine import copies_files
    from devenv.config.stack import SERVICES

    copy = copies_files(endpoint, env, fallback=needs_copy(facts))
    specs = compose_specs(compose, compose_path, api_version, image_ids, env, copy_files=copy)
    missing = set(SERVICES) - set(specs)
    if missing:
        raise ConfigError(f"the rendered {COMPOSE_FILE} has no service {', '.join(sorted(missing))}",
                          hint="docker-compose.yml.j2 must define postgres, pgbouncer and redis.")
    return {s: replace(spec, body=selinux_binds(spec.body, facts)) for s, spec in specs.items()}


__all__ = ["EngineFacts", "dns_error", "dns_gap", "engine_facts", "engine_specs", "find_podman", "lookup_failure", "needs_copy",
           "no_podman_error", "podman_sockets", "probe_dns", "selinux_binds", "with_backend"]
