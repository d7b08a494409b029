"""`devenv up --runtime docker` against plain Docker and testcontainers, measured in the same run.

Baselines (the same Postgres image): `docker run` of the image (through the SDK) until the first
connection, with the entrypoint's initdb and with existing data (`docker start`); three stopped
containers of the stack's images started at once as devenv starts them (one user-defined
network, a published port each) until Postgres's first connection, the engine's share of `up`
with existing volumes; and testcontainers' PostgresContainer when testcontainers is installed
(Ryuk off: no registry).
devenv: the first-ever `up` (three containers healthy, schema and seed applied), of a new
project with DEVENV_NO_CACHE=1 and of another with an empty DEVENV_CACHE_DIR, so that it also
saves the seeded volume there (issue 6's cache); `up` with existing volumes (after
`down`), a cold `up` after `down --volumes` restoring from that cache, one with
DEVENV_NO_CACHE=1 (initdb, schema and seed, nothing saved), and a no-op `up`; `devenv --help`
as the process floor.
Rounds are interleaved; medians are printed with the ratios against issue 19's targets:
the first-ever `up` (three containers healthy, schema and seed) at most 1.0x testcontainers
(else the `docker run` baseline); `up` with existing volumes within 2x `docker start` of one
Postgres to its first connection; a cold `up` from the cache within 1.5x `up` with existing
volumes (per round and of the medians). Every creation here writes to the engine's volumes:
where that disk is ext4 without a journal the numbers carry AFTER_DELETES (bench/README.md);
`--settle S` waits S seconds before each step and after each `down --volumes` (75 s lets the
kernel reuse the inodes freed before: a quiet disk, at about 10 minutes a round).

    python bench/bench_docker.py [--runs 3] [--profile dev] [--settle 0] [--docker-host unix:///run/podman/podman.sock]

Another engine (Podman, a remote one): --docker-host, or DOCKER_HOST; devenv and testcontainers
then both talk to it.

Images: DEVENV_*_IMAGE if set, else the local test images (devenv-test/*, .ci/images/build.sh)
when devenv.yaml's are absent. The engine is the one devenv finds (DOCKER_HOST honoured): on a
remote engine the baselines publish and connect on its host, as devenv does (engine.reach).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from _common import after_deletes, engine_data_root, print_disk_facts  # noqa: E402

# Where the engine's published ports are reached and bound: 127.0.0.1, or a remote engine's (main sets it).
REACH = {"host": "127.0.0.1", "ip": "127.0.0.1"}
TEST_IMAGES = {
    "DEVENV_POSTGRES_IMAGE": "devenv-test/postgres:15",
    "DEVENV_PGBOUNCER_IMAGE": "devenv-test/pgbouncer:1.18",
    "DEVENV_REDIS_IMAGE": "devenv-test/redis:7",
}


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def first_connection(port: int, user: str, password: str, timeout: float = 60.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(host=REACH["host"], port=port, user=user, password=password, dbname="postgres",
                            connect_timeout=1).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def choose_images(client: Any) -> dict[str, str]:
    """DEVENV_*_IMAGE from the environment, else the test images when devenv.yaml's are absent."""
    from docker.errors import ImageNotFound

    from devenv.config.settings import load_config

    chosen = {k: v for k, v in os.environ.items() if k in TEST_IMAGES}
    config = load_config(REPO / "devenv.yaml", env=chosen)
    wanted = {f"DEVENV_{name.upper()}_IMAGE": service.image for name, service in config.services.items()}
    try:
        for image in wanted.values():
            client.images.get(image)
        return wanted
    except ImageNotFound:
        return {**TEST_IMAGES, **chosen}


def bench_docker_run(client: Any, image: str) -> tuple[float, float]:
    """(initdb + first connection, docker start with existing data + first connection) in seconds."""
    port = free_ports(1)[0]
    start = time.perf_counter()
    container = client.containers.run(image, detach=True, environment={"POSTGRES_PASSWORD": "bench"},
                                      ports={"5432/tcp": (REACH["ip"], port)}, labels={"dev.devenv.project": "bench"})
    try:
        first_connection(port, "postgres", "bench")
        fresh = time.perf_counter() - start
        container.stop(timeout=30)
        start = time.perf_counter()
        container.start()
        first_connection(port, "postgres", "bench")
        existing = time.perf_counter() - start
    finally:
        container.remove(force=True, v=True)
    return fresh, existing


def bench_three_starts(client: Any, images: dict[str, str]) -> float:
    """The engine's share of `up` with existing volumes, done the way devenv starts the stack:
    three stopped containers (the stack's images, on one user-defined network, one published
    port each; Postgres on existing data) started at once, until Postgres's first connection.
    PgBouncer's runs `sleep` (no config to mount here): the engine's work for a start is the
    same. Seconds."""
    import threading

    label = {"dev.devenv.project": "bench"}
    network = client.networks.create(f"bench-{uuid.uuid4().hex[:8]}", labels=label)
    ports = free_ports(3)
    containers = []
    try:
        common = {"detach": True, "network": network.name, "labels": label}
        postgres = client.containers.run(images["DEVENV_POSTGRES_IMAGE"], environment={"POSTGRES_PASSWORD": "bench"},
                                         ports={"5432/tcp": (REACH["ip"], ports[0])}, **common)
        containers.append(postgres)
        first_connection(ports[0], "postgres", "bench")  # initdb done: the data exists
        containers.append(client.containers.create(images["DEVENV_PGBOUNCER_IMAGE"], entrypoint=["sleep", "infinity"],
                                                   ports={"6432/tcp": (REACH["ip"], ports[1])}, **common))
        containers.append(client.containers.create(images["DEVENV_REDIS_IMAGE"],
                                                   ports={"6379/tcp": (REACH["ip"], ports[2])}, **common))
        postgres.stop(timeout=30)
        start = time.perf_counter()
        threads = [threading.Thread(target=container.start) for container in containers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        first_connection(ports[0], "postgres", "bench")
        return time.perf_counter() - start
    finally:
        for container in containers:
            container.remove(force=True, v=True)
        network.remove()


def bench_testcontainers(image: str) -> float | None:
    """PostgresContainer(image) started until a first connection; None without testcontainers."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # Ryuk's image cannot be pulled here
    if os.environ.get("DOCKER_HOST", "unix://").startswith("unix://"):
        # A local engine: its ports are on this machine. testcontainers 4, finding itself in a
        # container (this machine), would ask for the container's gateway, which Podman's compat
        # API lists without HostConfig.
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
        os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from testcontainers.postgres import PostgresContainer
    except ImportError:
        return None
    import psycopg

    start = time.perf_counter()
    container = PostgresContainer(image=image, driver=None)
    container.start()
    try:
        psycopg.connect(container.get_connection_url()).close()
        return time.perf_counter() - start
    finally:
        container.stop()


class DevenvProject:
    """A throwaway copy of the project with its own name and ports."""

    def __init__(self, images: dict[str, str], profile: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="devenv-bench-docker-"))
        self.profile = profile
        shutil.copy(REPO / "devenv.yaml", self.root / "devenv.yaml")
        shutil.copytree(REPO / "seeds", self.root / "seeds")
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        text = (self.root / "devenv.yaml").read_text()
        (self.root / "devenv.yaml").write_text(text.replace("project: taskflow", f"project: {self.name}", 1))
        ports = free_ports(3)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DEVENV_")}
        self.env.update(images)
        self.env["DEVENV_CACHE_DIR"] = str(self.root / "cache")  # empty: the first up is the first ever
        self.env.update({"DEVENV_POSTGRES_PORT": str(ports[0]), "DEVENV_PGBOUNCER_PORT": str(ports[1]),
                         "DEVENV_REDIS_PORT": str(ports[2])})

    def run(self, *args: str, env: dict[str, str] | None = None) -> float:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "devenv", *args], cwd=self.root, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"devenv {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return elapsed

    def cleanup(self, client: Any) -> None:
        subprocess.run([sys.executable, "-m", "devenv", "down", "--volumes", "--runtime", "docker", "-p", self.profile],
                       cwd=self.root, env=self.env, capture_output=True, timeout=120)
        label = {"label": f"dev.devenv.project={self.name}"}
        for container in client.containers.list(all=True, filters=label):
            container.remove(force=True, v=True)
        for network in client.networks.list(filters=label):
            network.remove()
        for volume in client.volumes.list(filters=label):
            volume.remove(force=True)
        shutil.rmtree(self.root, ignore_errors=True)


def bench_first_without_cache(client: Any, images: dict[str, str], profile: str) -> float:
    """The issue's scope alone (three containers healthy, schema and seed applied): a project's
    very first `up`, with the seeded-data cache (issue 6) off, so nothing is saved."""
    project = DevenvProject(images, profile)
    try:
        return project.run("up", "--runtime", "docker", "-p", profile, env={"DEVENV_NO_CACHE": "1"})
    finally:
        project.cleanup(client)


def bench_devenv(client: Any, images: dict[str, str], profile: str, settle: float = 0.0) -> dict[str, float]:
    """devenv's rows of one round, from one project; `settle` seconds of quiet after each
    `down --volumes`, before the cold `up` that follows it."""
    runtime = ("--runtime", "docker", "-p", profile)
    out: dict[str, float] = {}
    project = DevenvProject(images, profile)
    try:
        out["devenv up, first ever (fills the cache)"] = project.run("up", *runtime)
        out["devenv up, no-op"] = project.run("up", *runtime)
        project.run("down", *runtime)
        out["devenv up, existing volumes"] = project.run("up", *runtime)
        project.run("down", "--volumes", *runtime)
        time.sleep(settle)
        out["devenv up, cold, from the cache"] = project.run("up", *runtime)
        project.run("down", "--volumes", *runtime)
        time.sleep(settle)
        out["devenv up, cold, DEVENV_NO_CACHE=1"] = project.run("up", *runtime, env={"DEVENV_NO_CACHE": "1"})
        out["devenv --help"] = project.run("--help")
    finally:
        project.cleanup(client)
    return out


def bench_docker_cold_from_cache(runs: int, profile: str = "dev") -> list[float]:
    """Cold `devenv up --runtime docker` restoring the seeded volume from the cache, `runs` times
    (the first `up` fills a throwaway cache; `down --volumes` between runs). A profile with a
    named data volume: the ci profile's tmpfs exists only inside a running container."""
    from devenv.runtime.dockerapi import connect
    from devenv.runtime.engine import find_endpoint

    endpoint = find_endpoint()
    if endpoint is None:
        raise RuntimeError("no Docker engine")
    client = connect(endpoint)
    project = DevenvProject(choose_images(client), profile)
    runtime = ("--runtime", "docker", "-p", profile)
    try:
        project.run("up", *runtime)
        out = []
        for _ in range(runs):
            project.run("down", "--volumes", *runtime)
            out.append(project.run("up", *runtime))
        return out
    finally:
        project.cleanup(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", default="dev")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds of quiet before each step and after each `down --volumes` (the disk trap)")
    parser.add_argument("--docker-host", help="the engine to measure on (DOCKER_HOST for devenv and testcontainers)")
    args = parser.parse_args()
    if args.docker_host:
        os.environ["DOCKER_HOST"] = args.docker_host  # the devenv processes and testcontainers inherit it

    from devenv.runtime.dockerapi import connect
    from devenv.runtime.engine import find_endpoint, no_engine_error, reach

    endpoint = find_endpoint()
    if endpoint is None:
        print(f"no Docker engine: {no_engine_error(os.environ).message}")
        return
    host, ip = reach(endpoint, os.environ)
    REACH.update({"host": host, "ip": ip} if host else {})
    client = connect(endpoint)
    images = choose_images(client)
    pg_image = images["DEVENV_POSTGRES_IMAGE"]
    from devenv.runtime.engines import engine_facts

    print(f"engine {engine_facts(client).name} (API {client.api.api_version}) at {endpoint.host}; "
          f"images {', '.join(images.values())}; profile {args.profile}; {args.runs} interleaved rounds")
    root = engine_data_root(client)
    trap = after_deletes(*print_disk_facts({"engine volumes": root}).values()) if root else ""
    if trap and args.settle:
        trap = f"[{args.settle:g} s after deletes; ext4 without a journal]"

    samples: dict[str, list[float]] = {}

    def add(name: str, value: float | None) -> None:
        if value is not None:
            samples.setdefault(name, []).append(value)

    steps: list[Callable[[], None]] = [
        lambda: [add(n, v) for n, v in zip(("docker run, initdb -> first connection",
                                            "docker start, existing data -> first connection"),
                                           bench_docker_run(client, pg_image))],
        lambda: add("testcontainers PostgresContainer", bench_testcontainers(pg_image)),
        lambda: add("docker start, three containers at once -> first connection", bench_three_starts(client, images)),
        lambda: [add(n, v) for n, v in bench_devenv(client, images, args.profile, args.settle).items()],
        lambda: add("devenv up, first ever, DEVENV_NO_CACHE=1", bench_first_without_cache(client, images, args.profile)),
    ]
    for round_ in range(args.runs):
        # Each step tidies up after itself (containers, volumes) and the engine finishes that
        # meanwhile: the order turns every round so no step always follows the same one.
        for step in steps[round_ % len(steps):] + steps[:round_ % len(steps)]:
            time.sleep(args.settle)  # the last step's deletions, on a disk with the trap
            step()
        print(f"  round {round_ + 1}/{args.runs} done", flush=True)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    width = max(map(len, medians))
    print(f"\n{'measurement':<{width}}  median     runs")
    for name, value in medians.items():
        # The rows that make a new data directory (initdb or a restore) right after the last round's deletions.
        creates = any(word in name for word in ("initdb", "first ever", "cold", "testcontainers"))
        note = f"  {trap}" if trap and creates else ""
        print(f"{name:<{width}}  {value:6.2f} s   {', '.join(f'{v:.2f}' for v in samples[name])}{note}")

    first = medians["devenv up, first ever (fills the cache)"]
    first_alone = medians["devenv up, first ever, DEVENV_NO_CACHE=1"]
    no_cache = medians["devenv up, cold, DEVENV_NO_CACHE=1"]
    cached = medians["devenv up, cold, from the cache"]
    baseline_name = "testcontainers PostgresContainer" if "testcontainers PostgresContainer" in medians else \
        "docker run, initdb -> first connection"
    baseline = medians[baseline_name]
    existing = medians["devenv up, existing volumes"]
    print()
    docker_start = medians["docker start, existing data -> first connection"]
    # Issue 19's targets: the first-ever up at most 1.0x testcontainers, existing volumes within 2x
    # `docker start`, cold from the cache within 1.5x existing volumes.
    print(f"first-ever up without the cache (containers healthy, schema and seed) / {baseline_name}: "
          f"{first_alone / baseline:.2f}x (target <= 1.0x) {'met' if first_alone <= baseline else 'NOT met'}")
    print(f"first-ever up filling the cache / {baseline_name}: {first / baseline:.2f}x; the cache fill: "
          f"{first - first_alone:+.2f} s")
    if "testcontainers PostgresContainer" in samples:
        # testcontainers polls its container once a second: each of its runs ends at about the same
        # time or a second later, so its median swings with the split; its fastest run is the strict baseline.
        fastest = min(samples["testcontainers PostgresContainer"])
        print(f"first-ever up without the cache / testcontainers' fastest run ({fastest:.2f} s): "
              f"{first_alone / fastest:.2f}x (the strict reading) {'met' if first_alone <= fastest else 'NOT met'}")
    print(f"cold up without the cache (initdb + schema + seed, nothing saved) / {baseline_name}: "
          f"{no_cache / baseline:.2f}x")
    print(f"first-ever up / docker run to first connection: {first_alone / medians['docker run, initdb -> first connection']:.2f}x")
    print(f"up with existing volumes / `docker start` of one Postgres container to first connection: "
          f"{existing / docker_start:.2f}x (target <= 2x) {'met' if existing <= 2 * docker_start else 'NOT met'}; "
          f"{existing:.2f} s")
    # The engine's part of that, started as devenv starts the stack: what devenv adds is the rest.
    three = medians["docker start, three containers at once -> first connection"]
    print(f"  the engine alone, three containers started at once to Postgres's first connection: {three:.2f} s = "
          f"{three / docker_start:.2f}x `docker start` of one; devenv adds {existing - three:+.2f} s (process, checks)")
    # Both from the same project in the same round: the ratio per round, then of the medians.
    per_run = [c / e for c, e in zip(samples["devenv up, cold, from the cache"], samples["devenv up, existing volumes"])]
    print(f"cold up from the cache / up with existing volumes: {cached / existing:.2f}x (target within 1.5x) "
          f"{'met' if cached <= 1.5 * existing else 'NOT met'}; per round {', '.join(f'{r:.2f}x' for r in per_run)}")
    print(f"no-op up: {medians['devenv up, no-op']:.2f} s ({medians['devenv up, no-op'] / medians['devenv --help']:.2f}x "
          "`devenv --help`)")


if __name__ == "__main__":
    main()
