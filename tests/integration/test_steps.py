"""`schema:`/`seed:` steps for real: an Alembic project and a Django project build the template,
bring an existing working database forward in a copy, and fail without touching anything."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import Project, make_project, teardown_project, use_runtime


def tool_project(base: Path, runtime: str) -> Project:
    """A test project whose steps find this interpreter's `python` and console scripts
    (alembic) first on PATH, as in the virtualenv a developer runs devenv from."""
    import os
    import sysconfig

    proj = make_project(base, runtime, profile="ci")
    proj.env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), proj.env.get("PATH", os.defpath)])
    return proj

STEP = "schema step 1 (alembic upgrade head)"

ALEMBIC_INI = """\
[alembic]
script_location = migrations

[loggers]
keys = root,alembic
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARN
handlers = console
[logger_alembic]
level = INFO
handlers =
qualname = alembic
[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic
[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

ENV_PY = """\
import os
import sys
from logging.config import fileConfig

sys.dont_write_bytecode = False  # the migrations' __pycache__ is written, as on a developer's machine

from alembic import context
from sqlalchemy import create_engine

fileConfig(context.config.config_file_name)
# Proof of each run: the database it ran on, one line per run.
with open(os.path.join(os.path.dirname(__file__), "..", "ran.log"), "a") as marker:
    marker.write(os.environ["PGDATABASE"] + "\\n")
url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
with create_engine(url).connect() as connection:
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""

SEED_PY = """\
import os
import psycopg

with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    conn.execute("INSERT INTO users (name, email) VALUES ('ada', 'ada@example.com')")
print("seeded ada")
"""


def migration(number: int, body: str) -> str:
    previous = repr(f"{number - 1:03d}") if number > 1 else "None"
    return (f"from alembic import op\nimport sqlalchemy as sa\n\nrevision = '{number:03d}'\n"
            f"down_revision = {previous}\n\n\ndef upgrade():\n" + textwrap.indent(body, "    ") + "\n")


def add_migration(proj: Project, number: int, body: str) -> Path:
    path = proj.root / "migrations" / "versions" / f"{number:03d}_step.py"
    path.write_text(migration(number, body))
    return path


def alembic_project(base: Path, runtime: str) -> Project:
    """The test project's stack with its schema from Alembic (two migrations, the second adding
    a column) and its seed from a Python script."""
    proj = tool_project(base, runtime)
    (proj.root / "alembic.ini").write_text(ALEMBIC_INI)
    (proj.root / "migrations" / "versions").mkdir(parents=True)
    (proj.root / "migrations" / "env.py").write_text(ENV_PY)
    add_migration(proj, 1, 'op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))')
    add_migration(proj, 2, 'op.add_column("users", sa.Column("email", sa.Text))')
    (proj.root / "seed.py").write_text(SEED_PY)
    with (proj.root / "devenv.yaml").open("a") as config:
        config.write("\nschema:\n  - run: alembic upgrade head\n    inputs: [alembic.ini, migrations]\n"
                     "seed:\n  - run: python seed.py\n    inputs: [seed.py]\n")
    return proj


def runs(proj: Project) -> list[str]:
    path = proj.root / "ran.log"
    return path.read_text().splitlines() if path.exists() else []


def columns(proj: Project) -> list[str]:
    with proj.connect() as conn:
        return [row[0] for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'users' ORDER BY ordinal_position")]


def version(proj: Project) -> str:
    with proj.connect() as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def names(proj: Project) -> list[str | None]:
    with proj.connect() as conn:
        return [row[0] for row in conn.execute("SELECT name FROM users ORDER BY id")]


def databases(proj: Project) -> list[str]:
    with proj.admin_connect() as conn:
        return [row[0] for row in conn.execute("SELECT datname FROM pg_database ORDER BY 1")]


def status(proj: Project) -> dict:
    return json.loads(proj.devenv("status", "--json").stdout)


@pytest.fixture
def alembic_native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    proj = alembic_project(tmp_path / "proj", use_runtime("native", monkeypatch))
    yield proj
    teardown_project(proj)


def test_alembic_builds_the_template_and_migrates_the_working_database_in_a_copy(alembic_native: Project) -> None:
    from devenv.db.cache import data_key

    proj = alembic_native
    up = proj.devenv("up")
    assert columns(proj) == ["id", "name", "email"] and version(proj) == "002"
    assert names(proj) == ["ada"]  # the seed step's row, cloned from the template
    assert f"{STEP}: running on " in up.stderr
    assert "  schema 1 | INFO  [alembic.runtime.migration] Running upgrade 001 -> 002" in up.stderr
    assert "  seed 1 | seeded ada" in up.stderr
    assert len(runs(proj)) == 1 and "__building_" in runs(proj)[0]  # into the template only
    # Nothing changed (what the tool wrote beside its sources does not count): it does not run again.
    assert list((proj.root / "migrations" / "versions" / "__pycache__").glob("*.pyc"))
    again = proj.devenv("up")
    assert "nothing to do" in again.stderr and len(runs(proj)) == 1
    # The working database's data is the developer's: a new migration keeps it.
    with proj.connect() as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('bob', 'bob@example.com')")
    stack = proj.stack()
    key = data_key(stack, "16.4", ["--encoding=UTF8"])
    add_migration(proj, 3, 'op.add_column("users", sa.Column("age", sa.Integer))')
    assert data_key(stack, "16.4", ["--encoding=UTF8"]) != key  # the seeded-data cache's key follows too
    up = proj.devenv("up")
    assert columns(proj) == ["id", "name", "email", "age"] and version(proj) == "003"
    assert names(proj) == ["ada", "bob"]
    assert len(runs(proj)) == 3 and "__migrate_" in runs(proj)[2]  # the template, then a copy of the working database
    assert f"applied {STEP}" in up.stderr
    assert not [name for name in databases(proj) if "__migrate_" in name or "__building_" in name]
    report = status(proj)
    assert report["steps"]["at_template_key"] is True
    assert report["steps"]["versions"] == {"alembic": "003"}
    # `reset` serves the new template: the seed, the new column.
    proj.devenv("reset")
    assert names(proj) == ["ada"] and columns(proj) == ["id", "name", "email", "age"]

    # A failing migration fails the template build: exit 7 with its last lines, nothing touched.
    with proj.connect() as conn:
        conn.execute("INSERT INTO users (name) VALUES ('carol')")
    bad = add_migration(proj, 4, 'op.execute("SELECT * FROM no_such_table")')
    failed = proj.devenv("up", check=False)
    assert failed.returncode == 7, failed.stderr
    assert f"error: {STEP} exited with status 1; its last lines:" in failed.stderr
    assert 'relation "no_such_table" does not exist' in failed.stderr and "hint:" in failed.stderr
    assert version(proj) == "003" and names(proj) == ["ada", "carol"]
    assert not [name for name in databases(proj) if "__building_" in name]
    bad.unlink()

    # One that passes on the template but fails on the working database's data: the copy goes,
    # the working database and its alembic_version are exactly as they were.
    with proj.connect() as conn:
        conn.execute("INSERT INTO users (name) VALUES (NULL)")
    add_migration(proj, 4, 'op.add_column("users", sa.Column("nick", sa.Text))')
    add_migration(proj, 5, 'op.alter_column("users", "name", nullable=False)')
    before = len(runs(proj))
    failed = proj.devenv("up", check=False)
    assert failed.returncode == 7, failed.stderr
    assert f"error: {STEP} exited with status 1" in failed.stderr and "NotNullViolation" in failed.stderr
    assert "it passed on a fresh template but not on taskflow's data" in failed.stderr
    assert len(runs(proj)) == before + 2  # the template built, then the copy failed
    assert version(proj) == "003" and columns(proj) == ["id", "name", "email", "age"]
    assert names(proj) == ["ada", "carol", None]
    assert not [name for name in databases(proj) if "__migrate_" in name]
    report = status(proj)
    assert report["steps"]["at_template_key"] is False and report["steps"]["versions"] == {"alembic": "003"}
    doctor = proj.devenv("doctor", check=False)
    assert STEP in doctor.stdout + doctor.stderr


def test_a_run_step_that_is_no_program_is_exit_7_naming_it(alembic_native: Project) -> None:
    proj = alembic_native
    proj.edit("devenv.yaml", "run: alembic upgrade head", "run: alembicc upgrade head")
    failed = proj.devenv("up", check=False)
    assert failed.returncode == 7, failed.stderr
    assert "error: schema step 1 (alembicc upgrade head): alembicc: command not found" in failed.stderr
    assert "hint:" in failed.stderr and "Traceback" not in failed.stderr


def test_alembic_on_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proj = alembic_project(tmp_path / "proj", use_runtime("docker", monkeypatch))
    try:
        proj.devenv("up", timeout=300)
        assert columns(proj) == ["id", "name", "email"] and version(proj) == "002" and names(proj) == ["ada"]
        with proj.connect() as conn:
            conn.execute("INSERT INTO users (name) VALUES ('bob')")
        add_migration(proj, 3, 'op.add_column("users", sa.Column("age", sa.Integer))')
        proj.devenv("up", timeout=300)
        assert version(proj) == "003" and names(proj) == ["ada", "bob"] and "age" in columns(proj)
        proj.devenv("reset")
        assert names(proj) == ["ada"]
    finally:
        teardown_project(proj)


DJANGO_SETTINGS = """\
import os
from urllib.parse import urlsplit

url = urlsplit(os.environ["DATABASE_URL"])
SECRET_KEY = "test"
INSTALLED_APPS = ["shop"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql", "NAME": url.path.lstrip("/"), "USER": url.username,
    "PASSWORD": os.environ["PGPASSWORD"], "HOST": url.hostname, "PORT": url.port,
}}
"""

DJANGO_MODELS = """\
from django.db import models


class Product(models.Model):
    name = models.TextField()
    price = models.IntegerField(default=0)
"""

MANAGE_PY = """\
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""


def test_django_migrate_is_the_schema_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    proj = tool_project(tmp_path / "proj", use_runtime("native", monkeypatch))
    root = proj.root
    (root / "settings.py").write_text(DJANGO_SETTINGS)
    (root / "manage.py").write_text(MANAGE_PY)
    (root / "shop").mkdir()
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "models.py").write_text(DJANGO_MODELS)
    # The app's migration, as `makemigrations` writes it (no database needed for that).
    subprocess.run([sys.executable, "manage.py", "makemigrations", "shop"], cwd=root, check=True, capture_output=True,
                   env={**proj.env, "DATABASE_URL": "postgresql://x:y@127.0.0.1:1/x", "PGPASSWORD": "y"})
    with (root / "devenv.yaml").open("a") as config:
        config.write("\nschema:\n  - run: python manage.py migrate --no-input\n"
                     "    inputs: [manage.py, settings.py, shop]\nseed: []\n")
    try:
        up = proj.devenv("up")
        assert "schema 1 |   Applying shop.0001_initial... OK" in up.stderr
        with proj.connect() as conn:
            conn.execute("INSERT INTO shop_product (name, price) VALUES ('tea', 3)")
            assert conn.execute("SELECT app, name FROM django_migrations").fetchall() == [("shop", "0001_initial")]
        assert status(proj)["steps"]["versions"] == {"django": "shop.0001_initial"}
        # The other tools' version tables, as each creates them (trimmed to the columns read).
        with proj.connect(autocommit=True) as conn:
            conn.execute("CREATE TABLE _prisma_migrations (migration_name text, finished_at timestamptz, rolled_back_at timestamptz);"
                         "INSERT INTO _prisma_migrations VALUES ('20240101_init', now() - interval '1 day', NULL),"
                         " ('20240102_add', now(), NULL), ('20240103_bad', NULL, NULL)")
            conn.execute("CREATE TABLE flyway_schema_history (installed_rank int, version text, description text, success bool);"
                         "INSERT INTO flyway_schema_history VALUES (1, '1', 'init', true), (2, '2', 'more', true), (3, '3', 'x', false)")
            conn.execute("CREATE TABLE schema_migrations (version varchar(128) PRIMARY KEY);"
                         "INSERT INTO schema_migrations VALUES ('20240101000000'), ('20240202000000')")
            conn.execute("CREATE SCHEMA sqitch; CREATE TABLE sqitch.changes (change text, committed_at timestamptz);"
                         "INSERT INTO sqitch.changes VALUES ('users', now() - interval '1 hour'), ('widgets', now())")
        assert status(proj)["steps"]["versions"] == {
            "django": "shop.0001_initial", "prisma": "20240102_add", "flyway": "2", "dbmate": "20240202000000",
            "sqitch": "widgets"}
        assert "django at shop.0001_initial, prisma at 20240102_add" in proj.devenv("status").stdout
        proj.devenv("reset")
        with proj.connect() as conn:
            assert conn.execute("SELECT count(*) FROM shop_product").fetchone()[0] == 0
    finally:
        teardown_project(proj)


def test_a_killed_up_mid_migration_is_swept_and_a_changed_seed_script_waits_for_reset(alembic_native: Project) -> None:
    proj = alembic_native
    proj.devenv("up")
    with proj.connect() as conn:
        conn.execute("INSERT INTO users (name) VALUES ('bob')")
    # The migration SIGKILLs the `devenv up` running it, on the working database's copy only.
    add_migration(proj, 3, textwrap.dedent("""\
        import os, signal
        if "__migrate_" in os.environ["PGDATABASE"] and os.path.exists("kill-devenv"):
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(1)
        op.add_column("users", sa.Column("age", sa.Integer))"""))
    (proj.root / "kill-devenv").write_text("")
    killed = proj.devenv("up", check=False)
    assert killed.returncode == -9, killed.stderr
    # Killed while it held the working database's writers: closed (nothing written to it can be
    # lost) until the next `up`, which opens it again.
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        proj.connect()
    litter = [name for name in databases(proj) if "__migrate_" in name]
    assert len(litter) == 1
    (proj.root / "kill-devenv").unlink()
    up = proj.devenv("up")
    assert f"swept 1 scratch database(s) left by killed commands: {litter[0]}" in up.stderr, up.stderr
    assert "taskflow accepts connections again (a killed `up` had closed it to migrate it)" in up.stderr
    assert version(proj) == "003" and names(proj) == ["ada", "bob"] and "age" in columns(proj)
    assert not [name for name in databases(proj) if "__migrate_" in name]
    # A changed seed script is not run on existing data: `up` says so, `reset` serves it.
    proj.edit("seed.py", "('ada', 'ada@example.com')", "('grace', 'grace@example.com')")
    up = proj.devenv("up")
    assert ("seed step 1 (python seed.py) changed since taskflow was seeded: seed steps do not run again on "
            "existing data; `devenv reset` serves the new seed") in up.stderr
    # It did build the new seed's template: it says so, not "nothing changed".
    assert re.search(r"schema\+seed: built template taskflow__tpl_\w+ \([\d.]+s\); `devenv reset` serves it", up.stderr), up.stderr
    assert "nothing changed" not in up.stderr and ": ready on native" in up.stderr
    assert names(proj) == ["ada", "bob"]
    assert status(proj)["steps"]["behind"] == ["seed step 1 (python seed.py)"]
    proj.devenv("reset")
    assert names(proj) == ["grace"] and status(proj)["steps"]["at_template_key"] is True


def test_nothing_written_while_the_working_database_is_migrated_is_lost(alembic_native: Project) -> None:
    """From the copy to the swap the working database's writers are held: a pooled client waits
    and its write lands in the migrated database; a new direct session is refused, not lost."""
    import subprocess
    import sys
    import threading
    import time

    import psycopg

    proj = alembic_native
    proj.devenv("up")
    add_migration(proj, 3, textwrap.dedent("""\
        import os, time
        if "__migrate_" in os.environ["PGDATABASE"]:
            open("migrating", "w").close()
            time.sleep(3)
        op.add_column("users", sa.Column("age", sa.Integer))"""))
    argv = [sys.executable, "-m", "devenv", "up", "--runtime", proj.runtime, "--profile", proj.profile]
    child = subprocess.Popen(argv, cwd=proj.root, env=proj.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pooled = proj.connect(pooled=True, autocommit=True)  # connected before: PgBouncer holds it
    try:
        deadline = time.monotonic() + 60
        while not (proj.root / "migrating").exists():
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)
        with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
            proj.connect()
        wrote: list[BaseException | None] = []

        def write() -> None:
            try:
                pooled.execute("INSERT INTO users (name) VALUES ('during')")
                wrote.append(None)
            except BaseException as exc:  # noqa: BLE001  (asserted below)
                wrote.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.5)
        assert not wrote  # held, not failed
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
        writer.join(30)
        assert wrote == [None]
    finally:
        pooled.close()
        if child.poll() is None:
            child.kill()
    assert version(proj) == "003" and names(proj) == ["ada", "during"]


def test_a_version_table_moved_by_hand_is_seen_and_the_next_full_up_runs_the_tool_again(alembic_native: Project) -> None:
    """`at the template's key` is the tool's own head too: a downgrade by hand shows in status and
    doctor, and the next `up` that does work brings the database back to the template's head."""
    import os
    import subprocess

    proj = alembic_native
    proj.devenv("up")
    (proj.root / "migrations" / "versions" / "003_age.py").write_text(
        "from alembic import op\nimport sqlalchemy as sa\n\nrevision = '003'\ndown_revision = '002'\n\n\n"
        "def upgrade():\n    op.add_column('users', sa.Column('age', sa.Integer))\n\n\n"
        "def downgrade():\n    op.drop_column('users', 'age')\n")
    proj.devenv("up")
    assert version(proj) == "003" and status(proj)["steps"]["at_template_key"] is True
    env = {**proj.env, "DATABASE_URL": proj.stack().urls()["DIRECT_DATABASE_URL"], "PGDATABASE": "taskflow"}
    subprocess.run(["alembic", "downgrade", "-1"], cwd=proj.root, env=env, check=True, capture_output=True)
    assert version(proj) == "002"
    report = status(proj)["steps"]
    assert report["at_template_key"] is False
    assert report["behind"] == ["alembic at 002, the template at 003"]
    doctor = proj.devenv("doctor", check=False)
    assert "alembic at 002, the template at 003" in doctor.stdout + doctor.stderr
    with (proj.root / "devenv.yaml").open("a") as config:  # any change: the next `up` is a full one
        config.write("# touched\n")
    up = proj.devenv("up")
    assert "taskflow: alembic at 002, the template at 003: the schema steps run again" in up.stderr, up.stderr
    assert version(proj) == "003" and status(proj)["steps"]["at_template_key"] is True
    assert names(proj) == ["ada"] and "age" in columns(proj)


def test_status_and_doctor_show_the_default_steps_at_the_template_s_key(running) -> None:
    proj = running("dev")
    report = status(proj)["steps"]
    assert [(s["part"], s["kind"], s["what"]) for s in report["steps"]] == [
        ("schema", "sql", "seeds/schema"), ("seed", "sql", "seeds/data")]
    assert report["at_template_key"] is True and report["behind"] == [] and report["versions"] == {}
    assert report["template"].startswith("taskflow__tpl_")
    text = proj.devenv("status").stdout
    assert "  schema 1: sql seeds/schema" in text and f"working database at the template's key ({report['template']})" in text
    doctor = json.loads(proj.devenv("doctor", "--json", check=False).stdout)
    checks = {check["name"]: check for check in doctor["checks"]}
    assert checks["steps"]["detail"] == "schema 1: sql seeds/schema; seed 1: sql seeds/data"
    assert checks["working database"]["status"] == "ok"


# --------------------------------------------------------------------------- steps that misbehave

LINGER_PY = """\
import os, subprocess, sys, time
# A child in its own session that keeps a session open on the database being built.
child = ("import os, time, psycopg; c = psycopg.connect(os.environ['DATABASE_URL']); "
         "open('child.pid', 'w').write(str(os.getpid())); time.sleep(120)")
subprocess.Popen([sys.executable, "-c", child], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not os.path.exists("child.pid"):
    time.sleep(0.05)
"""


def script_project(base: Path, runtime: str, script: str) -> Project:
    """The test project with a `run:` step (this interpreter on step.py) after its schema files."""
    import sys

    proj = tool_project(base, runtime)
    (proj.root / "step.py").write_text(script)
    with (proj.root / "devenv.yaml").open("a") as config:
        config.write(f"\nschema:\n  - sql: seeds/schema\n  - run: [{json.dumps(sys.executable)}, step.py]\n"
                     "    inputs: [step.py]\n")
    return proj


def test_a_session_a_step_leaves_open_on_the_database_being_built_does_not_fail_the_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    proj = script_project(tmp_path / "proj", use_runtime("native", monkeypatch), LINGER_PY)
    try:
        up = proj.devenv("up", check=False)
        assert up.returncode == 0, up.stderr
        assert not [name for name in databases(proj) if "__building_" in name]
        assert [name for name in databases(proj) if "__tpl_" in name]
    finally:
        with __import__("contextlib").suppress(OSError, ValueError):
            os.kill(int((proj.root / "child.pid").read_text()), signal.SIGKILL)
        teardown_project(proj)


SLOW_PY = """\
import os, subprocess, time
if os.path.exists("slow"):  # a long migration, with a helper in its process group
    subprocess.Popen(["sleep", "300"])
    with open("step.pgid.tmp", "w") as note:
        note.write(str(os.getpgid(0)))
    os.rename("step.pgid.tmp", "step.pgid")
    time.sleep(300)
"""


def group_alive(pgid: int) -> bool:
    import os
    import time

    deadline = time.monotonic() + 5  # what just died may wait a moment to be reaped
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize(("signum", "code", "word"), [(2, 130, "interrupted"), (15, 143, "terminated")])
def test_an_interrupted_up_kills_the_step_running_in_the_seed_thread_and_drops_its_template(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, code: int, word: str) -> None:
    import os
    import subprocess
    import sys
    import time

    proj = script_project(tmp_path / "proj", use_runtime("native", monkeypatch), SLOW_PY)
    pgid = 0
    try:
        proj.devenv("up")
        # A changed step on the running cluster: the template is rebuilt in the "seed check" thread.
        (proj.root / "slow").write_text("")
        (proj.root / "step.py").write_text(SLOW_PY + "# changed\n")
        up = subprocess.Popen([sys.executable, "-m", "devenv", "up", "--runtime", proj.runtime, "--profile", proj.profile],
                              cwd=proj.root, env=proj.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (proj.root / "step.pgid").exists():
            assert up.poll() is None and time.monotonic() < deadline, "the step never started"
            time.sleep(0.05)
        pgid = int((proj.root / "step.pgid").read_text())
        assert group_alive(pgid)
        assert any("__building_" in name for name in databases(proj))
        up.send_signal(signum)
        _, stderr = up.communicate(timeout=60)
        assert up.returncode == code, stderr
        assert stderr.rstrip().endswith(word) and "Traceback" not in stderr, stderr
        assert not group_alive(pgid), stderr
        pgid = 0
        assert not [name for name in databases(proj) if "__building_" in name]
    finally:
        if pgid:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(pgid, 9)
        teardown_project(proj)


def test_a_fifo_input_hangs_nothing_and_a_missing_one_stops_only_what_needs_the_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    proj = script_project(tmp_path / "proj", use_runtime("native", monkeypatch), "print('migrated')\n")
    try:
        os.mkfifo(proj.root / "pipe")  # nobody writes to it: opening it to read would hang
        proj.edit("devenv.yaml", "inputs: [step.py]", "inputs: [step.py, pipe]")
        proj.devenv("up", timeout=60)
        proj.devenv("reset", timeout=30)
        proj.devenv("status", timeout=30)
        # A branch without it: what needs the steps is exit 3 naming the line, the rest works.
        (proj.root / "pipe").unlink()
        line = next(i for i, text in enumerate((proj.root / "devenv.yaml").read_text().splitlines(), 1)
                    if "inputs: [step.py, pipe]" in text)
        for command in (("up",), ("status",), ("reset",), ("doctor",)):
            failed = proj.devenv(*command, check=False, timeout=60)
            assert failed.returncode == 3, (command, failed.stderr)
            assert f"devenv.yaml:{line}: schema.1.inputs: schema step 2: input 'pipe' is missing" in failed.stderr
            assert "Traceback" not in failed.stderr
        assert "DATABASE_URL=" in proj.devenv("env").stdout
        assert proj.devenv("psql", "-tAc", "SELECT 41 + 1").stdout.strip() == "42"
        proj.devenv("logs", "postgres", "-n", "1")
        proj.devenv("render", "--out", str(tmp_path / "rendered"))
        proj.devenv("down")
    finally:
        teardown_project(proj)
