"""Engines that do not see this machine's files nor share its loopback: which engines are remote,
where their ports are reached and bound, how the configs reach the containers (pure logic; the
remote lane of the integration suite runs the real thing)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from devenv.config.identity import record_name, record_reach, recorded_reach
from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.errors import ConfigError, DependencyError
from devenv.render import compose_placement, render_files
from devenv.runtime.compose import compose_specs, load_compose
from devenv.runtime.delivery import deliver
from devenv.runtime.engine import Endpoint, copies_files, engine_host, forwards_ports, is_remote, reach


def endpoint(host: str) -> Endpoint:
    return Endpoint(host, "DOCKER_HOST")


@pytest.mark.parametrize(("host", "remote"), [
    ("unix:///var/run/docker.sock", False),
    ("npipe:////./pipe/docker_engine", False),
    ("tcp://127.0.0.1:2375", False),
    ("tcp://localhost:2375", False),
    ("tcp://[::1]:2375", False),
    ("tcp://10.213.0.2:2375", True),
    ("tcp://docker:2375", True),
    ("ssh://me@devbox", True),
])
def test_an_engine_is_remote_when_its_address_is_not_this_machine(host: str, remote: bool) -> None:
    assert is_remote(endpoint(host)) is remote
    assert copies_files(endpoint(host), {}) is remote


def test_the_files_mode_overrides_the_guess_and_a_bad_value_is_a_config_error() -> None:
    assert copies_files(endpoint("unix:///var/run/docker.sock"), {"DEVENV_DOCKER_FILES": "copy"})
    assert not copies_files(endpoint("tcp://10.213.0.2:2375"), {"DEVENV_DOCKER_FILES": "mount"})
    with pytest.raises(ConfigError) as caught:
        copies_files(endpoint("tcp://10.213.0.2:2375"), {"DEVENV_DOCKER_FILES": "bind"})
    assert "DEVENV_DOCKER_FILES" in caught.value.hint


def test_reach_names_the_engines_host_and_binds_on_its_address_only() -> None:
    assert reach(endpoint("unix:///var/run/docker.sock"), {}) == ("", "")  # 127.0.0.1, as ever
    assert reach(endpoint("tcp://10.213.0.2:2375"), {}) == ("10.213.0.2", "10.213.0.2")
    assert engine_host(endpoint("tcp://docker:2375")) == "docker"  # a name stays a name
    assert reach(endpoint("tcp://localhost:2375"), {}) == ("", "")
    # The override names the host (kept as given) and the ports bind on its address.
    assert reach(endpoint("tcp://10.213.0.2:2375"), {"DEVENV_HOST_OVERRIDE": "localhost"}) == ("localhost", "127.0.0.1")
    with pytest.raises(DependencyError) as caught:
        reach(endpoint("tcp://devenv-no-such-host.invalid:2375"), {})
    assert "DEVENV_HOST_OVERRIDE" in caught.value.hint
    # Never every interface: 0.0.0.0 (as an override or the engine's address) is refused.
    for env, address in (({"DEVENV_HOST_OVERRIDE": "0.0.0.0"}, "tcp://10.213.0.2:2375"), ({}, "tcp://0.0.0.0:2375")):
        with pytest.raises(ConfigError) as refused:
            reach(endpoint(address), env)
        assert "every interface" in refused.value.message and "DEVENV_HOST_OVERRIDE" in refused.value.hint


def test_ssh_forwards_the_ports_unless_an_override_names_where_they_are_published() -> None:
    # Over ssh:// the containers publish on the remote's 127.0.0.1 and this machine's
    # 127.0.0.1:P is forwarded there (devenv.runtime.sshtunnel): the URLs keep 127.0.0.1.
    assert forwards_ports(endpoint("ssh://me@devbox"), {})
    assert reach(endpoint("ssh://me@devbox"), {}) == ("", "127.0.0.1")
    assert copies_files(endpoint("ssh://me@devbox"), {})  # still remote: files go in through the API
    # DEVENV_HOST_OVERRIDE: published on that address, as for a tcp:// engine; no forwarding.
    override = {"DEVENV_HOST_OVERRIDE": "10.0.0.5"}
    assert not forwards_ports(endpoint("ssh://me@devbox"), override)
    assert reach(endpoint("ssh://me@devbox"), override) == ("10.0.0.5", "10.0.0.5")
    assert not forwards_ports(endpoint("tcp://10.0.0.5:2375"), {})


def test_the_host_is_carried_by_the_stack_and_its_record(project: Path) -> None:
    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    assert (stack.host, stack.bind_address) == ("127.0.0.1", "127.0.0.1")
    assert "@127.0.0.1:" in stack.urls()["DATABASE_URL"]
    record_reach(stack.state_dir, project, "docker", "10.0.0.9")  # no record yet: nothing written
    assert recorded_reach(stack.state_dir, project) == ("", "")
    record_name(stack.state_dir, project, stack.project, stack.name)
    record_reach(stack.state_dir, project, "docker", "10.0.0.9")
    assert recorded_reach(stack.state_dir, project) == ("docker", "10.0.0.9")
    remote = build_stack(load_config(project / "devenv.yaml", {}), "dev")  # as every later command sees it
    assert (remote.host, remote.bind_address, remote.libpq_env()["PGHOST"]) == ("docker", "10.0.0.9", "docker")
    assert all("@docker:" in url for url in remote.urls().values())
    compose = render_files(remote, compose_placement(remote))["docker-compose.yml"]
    assert f'"10.0.0.9:{remote.postgres.port}:5432"' in compose and "127.0.0.1:" not in compose.split("healthcheck")[0]
    record_reach(stack.state_dir, project, "", "127.0.0.1")  # ssh://: the remote's loopback, forwarded here
    assert recorded_reach(stack.state_dir, project) == ("", "127.0.0.1")
    forwarded = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    assert (forwarded.host, forwarded.bind_ip) == ("127.0.0.1", "127.0.0.1")  # doctor: not this machine's ports
    record_reach(stack.state_dir, project, "", "")  # back on this machine (native, a local engine)
    assert build_stack(load_config(project / "devenv.yaml", {}), "dev").host == "127.0.0.1"
    (stack.state_dir / "identity.json").write_text(
        (stack.state_dir / "identity.json").read_text().replace('"bind_ip": ""', '"bind_ip": "not an address"'))
    assert recorded_reach(stack.state_dir, project) == ("", "")


def test_copies_replace_the_bind_mounts_and_change_the_hash(project: Path) -> None:
    stack = build_stack(load_config(project / "devenv.yaml", {}), "prod")
    compose = load_compose(render_files(stack, compose_placement(stack))["docker-compose.yml"])
    compose_file = project / ".devenv" / "prod" / "docker-compose.yml"
    mounted = compose_specs(compose, compose_file, "1.41", env={})
    copied = compose_specs(compose, compose_file, "1.41", env={}, copy_files=True)
    for service, spec in copied.items():
        kinds = {m["Type"] for m in spec.body["HostConfig"].get("Mounts", [])}
        assert "bind" not in kinds
        assert {target for _, target in spec.copies} == set(mounted[service].mounts.values())
        assert spec.config_hash != mounted[service].config_hash  # a change of mode recreates
    assert any(target.endswith("server.key") for _, target in copied["postgres"].copies)
    assert not any(spec.copies for spec in mounted.values())


class FakeContainer:
    def __init__(self, passwd: str) -> None:
        self.passwd = passwd
        self.put: list[tuple[str, bytes]] = []

    def get_archive(self, path: str) -> tuple[Any, dict[str, Any]]:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            data = self.passwd.encode()
            info = tarfile.TarInfo("passwd")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return iter([buffer.getvalue()]), {}

    def put_archive(self, path: str, data: bytes) -> bool:
        self.put.append((path, data))
        return True


class FakeClient:
    def __init__(self, container: FakeContainer, image_user: str) -> None:
        self.container, self.image_user = container, image_user
        self.containers = self
        self.api = self

    def get(self, container_id: str) -> FakeContainer:
        return self.container

    def inspect_image(self, image: str) -> dict[str, Any]:
        return {"Config": {"User": self.image_user}}


def test_delivery_gives_the_files_to_the_servers_user_secrets_0600(project: Path, tmp_path: Path) -> None:
    stack = build_stack(load_config(project / "devenv.yaml", {}), "prod")
    compose = load_compose(render_files(stack, compose_placement(stack))["docker-compose.yml"])
    specs = compose_specs(compose, tmp_path / "docker-compose.yml", "1.41", env={}, copy_files=True)
    for source, _ in specs["postgres"].copies + specs["pgbouncer"].copies:
        Path(source).parent.mkdir(parents=True, exist_ok=True)
        Path(source).write_text(f"content of {Path(source).name}\n")
    # The postgres image runs as root and its entrypoint drops to `postgres`: that user's ids.
    container = FakeContainer("root:x:0:0::/root:/bin/sh\npostgres:x:101:103::/var/lib/postgresql:/bin/sh\n")
    deliver(FakeClient(container, ""), "id", specs["postgres"])
    [(path, data)] = container.put
    assert path == "/"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {target.lstrip("/") for _, target in specs["postgres"].copies}
        for name, member in members.items():
            assert (member.uid, member.gid) == (101, 103)
            assert member.mode == (0o600 if name.endswith(".key") else 0o644)
            assert tar.extractfile(member).read().startswith(b"content of ")  # type: ignore[union-attr]
    # PgBouncer's image names its user (uid 70).
    container = FakeContainer("")
    deliver(FakeClient(container, "70:70"), "id", specs["pgbouncer"])
    with tarfile.open(fileobj=io.BytesIO(container.put[0][1])) as tar:
        assert {(m.uid, m.gid) for m in tar.getmembers()} == {(70, 70)}
        modes = {m.name.rsplit("/", 1)[-1]: m.mode for m in tar.getmembers()}
    # SCRAM secrets only for PgBouncer's user; its ini (no secret) for everyone.
    assert modes["userlist.txt"] == 0o600 and modes["pgbouncer.ini"] == 0o644, modes


def test_doctor_leaves_this_machines_ports_alone_for_a_remote_engine(project: Path) -> None:
    import socket

    from devenv.doctor import OK, port_checks

    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev").replace(reach_host="docker", bind_ip="10.0.0.9")
    with socket.socket() as held:  # a local program on the port: not the remote stack's business
        held.bind(("127.0.0.1", 0))
        held.listen()
        stack = stack.replace(postgres=stack.postgres.replace(port=held.getsockname()[1]))
        checks = port_checks(stack, [], "docker")
        assert port_checks(stack.replace(reach_host="", bind_ip=""), [], "docker")[0].status != OK  # locally: seen
    assert [c.status for c in checks] == [OK, OK, OK]
    assert "10.0.0.9" in checks[0].detail and "docker" in checks[0].detail


def test_an_engine_that_does_not_answer_is_named_with_the_reason_and_the_right_hint() -> None:
    from devenv.runtime.engine import engine_unreachable

    silent = engine_unreachable(endpoint("tcp://10.0.0.9:2375"), OSError("Read timed out. (read timeout=10.0)"))
    assert "accepted the connection but did not answer in time" in silent.message
    podman = engine_unreachable(Endpoint("unix:///run/podman/podman.sock", "Podman's socket"), ConnectionRefusedError())
    assert "podman.socket" in podman.hint and "connection refused" in podman.message


def test_start_failures_devenv_knows_are_named_with_what_to_do(project: Path) -> None:
    from devenv.errors import PortInUseError
    from devenv.runtime.dockerapi import start_failure

    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    remote = stack.replace(reach_host="devbox", bind_ip="10.0.0.9")
    assert isinstance(start_failure("postgres", "Bind for 127.0.0.1:5432 failed: port is already allocated", stack),
                      PortInUseError)
    mount = start_failure("redis", "bind source path does not exist: /x/conf", stack)
    assert mount is not None and "DEVENV_DOCKER_FILES=copy" in (mount.hint or "")
    address = start_failure("postgres", "listen tcp4 10.0.0.9:5432: bind: cannot assign requested address", remote)
    assert address is not None and address.exit_code == 4 and "10.0.0.9" in address.message
    assert "DEVENV_HOST_OVERRIDE" in (address.hint or "")
    assert start_failure("postgres", "OCI runtime create failed", stack) is None
    # Over ssh:// (published on the remote's 127.0.0.1): held there, not by this machine's ssh.
    ssh = start_failure("redis", "Bind for 127.0.0.1:6380 failed: port is already allocated",
                        stack.replace(bind_ip="127.0.0.1", reach_host=""))
    assert isinstance(ssh, PortInUseError) and "taken on the engine's host" in ssh.message
