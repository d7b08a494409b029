"""The Docker runtime's first start of a new cluster (docker-compose.yml.j2, postgres `command:`):
initdb run in the container's environment without the image's temporary server, then the image's
own entrypoint. What a developer sees: the cluster the image's own init would make, the image's
entrypoint and its own init where they matter, `up` working, no secret left behind.

Images with one difference from the postgres test image are committed from a container of it on
the engine (no registry is reachable) and removed afterwards.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.integration.conftest import Project, docker_client, make_project, teardown_project
from tests.integration.test_docker import dev_project, runtime  # noqa: F401  (the fixtures: docker runtime, dev profile)

BASE_IMAGE_CHANGES = ('ENTRYPOINT ["docker-entrypoint.sh"]', 'CMD ["postgres"]')


@pytest.fixture
def derive(runtime: str) -> Iterator[Any]:
    """derive(kind, script, *changes): an image made from the postgres test image on this lane's
    engine by running `script` as root in it, committed with `changes` (Dockerfile lines); its
    tag keeps the major first (devenv reads it from the tag)."""
    client = docker_client()
    made: list[str] = []

    def make(kind: str, script: str, *changes: str) -> str:
        base = os.environ.get("DEVENV_POSTGRES_IMAGE", "devenv-test/postgres:15")
        tag = f"devenv-test/postgres:15-{kind}-{uuid.uuid4().hex[:6]}"
        container = client.containers.create(base, entrypoint=["sh", "-c", script], user="root")
        try:
            container.start()
            status = container.wait(timeout=120)
            assert status["StatusCode"] == 0, container.logs().decode(errors="replace")
            repository, name = tag.rsplit(":", 1)
            client.api.commit(container.id, repository=repository, tag=name,
                              changes=list(BASE_IMAGE_CHANGES + changes))
        finally:
            container.remove(force=True, v=True)
        made.append(tag)
        return tag

    yield make
    for tag in made:
        for container in client.containers.list(all=True, filters={"ancestor": tag}):
            container.remove(force=True, v=True)
        client.images.remove(tag, force=True)


def _env(container: Any) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])


def _sh(container: Any, script: str, user: str = "postgres") -> str:
    result = container.exec_run(["sh", "-c", script], user=user)
    assert result.exit_code == 0, result.output.decode(errors="replace")
    return result.output.decode(errors="replace")


def _wait_log(container: Any, text: str, timeout: float = 60.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in container.logs().decode(errors="replace"):
            return True
        time.sleep(step)
    return False


def _wait_container(proj: Project, service: str = "postgres", timeout: float = 30.0) -> Any:
    from docker.errors import NotFound

    client, name = proj.client(), f"{proj.stack_name}-{service}-1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = client.containers.list(all=True, filters={"name": name})
        except NotFound:  # the SDK inspects each listed container: one was listed, then gone
            found = []
        if found:
            return found[0]
        time.sleep(0.01)
    raise AssertionError(f"no container {name}")


def _kill_postgres_at(proj: Project, line: str, step: float = 0.02) -> tuple[int, str]:
    """Start `up`, SIGKILL the postgres container once its log shows `line`; that `up`'s exit code and stderr."""
    from docker.errors import NotFound

    first = _up_in_background(proj)
    try:
        container, deadline = None, time.monotonic() + 60
        while True:
            try:
                container = container or _wait_container(proj)
                if line in container.logs().decode(errors="replace"):
                    container.kill()
                    break
            except NotFound:  # listed, then gone (an engine's listing races removals): look again
                container = None
            assert time.monotonic() < deadline, f"no {line!r} in the postgres log"
            time.sleep(step)
    finally:
        stderr = first.communicate(timeout=120)[1]
    return first.returncode, stderr


def _up_in_background(proj: Project) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "devenv", "up", "--runtime", "docker", "-p", proj.profile],
                            cwd=proj.root, env=proj.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


_FACTS = r"""
set -e
psql -X -At -U "$POSTGRES_USER" -d postgres -c "SELECT datname, pg_encoding_to_char(encoding), datcollate, datctype
    FROM pg_database WHERE datname IN ('postgres', 'template0', 'template1') ORDER BY 1"
psql -X -At -U "$POSTGRES_USER" -d postgres -c "SHOW data_checksums"
grep -E '^(lc_|default_text_search_config)' "$PGDATA/postgresql.conf"
psql -X -At -U "$POSTGRES_USER" -d postgres -c "SELECT rolname, rolsuper, rolpassword FROM pg_authid WHERE rolname = current_user"
stat -c 'PGDATA %a %U %G' "$PGDATA"
cd "$PGDATA" && find . -mindepth 1 -maxdepth 1 ! -name 'postmaster.*' -printf '%m %u %g %p\n' | sort
grep -c '^host all all all scram-sha-256$' pg_hba.conf
"""


def _cluster_facts(container: Any) -> str:
    for _ in range(300):
        if container.exec_run(["pg_isready", "-q", "-h", "127.0.0.1"]).exit_code == 0:
            break
        time.sleep(0.1)
    return _sh(container, _FACTS)


def _image_own_cluster(proj: Project, image: str, like: Any) -> str:
    """The facts of the cluster the image's own entrypoint makes with the same POSTGRES_* env."""
    client = proj.client()
    env = {k: v for k, v in _env(like).items() if k.startswith("POSTGRES_")}
    volume = f"devenv-test-ref-{uuid.uuid4().hex[:8]}"
    container = client.containers.run(image, ["postgres"], environment=env, detach=True,
                                      volumes={volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
                                      labels={"dev.devenv.project": proj.project_name})
    try:
        assert _wait_log(container, "init process complete"), container.logs().decode(errors="replace")
        return _cluster_facts(container)
    finally:
        container.remove(force=True, v=True)
        client.volumes.get(volume).remove(force=True)


def _assert_seeded(proj: Project) -> None:
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


# ---- the image's environment, entrypoint and own init -------------------------------------------


def test_initdb_gets_the_containers_environment_not_pams(dev_project: Project, derive: Any) -> None:
    """`su` applies PAM's environment (/etc/environment, /etc/default/locale; Ubuntu-based images
    ship them): initdb still runs with the container's PATH and locale, so the cluster is the one
    the image's own init makes."""
    proj = dev_project
    image = derive("pamenv", "echo 'PATH=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"' > /etc/environment"
                             " && echo 'LANG=C.UTF-8' > /etc/default/locale")
    proj.env["DEVENV_POSTGRES_IMAGE"] = image
    proj.devenv("up")
    container = proj.container("postgres")
    assert _cluster_facts(container) == _image_own_cluster(proj, image, container)
    _assert_seeded(proj)


def test_an_image_without_su_and_with_an_entrypoint_of_its_own(dev_project: Project, derive: Any) -> None:
    """The image's ENTRYPOINT (a wrapper here) runs on every start; without `su` the image's own
    init makes the cluster."""
    proj = dev_project
    wrapper = "#!/bin/sh\necho wrapper-ran > /tmp/wrapper-ran\nexec docker-entrypoint.sh \"$@\"\n"
    image = derive("nosu", f"rm -f /usr/bin/su /bin/su && printf '%s' '{wrapper}' > /usr/local/bin/wrapper.sh "
                           "&& chmod 755 /usr/local/bin/wrapper.sh", 'ENTRYPOINT ["wrapper.sh"]')
    proj.env["DEVENV_POSTGRES_IMAGE"] = image
    proj.devenv("up")
    container = proj.container("postgres")
    check = container.exec_run(["cat", "/tmp/wrapper-ran"])
    assert check.exit_code == 0 and check.output.strip() == b"wrapper-ran", check.output
    assert "Skipping initialization" not in container.logs().decode(errors="replace"), "the image's own init ran"
    _assert_seeded(proj)


def test_initdb_args_in_their_file_form_are_honoured(dev_project: Project, derive: Any) -> None:
    """image-contracts.md: each POSTGRES_* variable has a *_FILE form; the image's own init reads it."""
    proj = dev_project
    image = derive("argsfile", "echo '--data-checksums --locale=C --encoding=UTF8' > /etc/initdb-args",
                   "ENV POSTGRES_INITDB_ARGS_FILE=/etc/initdb-args")
    proj.env["DEVENV_POSTGRES_IMAGE"] = image
    proj.devenv("up")
    with proj.admin_connect() as conn:
        assert conn.execute("SHOW data_checksums").fetchone()[0] == "on"
        assert conn.execute("SELECT datcollate FROM pg_database WHERE datname = 'template1'").fetchone()[0] == "C"
    _assert_seeded(proj)


@pytest.mark.parametrize("runtime", ["docker"], indirect=True)
def test_no_password_file_is_left_in_the_container_after_a_kill_in_initdb(tmp_path: Path, runtime: str) -> None:
    """ci profile (tmpfs: the container is kept after a failed init): killed while initdb runs,
    no file in the container's /tmp holds the admin's SCRAM secret (initdb reads it from a pipe)."""
    proj = make_project(tmp_path / "proj", runtime, profile="ci")
    try:
        _kill_postgres_at(proj, "running bootstrap script")
        proj.devenv("up")
        container = proj.container("postgres")
        secret = _env(container)["POSTGRES_PASSWORD"]
        stream, _ = container.get_archive("/tmp")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            leftovers = [m.name for m in tar.getmembers() if m.isfile()
                         and secret.encode() in tar.extractfile(m).read()]  # type: ignore[union-attr]
        assert leftovers == [], f"the admin's SCRAM secret is left in {leftovers}"
    finally:
        teardown_project(proj)


def test_an_image_whose_initdb_args_make_an_sql_ascii_cluster_is_seeded(dev_project: Project, derive: Any) -> None:
    """POSTGRES_INITDB_ARGS=--locale=C gives SQL_ASCII: devenv's sessions still read names as text
    (a crash in make_snapshots before)."""
    proj = dev_project
    proj.env["DEVENV_POSTGRES_IMAGE"] = derive("sqlascii", "true", 'ENV POSTGRES_INITDB_ARGS="--locale=C"')
    result = proj.devenv("up", check=False)
    assert result.returncode == 0 and "internal error" not in result.stderr, result.stderr
    _assert_seeded(proj)


def test_an_image_with_init_scripts_gets_its_own_init(dev_project: Project, derive: Any) -> None:
    """Files in /docker-entrypoint-initdb.d (as postgis' or timescale's images have): the image's
    own init runs them."""
    proj = dev_project
    script = "#!/bin/sh\necho devenv-test: the init script ran > \"$PGDATA/init-script-ran\"\n"
    image = derive("initscript", f"printf '%s' '{script}' > /docker-entrypoint-initdb.d/10-marker.sh")
    proj.env["DEVENV_POSTGRES_IMAGE"] = image
    proj.env["DEVENV_NO_CACHE"] = "1"
    proj.devenv("up")
    assert _sh(proj.container("postgres"), 'cat "$PGDATA/init-script-ran"').startswith("devenv-test:")
    logs = proj.devenv("logs", "postgres").stdout
    assert "init process complete" in logs and "Skipping initialization" not in logs
    _assert_seeded(proj)


# ---- the same cluster, faults, secrets ----------------------------------------------------------


def test_the_cluster_is_the_one_the_images_init_makes(dev_project: Project, derive: Any) -> None:
    """POSTGRES_INITDB_ARGS in the image's ENV (quoted words too): encoding, collation, ctype,
    checksums, the superuser's stored secret, PGDATA's modes and owners, the host line in
    PGDATA's pg_hba.conf; and the superuser logs in over TCP with its password."""
    proj = dev_project
    args = "-k --encoding='UTF8' --lc-collate='C' --lc-ctype='C.UTF-8'"  # quoted words, eval'd as the image does
    image = derive("args", "true", f"ENV POSTGRES_INITDB_ARGS=\"{args}\"")
    proj.env["DEVENV_POSTGRES_IMAGE"] = image
    proj.devenv("up")
    container = proj.container("postgres")
    assert _cluster_facts(container) == _image_own_cluster(proj, image, container)
    with proj.admin_connect() as conn:  # SCRAM over TCP, with the password whose secret initdb stored
        assert conn.execute("SHOW data_checksums").fetchone()[0] == "on"
    _assert_seeded(proj)


@pytest.mark.parametrize("runtime", ["docker"], indirect=True)
def test_a_kill_at_the_hand_over_leaves_a_cluster_the_next_up_seeds(dev_project: Project) -> None:
    """Killed after the compose file's initdb printed its marker, before the image's entrypoint
    started Postgres: the cluster is whole; the next `up` starts and seeds it."""
    proj = dev_project
    _kill_postgres_at(proj, "init process complete", step=0.002)
    proj.devenv("up")
    _assert_seeded(proj)


@pytest.mark.parametrize("runtime", ["docker"], indirect=True)
def test_the_password_is_in_no_argv_and_no_log(dev_project: Project) -> None:
    proj = dev_project
    proj.env["DEVENV_NO_CACHE"] = "1"  # initdb, not a restore from an earlier test's entry (a new container)
    first = _up_in_background(proj)
    seen: list[str] = []
    try:
        container = _wait_container(proj)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "init process complete" not in container.logs().decode(errors="replace"):
            try:
                seen += [" ".join(p[1:]) for p in container.top(ps_args="-eo pid,args").get("Processes") or []]
            except Exception:  # not running yet
                pass
            time.sleep(0.01)
    finally:
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    secret = _env(proj.container("postgres"))["POSTGRES_PASSWORD"]
    assert any("initdb" in line for line in seen), seen
    assert not [line for line in seen if secret in line or secret.split("$")[2][:20] in line]
    password = proj.stack().postgres.admin_password
    for text in (proj.devenv("logs", "postgres").stdout, proj.container("postgres").logs().decode(errors="replace")):
        assert secret not in text and password not in text


def test_a_server_that_fails_on_its_new_cluster_keeps_the_cluster_for_the_next_up(dev_project: Project) -> None:
    """initdb completed; a bad setting then stops the server. The volume holds a whole cluster: it
    is kept, and the next `up` seeds it without a second initdb."""
    proj = dev_project
    volume = f"{proj.stack_name}-pgdata"
    line = next(l for l in (proj.root / "devenv.yaml").read_text().splitlines() if l.strip().startswith("full_page_writes:"))
    proj.edit("devenv.yaml", line + "\n", line + "\n    shared_preload_libraries:   {default: no_such_library}\n")
    result = proj.devenv("up", "--timeout", "30", check=False)
    assert result.returncode == 6, result.stderr
    error = next((l for l in result.stderr.splitlines() if l.startswith("error:")), "")
    assert "postgres" in error and "initialising" not in error, result.stderr
    assert any("no_such_library" in l for l in result.stderr.splitlines() if not l.startswith("error:")), result.stderr
    assert proj.pgdata_exists(f"volume:{volume}")

    proj.edit("devenv.yaml", "    shared_preload_libraries:   {default: no_such_library}\n", "")
    second = proj.devenv("up")
    assert "removed" not in second.stderr and "postgres   initdb" not in second.stderr, second.stderr
    assert "Skipping initialization" in proj.devenv("logs", "postgres").stdout, "the entrypoint found the cluster"
    _assert_seeded(proj)


def test_a_postgres_container_killed_in_its_first_initdb_is_wiped(dev_project: Project) -> None:
    """The container dies half way through initdb (PG_VERSION written already): the half-initialised
    volume is removed, and the next `up` initialises afresh."""
    proj = dev_project
    proj.env["DEVENV_NO_CACHE"] = "1"
    code, stderr = _kill_postgres_at(proj, "running bootstrap script")
    # That `up` sees the container exit during initdb (else the next one would): the volume goes.
    assert code == 6, stderr
    assert "while initialising its data" in stderr and "was removed" in stderr, stderr
    assert not proj.pgdata_exists(f"volume:{proj.stack_name}-pgdata")
    again = proj.devenv("up")
    assert "postgres   initdb" in again.stderr, again.stderr
    assert "init process complete" in proj.devenv("logs", "postgres").stdout
    _assert_seeded(proj)
