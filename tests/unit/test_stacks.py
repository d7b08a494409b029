"""`devenv ls` and `devenv prune` logic (devenv.stacks, devenv.prune): Docker's labels matched to
records, states, sizes, which directories prune may delete, finding and stopping a stack's
servers (a real process), and the CLI's refusals. Real servers: tests/integration/test_stacks.py."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from devenv import prune, registry, stacks
from devenv.registry import Entry


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "registry"
    monkeypatch.setenv("DEVENV_REGISTRY_DIR", str(directory))
    return directory


def entry(checkout: Path | str, runtime: str = "native", name: str = "taskflow-dev", **kw: Any) -> Entry:
    return Entry(checkout=str(checkout), config=f"{checkout}/devenv.yaml", project="taskflow", profile="dev",
                 runtime=runtime, name=name, **kw)


def own_dir(checkout: Path, profile: str = "dev") -> Path:
    """The <tmp>/devenv-<key> directory devenv's native runtime derives for a checkout and profile."""
    return Path(tempfile.gettempdir()) / f"devenv-{registry.native_key(checkout / '.devenv' / profile / 'native')}"


def container(project: str, service: str, state: str = "running", working_dir: str | None = None,
              port: int | None = None) -> dict[str, Any]:
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": service,
              "com.docker.compose.oneoff": "False", "dev.devenv.project": "taskflow", "dev.devenv.profile": "dev"}
    if working_dir:
        labels["com.docker.compose.project.working_dir"] = working_dir
    return {"Id": f"{project}-{service}-id", "Names": [f"/{project}-{service}-1"], "Labels": labels, "State": state,
            "Ports": [{"IP": "127.0.0.1", "PrivatePort": 5432, "PublicPort": port, "Type": "tcp"}] if port else []}


def volume(project: str, name: str) -> dict[str, Any]:
    return {"Name": name, "Labels": {"com.docker.compose.project": project, "dev.devenv.project": "taskflow"},
            "Mountpoint": f"/nonexistent/{name}"}


# ---- Docker's labels -> stacks ----------------------------------------------------------------------


def test_docker_containers_go_to_their_record_and_the_rest_become_unrecorded_stacks(tmp_path: Path) -> None:
    mine = stacks.Stack(entry(tmp_path / "a", runtime="docker", name="taskflow-dev-aaaaaa"))
    native = stacks.Stack(entry(tmp_path / "n"))
    found = [
        *(container("taskflow-dev-aaaaaa", s, working_dir=f"{tmp_path}/a/.devenv/dev") for s in stacks.SERVICES),
        container("legacy-dev", "postgres", working_dir=f"{tmp_path}/old/.devenv/dev", port=15432),
        container("legacy-dev", "redis", state="exited", working_dir=f"{tmp_path}/old/.devenv/dev"),
    ]
    volumes = [volume("taskflow-dev-aaaaaa", "taskflow-dev-aaaaaa_pgdata"), volume("legacy-dev", "legacy-dev_pgdata"),
               volume("gone-dev", "gone-dev_pgdata")]
    extra = stacks.attach_docker([mine, native], found, volumes)
    assert len(mine.containers) == 3 and [v["Name"] for v in mine.volume_info] == ["taskflow-dev-aaaaaa_pgdata"]
    assert stacks.docker_services(mine.containers) == {s: True for s in stacks.SERVICES}
    assert not native.containers
    by_name = {s.entry.name: s for s in extra}
    legacy, gone = by_name["legacy-dev"], by_name["gone-dev"]
    assert (legacy.recorded, legacy.entry.checkout, legacy.entry.ports) == (False, f"{tmp_path}/old", {"postgres": 15432})
    assert legacy.entry.volumes == ["legacy-dev_pgdata"]
    assert stacks.docker_services(legacy.containers) == {"postgres": True, "pgbouncer": False, "redis": False}
    assert legacy.orphaned  # tmp_path/old does not exist
    legacy.services = stacks.docker_services(legacy.containers)
    assert legacy.as_json()["state"] == "orphaned" and legacy.as_json()["recorded"] is False
    # Volumes alone: their checkout is unknown, so never orphaned (and never pruned).
    assert (gone.checkout_known, gone.orphaned, gone.as_json()["checkout"]) == (False, False, None)


def test_states_partial_stopped_unknown_and_the_json_keys(tmp_path: Path) -> None:
    assert stacks.running_state({"postgres": True, "pgbouncer": True, "redis": True}) == "running"
    assert stacks.running_state({"postgres": True, "pgbouncer": False, "redis": False}) == "partial"
    assert stacks.running_state({"postgres": False, "pgbouncer": False, "redis": False}) == "stopped"
    assert stacks.running_state({}) == "unknown"
    assert stacks.docker_services([]) == {s: False for s in stacks.SERVICES}  # engine asked: none left
    (tmp_path / "a").mkdir()
    stack = stacks.Stack(entry(tmp_path / "a", ports={"postgres": 1, "pgbouncer": 2, "redis": 3}))
    stack.services, stack.data_bytes = {"postgres": True, "pgbouncer": False, "redis": True}, 2048
    out = stack.as_json()
    assert tuple(out) == stacks.JSON_KEYS and out["state"] == "partial" and out["data_bytes"] == 2048
    lines = stacks.table([stack], lambda n: f"{n:.0f}B")
    assert lines[1].split() == [str(tmp_path / "a"), "dev", "native", "1,2,3", "partial", "2048B"]


def test_tree_size_follows_no_links_and_counts_a_hard_link_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "file").write_bytes(os.urandom(64 * 1024))
    os.link(data / "sub" / "file", data / "hard")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(os.urandom(1024 * 1024))
    (data / "link").symlink_to(outside)
    size = stacks.tree_size([str(data)])
    assert 64 * 1024 <= size < 1024 * 1024
    assert stacks.tree_size([str(tmp_path / "missing")]) == 0


def test_a_checkout_that_is_a_file_or_missing_is_gone(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert stacks.checkout_gone(str(tmp_path / "missing")) and stacks.checkout_gone(str(tmp_path / "file"))
    assert not stacks.checkout_gone(str(tmp_path))


def test_an_engine_that_does_not_answer_is_one_note_and_no_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no.sock")
    notes: list[str] = []
    assert stacks.docker_listing(notes.append) is None
    assert len(notes) == 1 and "Docker stacks not listed" in notes[0] and "no.sock" in notes[0]


# ---- prune: what it may touch ---------------------------------------------------------------------


def test_prune_deletes_only_directories_devenv_makes_outside_a_checkout(tmp_path: Path, reg: Path) -> None:
    key = secrets.token_hex(5)
    assert prune.own_directory(f"/var/lib/devenv/taskflow-dev-{key}")
    assert prune.own_directory(f"/dev/shm/devenv-{key}")
    assert prune.own_directory(f"{tempfile.gettempdir()}/devenv-{key}")
    for refused in ("/var/lib/devenv/stacks", "/var/lib/devenv", "/etc", f"/dev/shm/other-{key}",
                    f"{tempfile.gettempdir()}/devenv-registry-{key}", f"/var/lib/devenv/x/../../../etc/devenv-{key}",
                    str(tmp_path / ".devenv" / "dev" / "native"), f"/home/devenv-{key}"):
        assert not prune.own_directory(refused), refused
    link = Path(tempfile.gettempdir()) / f"devenv-{secrets.token_hex(5)}"
    link.symlink_to(tmp_path)
    try:
        assert not prune.own_directory(str(link))  # a link itself: never followed into its target
    finally:
        link.unlink()


def test_plan_takes_orphans_only_and_keeps_volumes_a_living_checkout_shares(tmp_path: Path, reg: Path) -> None:
    (tmp_path / "alive").mkdir()
    alive = stacks.Stack(entry(tmp_path / "alive", runtime="docker", name="legacy-dev"))
    orphan = stacks.Stack(entry(tmp_path / "gone", runtime="docker", name="legacy-dev"))
    other = stacks.Stack(entry(tmp_path / "gone2", runtime="docker", name="own-dev"))
    orphan.containers = [container("legacy-dev", "postgres", working_dir=f"{tmp_path}/gone/.devenv/dev")]
    orphan.volume_info = alive.volume_info = [volume("legacy-dev", "legacy-dev_pgdata")]
    other.volume_info = [volume("own-dev", "own-dev_pgdata")]
    for stack in (alive, orphan, other):
        stack.listed = True  # as gather() leaves the stacks its engine listed
    plans = {r.stack.entry.checkout: r for r in prune.plan([alive, orphan, other], engine_listed=True)}
    assert set(plans) == {str(tmp_path / "gone"), str(tmp_path / "gone2")}
    shared = plans[str(tmp_path / "gone")]
    assert list(shared.containers.values()) == ["legacy-dev-postgres-1"]
    assert (shared.volumes, shared.network) == ([], False) and "uses that name too" in shared.kept[0]
    assert (plans[str(tmp_path / "gone2")].volumes, plans[str(tmp_path / "gone2")].network) == (["own-dev_pgdata"], True)
    only = prune.plan([alive, orphan, other], engine_listed=True, only=[str(tmp_path / "gone2")])
    assert [r.stack.entry.name for r in only] == ["own-dev"]
    assert prune.plan([alive], engine_listed=True, only=[str(tmp_path / "alive")]) == []
    # No engine: a Docker orphan's record stays, nothing is claimed removed.
    blind = prune.plan([other], engine_listed=False)[0]
    assert not blind.volumes and not blind.containers and "no Docker engine" in blind.kept[0]
    assert prune.execute(blind, lambda line: None) is False
    # Nor when another engine answered but not the one it was started on (Podman's, a remote one).
    other.listed, other.entry.engine = False, "unix:///run/podman/podman.sock"
    elsewhere = prune.plan([other], engine_listed=True)[0]
    assert elsewhere.blind and "at unix:///run/podman/podman.sock" in elsewhere.kept[0]


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A process named redis-server (a copy of sleep) working in a stack's data directory."""
    program = tmp_path / "bin" / "redis-server"
    program.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    data = own_dir(tmp_path / "gone")
    (data / "data" / "redis").mkdir(parents=True)
    child = subprocess.Popen([str(program), "300"], cwd=data / "data" / "redis", start_new_session=True)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child.pid}/comm").read_text().strip() != "redis-server" and time.monotonic() < deadline:
        time.sleep(0.01)  # until the exec
    yield child, data
    child.kill()
    child.wait()
    shutil.rmtree(data, ignore_errors=True)


def test_prune_stops_an_orphans_server_found_by_its_directory_and_removes_it(
        fake_server: tuple[subprocess.Popen[bytes], Path], tmp_path: Path, reg: Path) -> None:
    child, data = fake_server
    gone = entry(tmp_path / "gone", data=[str(data)])
    registry.record(gone)
    (tmp_path / "alive").mkdir()
    registry.record(entry(tmp_path / "alive", data=[str(own_dir(tmp_path / "alive"))]))
    assert prune.native_servers([str(data)]) == {child.pid: "redis"}
    found, _ = stacks.gather(sizes=False)
    removals = prune.plan(found, engine_listed=False)
    assert [r.stack.entry.checkout for r in removals] == [str(tmp_path / "gone")]
    assert removals[0].processes == {child.pid: "redis"} and list(removals[0].directories) == [str(data)]
    lines = removals[0].lines(lambda n: f"{n:.0f}B")
    assert "is gone (moved or deleted)" in lines[0] and "project taskflow, profile dev" in lines[0]
    assert f"{data} (" in next(line for line in lines if "directories:" in line)  # each with its size
    assert prune.execute(removals[0], print)
    assert child.wait(timeout=10) is not None  # SIGTERM, Redis's stop signal
    assert not data.exists()
    assert [e.checkout for e in registry.entries()] == [str(tmp_path / "alive")]


def test_a_deleted_working_directory_still_names_the_stack(fake_server: tuple[subprocess.Popen[bytes], Path]) -> None:
    child, data = fake_server
    shutil.rmtree(data)  # cwd reads "<dir> (deleted)" now
    assert prune.native_servers([str(data)]) == {child.pid: "redis"}
    assert prune.native_servers([str(data) + "x"]) == {}


def test_prune_acts_only_on_directories_its_records_checkout_and_profile_derive(
        fake_server: tuple[subprocess.Popen[bytes], Path], tmp_path: Path, reg: Path) -> None:
    """A record copied from another stack's (F1): its `data` names the victim's directory, a `..`
    spelling of it, and a parent; none is vetted, so no server is stopped and nothing deleted."""
    child, victim = fake_server  # the directory of tmp_path/gone's stack, its server running
    (tmp_path / "gone").mkdir()  # the victim's checkout exists
    registry.record(entry(tmp_path / "gone", data=[str(victim)]))
    forged = [str(victim), f"{victim.parent}/../{victim.parent.name}/{victim.name}", str(victim.parent),
              str(victim / "data")]
    registry.record(entry(tmp_path / "copied", data=forged))
    found, _ = stacks.gather(sizes=False)
    removals = prune.plan(found, engine_listed=False)
    assert [r.stack.entry.checkout for r in removals] == [str(tmp_path / "copied")]
    assert (removals[0].places, removals[0].processes, removals[0].directories) == ([], {}, {})
    assert len(removals[0].kept) == 4
    assert prune.execute(removals[0], print)
    assert child.poll() is None and victim.is_dir()
    assert [e.checkout for e in registry.entries()] == [str(tmp_path / "gone")]
    # Its own key, but a living record lists it: kept too.
    shutil.rmtree(tmp_path / "gone")
    (tmp_path / "other").mkdir()
    registry.record(entry(tmp_path / "other", data=[str(victim)]))
    found, _ = stacks.gather(sizes=False)
    mine = next(r for r in prune.plan(found, engine_listed=False) if r.stack.entry.checkout == str(tmp_path / "gone"))
    assert (mine.places, mine.processes) == ([], {}) and "exists lists it too" in mine.kept[0]


def test_a_directory_belongs_to_a_record_by_its_derived_key_project_and_profile(tmp_path: Path, reg: Path) -> None:
    record = entry(tmp_path / "gone")
    key = registry.native_key(tmp_path / "gone" / ".devenv" / "dev" / "native")
    assert prune.belongs(f"{tempfile.gettempdir()}/devenv-{key}", record)
    assert not prune.belongs(f"{tempfile.gettempdir()}/devenv-{secrets.token_hex(5)}", record)
    assert not prune.belongs(str(own_dir(tmp_path / "gone", "ci")), record)  # another profile's
    assert not prune.belongs(f"{tempfile.gettempdir()}/x/../devenv-{key}", record)
    if Path("/var/lib/devenv").is_dir():
        assert prune.belongs(f"/var/lib/devenv/taskflow-dev-{key}", record)
        assert prune.belongs(f"/var/lib/devenv/taskflow-dev-abc123-{key}", record)  # a per-checkout stack name
        assert not prune.belongs(f"/var/lib/devenv/other-dev-{key}", record)
        assert not prune.belongs(f"/var/lib/devenv/../devenv/taskflow-dev-{key}", record)
        assert not prune.belongs("/var/lib/devenv", record)


def test_unrecorded_docker_stacks_are_pruned_only_when_asked_and_on_a_local_engine(tmp_path: Path, reg: Path) -> None:
    found = stacks.attach_docker([], [container("other-dev", "postgres", working_dir="/builds/otheruser/proj/.devenv/dev")],
                                 [volume("other-dev", "other-dev_pgdata")])
    assert len(found) == 1 and found[0].orphaned and not found[0].recorded
    notes: list[str] = []
    assert prune.plan(found, engine_listed=True, notes=notes) == []
    assert "--unrecorded" in notes[0]
    notes.clear()
    assert prune.plan(found, engine_listed=True, unrecorded=True, notes=notes) == []  # not a local engine
    assert "not this machine's" in notes[0]
    found[0].local = True
    removal, = prune.plan(found, engine_listed=True, unrecorded=True)
    assert removal.volumes == ["other-dev_pgdata"]
    lines = removal.lines(str)
    assert "unrecorded" in lines[0] and not any("record in the registry" in line for line in lines)


def test_a_listener_on_its_ports_does_not_make_a_stack_without_state_running(tmp_path: Path) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        stack = entry(tmp_path, data=[str(tmp_path / "no-such-dir")], ports={"postgres": port})
        assert stacks.native_services(stack) == {s: False for s in stacks.SERVICES}


def test_the_table_escapes_control_characters_and_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    tricky = f"{tmp_path}/x\nFAKE  dev  native  1,2,3  running  1 GB\x1b[2J" + os.fsdecode(b"\xff")
    stack = stacks.Stack(entry(tricky))
    stack.services = {s: False for s in stacks.SERVICES}
    lines = stacks.table([stack], str)
    assert len(lines) == 2 and "\\n" in lines[1] and "\\x1b" in lines[1] and "\\xff" in lines[1]
    lines[1].encode("utf-8")  # printable anywhere
    assert json.loads(json.dumps(stack.as_json()))["checkout"] == tricky  # JSON keeps it exact


def test_native_key_takes_paths_that_are_not_utf8_and_matches_the_old_hash(tmp_path: Path) -> None:
    import hashlib

    plain = tmp_path / ".devenv" / "dev" / "native"
    assert registry.native_key(plain) == hashlib.sha256(str(plain).encode()).hexdigest()[:10]
    odd = Path(os.fsdecode(b"/tmp/\xff/.devenv/dev/native"))
    assert len(registry.native_key(odd)) == 10


def _engine(tmp_path: Path | None, answer: Callable[[socket.socket], None]) -> str:
    """A unix socket in `tmp_path` (without one: TCP on 127.0.0.1) that answers each connection
    with `answer` (in a thread): a fake engine; its DOCKER_HOST."""
    server = socket.socket(socket.AF_UNIX if tmp_path else socket.AF_INET, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "engine.sock") if tmp_path else ("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"unix://{tmp_path / 'engine.sock'}" if tmp_path else f"tcp://127.0.0.1:{server.getsockname()[1]}"


def _drip(conn: socket.socket) -> None:
    with contextlib.suppress(OSError), conn:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[")
        for _ in range(60):
            time.sleep(0.2)
            conn.sendall(b" ")


def _flood(conn: socket.socket) -> None:
    with contextlib.suppress(OSError), conn:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n[")
        for _ in range(64):
            conn.sendall(b" " * (1 << 20))


@pytest.mark.parametrize("answer", [_drip, _flood])
def test_an_engine_that_drips_or_floods_its_answer_is_cut_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              answer: Callable[[socket.socket], None]) -> None:
    monkeypatch.setenv("DOCKER_HOST", _engine(tmp_path, answer))
    monkeypatch.setattr(stacks, "MAX_ANSWER", 4 << 20)
    notes: list[str] = []
    start = time.monotonic()
    assert stacks.docker_listing(notes.append) is None
    assert time.monotonic() - start < stacks.ENGINE_TIMEOUT + 1.5
    said = ("timed out", "within") if answer is _drip else ("over 4 MB",)
    assert len(notes) == 1 and any(word in notes[0] for word in said), notes


# ---- the CLI -------------------------------------------------------------------------------------


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devenv", *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_cli_ls_prune_refusal_and_yes(tmp_path: Path, reg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}  # no engine: a note, no Docker
    env.pop("CI", None)
    empty = run("ls", env=env)
    assert empty.returncode == 0 and "no devenv stacks" in empty.stderr and "Traceback" not in empty.stderr
    assert json.loads(run("ls", "--json", env=env).stdout) == []
    data = own_dir(tmp_path / "gone")
    (data / "data").mkdir(parents=True)
    (data / "data" / "f").write_bytes(b"x" * 10000)
    try:
        registry.record(entry(tmp_path / "gone", data=[str(data)], ports={"postgres": 1, "pgbouncer": 2, "redis": 3}))
        listed = run("ls", "--json", env=env)
        item = json.loads(listed.stdout)[0]
        assert (item["state"], item["orphaned"], item["checkout"]) == ("orphaned", True, str(tmp_path / "gone"))
        assert item["data_bytes"] >= 10000
        dry = run("prune", "--dry-run", env=env)
        assert "is gone (moved or deleted)" in dry.stdout and "KiB of data" in dry.stdout, dry.stdout
        refused = run("prune", env=env)
        assert refused.returncode == 2 and "error: prune removes" in refused.stderr and "hint: pass --yes" in refused.stderr
        assert data.exists() and registry.entries()
        assert run("prune", "--dry-run", env=env).returncode == 0 and data.exists()
        done = run("prune", "--yes", env=env)
        assert done.returncode == 0, done.stderr
        assert not data.exists() and registry.entries() == []
        assert "nothing to prune" in run("prune", env=env).stderr
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_ls_takes_the_click_free_path(reg: Path, tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "devenv", "ls", "--json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"click", "docker", "http.client", "psycopg", "yaml"}, imported & {"click", "docker"}


@pytest.mark.parametrize("answer", ["n", "y"])
def test_prune_asks_on_a_terminal(tmp_path: Path, reg: Path, answer: str) -> None:
    import pty

    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    env.pop("CI", None)
    data = own_dir(tmp_path / "gone")
    data.mkdir()
    try:
        registry.record(entry(tmp_path / "gone", data=[str(data)]))
        leader, follower = pty.openpty()
        os.write(leader, f"{answer}\n".encode())
        proc = subprocess.run([sys.executable, "-m", "devenv", "prune"], env=env, stdin=follower,
                              capture_output=True, text=True, timeout=60)
        os.close(follower)
        os.close(leader)
        assert "Remove them?" in proc.stderr
        if answer == "n":
            assert proc.returncode == 1 and "nothing removed" in proc.stderr
            assert data.exists() and registry.entries()
        else:
            assert proc.returncode == 0, proc.stderr
            assert not data.exists() and registry.entries() == []
    finally:
        shutil.rmtree(data, ignore_errors=True)


def test_ls_and_prune_skip_an_invalid_record_with_one_note(tmp_path: Path, reg: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    env.pop("CI", None)
    (tmp_path / "a").mkdir()
    registry.record(entry(tmp_path / "a"))
    (reg / "bad.json").write_text(json.dumps({**registry.entries()[0].as_record(), "data": "/usr", "checkout": 123}))
    (reg / "deep.json").write_text("[" * 400_000)
    for args in (("ls",), ("ls", "--json"), ("prune", "--dry-run")):
        proc = run(*args, env=env)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "note: 2 record(s)" in proc.stderr and "bad.json" in proc.stderr, proc.stderr
    assert [item["checkout"] for item in json.loads(run("ls", "--json", env=env).stdout)] == [str(tmp_path / "a")]


def test_ls_sizes_and_reads_state_only_from_directories_named_for_the_records_checkout(tmp_path: Path, reg: Path) -> None:
    (tmp_path / "a").mkdir()
    mine = tmp_path / "a" / ".devenv" / "dev" / "native"
    mine.mkdir(parents=True)
    (mine / "f").write_bytes(b"x" * 50_000)
    registry.record(entry(tmp_path / "a", data=[str(mine), "/usr", str(tmp_path)]))
    start = time.monotonic()
    found, _ = stacks.gather()
    assert time.monotonic() - start < 2  # /usr is not walked
    assert stacks.own_places(found[0].entry) == [str(mine)]
    assert 50_000 <= found[0].data_bytes < 200_000


def test_prune_takes_only_containers_whose_labels_name_the_records_checkout(tmp_path: Path, reg: Path) -> None:
    orphan = stacks.Stack(entry(tmp_path / "gone", runtime="docker", name="own-dev"))
    orphan.containers = [container("own-dev", "postgres", working_dir=f"{tmp_path}/gone/.devenv/dev"),
                         container("own-dev", "redis")]  # no working directory label: whose, nobody says
    orphan.listed = True
    removal, = prune.plan([orphan], engine_listed=True)
    assert list(removal.containers.values()) == ["own-dev-postgres-1"]
    assert "own-dev-redis-1" in removal.kept[0]


def test_a_tcp_engine_that_drips_its_answer_is_cut_off_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", _engine(None, _drip))
    notes: list[str] = []
    start = time.monotonic()
    assert stacks.docker_listing(notes.append) is None
    assert time.monotonic() - start < stacks.ENGINE_TIMEOUT + 1.5
    assert len(notes) == 1 and "within" in notes[0], notes
