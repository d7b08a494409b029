"""Where the Docker engine is and whether it answers, without the docker SDK or the Docker runtime.

`--runtime auto` and `devenv doctor` ask this on every run, mostly on machines where no
engine runs: finding that out must cost a file check or a socket connect, not the ~250 ms
of importing the SDK (or the ~13 ms of importing devenv.runtime.docker).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from devenv.errors import ConfigError, DependencyError

PING_TIMEOUT = 3.0  # seconds: `--runtime auto` must not hang on a dead remote engine


@dataclass(frozen=True)
class Endpoint:
    """Where the Docker engine is expected, and why there."""

    host: str  # unix:///var/run/docker.sock, tcp://host:2376, ssh://user@host
    origin: str  # "DOCKER_HOST", "Docker context 'colima'", "the default socket"
    tls_dir: str | None = None  # ca.pem, cert.pem, key.pem
    tls_verify: bool = False
    context: str | None = None  # the Docker context it came from

    @property
    def shown(self) -> str:
        """The address for messages: without a password a user put in it (ssh://me:pw@host)."""
        if "@" not in self.host:
            return self.host
        from devenv.config.external import redact

        return redact(self.host)

    def cli_args(self) -> list[str]:
        """Options that point the `docker` CLI at this engine (DOCKER_HOST it reads itself)."""
        if self.context:
            return ["--context", self.context]
        return [] if self.origin == "DOCKER_HOST" else ["--host", self.host]


def default_sockets(env: Mapping[str, str]) -> list[Path]:
    """Unix sockets an engine listens on without any configuration: rootful, rootless, Desktop."""
    sockets = [Path("/var/run/docker.sock")]
    if env.get("XDG_RUNTIME_DIR"):
        sockets.append(Path(env["XDG_RUNTIME_DIR"]) / "docker.sock")  # rootless dockerd
    if env.get("HOME"):
        sockets.append(Path(env["HOME"]) / ".docker" / "run" / "docker.sock")  # Docker Desktop
    return sockets


def docker_config_dir(env: Mapping[str, str]) -> Path:
    """The Docker CLI's configuration directory: $DOCKER_CONFIG or ~/.docker."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]).expanduser()
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".docker"


def find_endpoint(env: Mapping[str, str] | None = None, sockets: list[Path] | None = None) -> Endpoint | None:
    """The engine to talk to, as the docker CLI would choose it; None when there obviously is none.

    DOCKER_HOST wins, then a Docker context (DOCKER_CONTEXT or `currentContext` in
    ~/.docker/config.json), then the first default socket that exists. Reads files only: cheap
    enough for `--runtime auto` on a machine without Docker.
    """
    env = os.environ if env is None else env
    if env.get("DOCKER_HOST"):
        verify = env.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
        cert_path = env.get("DOCKER_CERT_PATH") or (str(docker_config_dir(env)) if verify else None)
        return Endpoint(env["DOCKER_HOST"], "DOCKER_HOST", cert_path, verify)
    context = env.get("DOCKER_CONTEXT") or _current_context(env)
    if context and context != "default":
        return context_endpoint(context, env)
    for sock in default_sockets(env) if sockets is None else sockets:
        if sock.exists():
            return Endpoint(f"unix://{sock}", "the default socket")
    return None


def _current_context(env: Mapping[str, str]) -> str | None:
    try:
        config = json.loads((docker_config_dir(env) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("currentContext") if isinstance(config, dict) else None


def context_endpoint(name: str, env: Mapping[str, str]) -> Endpoint:
    """A Docker context's engine endpoint, from ~/.docker/contexts/meta/<sha256(name)>/meta.json."""
    key = hashlib.sha256(name.encode()).hexdigest()
    base = docker_config_dir(env) / "contexts"
    meta_file = base / "meta" / key / "meta.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        docker_endpoint = meta["Endpoints"]["docker"]
        host = docker_endpoint["Host"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DependencyError(
            f"Docker context '{name}' has no readable endpoint ({meta_file})",
            hint="choose an existing context (`docker context ls`, `docker context use default`), or set "
            "DOCKER_HOST, or use the native runtime: `devenv up --runtime native`.",
        ) from exc
    tls_dir = base / "tls" / key / "docker"
    return Endpoint(
        host=host,
        origin=f"Docker context '{name}'",
        tls_dir=str(tls_dir) if (tls_dir / "cert.pem").exists() or (tls_dir / "ca.pem").exists() else None,
        tls_verify=not docker_endpoint.get("SkipTLSVerify", False),
        context=name,
    )


def engine_unreachable(endpoint: Endpoint, exc: BaseException) -> DependencyError:
    """The error for an engine that does not answer: the host tried, where it came from, why."""
    why = _why(exc).replace(endpoint.host, endpoint.shown)  # the SDK quotes the address, password and all
    if "podman" in endpoint.host or endpoint.origin in ("CONTAINER_HOST", "Podman's socket", "`podman machine`"):
        hint = ("start Podman's API service (`systemctl --user start podman.socket`, rootful `sudo systemctl "
                "start podman.socket`, macOS `podman machine start`), or set CONTAINER_HOST to its socket.")
    else:
        hint = ("start Docker (`sudo systemctl start docker`, Docker Desktop, colima), point DOCKER_HOST or "
                "`docker context use` at a running engine, or use the native runtime: `devenv up --runtime native`.")
    return DependencyError(f"no Docker engine answers at {endpoint.shown} (from {endpoint.origin}): {why}", hint=hint)


def _why(exc: BaseException) -> str:
    """The root cause of a connection failure, in a few words."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FileNotFoundError):
            return "the socket does not exist"
        if isinstance(seen, PermissionError):
            return "permission denied (is your user in the `docker` group?)"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, OSError) and seen.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to host"
        if "timed out" in str(seen).lower():
            return "it accepted the connection but did not answer in time (is that port a Docker engine?)"
        seen = seen.__cause__ or seen.__context__ or next((a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)), None)
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def no_engine_error(env: Mapping[str, str]) -> DependencyError:
    """The error when nothing suggests an engine: no DOCKER_HOST, no context, no socket."""
    tried = ", ".join(str(s) for s in default_sockets(env))
    return DependencyError(
        f"no Docker engine found: DOCKER_HOST is not set, no Docker context is selected and no socket exists ({tried})",
        hint="install and start Docker, set DOCKER_HOST (or `docker context use`), or use the native runtime: "
        "`devenv up --runtime native`.",
    )


def unix_http_get(path: str, url: str, timeout: float = PING_TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """GET `url` from an HTTP server on a unix socket (the engine's `/_ping`, `/info`): (status, headers, body).

    Connects before importing http.client: a socket left by a stopped engine refuses in
    ~0.1 ms, and that is the common answer.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = sock

    conn = UnixHTTPConnection("localhost", timeout=timeout)
    try:
        conn.request("GET", url, headers={"Host": "docker"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# ---- engines that do not share this machine's loopback or files --------------------------------

HOST_OVERRIDE = "DEVENV_HOST_OVERRIDE"  # where this machine reaches the published ports (as testcontainers')
FILES_MODE = "DEVENV_DOCKER_FILES"  # "copy" or "mount": how the rendered configs reach the containers
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "")


def engine_host(endpoint: Endpoint) -> str | None:
    """The host part of a tcp:// or ssh:// engine address (a name stays a name), None for a
    unix socket or a named pipe (an engine of this machine)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint.host)
        if parts.scheme not in ("tcp", "ssh", "http", "https"):
            return None
        return parts.hostname or ""
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise ConfigError(f"the Docker engine address {endpoint.shown} (from {endpoint.origin}) is not a URL: {exc}",
                          hint="give DOCKER_HOST as unix:///path, tcp://host:port or ssh://[user@]host[:port].") from exc


def is_remote(endpoint: Endpoint) -> bool:
    """Whether the engine runs elsewhere: its address is tcp:// or ssh:// and not this machine's loopback."""
    host = engine_host(endpoint)
    return host is not None and host not in _LOOPBACK


def copies_files(endpoint: Endpoint, env: Mapping[str, str], fallback: bool = False) -> bool:
    """Whether the rendered configs and keys go into the containers through the engine's API
    (a remote engine would mount empty directories) rather than as bind mounts:
    DEVENV_DOCKER_FILES=copy|mount decides, else whether the engine is remote, or `fallback`
    (what the engine's facts call for: rootless Podman's uid mapping)."""
    mode = env.get(FILES_MODE, "").strip().lower()
    if mode not in ("", "copy", "mount"):
        raise ConfigError(f"{FILES_MODE}={env[FILES_MODE]!r} is neither copy nor mount",
                          hint=f"unset it (devenv decides per engine), or set {FILES_MODE}=copy or mount.")
    return mode == "copy" if mode else is_remote(endpoint) or fallback


def forwards_ports(endpoint: Endpoint, env: Mapping[str, str]) -> bool:
    """Whether the stack's ports reach this machine through the SSH connection to an ssh://
    engine (devenv.runtime.sshtunnel): yes, unless DEVENV_HOST_OVERRIDE says where they are
    reached instead (then they are published on that address, as for a tcp:// engine)."""
    return endpoint.host.startswith("ssh://") and not env.get(HOST_OVERRIDE, "").strip()


def reach(endpoint: Endpoint, env: Mapping[str, str]) -> tuple[str, str]:
    """(the host this machine reaches the stack's published ports at, the IPv4 address they bind
    on); ("", "") for an engine of this machine: 127.0.0.1 both, as ever.

    DEVENV_HOST_OVERRIDE names the host; else a remote engine's host from its address. The
    ports bind on that host's address only (resolved here, once), never on every interface.
    Over ssh:// without an override the containers publish on the remote's 127.0.0.1 and the
    same ports of this machine's 127.0.0.1 are forwarded there: ("", "127.0.0.1").
    """
    override = env.get(HOST_OVERRIDE, "").strip()
    if not override and not is_remote(endpoint):
        return "", ""
    if forwards_ports(endpoint, env):
        return "", "127.0.0.1"
    host = override or engine_host(endpoint) or ""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DependencyError(
            f"cannot resolve {host} (the host the stack's ports are published on, from "
            f"{HOST_OVERRIDE if override else endpoint.origin}): {exc}",
            hint=f"set {HOST_OVERRIDE} to an IPv4 address or a name this machine resolves.",
        ) from exc
    address = str(infos[0][4][0])
    if address == "0.0.0.0":  # noqa: S104 (this is the check against it)
        raise ConfigError(
            f"{host} (from {HOST_OVERRIDE if override else endpoint.origin}) is the unspecified address: "
            "the stack's ports would be published on every interface of the engine's host",
            hint=f"set {HOST_OVERRIDE} to the one address this machine reaches the engine's host at.",
        )
    return host, address
