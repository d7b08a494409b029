"""CI mode output, and cold starts from the cached seeded data directory."""

from __future__ import annotations

import re
import subprocess

import pytest


@pytest.fixture
def cached_project(project, tmp_path):
    project.env["DEVENV_CACHE_DIR"] = str(tmp_path / "cache")
    project.env.pop("DEVENV_NO_CACHE", None)
    return project


def test_second_cold_up_restores_from_the_cache(cached_project, runtime: str) -> None:
    if runtime != "native":
        pytest.skip("ci on Docker keeps its data on tmpfs (no cache); test_docker.py covers the volume cache")
    proj = cached_project
    first = proj.devenv("up")
    assert "cached the seeded data" in first.stderr
    archives = list((proj.root.parent / "cache").glob("pgdata-*.tar.zst"))
    assert len(archives) == 1
    with proj.connect() as conn:
        conn.execute("INSERT INTO users (email, password_hash) VALUES ('later@x', 'x')")
        conn.commit()
    proj.devenv("down", "--volumes")
    second = proj.devenv("up")
    assert "restoring seeded data" in second.stderr and "postgres   initdb" not in second.stderr
    with proj.connect() as conn:  # the seeded state: the row added after seeding is not cached
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 8
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40
    with proj.connect(pooled=True) as conn:  # this checkout's password works through PgBouncer too
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    proj.devenv("reset")  # the restored template serves resets


def test_a_cache_that_cannot_be_written_does_not_fail_up(cached_project, runtime: str) -> None:
    """The cache only speeds up the next cold `up`: failing to fill it is said, not fatal."""
    if runtime != "native":
        pytest.skip("ci on Docker keeps its data on tmpfs (no cache); test_docker.py covers the volume cache")
    proj = cached_project
    blocker = proj.root.parent / "not-a-directory"
    blocker.write_text("")
    proj.env["DEVENV_CACHE_DIR"] = str(blocker / "cache")
    first = proj.devenv("up")
    assert "could not cache the seeded data" in first.stderr, first.stderr
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


def test_a_changed_seed_file_misses_the_cache(cached_project, runtime: str) -> None:
    if runtime != "native":
        pytest.skip("ci on Docker keeps its data on tmpfs (no cache); test_docker.py covers the volume cache")
    proj = cached_project
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    tasks = proj.root / "seeds" / "data" / "002_tasks.sql"
    tasks.write_text(tasks.read_text().replace("Fix rounding error in invoice totals", "Fix rounding in invoice totals"))
    again = proj.devenv("up")
    assert "postgres   initdb" in again.stderr and "restoring seeded data" not in again.stderr
    assert len(list((proj.root.parent / "cache").glob("pgdata-*.tar.zst"))) == 2
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks WHERE title = 'Fix rounding in invoice totals'").fetchone()[0] == 1


def test_a_killed_restore_still_gets_this_checkouts_password(cached_project, runtime: str) -> None:
    """Killed right after the restore (before the password is set): the next `up` sets it."""
    import signal
    import subprocess
    import sys

    if runtime != "native":
        pytest.skip("ci on Docker keeps its data on tmpfs (no cache); test_docker.py covers the volume cache")
    proj = cached_project
    proj.devenv("up")
    proj.devenv("down", "--volumes")
    proc = subprocess.Popen([sys.executable, "-m", "devenv", "up", "--runtime", runtime, "-p", proj.profile],
                            cwd=proj.root, env=proj.env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # kill it as soon as the data is back, before the password is set
        if "restored in" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proj.devenv("up")
    with proj.connect(pooled=True) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 40


def test_ci_mode_output_is_plain_timestamped_lines(project) -> None:
    project.env["CI"] = "true"
    logged = 0
    for args in (("up",), ("status",), ("up", "--timeout", "5", "-p", "nope")):
        proc = project.devenv(*args, check=False)
        output = proc.stdout + proc.stderr
        assert "\x1b[" not in output, f"escape codes in CI output of {args}"
        assert "\r" not in output, f"carriage returns (spinners) in CI output of {args}"
        # Every progress/status line on stderr carries a timestamp (log tails are quoted as they are).
        lines = [line for line in proc.stderr.splitlines() if line and not line.startswith(("---", " "))]
        assert all(re.match(r"^\d\d:\d\d:\d\d\.\d{3} ", line) for line in lines), proc.stderr
        logged += len(lines)
    assert logged >= 5
    assert proc.returncode == 3  # the unknown profile still fails loudly, with its exit code


@pytest.mark.native_only(reason="reads the native data directory's WAL")
def test_the_cache_is_a_base_backup_taken_while_the_server_runs(cached_project) -> None:
    """cache.save_live: Postgres is not stopped for the copy; the archive holds the backup label,
    only the WAL from the backup's start to its end, no pid file, and a cold `up` recovers from it."""
    import datetime
    from pathlib import Path

    proj = cached_project
    # Generated tasks write WAL across several segments before the backup starts (the default
    # seeds fit in the first one, so there would be nothing to leave out).
    proj.edit("devenv.yaml", "\nprofiles:\n", "\nprofiles:\n  walheavy:\n    extends: ci\n    seed_scale: 20000\n")
    proj.profile = "walheavy"
    assert "cached the seeded data" in proj.devenv("up").stderr
    [archive] = (proj.root.parent / "cache").glob("pgdata-*.tar.zst")
    with proj.connect() as conn:
        started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    saved = datetime.datetime.fromtimestamp(archive.stat().st_mtime, tz=datetime.timezone.utc)
    assert started < saved, "the server was restarted after the archive was made"
    unpacked = proj.root.parent / "unpacked"
    unpacked.mkdir()
    subprocess.run(f"zstd -dc '{archive}' | tar -x -C '{unpacked}'", shell=True, check=True)
    label = (unpacked / "backup_label").read_text()
    first = re.search(r"START WAL LOCATION: .*\(file ([0-9A-F]{24})\)", label).group(1)
    segments = sorted(p.name for p in (unpacked / "pg_wal").iterdir() if len(p.name) == 24)
    on_disk = [p for p in (Path(proj.pgdata()) / "pg_wal").iterdir() if len(p.name) == 24]
    assert segments[0] == first and len(segments) < len(on_disk), (label, segments, len(on_disk))
    assert not (unpacked / "postmaster.pid").exists() and (unpacked / "pg_wal" / "archive_status").is_dir()
    proj.devenv("down", "--volumes")
    again = proj.devenv("up")
    assert "restoring seeded data" in again.stderr and "postgres   initdb" not in again.stderr
    with proj.connect() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == tasks


def _merged(proj, *args: str, env: dict[str, str]) -> list[str]:
    """stdout and stderr of `devenv ARGS` as one stream, in the order written (as a CI log shows them)."""
    import sys

    argv = [sys.executable, "-m", "devenv", *args, "--profile", proj.profile]
    proc = subprocess.run(argv, cwd=proj.root, env={**proj.env, **env}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout.splitlines()


def _assert_masked_first(lines: list[str], secrets: list[str]) -> None:
    masks = {line.removeprefix("::add-mask::"): i for i, line in enumerate(lines) if line.startswith("::add-mask::")}
    for secret in secrets:
        assert secret in masks, f"no ::add-mask:: for {secret!r}:\n" + "\n".join(lines)
        shown = [i for i, line in enumerate(lines) if secret in line and not line.startswith("::add-mask::")]
        assert all(masks[secret] < i for i in shown), f"{secret!r} printed before its mask:\n" + "\n".join(lines)


def test_github_actions_masks_every_secret_before_printing_it(project, runtime: str, tmp_path) -> None:
    """Under GitHub Actions `up` (a first one and a no-op one) and `env --format github` emit
    `::add-mask::` for each password and each URL holding one, before any line shows them."""
    if runtime != "native":
        pytest.skip("the masks are the CLI's, the same for every runtime")
    proj = project
    gha = {"CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_ENV": str(tmp_path / "github_env")}
    first = _merged(proj, "up", "--runtime", runtime, env=gha)
    stack = proj.stack()
    urls = stack.urls()
    passwords = [stack.postgres.password, stack.redis.password]
    _assert_masked_first(first, [*passwords, *urls.values(), stack.pgbouncer.admin_password])
    assert any(line.startswith("DATABASE_URL=") for line in first)
    again = _merged(proj, "up", "--runtime", runtime, env=gha)
    assert any("nothing to do" in line for line in again)
    _assert_masked_first(again, [*passwords, *urls.values()])
    env_lines = _merged(proj, "env", "--format", "github", env=gha)
    _assert_masked_first(env_lines, [*passwords, *urls.values(), stack.pgbouncer.admin_password])
    # Outside GitHub Actions nothing changes: the URLs alone (a dotenv `up` prints).
    plain = proj.devenv("up").stdout
    assert "::add-mask::" not in plain and plain.splitlines()[0].startswith("DATABASE_URL=")
