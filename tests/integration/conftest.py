"""Integration fixtures: real servers in throwaway projects, on free ports, driven through the CLI.

Every test here runs once per runtime in RUNTIMES. A runtime whose engine is missing is
skipped on a developer's machine and fails in CI (where `CI` is set).

Docker: the images are devenv.yaml's, or the local test images built by .ci/images/build.sh
(devenv-test/*) when DEVENV_TEST_DOCKER_IMAGES=1 (CI sets it) or when devenv.yaml's images are
absent and the test images exist. Each throwaway project gets its own `project:` name, so
its containers, network and volumes are its own; teardown removes them by label.

Engine lanes (issue 18): "podman" (rootful Podman's Docker-compatible socket, started by
.ci/podman-up.sh) and "remote" (.ci/remote-engine-up.sh's dockerd in a network namespace over
TCP, at $DEVENV_TEST_REMOTE_DOCKER_HOST, which sees none of this machine's files) run the docker
runtime against another engine: their Project's `runtime` is "docker", its `engine` names the
lane, and DOCKER_HOST points at it. They run only the tests marked `every_engine`: the stack
checks every engine must pass (the rest is deselected, so CI grows by that subset only).

Markers: `native_only(reason)` skips a test of native internals (pid files, unix sockets in
run/) on the other runtimes; `every_engine` runs a test in every engine lane too.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from devenv.config.settings import load_config
from devenv.config.stack import Stack
from devenv.config.resolve import build_stack
from tests.conftest import KEPT_ENV

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = ["native", "docker", "podman", "remote"]
PODMAN_SOCKET = "/run/podman/podman.sock"
# Lanes of the Docker runtime on another engine: lane -> its DOCKER_HOST ("" when not configured).
# "rootless" (.ci/podman-rootless-up.sh) is not a lane of RUNTIMES: test_rootless_podman.py asks for it.
LANE_VARS = {"remote": "DEVENV_TEST_REMOTE_DOCKER_HOST", "rootless": "DEVENV_TEST_ROOTLESS_DOCKER_HOST"}
LANE_SETUP = {"remote": ".ci/remote-engine-up.sh", "rootless": ".ci/podman-rootless-up.sh"}
ENGINE_LANES = {"podman": f"unix://{PODMAN_SOCKET}",
                **{lane: os.environ.get(var, "") for lane, var in LANE_VARS.items()}}
# Built by .ci/images/build.sh from Debian packages; they honour the official images' contracts.
TEST_IMAGES = {
    "DEVENV_POSTGRES_IMAGE": "devenv-test/postgres:15",
    "DEVENV_PGBOUNCER_IMAGE": "devenv-test/pgbouncer:1.18",
    "DEVENV_REDIS_IMAGE": "devenv-test/redis:7",
}
SERVICES = ("postgres", "pgbouncer", "redis")
SERVER_COMMS = {"postgres", "pgbouncer", "redis-server", "initdb"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "native_only(reason): tests native internals; skipped on other runtimes")
    config.addinivalue_line("markers", "every_engine(lanes=...): also runs in the engine lanes (podman, remote; or those "
                            "named), not only native and docker")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselected, kept = [], []
    for item in items:
        runtime = getattr(getattr(item, "callspec", None), "params", {}).get("runtime")
        every = item.get_closest_marker("every_engine")
        if runtime in ENGINE_LANES and (every is None or runtime not in every.kwargs.get("lanes", ENGINE_LANES)):
            deselected.append(item)  # an engine lane runs only the stack checks: CI time grows by those
            continue
        kept.append(item)
        group = _engine_group(item, runtime)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        native_only = item.get_closest_marker("native_only")
        if native_only and runtime is not None and runtime != "native":
            item.add_marker(pytest.mark.skip(reason=f"native internals: {native_only.kwargs.get('reason', '')}"))
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


# Modules whose tests drive the other engines (Podman, the remote dockerd, over ssh, rootless).
_LANE_MODULES = {"test_engines", "test_remote_engine", "test_ssh_engine", "test_rootless_podman"}


def _engine_group(item: pytest.Item, runtime: str | None) -> str:
    """The xdist_group (pytest-xdist's --dist loadgroup) of a test that uses an engine: one worker
    runs every test of this machine's dockerd, in order, and one every test of the other engines.
    Within one engine they do not overlap: some look at the whole engine (`ls` and `prune` list
    every stack's containers, a leftover check counts the engine's), some change it for a while
    (test_engines' second Podman service on the same storage, the ssh lane's killed masters).
    Across engines and beside the native runtime's tests they may. "" for a test no engine sees."""
    if not item.nodeid.startswith("tests/integration/") or item.get_closest_marker("xdist_group"):
        return ""  # a unit test, or one that names its group itself
    module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    if runtime in ("podman", "remote") or module in _LANE_MODULES:
        return "other-engines"
    if runtime == "docker" or (runtime is None and "docker" in item.name):
        return "docker-engine"
    return ""


# ---- Docker: the engine, the images, the containers of a project --------------------------------


def docker_client(host: str = "") -> Any:
    """A docker SDK client for the engine at `host` (an engine lane's DOCKER_HOST), else the one
    devenv would use here (DOCKER_HOST, which an engine lane's test has set, or the default);
    DependencyError when none answers."""
    return _docker_client(host or os.environ.get("DOCKER_HOST", ""))


@functools.lru_cache(maxsize=None)
def _docker_client(host: str) -> Any:
    from devenv.runtime.dockerapi import connect
    from devenv.runtime.engine import Endpoint, find_endpoint, no_engine_error

    endpoint = Endpoint(host, "DOCKER_HOST") if host else find_endpoint()
    if endpoint is None:
        raise no_engine_error(os.environ)
    return connect(endpoint, timeout=120)


def _image_present(client: Any, image: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
        return True
    except ImageNotFound:
        return False


@functools.lru_cache(maxsize=None)
def docker_images(host: str = "") -> tuple[tuple[str, str], ...]:
    """DEVENV_*_IMAGE overrides for the docker runtime (on the engine at `host`): the local test images, or none."""
    if os.environ.get("DEVENV_TEST_DOCKER_IMAGES", "") not in ("", "0"):
        return tuple(TEST_IMAGES.items())
    client = docker_client(host)
    config = load_config(REPO / "devenv.yaml", env={})
    official = [service.image for service in config.services.values()]
    if all(_image_present(client, image) for image in official):
        return ()
    if all(_image_present(client, image) for image in TEST_IMAGES.values()):
        return tuple(TEST_IMAGES.items())
    return ()


def docker_teardown(project_name: str, host: str = "") -> None:
    """Remove every container, network and volume labelled with a (throwaway) project name."""
    try:
        client = docker_client(host)
    except Exception:  # no engine: nothing of ours can exist
        return
    label = {"label": f"dev.devenv.project={project_name}"}
    for container in client.containers.list(all=True, filters=label):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=label):
        network.remove()
    for volume in client.volumes.list(filters=label):
        volume.remove(force=True)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """Distinct free ports (each held until all are chosen, so none comes back twice)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Project:
    """A throwaway copy of the TaskFlow project with its own ports, driven through the CLI."""

    root: Path
    runtime: str  # "native" or "docker" (the podman and remote lanes run the docker runtime)
    profile: str = "dev"
    env: dict[str, str] = field(default_factory=dict)
    engine: str = ""  # the docker runtime's engine: "docker", "podman", "remote"; "" natively

    @property
    def docker_host(self) -> str:
        """The engine lane's DOCKER_HOST; "" for the engine devenv finds itself."""
        return ENGINE_LANES.get(self.engine, "")

    def client(self) -> Any:
        """A docker SDK client for this project's engine."""
        return docker_client(self.docker_host)

    def devenv(self, *args: str, check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `python -m devenv ARGS` in the project; `check` asserts exit code 0."""
        argv = [sys.executable, "-m", "devenv", *args]
        if args and args[0] in ("up", "down", "status", "logs") and "--runtime" not in args:
            argv += ["--runtime", self.runtime]
        if args and args[0] not in ("--help",) and "-p" not in args and "--profile" not in args:
            argv += ["--profile", self.profile]
        # PYTHONFAULTHANDLER: a CLI that hangs past `timeout` is sent SIGABRT and prints every
        # thread's stack, so the failure says where it hung.
        env = {**self.env, "PYTHONFAULTHANDLER": "1"}
        with subprocess.Popen(argv, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, **kw) as child:
            try:
                stdout, stderr = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGABRT)
                stdout, stderr = child.communicate()
                pytest.fail(f"devenv {' '.join(args)} did not finish within {timeout:g}s; its stderr and "
                            f"threads:\n{stderr}", pytrace=False)
        proc = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
        if check:
            assert proc.returncode == 0, f"devenv {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return proc

    def stack(self, profile: str | None = None) -> Stack:
        """The Stack this project's CLI sees (same file, same environment)."""
        config = load_config(self.root / "devenv.yaml", env=self.env)
        return build_stack(config, profile or self.profile)

    def connect(self, pooled: bool = False, **kwargs: Any):  # type: ignore[no-untyped-def]
        """A psycopg connection: direct to Postgres, or through PgBouncer."""
        import psycopg

        urls = self.stack().urls()
        return psycopg.connect(urls["DATABASE_URL" if pooled else "DIRECT_DATABASE_URL"], **kwargs)

    def admin_connect(self, dbname: str = "postgres", **kwargs: Any):  # type: ignore[no-untyped-def]
        """A psycopg connection as devenv's own superuser (the application role is none)."""
        import psycopg

        stack = self.stack()
        pg = stack.postgres
        return psycopg.connect(host=stack.host, port=pg.port, user=pg.admin_user, password=pg.admin_password,
                               dbname=dbname, **kwargs)

    def redis(self):  # type: ignore[no-untyped-def]
        """A redis-py client with the stack's password."""
        import redis

        return redis.Redis.from_url(self.stack().urls()["REDIS_URL"], decode_responses=True)

    def edit(self, relative: str, old: str, new: str) -> None:
        """Replace text in a project file (e.g. a row of the settings table)."""
        path = self.root / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1))

    # ---- runtime-neutral views of what runs ------------------------------------------------

    @property
    def project_name(self) -> str:
        """The `project:` of this project's devenv.yaml (Docker labels carry it)."""
        match = re.search(r"^project:\s*(\S+)", (self.root / "devenv.yaml").read_text(), re.M)
        assert match, "devenv.yaml names no project"
        return match.group(1)

    @property
    def stack_name(self) -> str:
        """The stack's name, as this checkout resolves it (`{project}-{profile}-{checkout id}`):
        the Compose project on Docker, and so its containers', network's and volumes' names."""
        return self.stack().name

    def native_state(self) -> dict[str, Any]:
        """The native runtime's record: {service: {"pid": ...}, "_meta": {"pgdata": ...}}."""
        return json.loads((self.root / ".devenv" / self.profile / "native" / "state.json").read_text())

    def containers(self, running_only: bool = False) -> list[Any]:
        """This project's containers for its profile (docker runtime), found by Compose's labels."""
        filters = {"label": f"com.docker.compose.project={self.stack_name}"}
        return self.client().containers.list(all=not running_only, filters=filters)

    def container(self, service: str) -> Any:
        """The container of one service (docker runtime); fails the test if there is none."""
        found = [c for c in self.containers() if c.labels.get("com.docker.compose.service") == service
                 and c.labels.get("com.docker.compose.oneoff") == "False"]
        assert len(found) == 1, f"{len(found)} containers for {service}: {[c.name for c in found]}"
        return found[0]

    def server_pids(self) -> dict[str, int]:
        """{service: host pid of its server}: the native state file, or each container's main process."""
        if self.runtime == "native":
            state = self.native_state()
            return {service: state[service]["pid"] for service in SERVICES}
        out = {}
        for service in SERVICES:
            container = self.container(service)
            assert container.attrs["State"]["Running"], f"{container.name} is not running"
            out[service] = container.attrs["State"]["Pid"]
        return out

    def listen_port(self, service: str) -> int:
        """The port the server itself listens on: the stack's port natively; in Docker the
        container port that is published on the stack's port (on 127.0.0.1 only, or a remote
        engine's address)."""
        stack = self.stack()
        port, address = getattr(stack, service).port, stack.bind_address
        if self.runtime == "native":
            return port
        bindings = self.container(service).attrs["HostConfig"]["PortBindings"] or {}
        inside = [int(key.split("/")[0]) for key, binds in bindings.items()
                  if any(b["HostPort"] == str(port) and b["HostIp"] == address for b in binds or [])]
        assert len(inside) == 1, f"{service}: no single container port published on {address}:{port}: {bindings}"
        return inside[0]

    def server_processes(self) -> list[int]:
        """Host pids of every server process of this project that runs, tracked by devenv or not."""
        if self.runtime == "native":
            return _native_project_processes(self)
        return sorted(c.attrs["State"]["Pid"] for c in self.containers(running_only=True))

    def pgdata(self) -> str:
        """Where Postgres keeps this project's data: a path (native), `volume:NAME` or `tmpfs:PATH` (docker)."""
        if self.runtime == "native":
            return self.native_state()["_meta"]["pgdata"]
        container = self.container("postgres")
        volume = next((m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"
                       and m["Destination"].startswith("/var/lib/postgresql")), None)
        if volume:
            return f"volume:{volume}"
        tmpfs = container.attrs["HostConfig"].get("Tmpfs") or {}
        assert tmpfs, f"{container.name} keeps its data neither in a volume nor on tmpfs"
        return f"tmpfs:{next(iter(tmpfs))}"

    def pgdata_on_tmpfs(self) -> bool:
        """Whether the data lives in memory (/dev/shm natively, a tmpfs mount in Docker)."""
        location = self.pgdata()
        return location.startswith("/dev/shm") or location.startswith("tmpfs:")

    def pgdata_exists(self, location: str) -> bool:
        """Whether the data at a location `pgdata()` returned is still there."""
        if location.startswith("volume:"):
            from docker.errors import NotFound

            try:
                self.client().volumes.get(location.split(":", 1)[1])
                return True
            except NotFound:
                return False
        if location.startswith("tmpfs:"):  # gone with its container
            return bool(self.containers())
        return Path(location).exists()

    def postmasters(self) -> list[int]:
        """Host pids of live postmasters running on this project's data (one, when all is well)."""
        if self.runtime == "native":
            return _native_postmasters(self.pgdata())
        location = self.pgdata()
        out = []
        for container in self.client().containers.list(filters={"status": "running"}):
            mounts = container.attrs["Mounts"]
            same_volume = location.startswith("volume:") and any(m.get("Name") == location[7:] for m in mounts)
            same_stack = container.labels.get("com.docker.compose.project") == self.stack_name \
                and container.labels.get("com.docker.compose.service") == "postgres"
            if same_volume or same_stack:
                out.append(container.attrs["State"]["Pid"])
        return out


def _proc_stat(pid: int) -> tuple[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    return raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :][:1]


def _proc_argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _native_postmasters(pgdata: str) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            stat = _proc_stat(int(proc.name))
            if stat and stat[0] == "postgres" and stat[1] != "Z" and pgdata in _proc_argv(int(proc.name)):
                out.append(int(proc.name))
    return out


def _native_project_processes(project: Project) -> list[int]:
    """Live server processes whose argv or cwd names the project's native directory."""
    link = project.root / ".devenv" / project.profile / "native"
    match = re.search(r"-([0-9a-f]{10})$", os.path.realpath(link)) if link.exists() else None
    if not match:
        return []
    key, out = match.group(1), []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        stat = _proc_stat(pid)
        if not stat or stat[0] not in SERVER_COMMS or stat[1] == "Z":
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if any(key in arg for arg in _proc_argv(pid)) or key in cwd:
            out.append(pid)
    return out


@functools.lru_cache(maxsize=None)
def _engine_available(runtime: str) -> str | None:
    """None when the runtime can run here, else why not."""
    if runtime == "native":
        missing = [p for p in ("pgbouncer", "redis-server") if not shutil.which(p, path=os.environ.get("PATH", "") + ":/usr/sbin")]
        return f"missing {', '.join(missing)}" if missing else None
    if runtime in ("docker", *ENGINE_LANES):
        from devenv.errors import DevenvError

        host = ENGINE_LANES.get(runtime, "")
        if runtime == "podman" and not os.path.exists(PODMAN_SOCKET):
            return f"no Podman API socket at {PODMAN_SOCKET} (start it: bash .ci/podman-up.sh)"
        if runtime in ENGINE_LANES and not host:
            setup = LANE_SETUP[runtime]
            return f"{LANE_VARS[runtime]} is not set (bash {setup}, then source {setup.replace('-up.sh', '.env')})"
        try:
            client = docker_client(host)  # pings the engine
        except DevenvError as exc:
            return exc.message
        images = dict(docker_images(host)) or {
            f"DEVENV_{name.upper()}_IMAGE": service.image
            for name, service in load_config(REPO / "devenv.yaml", env={}).services.items()}
        missing = [image for image in images.values() if not _image_present(client, image)]
        if missing:
            return f"images missing on the engine: {', '.join(missing)} (build the test images: .ci/images/build.sh)"
        return None
    return f"unknown runtime {runtime}"


def use_runtime(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Skip (fail in CI) when a runtime cannot run here; for docker, export the chosen images."""
    reason = _engine_available(name)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{name} runtime unavailable in CI: {reason}")
        pytest.skip(f"{name} runtime unavailable: {reason}")
    if name == "docker" or name in ENGINE_LANES:
        for var, image in docker_images(ENGINE_LANES.get(name, "")):  # also for what a test starts itself
            monkeypatch.setenv(var, image)
    if name in ENGINE_LANES:  # the lane's engine, for devenv and for what the test asks the engine itself
        monkeypatch.setenv("DOCKER_HOST", ENGINE_LANES[name])
    return name


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each integration test runs once per runtime (docker: with the images chosen above)."""
    return use_runtime(request.param, monkeypatch)


def make_project(base: Path, runtime: str, profile: str = "dev") -> Project:
    """Copy devenv.yaml and seeds/ into `base` and give the stack free ports.

    On Docker the project also gets its own name: container, network and volume names derive
    from it, and two throwaway projects must not share them. An engine lane ("remote") is the
    docker runtime with that lane's DOCKER_HOST.
    """
    engine = runtime if runtime in ENGINE_LANES else ("docker" if runtime == "docker" else "")
    runtime = "docker" if engine else runtime
    base.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "devenv.yaml", base / "devenv.yaml")
    shutil.copytree(REPO / "seeds", base / "seeds")
    # The CLI runs as on a developer's machine: no DEVENV_* from outside, and no CI mode (its
    # timestamps would prefix every line); test_ci_and_cache.py turns CI mode on itself.
    env = {k: v for k, v in os.environ.items() if (not k.startswith("DEVENV_") or k in KEPT_ENV) and k != "CI"}
    ports = free_ports(3)
    env.update({
        # The seeded-data cache is shared by every project on the machine: tests opt in to it
        # (test_ci_and_cache.py), so that the rest exercise initdb and seeding as written.
        "DEVENV_NO_CACHE": "1",
        "DEVENV_POSTGRES_PORT": str(ports[0]),
        "DEVENV_PGBOUNCER_PORT": str(ports[1]),
        "DEVENV_REDIS_PORT": str(ports[2]),
    })
    if engine in ENGINE_LANES:
        env["DOCKER_HOST"] = ENGINE_LANES[engine]
    if runtime == "docker":
        env.update(dict(docker_images(ENGINE_LANES.get(engine, ""))))
        config = base / "devenv.yaml"
        text = config.read_text()
        config.write_text(re.sub(r"^project:\s*(\S+)", lambda m: f"project: {m.group(1)}-t{uuid.uuid4().hex[:8]}",
                                 text, count=1, flags=re.M))
    return Project(root=base, runtime=runtime, profile=profile, env=env, engine=engine)


def teardown_project(proj: Project) -> None:
    """`down --volumes`, then (Docker) remove whatever still carries the project's label."""
    proj.devenv("down", "--volumes", check=False)
    if proj.runtime == "docker":
        docker_teardown(proj.project_name, proj.docker_host)


@pytest.fixture
def project(tmp_path: Path, runtime: str) -> Iterator[Project]:
    """A fresh project (nothing running yet), torn down with its data afterwards."""
    proj = make_project(tmp_path / "proj", runtime, profile="ci")
    yield proj
    teardown_project(proj)


@pytest.fixture(scope="session")
def _session_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Project]]:
    started: dict[tuple[str, str], Project] = {}
    yield started
    for proj in started.values():
        teardown_project(proj)


@pytest.fixture
def running(runtime: str, _session_stacks: dict, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A factory: `running("dev")` is a stack that is up and seeded, shared within the session.

    Tests that only read use it; tests that change state use `project` instead.
    """
    def get(profile: str = "dev") -> Project:
        key = (runtime, profile)
        if key not in _session_stacks:
            proj = make_project(tmp_path_factory.mktemp(f"{runtime}-{profile}"), runtime, profile)
            proj.devenv("up")
            _session_stacks[key] = proj
        return _session_stacks[key]

    return get
