"""devenv.runtime.engines, the parts that need no engine: where Podman's socket is, telling Podman
from Docker by `/version`, SELinux relabelling of bind mounts, the rootless copy decision.

tests/integration/test_engines.py and the conftest's podman lane run against a real Podman.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devenv import doctor
from devenv.errors import DependencyError
from devenv.runtime import engines, get_runtime
from devenv.runtime.base import ServiceState
from devenv.runtime.engines import EngineFacts, engine_facts, find_podman, needs_copy, selinux_binds


def test_container_host_wins_then_the_rootless_socket_then_the_rootful_one(tmp_path: Path) -> None:
    rootless = tmp_path / "podman" / "podman.sock"
    rootless.parent.mkdir()
    rootless.touch()
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    assert find_podman({**env, "CONTAINER_HOST": "ssh://core@vm/run/podman/podman.sock"}).host.startswith("ssh://")
    found = find_podman(env, sockets=[rootless, Path("/run/podman/podman.sock")])
    assert found is not None and found.host == f"unix://{rootless}" and found.origin == "Podman's socket"
    assert engines.podman_sockets(env) == [rootless, Path("/run/podman/podman.sock")]
    assert find_podman({}, sockets=[tmp_path / "none.sock"]) is None


def test_runtime_podman_without_a_socket_names_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    monkeypatch.setattr(engines, "podman_sockets", lambda env: [tmp_path / "podman.sock"])
    with pytest.raises(DependencyError) as caught:
        get_runtime("podman")
    assert str(tmp_path / "podman.sock") in caught.value.message
    assert "podman.socket" in caught.value.hint


class _Api:
    base_url = "http+docker://localhost"

    def __init__(self, ping: dict[str, str], api_version: str, libpod: dict[str, Any]) -> None:
        self._ping, self.api_version, self._libpod = ping, api_version, libpod
        self.asked: list[str] = []

    def get(self, url: str, timeout: float) -> Any:
        self.asked.append(url[len(self.base_url):])
        headers, libpod = self._ping, self._libpod

        class Response:
            def __init__(self) -> None:
                self.headers = headers

            def raise_for_status(self) -> None:
                pass

            def json(self) -> dict[str, Any]:
                return libpod

        return Response()


class _Client:
    def __init__(self, ping: dict[str, str], api_version: str, info: dict[str, Any],
                 libpod: dict[str, Any] | None = None) -> None:
        self.api, self._info = _Api(ping, api_version, libpod or {}), info

    def info(self) -> dict[str, Any]:
        return self._info


def test_podman_is_told_from_docker_by_its_ping_headers() -> None:
    podman = _Client({"Libpod-Api-Version": "4.3.1", "Server": "Libpod/4.3.1 (linux)", "Api-Version": "1.41"}, "1.41",
                     {"SecurityOptions": ["name=seccomp,profile=default", "name=rootless", "name=selinux"]},
                     {"host": {"networkBackend": "netavark"}})
    facts = engine_facts(podman)  # type: ignore[arg-type]
    assert facts == EngineFacts("podman", "4.3.1", "1.41", rootless=True, selinux=True)
    assert facts.name == "Podman 4.3.1" and podman.api.asked == ["/_ping"], "Podman's slow /version is not asked"
    assert engine_facts(podman, backend=True).network_backend == "netavark"  # type: ignore[arg-type]
    assert podman.api.asked[-1] == "/v4.0.0/libpod/info"
    docker = _Client({"Server": "Docker/27.1.1 (linux)", "Api-Version": "1.46"}, "1.46",
                     {"SecurityOptions": ["name=apparmor", "name=rootless"]})
    facts = engine_facts(docker, backend=True)  # type: ignore[arg-type]
    assert facts == EngineFacts("docker", "27.1.1", "1.46", rootless=True, selinux=False)
    assert docker.api.asked == ["/_ping"], "Docker is not asked Podman's own API"


def test_rootless_podman_is_known_by_its_own_rootless_field() -> None:
    """Rootless Podman 4.3.1's compat /info, as it answered on this machine (user devenvrl): no
    `name=rootless` among SecurityOptions, a `Rootless` field instead."""
    ping = {"Libpod-Api-Version": "4.3.1", "Server": "Libpod/4.3.1 (linux)", "Api-Version": "1.41"}
    rootless = _Client(ping, "1.41", {"SecurityOptions": ["name=seccomp,profile=default"], "Rootless": True,
                                      "DockerRootDir": "/home/devenvrl/.local/share/containers/storage"})
    assert engine_facts(rootless).rootless  # type: ignore[arg-type]
    rootful = _Client(ping, "1.41", {"SecurityOptions": ["name=seccomp,profile=default"], "Rootless": False})
    assert not engine_facts(rootful).rootless  # type: ignore[arg-type]


def test_only_rootless_podman_needs_the_files_copied_in() -> None:
    assert needs_copy(EngineFacts("podman", "4.3.1", "1.41", rootless=True, selinux=False))
    assert not needs_copy(EngineFacts("podman", "4.3.1", "1.41", rootless=False, selinux=False))
    assert not needs_copy(EngineFacts("docker", "27.1", "1.46", rootless=True, selinux=False))


def test_bind_mounts_get_a_shared_selinux_label_only_where_selinux_is_on() -> None:
    body = {"Image": "postgres:16", "HostConfig": {"Mounts": [
        {"Type": "bind", "Source": "/p/.devenv/dev/postgresql.conf", "Target": "/etc/postgresql.conf", "ReadOnly": True},
        {"Type": "bind", "Source": "/p/seeds", "Target": "/seeds", "ReadOnly": False},
        {"Type": "volume", "Source": "x-pgdata", "Target": "/var/lib/postgresql/data", "ReadOnly": False}]}}
    off = EngineFacts("podman", "4.3.1", "1.41", rootless=False, selinux=False)
    assert selinux_binds(body, off) is body
    relabelled = selinux_binds(body, EngineFacts("podman", "4.3.1", "1.41", rootless=False, selinux=True))
    assert relabelled["HostConfig"]["Binds"] == ["/p/.devenv/dev/postgresql.conf:/etc/postgresql.conf:ro,z",
                                                 "/p/seeds:/seeds:z"]
    assert relabelled["HostConfig"]["Mounts"] == [body["HostConfig"]["Mounts"][2]]
    assert len(body["HostConfig"]["Mounts"]) == 3, "the original body is left as it was"


def test_a_port_podman_publishes_through_conmon_is_the_stacks() -> None:
    state = ServiceState("postgres", True, 5432, 4242, "postgres", "container abc")
    check = doctor.classify_port("postgres", 5432, False, "pid 4100 (conmon)", state, "docker")
    assert check.status == doctor.OK and "published by Docker" in check.detail
