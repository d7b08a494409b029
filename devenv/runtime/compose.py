"""The rendered docker-compose.yml -> the engine's container create bodies: pure, no engine.

`compose_specs` turns each service of the compose file into one `POST /containers/create`
body (a ContainerSpec), with Compose's own labels (`com.docker.compose.*`) beside devenv's, so
that `docker compose -p <name> ps` shows the stack and what runs is what the file says. It
handles the subset of the Compose spec devenv's template uses and fails on anything else.
Neither the docker SDK nor any engine is involved: the Docker runtime sends the bodies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from devenv.errors import ConfigError
from devenv.render import COMPOSE_FILE

if TYPE_CHECKING:
    from devenv.config.stack import Stack

# Compose's labels: with these `docker compose -p <name> ps/logs/down` treat the stack as theirs.
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_ONEOFF = "com.docker.compose.oneoff"
COMPOSE_NUMBER = "com.docker.compose.container-number"
COMPOSE_CONFIG_HASH = "com.docker.compose.config-hash"
COMPOSE_WORKING_DIR = "com.docker.compose.project.working_dir"
COMPOSE_CONFIG_FILES = "com.docker.compose.project.config_files"
COMPOSE_IMAGE = "com.docker.compose.image"
COMPOSE_DEPENDS_ON = "com.docker.compose.depends_on"
COMPOSE_NETWORK = "com.docker.compose.network"
COMPOSE_VOLUME = "com.docker.compose.volume"
# devenv's own labels (the compose template sets them on the services).
DEVENV_PROJECT = "dev.devenv.project"
DEVENV_PROFILE = "dev.devenv.profile"
DEVENV_SERVICE = "dev.devenv.service"
DEVENV_HASH = "dev.devenv.config-hash"
# Labels that describe state rather than the container's definition: not part of its hash.
_UNHASHED_LABELS = {COMPOSE_CONFIG_HASH, DEVENV_HASH}

START_INTERVAL_API = "1.44"  # engines before this reject Healthcheck.StartInterval
# Service keys of the rendered compose file that devenv translates; anything else is an error,
# so that a template change cannot silently make devenv's containers differ from the file.
_SERVICE_KEYS = {
    "image", "command", "entrypoint", "environment", "ports", "volumes", "tmpfs", "healthcheck",
    "stop_signal", "stop_grace_period", "deploy", "labels", "depends_on", "user", "working_dir", "shm_size",
}
_TOP_KEYS = {"name", "services", "volumes"}


@dataclass(frozen=True)
class ContainerSpec:
    """One service of the compose file as the engine's create request."""

    service: str
    name: str  # <project>-<service>-1, Compose's container name
    image: str
    body: dict[str, Any]  # POST /containers/create
    config_hash: str  # of the body (state labels excluded): a change means recreate
    files_hash: str  # dev.devenv.config-hash: the image and the config files it reads
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)  # named volumes: name -> labels
    mounts: dict[str, str] = field(default_factory=dict)  # bind source file name -> path in the container
    stop_timeout: int = 10
    # The bind mounts left out of `body` for an engine that does not see this machine's files:
    # (host path, path in the container), copied in before the start (devenv.runtime.delivery).
    copies: tuple[tuple[str, str], ...] = ()


def devenv_labels(stack: Stack) -> dict[str, str]:
    """devenv's labels for what the runtime makes besides the services (networks, volumes, helpers)."""
    return {DEVENV_PROJECT: stack.project, DEVENV_PROFILE: stack.profile}


def load_compose(text: str) -> dict[str, Any]:
    """Parse the rendered compose file; ConfigError if it is not a mapping of services."""
    import yaml

    from devenv.config.settings import safe_loader

    loader = safe_loader()  # libyaml's where it can: ~10x faster, same result
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the rendered {COMPOSE_FILE} is not valid YAML: {exc}",
                          hint="fix docker-compose.yml.j2.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ConfigError(f"the rendered {COMPOSE_FILE} has no services", hint="fix docker-compose.yml.j2.")
    return data


def compose_specs(
    compose: dict[str, Any],
    compose_file: Path,
    api_version: str,
    image_ids: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    copy_files: bool = False,
) -> dict[str, ContainerSpec]:
    """Translate each service of a compose file into the engine's container create body.

    Handles the subset of the Compose spec the template uses (and fails on anything else):
    image, command, entrypoint, environment, ports, volumes (named and bind), tmpfs,
    healthcheck, stop_signal, stop_grace_period, deploy.resources.limits, labels, depends_on,
    user, working_dir, shm_size. Relative bind sources are relative to the compose file, as
    in Compose; `$$` is a literal `$` and `${VAR}` comes from `env`, as in Compose. With
    `copy_files` the bind mounts become the spec's `copies` (a remote engine would mount empty
    directories), and the hash covers the body without them: a change of mode recreates.
    """
    unknown = set(compose) - _TOP_KEYS
    if unknown:
        raise _unsupported(", ".join(sorted(unknown)))
    env = os.environ if env is None else env
    compose = _interpolate(compose, env)
    project = compose.get("name")
    if not project:
        raise ConfigError(f"the rendered {COMPOSE_FILE} has no `name`", hint="fix docker-compose.yml.j2.")
    network = f"{project}_default"
    compose_file = compose_file.absolute()  # the engine wants absolute bind sources
    compose_dir = compose_file.parent
    declared_volumes = compose.get("volumes") or {}
    specs = {}
    for service, definition in compose["services"].items():
        unknown = set(definition) - _SERVICE_KEYS
        if unknown:
            raise _unsupported(", ".join(f"services.{service}.{key}" for key in sorted(unknown)))
        specs[service] = _service_spec(project, service, definition, network, compose_dir, compose_file,
                                       declared_volumes, api_version, image_ids or {}, copy_files)
    return specs


def _service_spec(project: str, service: str, svc: dict[str, Any], network: str, compose_dir: Path,
                  compose_file: Path, declared_volumes: dict[str, Any], api_version: str,
                  image_ids: Mapping[str, str], copy_files: bool = False) -> ContainerSpec:
    image = svc["image"]
    name = f"{project}-{service}-1"
    where = f"services.{service}"
    body: dict[str, Any] = {"Image": image}
    host: dict[str, Any] = {"NetworkMode": network}
    if "command" in svc:
        body["Cmd"] = _words(svc["command"])
    if "entrypoint" in svc:
        body["Entrypoint"] = _words(svc["entrypoint"])
    if svc.get("environment"):
        body["Env"] = [f"{k}={'' if v is None else v}" for k, v in _mapping(svc["environment"]).items()]
    if "user" in svc:
        body["User"] = str(svc["user"])
    if "working_dir" in svc:
        body["WorkingDir"] = svc["working_dir"]

    exposed, bindings = {}, {}
    for port in svc.get("ports") or []:
        host_ip, host_port, container_port = _port(port, f"{where}.ports")
        exposed[container_port] = {}
        bindings.setdefault(container_port, []).append({"HostIp": host_ip, "HostPort": host_port})
    if exposed:
        body["ExposedPorts"] = exposed
        host["PortBindings"] = bindings

    mounts, volumes, files, copies = [], {}, {}, []
    for entry in svc.get("volumes") or []:
        mount = _mount(entry, f"{where}.volumes", compose_dir, project, declared_volumes)
        if mount["Type"] == "volume":
            key = mount.pop("_key")
            volumes[mount["Source"]] = {COMPOSE_PROJECT: project, COMPOSE_VOLUME: key}
        else:
            files[Path(mount["Source"]).name] = mount["Target"]
            if copy_files:
                copies.append((mount["Source"], mount["Target"]))
                continue
        mounts.append(mount)
    if mounts:
        host["Mounts"] = mounts
    if svc.get("tmpfs"):
        tmpfs = svc["tmpfs"] if isinstance(svc["tmpfs"], list) else [svc["tmpfs"]]
        host["Tmpfs"] = {path.split(":", 1)[0]: (path.split(":", 1)[1] if ":" in path else "") for path in tmpfs}
    if "shm_size" in svc:
        host["ShmSize"] = _bytes(svc["shm_size"], f"{where}.shm_size")

    deploy = svc.get("deploy") or {}
    resources = deploy.get("resources") or {}
    limits = resources.get("limits") or {}
    extra = ([f"deploy.{k}" for k in deploy if k != "resources"] + [f"deploy.resources.{k}" for k in resources if k != "limits"]
             + [f"deploy.resources.limits.{k}" for k in limits if k not in ("memory", "cpus")])
    if extra:
        raise _unsupported(", ".join(f"{where}.{key}" for key in sorted(extra)))
    if "memory" in limits:
        host["Memory"] = _bytes(limits["memory"], f"{where}.deploy.resources.limits.memory")
    if "cpus" in limits:
        host["NanoCpus"] = int(round(float(limits["cpus"]) * 1e9))

    if "healthcheck" in svc:
        body["Healthcheck"] = _healthcheck(svc["healthcheck"], f"{where}.healthcheck", api_version)
    if "stop_signal" in svc:
        body["StopSignal"] = svc["stop_signal"]
    stop_timeout = 10  # Compose's default grace period
    if "stop_grace_period" in svc:
        stop_timeout = max(1, round(_duration_ns(svc["stop_grace_period"], f"{where}.stop_grace_period") / 1e9))
        body["StopTimeout"] = stop_timeout

    depends = svc.get("depends_on") or {}
    if isinstance(depends, list):
        depends = {dep: {"condition": "service_started"} for dep in depends}
    labels = {
        COMPOSE_PROJECT: project,
        COMPOSE_SERVICE: service,
        COMPOSE_ONEOFF: "False",
        COMPOSE_NUMBER: "1",
        COMPOSE_WORKING_DIR: str(compose_dir),
        COMPOSE_CONFIG_FILES: str(compose_file),
    }
    if image in image_ids:
        labels[COMPOSE_IMAGE] = image_ids[image]
    if depends:
        labels[COMPOSE_DEPENDS_ON] = ",".join(
            f"{dep}:{(cond or {}).get('condition', 'service_started')}:false" for dep, cond in depends.items())
    labels.update({k: str(v) for k, v in _mapping(svc.get("labels") or {}).items()})
    body["Labels"] = labels
    body["HostConfig"] = host
    # Compose's aliases: other containers reach this one by its service name (PgBouncer -> "postgres").
    body["NetworkingConfig"] = {"EndpointsConfig": {network: {"Aliases": [service, name]}}}

    hashed = json.dumps({**body, "Labels": {k: v for k, v in labels.items() if k not in _UNHASHED_LABELS}},
                        sort_keys=True)
    config_hash = hashlib.sha256(hashed.encode()).hexdigest()
    labels[COMPOSE_CONFIG_HASH] = config_hash
    return ContainerSpec(service=service, name=name, image=image, body=body, config_hash=config_hash,
                         files_hash=labels.get(DEVENV_HASH, ""), volumes=volumes, mounts=files,
                         stop_timeout=stop_timeout, copies=tuple(copies))


def _unsupported(what: str) -> ConfigError:
    return ConfigError(
        f"the rendered {COMPOSE_FILE} uses {what}, which devenv's Docker runtime does not translate",
        hint="keep docker-compose.yml.j2 to the keys devenv.runtime.compose.compose_specs handles, or extend it.",
    )


_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def _interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation: `$$` -> `$`, `${VAR}`, `${VAR:-default}`, `$VAR`."""
    if isinstance(value, str):
        def sub(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            name = match.group(2) or match.group(5)
            op, default = match.group(3), match.group(4) or ""
            current = env.get(name)
            if op == ":-" and not current:
                return default
            if op == "-" and current is None:
                return default
            return current or ""
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    return value


def _words(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else shlex.split(str(value))


def _mapping(value: Any) -> dict[str, Any]:
    """Compose's environment/labels: a mapping, or a list of KEY=VALUE."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value:
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


def _port(entry: Any, where: str) -> tuple[str, str, str]:
    """(host ip, host port, "<port>/<proto>") from Compose's short or long port syntax."""
    if isinstance(entry, dict):
        proto = entry.get("protocol", "tcp")
        return str(entry.get("host_ip", "")), str(entry.get("published", "")), f"{entry['target']}/{proto}"
    text, _, proto = str(entry).partition("/")
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        ip, published, target = parts
    elif len(parts) == 2:
        ip, (published, target) = "", parts
    else:
        raise ConfigError(f"{where}: '{entry}' publishes no host port", hint="use IP:HOST:CONTAINER.")
    return ip.strip("[]"), published, f"{target}/{proto or 'tcp'}"


def _mount(entry: Any, where: str, compose_dir: Path, project: str, declared: dict[str, Any]) -> dict[str, Any]:
    """An engine Mount from Compose's short (`src:dst[:ro]`) or long volume syntax."""
    if isinstance(entry, dict):
        kind, source, target = entry.get("type", "volume"), str(entry.get("source", "")), entry["target"]
        read_only = bool(entry.get("read_only", False))
    else:
        parts = str(entry).split(":")
        if len(parts) < 2:
            raise ConfigError(f"{where}: '{entry}' has no target (anonymous volumes are not supported)",
                              hint="use SOURCE:TARGET[:ro].")
        source, target = parts[0], parts[1]
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    if kind == "bind":
        path = Path(os.path.expanduser(source))
        return {"Type": "bind", "Source": str(path if path.is_absolute() else (compose_dir / path)).replace("/./", "/"),
                "Target": target, "ReadOnly": read_only}
    if kind != "volume":
        raise _unsupported(f"a {kind} mount in {where}")
    if source not in declared:
        raise ConfigError(f"{where}: volume '{source}' is not declared under the top-level `volumes:`",
                          hint="declare it in docker-compose.yml.j2.")
    name = (declared.get(source) or {}).get("name") or f"{project}_{source}"
    return {"Type": "volume", "Source": name, "Target": target, "ReadOnly": read_only, "_key": source}


def _healthcheck(spec: dict[str, Any], where: str, api_version: str) -> dict[str, Any]:
    test = spec.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    check: dict[str, Any] = {"Test": [str(t) for t in test or []]}
    for key, api_key in (("interval", "Interval"), ("timeout", "Timeout"), ("start_period", "StartPeriod"),
                         ("start_interval", "StartInterval")):
        if key in spec:
            if key == "start_interval" and _version(api_version) < _version(START_INTERVAL_API):
                continue  # this engine rejects it; the first check then waits one `interval`
            check[api_key] = _duration_ns(spec[key], f"{where}.{key}")
    if "retries" in spec:
        check["Retries"] = int(spec["retries"])
    if spec.get("disable"):
        check = {"Test": ["NONE"]}
    return check


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)")
_DURATION_NS = {"h": 3600e9, "m": 60e9, "s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}


def _duration_ns(value: Any, where: str) -> int:
    """Compose durations ("1m30s", "100ms", or seconds as a number) in nanoseconds."""
    if isinstance(value, (int, float)):
        return int(value * 1e9)
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{where}: '{value}' is not a duration", hint="write it like 2s, 100ms or 1m30s.")
    return int(sum(float(n) * _DURATION_NS[u] for n, u in parts))


_BYTES = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.I)


def _bytes(value: Any, where: str) -> int:
    """Compose byte sizes ("1024M", "1g", 512) as a number of bytes (binary units, as Compose)."""
    if isinstance(value, int):
        return value
    match = _BYTES.fullmatch(str(value).strip())
    if not match:
        raise ConfigError(f"{where}: '{value}' is not a size", hint="write it like 512M or 1g.")
    power = " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * 1024**power)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


__all__ = ["ContainerSpec", "compose_specs", "load_compose"]
