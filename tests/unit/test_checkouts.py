"""Several checkouts on one machine: the stack's name per checkout, and the choice of its ports."""

from __future__ import annotations

import json
import re
import shutil
import socket
import os
from pathlib import Path
from typing import Iterator

import pytest

from devenv import registry
from devenv.config.identity import (IDENTITY_FILE, PORTS_FILE, VOLUME_PASSWORD_NOTE, record_name, remember_ports,
                                    stack_name)
from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.config.stack import Stack
from devenv.errors import ConfigError, PortInUseError
from devenv.runtime.ports import choose_port, reserve_ports
from devenv.state import fingerprint

DEFAULTS = {"postgres": 5432, "pgbouncer": 6432, "redis": 6379}


# ---- the choice of one port (pure) ---------------------------------------------------------------


def test_the_wanted_port_is_kept_when_nothing_holds_it() -> None:
    assert choose_port(5432, 5432, lambda port: None) == (5432, None)


def test_a_held_port_moves_to_the_first_free_one_from_the_configured_port_up() -> None:
    held = {5432: "held by the devenv stack of /a (profile dev, native)", 5433: "in use by pid 7 (nginx)"}
    assert choose_port(5432, 5432, held.get) == (5434, held[5432])
    # A remembered port that is taken now: the scan starts again at devenv.yaml's port.
    assert choose_port(5440, 5432, {5440: "in use", 5432: "in use"}.get) == (5433, "in use")


def test_the_stacks_other_ports_are_skipped() -> None:
    port, why = choose_port(5432, 5432, lambda p: None, avoid={5432, 5433})
    assert port == 5434 and why == "wanted by another service of this stack"


def test_no_privileged_port_is_chosen_and_none_free_is_an_error() -> None:
    assert choose_port(80, 80, lambda p: "in use" if p == 80 else None) == (1024, "in use")
    with pytest.raises(PortInUseError) as caught:
        choose_port(65530, 65530, lambda p: "in use")
    assert "no free port was found from 65530 up" in caught.value.message and caught.value.hint


# ---- the stack's name ------------------------------------------------------------------------------


def test_a_checkout_without_a_record_gets_its_own_name(tmp_path: Path) -> None:
    state = tmp_path / ".devenv" / "dev"
    name = stack_name(state, tmp_path, "taskflow", "dev")
    assert name == f"taskflow-dev-{registry.checkout_id(tmp_path)}" and re.fullmatch(r"taskflow-dev-[0-9a-f]{6}", name)


def test_a_checkout_that_made_a_docker_volume_before_ids_keeps_the_old_name(tmp_path: Path) -> None:
    state = tmp_path / ".devenv" / "dev"
    state.mkdir(parents=True)
    (state / VOLUME_PASSWORD_NOTE).write_text("x\n")
    assert stack_name(state, tmp_path, "taskflow", "dev") == "taskflow-dev"


def test_the_recorded_name_is_this_checkouts_and_a_copy_takes_its_own(tmp_path: Path) -> None:
    original = tmp_path / "a"
    state = original / ".devenv" / "dev"
    state.mkdir(parents=True)
    (state / VOLUME_PASSWORD_NOTE).write_text("x\n")
    record_name(state, original, "taskflow", "taskflow-dev")
    assert stack_name(state, original, "taskflow", "dev") == "taskflow-dev"
    assert (state / IDENTITY_FILE).stat().st_mode & 0o777 == 0o600
    copy = tmp_path / "b"
    shutil.copytree(original, copy)  # `cp -r`: the record and the password note come along
    name = stack_name(copy / ".devenv" / "dev", copy, "taskflow", "dev")
    assert name == f"taskflow-dev-{registry.checkout_id(copy)}" != f"taskflow-dev-{registry.checkout_id(original)}"
    # Another project name in devenv.yaml: the record is not this stack's.
    assert stack_name(state, original, "other", "dev") == f"other-dev-{registry.checkout_id(original)}"


def test_every_docker_name_follows_the_stacks_name(project: Path) -> None:
    from devenv.render import compose_placement, render_files

    stack = build_stack(load_config(project / "devenv.yaml", {}), "dev")
    compose = render_files(stack, compose_placement(stack))["docker-compose.yml"]
    name = f"taskflow-dev-{registry.checkout_id(project)}"
    assert stack.name == name and stack.base_name == "taskflow-dev"
    assert f"name: {name}\n" in compose and f"name: {name}-pgdata" in compose and f"name: {name}-redisdata" in compose


def test_a_name_too_long_with_the_checkout_id_is_refused(project: Path) -> None:
    # 42 bytes: `-prod-pgbouncer-1` fitted in 63, `-prod-<id>-pgbouncer-1` does not.
    config = project / "devenv.yaml"
    config.write_text(re.sub(r"^project: .*$", "project: " + "p" * 42, config.read_text(), count=1, flags=re.M))
    with pytest.raises(ConfigError, match="Docker's DNS names hold 63"):
        load_config(config, {})


# ---- remembered and pinned ports in the Stack ------------------------------------------------------------


def _stack(project: Path, env: dict[str, str] | None = None) -> Stack:
    return build_stack(load_config(project / "devenv.yaml", env or {}), "dev")


def test_remembered_ports_apply_while_devenv_yamls_port_is_the_same(project: Path) -> None:
    state = project / ".devenv" / "dev"
    remember_ports(state, {"postgres": (5433, 5432), "redis": (6390, 6000)})  # redis: devenv.yaml said 6000 then
    stack = _stack(project)
    assert (stack.postgres.port, stack.pgbouncer.port, stack.redis.port) == (5433, 6432, 6379)
    assert stack.postgres.configured_port == 5432 and not stack.postgres.pinned_by
    assert (state / PORTS_FILE).stat().st_mode & 0o777 == 0o600
    # DEVENV_<S>_PORT always wins, and pins.
    pinned = _stack(project, {"DEVENV_POSTGRES_PORT": "7000"})
    assert pinned.postgres.port == 7000 and pinned.postgres.pinned_by == "DEVENV_POSTGRES_PORT"
    # A remembered port that devenv.yaml now gives another service: devenv.yaml's ports.
    remember_ports(state, {"postgres": (6432, 5432)})
    assert _stack(project).postgres.port == 5432


def test_pin_port_is_a_boolean_that_ignores_remembered_ports(project: Path) -> None:
    config = project / "devenv.yaml"
    text = config.read_text()
    config.write_text(text.replace("  port: 5432\n", "  port: 5432\n  pin_port: true\n", 1))
    remember_ports(project / ".devenv" / "dev", {"postgres": (5433, 5432)})
    stack = _stack(project)
    assert stack.postgres.port == 5432 and stack.postgres.pinned_by == "pin_port"
    config.write_text(text.replace("  port: 5432\n", "  port: 5432\n  pin_port: yes please\n", 1))
    with pytest.raises(ConfigError, match=r"postgres.pin_port: 'yes please' is not true or false"):
        _stack(project)


def test_the_no_op_ups_fingerprint_covers_the_remembered_name_and_ports(project: Path) -> None:
    state = project / ".devenv" / "dev"
    before = fingerprint(project, project / "devenv.yaml", "dev", {})
    remember_ports(state, {"postgres": (5433, 5432)})
    moved = fingerprint(project, project / "devenv.yaml", "dev", {})
    record_name(state, project, "taskflow", "taskflow-dev")
    assert len({before, moved, fingerprint(project, project / "devenv.yaml", "dev", {})}) == 3


# ---- reserve_ports: the registry, held ports, pins ------------------------------------------------------


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "registry"
    monkeypatch.setenv("DEVENV_REGISTRY_DIR", str(directory))
    return directory


@pytest.fixture
def free_config(project: Path) -> Iterator[dict[str, int]]:
    """devenv.yaml's ports made free ones (the test never touches the machine's 5432)."""
    socks = [socket.socket() for _ in DEFAULTS]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = {service: sock.getsockname()[1] for service, sock in zip(DEFAULTS, socks)}
    for sock in socks:
        sock.close()
    config = project / "devenv.yaml"
    text = config.read_text()
    for service, port in ports.items():
        text = text.replace(f"  port: {DEFAULTS[service]}\n", f"  port: {port}\n", 1)
    config.write_text(text)
    yield ports


def _other(tmp_path: Path, name: str = "other", **ports: int) -> registry.Entry:
    checkout = tmp_path / name
    checkout.mkdir(exist_ok=True)
    entry = registry.Entry(checkout=str(checkout), config=str(checkout / "devenv.yaml"), project="taskflow",
                           profile="dev", runtime="docker", name=f"taskflow-dev-{name}", ports=dict(ports))
    registry.record(entry)
    return entry


def test_a_port_another_checkout_reserves_moves_and_is_remembered(project: Path, reg: Path, tmp_path: Path,
                                                                   free_config: dict[str, int]) -> None:
    other = _other(tmp_path, postgres=free_config["postgres"])
    said: list[str] = []
    stack = reserve_ports(_stack(project), "native", {}, said.append)
    assert stack.postgres.port != free_config["postgres"]
    assert (stack.pgbouncer.port, stack.redis.port) == (free_config["pgbouncer"], free_config["redis"])
    assert said == [f"postgres: port {free_config['postgres']} is held by the devenv stack of {other.checkout} "
                    f"(profile dev, docker); using {stack.postgres.port}, kept for this checkout"]
    remembered = json.loads((project / ".devenv" / "dev" / PORTS_FILE).read_text())
    assert remembered == {"postgres": {"port": stack.postgres.port, "configured": free_config["postgres"]}}
    own = registry.find(project, "dev")
    assert own is not None and own.ports == {s.name: s.port for s in stack.services} and own.runtime == "native"
    # The next resolution gives the remembered port, and the next `up` keeps it, silently.
    said.clear()
    assert reserve_ports(_stack(project), "native", {}, said.append) == stack and said == []


def test_an_orphaned_record_reserves_nothing(project: Path, reg: Path, tmp_path: Path,
                                             free_config: dict[str, int]) -> None:
    other = _other(tmp_path, postgres=free_config["postgres"])
    Path(other.checkout).rmdir()  # its checkout is gone
    assert reserve_ports(_stack(project), "native", {}, print).postgres.port == free_config["postgres"]


def test_a_running_service_keeps_its_port_and_a_pinned_one_is_not_moved(project: Path, reg: Path, tmp_path: Path,
                                                                         free_config: dict[str, int]) -> None:
    port = free_config["postgres"]
    with socket.socket() as server:  # as if this stack's own Postgres listened there
        server.bind(("127.0.0.1", port))
        server.listen()
        assert reserve_ports(_stack(project), "native", {"postgres": port}, print).postgres.port == port
        assert reserve_ports(_stack(project), "native", {}, print).postgres.port != port  # another program's
        (project / ".devenv" / "dev" / PORTS_FILE).unlink()
        env = {"DEVENV_POSTGRES_PORT": str(port)}
        assert reserve_ports(_stack(project, env), "native", {}, print).postgres.port == port  # the runtime refuses
        other = _other(tmp_path, postgres=port)  # ... and when another checkout's stack runs there: named
        with pytest.raises(PortInUseError) as caught:
            reserve_ports(_stack(project, env), "native", {}, print)
        assert caught.value.message == f"port {port} for postgres is held by the devenv stack of {other.checkout} (profile dev, docker)"
        assert "unset DEVENV_POSTGRES_PORT" in caught.value.hint
    # Reserved by a stopped stack, pinned: taken all the same (the pin wins over a preference).
    assert reserve_ports(_stack(project, env), "native", {}, print).postgres.port == port


# ---- the Docker runtime's decision, once (the engine faked: only its answers matter) ---------------------


class _Labelled:
    def __init__(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.name, self.labels = name, labels or {}


class _Engine:
    """containers.list / volumes.list of a Docker client, answering with fixed objects."""

    def __init__(self, containers: list[_Labelled], volumes: list[_Labelled]) -> None:
        self.containers = type("C", (), {"list": staticmethod(lambda **kw: containers)})()
        self.volumes = type("V", (), {"list": staticmethod(lambda **kw: volumes)})()


def test_docker_adopts_the_old_name_only_for_this_checkouts_stack(project: Path, reg: Path, tmp_path: Path) -> None:
    from devenv.runtime.dockername import decide_name

    stack = _stack(project)
    own, here = stack.name, str(stack.state_dir.absolute())
    workdir = "com.docker.compose.project.working_dir"
    assert decide_name(_Engine([], []), stack) == own
    assert decide_name(_Engine([_Labelled("c", {workdir: here})], []), stack) == "taskflow-dev"
    assert decide_name(_Engine([_Labelled("c", {workdir: str(tmp_path / "x" / ".devenv" / "dev")})], []), stack) == own
    volume = [_Labelled("taskflow-dev-pgdata")]
    assert decide_name(_Engine([], volume), stack) == own, "a volume this checkout did not make (no note)"
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    (stack.state_dir / VOLUME_PASSWORD_NOTE).write_text("x\n")
    assert decide_name(_Engine([], volume), stack) == "taskflow-dev"
    other = _other(tmp_path)
    registry.record(registry.Entry(**{**other.__dict__, "name": "taskflow-dev"}))  # another checkout took it
    assert decide_name(_Engine([], volume), stack) == own


def test_a_real_name_clash_names_the_other_checkout(project: Path) -> None:
    from devenv.errors import StateError
    from devenv.runtime.dockername import refuse_foreign

    stack = _stack(project)
    other = "/src/other/.devenv/dev"
    running = _Labelled(f"{stack.name}-postgres-1", {"com.docker.compose.project.working_dir": other})
    running.status = "running"  # type: ignore[attr-defined]
    refuse_foreign(stack, [running], Path(other))  # its own checkout's: fine
    with pytest.raises(StateError) as caught:
        refuse_foreign(stack, [running], stack.state_dir.absolute())
    assert f"already running from the checkout /src/other ({stack.name}-postgres-1)" in caught.value.message
    assert "`devenv down` in /src/other" in caught.value.hint and IDENTITY_FILE in caught.value.hint


def test_a_damaged_identity_record_is_not_used(tmp_path: Path) -> None:
    state = tmp_path / ".devenv" / "dev"
    own = f"taskflow-dev-{registry.checkout_id(tmp_path)}"
    for name in ("taskflow-dev\nservices: {}", "other-dev", "", 7):
        state.mkdir(parents=True, exist_ok=True)
        (state / IDENTITY_FILE).write_text(json.dumps({"checkout": str(tmp_path), "project": "taskflow", "name": name}))
        assert stack_name(state, tmp_path, "taskflow", "dev") == own, name
    (state / IDENTITY_FILE).write_text("{not json")
    assert stack_name(state, tmp_path, "taskflow", "dev") == own


def test_a_fifo_or_link_planted_as_a_checkouts_records_is_ignored_not_waited_on(tmp_path: Path) -> None:
    """identity.json and ports.json are read on every command: a FIFO there must not hang it,
    and a link must not be followed."""
    from devenv.config import identity

    os.mkfifo(tmp_path / identity.PORTS_FILE)
    (tmp_path / identity.IDENTITY_FILE).symlink_to("/etc/hostname")
    assert identity.remembered_ports(tmp_path) == {}
    assert identity.recorded_name(tmp_path, tmp_path, "taskflow") is None
