"""health.wait_until_healthy's scheduling, with probes that are plain functions (pure logic:
the checks themselves are exercised against real servers by the integration suite)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from devenv import health
from devenv.errors import HealthCheckError
from devenv.health import Probe
from devenv.clients.pgwire import ServerClosedError


def wait(checks: dict[str, list[Probe]], timeout: float = 5.0, **kwargs: object) -> dict[str, float]:
    return health.wait_until_healthy(checks, timeout=timeout, progress=lambda line: None, **kwargs)  # type: ignore[arg-type]


def test_a_hanging_service_delays_no_other() -> None:
    """Redis's first probe hangs (as behind Docker's port proxy) until Postgres is healthy:
    probed one after another, Postgres's check would wait for it."""
    postgres_healthy = threading.Event()
    events: list[str] = []

    def redis(timeout: float) -> None:
        if not events.count("redis hung"):
            events.append("redis hung")
            if not postgres_healthy.wait(10):
                events.append("redis gave up")
            raise TimeoutError("timed out")
        events.append("redis ok")

    def on_healthy(service: str) -> None:
        events.append(f"{service} healthy")
        if service == "postgres":
            postgres_healthy.set()

    wait({"redis": [Probe("redis", "PING", redis)],
          "postgres": [Probe("postgres", "SELECT 1", lambda timeout: None)]}, on_healthy=on_healthy)
    assert "redis gave up" not in events, events
    assert sorted(events[:2]) == ["postgres healthy", "redis hung"] and events[2:] == ["redis ok", "redis healthy"]


def test_a_probe_that_timed_out_is_retried_at_once_with_twice_the_time() -> None:
    timeouts: list[float] = []

    def probe(timeout: float) -> None:
        timeouts.append(timeout)
        if len(timeouts) < 4:
            raise TimeoutError("timed out")

    wait({"redis": [Probe("redis", "PING", probe)]})
    first = health.FIRST_PROBE_TIMEOUT
    assert timeouts == [first, 2 * first, 4 * first, min(8 * first, health.PROBE_TIMEOUT)]


def test_after_waits_for_the_other_service_and_then_runs_at_once() -> None:
    postgres_up = threading.Event()
    order: list[str] = []

    def postgres(timeout: float) -> None:
        if len(order) < 3:
            order.append("postgres refused")
            raise ConnectionRefusedError("not listening")
        order.append("postgres ok")
        postgres_up.set()

    def pooled(timeout: float) -> None:
        assert postgres_up.is_set(), "the pooled check ran before postgres was healthy"
        order.append("pooled")

    healthy = wait({"pgbouncer": [Probe("pgbouncer", "admin", lambda timeout: None),
                                  Probe("pgbouncer", "pooled", pooled, after="postgres")],
                    "postgres": [Probe("postgres", "SELECT 1", postgres)]})
    assert order == ["postgres refused"] * 3 + ["postgres ok", "pooled"]
    assert healthy["pgbouncer"] >= healthy["postgres"]


@pytest.mark.parametrize("exc", [ConnectionRefusedError(), ConnectionResetError(), TimeoutError(),
                                 ServerClosedError("the server closed the connection")])
def test_not_up_yet_answers_are_asked_again_soon(exc: BaseException) -> None:
    assert health._starting(exc)


def test_other_failures_wait_the_poll_interval() -> None:
    class AuthFailed(Exception):
        sqlstate = "28P01"

    assert not health._starting(AuthFailed())
    assert not health._starting(RuntimeError("not ready: 18 or more active connections"))


def test_deadline_names_the_check_and_its_last_error() -> None:
    def refuses(timeout: float) -> None:
        raise RuntimeError("not ready: 18 or more active connections")

    with pytest.raises(HealthCheckError) as caught:
        wait({"postgres": [Probe("postgres", "SELECT 1 + readiness", refuses)]}, timeout=0.3,
             log_tail=lambda service: "LOG:  the last line")
    assert "postgres not healthy after 0s: SELECT 1 + readiness: RuntimeError: not ready" in caught.value.message
    assert "the last line" in caught.value.log_tail


def test_a_server_that_exited_fails_at_once() -> None:
    def refuses(timeout: float) -> None:
        raise ConnectionRefusedError("refused")

    with pytest.raises(HealthCheckError) as caught:
        wait({"redis": [Probe("redis", "PING", refuses)]}, timeout=30,
             gone=lambda service: "exited with code 1")
    assert caught.value.message.startswith("redis exited with code 1 before it became healthy")


def test_whether_a_server_is_gone_is_asked_at_most_every_gone_interval() -> None:
    """Refused probes repeat every STARTING_INTERVAL; `gone` (an engine's inspection, for a
    container) is asked after the first and then at most every GONE_INTERVAL."""
    import time

    probes: list[float] = []
    asked: list[float] = []
    start = time.monotonic()

    def refuses(timeout: float) -> None:
        probes.append(time.monotonic())
        if time.monotonic() - start < 0.35:
            raise ConnectionRefusedError("refused")

    def gone(service: str) -> None:
        asked.append(time.monotonic())
        return None

    wait({"postgres": [Probe("postgres", "SELECT 1", refuses)]}, gone=gone)
    assert len(probes) > 10 and asked and asked[0] - start < 0.05, (len(probes), asked)
    assert len(asked) <= 5 and all(b - a >= health.GONE_INTERVAL for a, b in zip(asked, asked[1:])), asked


def test_a_passed_check_is_not_run_again() -> None:
    runs = {"admin": 0, "pooled": 0}

    def admin(timeout: float) -> None:
        runs["admin"] += 1

    def pooled(timeout: float) -> None:
        runs["pooled"] += 1
        if runs["pooled"] < 3:
            raise ServerClosedError("the server closed the connection")

    wait({"pgbouncer": [Probe("pgbouncer", "admin", admin), Probe("pgbouncer", "pooled", pooled)]})
    assert runs == {"admin": 1, "pooled": 3}


def test_a_service_is_not_probed_before_its_start_is_done() -> None:
    """Docker: a port probed while its container starts costs a failed ARP and ~1 s."""
    redis_started = threading.Event()
    events: list[str] = []

    def on_healthy(service: str) -> None:
        events.append(f"{service} healthy")
        if service == "postgres":
            redis_started.set()  # a start that ends only after another service is healthy

    def redis(timeout: float) -> None:
        events.append("redis probed" if redis_started.is_set() else "redis probed before its start was done")

    wait({"redis": [Probe("redis", "PING", redis)],
          "postgres": [Probe("postgres", "SELECT 1", lambda timeout: None)]},
         on_healthy=on_healthy, started=lambda service: service != "redis" or redis_started.is_set())
    assert events == ["postgres healthy", "redis probed", "redis healthy"]


def test_a_service_never_started_times_out_naming_it() -> None:
    with pytest.raises(HealthCheckError, match="redis not healthy after 0s: still being started"):
        wait({"redis": [Probe("redis", "PING", lambda timeout: None)]}, timeout=0.2,
             started=lambda service: False)


def test_signals_during_the_wait_do_not_hang_it() -> None:
    """A signal that interrupts the wait for a probe's result must not turn it into a wait
    forever: CPython 3.11's queue.SimpleQueue.get(timeout) does that (an interrupted wait is
    retried with the time left, which may be negative: "block forever"), and a docker `up` here
    hung in it. Run in a child process, so that a hang fails the test instead of the run."""
    script = textwrap.dedent("""
        import os, signal, threading, time
        from devenv import health
        from devenv.health import Probe

        signal.signal(signal.SIGUSR1, lambda *args: None)
        def pester():
            while True:
                time.sleep(0.0002)
                os.kill(os.getpid(), signal.SIGUSR1)
        threading.Thread(target=pester, daemon=True).start()
        ready_at = time.monotonic() + 1.5
        def probe(timeout):
            if time.monotonic() < ready_at:
                raise ConnectionRefusedError("not yet")
        healthy = health.wait_until_healthy({"postgres": [Probe("postgres", "SELECT 1", probe)]},
                                            timeout=10, progress=lambda line: None)
        print("healthy" if "postgres" in healthy else "not healthy")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0 and proc.stdout.strip() == "healthy", proc.stderr
