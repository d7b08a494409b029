"""devenv.yaml's `schema:`/`seed:` steps: parsing, validation (exit 3 with the line), the keys
they give the template, the no-op `up`'s inputs, and the recipes of docs/migrations.md."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from devenv.config.resolve import build_stack
from devenv.config.settings import load_config
from devenv.config.stack import DEFAULT_STEPS, Stack, Step
from devenv.db import stepkeys
from devenv.db.seeds import seed_files, step_files
from devenv.db.template import CATALOG_SIGNATURE, DDL_GUARD, GUARD_TRIGGERS, RESTORE_FUNCTIONS, SCALE_FILE, TEMPLATE_FORMAT, template_key
from devenv.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SECRETS = dict.fromkeys(("postgres_password", "postgres_admin_password", "pgbouncer_admin_password", "redis_password"), "x")


def stack_of(project: Path, extra: str = "") -> Stack:
    """The dev Stack of the project's devenv.yaml with `extra` appended."""
    config = project / "devenv.yaml"
    if extra:
        config.write_text(config.read_text() + "\n" + extra)
    return build_stack(load_config(config, {}), "dev", secrets=SECRETS)


def fail_of(project: Path, extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        stack_of(project, extra)
    return info.value


def bare(steps: tuple[Step, ...]) -> tuple[Step, ...]:
    """The steps without where devenv.yaml gave them."""
    return tuple(step.replace(source="", keypath="") for step in steps)


def line_of(project: Path, needle: str) -> int:
    lines = (project / "devenv.yaml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


# --------------------------------------------------------------------------- the model


def test_without_steps_the_defaults_are_today_s_two_sql_folders(project: Path) -> None:
    stack = stack_of(project)
    assert stack.steps == DEFAULT_STEPS
    assert [(s.part, s.kind, s.path) for s in stack.steps] == [("schema", "sql", "seeds/schema"), ("seed", "sql", "seeds/data")]


def test_the_issue_s_form_parses_into_steps(project: Path) -> None:
    (project / "migrations").mkdir()
    (project / "alembic.ini").write_text("")
    (project / "seeds" / "data").mkdir(parents=True)
    (project / "app").mkdir()
    (project / "app" / "seed.py").write_text("")
    stack = stack_of(project, """
schema:                         # default when absent: [{sql: seeds/schema}]
  - run: alembic upgrade head   # a command, run in the project root
    inputs: [alembic.ini, migrations]
seed:
  - sql: seeds/data
  - run: python -m app.seed
    inputs: [app/seed.py]
  - run: [python, "-c", "print('a b')"]
""")
    assert bare(stack.steps) == (
        Step("schema", "run", 1, argv=("alembic", "upgrade", "head"), inputs=("alembic.ini", "migrations")),
        Step("seed", "sql", 1, path="seeds/data"),
        Step("seed", "run", 2, argv=("python", "-m", "app.seed"), inputs=("app/seed.py",)),
        Step("seed", "run", 3, argv=("python", "-c", "print('a b')")),
    )
    assert stack.steps[0].label == "schema step 1 (alembic upgrade head)"
    assert (stack.steps[1].source, stack.steps[1].keypath) == (str(project / "devenv.yaml"), "seed.0")
    # Only one part given: the other keeps its default; an empty list means no steps.
    (project / "devenv.yaml").write_text((REPO / "devenv.yaml").read_text() + "\nseed: []\n")
    assert stack_of(project).steps == (DEFAULT_STEPS[0],)


def test_steps_round_trip_through_the_stack_cache(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from devenv.config import settings
    from devenv.config.resolve import STACK_CACHE, load_stack_cached

    (project / "migrations").mkdir()
    with (project / "devenv.yaml").open("a") as handle:
        handle.write("\nschema:\n  - run: [alembic, upgrade, head]\n    inputs: [migrations]\nseed: []\n")
    built = load_stack_cached(project / "devenv.yaml", "dev")
    cached = json.loads((project / ".devenv" / "dev" / STACK_CACHE).read_text())["stack"]
    assert cached["steps"] == [{"part": "schema", "kind": "run", "index": 1, "path": "",
                                "argv": ["alembic", "upgrade", "head"], "inputs": ["migrations"],
                                "source": str(project / "devenv.yaml"), "keypath": "schema.0"}]
    monkeypatch.setattr(settings, "load_config", lambda *a, **k: pytest.fail("stack.json was not used"))
    again = load_stack_cached(project / "devenv.yaml", "dev")  # from stack.json this time
    assert again == built and bare(again.steps) == (Step("schema", "run", 1, argv=("alembic", "upgrade", "head"),
                                                         inputs=("migrations",)),)
    assert isinstance(again.steps[0].argv, tuple)


@pytest.mark.parametrize(("extra", "needle", "message"), [
    ("schema:\n  - rnu: alembic upgrade head\n", "rnu:", "unknown key; did you mean 'run'?"),
    ("schema:\n  - run: ''\n", "run: ''", "an empty command"),
    ("schema:\n  - run: []\n", "run: []", "an empty command"),
    ("schema:\n  - run: [alembic, 3]\n", "run: [alembic, 3]", "must be a string"),
    ("schema:\n  - run: 'alembic \"upgrade'\n", "run: 'alembic", "cannot split"),
    ("schema:\n  - run: \"alembic\\x1bupgrade\"\n", "run: \"alembic", "control character"),
    ("schema:\n  - run: alembic upgrade head\n    inputs: alembic.ini\n", "inputs: alembic.ini", "expected a list of paths"),
    ("schema:\n  - run: alembic upgrade head\n    inputs: [../outside]\n", "inputs: [../outside]", "outside the project"),
    ("schema:\n  - sql: devenv.yaml\n", "sql: devenv.yaml", "'devenv.yaml' is not a folder"),
    ("schema:\n  - sql: seeds/schema\n    run: alembic upgrade head\n", "sql: seeds/schema", "both `sql:` and `run:`"),
    ("schema:\n  - inputs: [x]\n", "inputs: [x]", "neither `sql:` nor `run:`"),
    ("schema:\n  - alembic upgrade head\n", "- alembic upgrade head", "expected `sql:` or `run:`"),
    ("schema: alembic upgrade head\n", "schema: alembic", "expected a list of steps"),
    ("seed:\n  - sql: seeds/schema\n    inputs: [x]\n", "inputs: [x]", "belongs to a `run:` step"),
])
def test_a_bad_step_is_a_config_error_naming_the_line_and_key(project: Path, extra: str, needle: str, message: str) -> None:
    (project / "seeds" / "schema").mkdir(parents=True)
    error = fail_of(project, extra)
    assert error.exit_code == 3
    assert message in error.message, error.message
    where = f"{project / 'devenv.yaml'}:{line_of(project, needle)}: "
    assert error.message.startswith(where), error.message
    assert re.search(r": (schema|seed)(\.\d+(\.\w+)?)?: ", error.message), error.message
    assert error.hint


def test_the_cli_exits_3_with_the_line_for_an_empty_run(project: Path) -> None:
    with (project / "devenv.yaml").open("a") as handle:
        handle.write("\nschema:\n  - run: ''\n")
    line = line_of(project, "run: ''")
    proc = subprocess.run([sys.executable, "-m", "devenv", "render", "--profile", "dev", "--out", str(project / "out")], cwd=project,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert f"devenv.yaml:{line}: schema.0.run: schema step 1: an empty command" in proc.stderr
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- keys


def _old_template_key(seeds_dir: Path, major: int, scale: int = 0) -> str:
    """template.template_key as it was before steps (commit b26eb3a), verbatim but for what a
    template carries (the catalogue signature came with the same issue, TEMPLATE_FORMAT 6)."""
    digest = hashlib.sha256(f"format{TEMPLATE_FORMAT}\0pg{major}\0{scale}\0".encode())
    digest.update((DDL_GUARD + GUARD_TRIGGERS + CATALOG_SIGNATURE + RESTORE_FUNCTIONS).encode())
    for seed in seed_files(seeds_dir):
        digest.update(f"{seed.key}\0{seed.checksum}\0".encode())
    if scale:
        digest.update((seeds_dir / SCALE_FILE).read_bytes())
    return digest.hexdigest()[:12]


def test_the_default_steps_keep_today_s_template_key(project: Path) -> None:
    import shutil

    shutil.copytree(REPO / "seeds", project / "seeds")
    stack = stack_of(project)
    for major in (15, 16, 17):
        assert template_key(stack, major) == _old_template_key(project / "seeds", major)
    assert template_key(stack.replace(seed_scale=100), 16) == _old_template_key(project / "seeds", 16, 100)
    # Written out explicitly, the defaults are the defaults.
    explicit = stack_of(project, "schema:\n  - sql: seeds/schema\nseed:\n  - sql: seeds/data/\n")
    assert template_key(explicit, 16) == template_key(stack, 16)
    assert [f.key for f in step_files(explicit)] == [f.key for f in seed_files(project / "seeds")]


def alembic_project(project: Path) -> Stack:
    (project / "alembic.ini").write_text("[alembic]\n")
    versions = project / "migrations" / "versions"
    versions.mkdir(parents=True)
    (versions / "001_users.py").write_text("revision = '001'\n")
    return stack_of(project, "schema:\n  - run: alembic upgrade head\n    inputs: [alembic.ini, migrations]\n")


def test_a_run_step_s_key_follows_its_command_and_its_inputs_content_only(project: Path) -> None:
    stack = alembic_project(project)
    key = template_key(stack, 16)
    versions = project / "migrations" / "versions"
    # What running the tool leaves beside the sources does not count.
    (versions / "__pycache__").mkdir()
    (versions / "__pycache__" / "001_users.cpython-311.pyc").write_bytes(b"\0compiled")
    (versions / "001_users.pyc").write_bytes(b"x")
    assert template_key(stack, 16) == key
    # A new migration, an edit, another command: each a new key.
    (versions / "002_more.py").write_text("revision = '002'\n")
    with_two = template_key(stack, 16)
    assert with_two != key
    (versions / "002_more.py").write_text("revision = '002'  # edited\n")
    assert template_key(stack, 16) not in (key, with_two)
    other = stack.replace(steps=(stack.steps[0].replace(argv=("alembic", "upgrade", "heads")), *stack.steps[1:]))
    assert template_key(other, 16) != template_key(stack, 16)
    # A sql folder outside seeds/ is keyed relative to the project root in the ledger.
    (project / "db").mkdir()
    (project / "db" / "001_x.sql").write_text("SELECT 1;")
    sql = stack.replace(steps=(Step("schema", "sql", 1, path="db"),))
    assert [f.key for f in step_files(sql)] == ["db/001_x.sql"]


def test_the_janitor_s_cached_name_sees_a_new_migration_file(project: Path) -> None:
    from devenv.db.janitor import Janitor

    stack = alembic_project(project)
    janitor = Janitor.__new__(Janitor)  # only its key cache: no server needed
    janitor.stack, janitor.seeds_dir, janitor._keys = stack, project / "seeds", {}
    first = janitor.template_name(16)
    assert janitor.template_name(16) == first
    (project / "migrations" / "versions" / "002_more.py").write_text("revision = '002'\n")
    assert janitor.template_name(16) != first


def test_the_no_op_up_hashes_the_run_steps_inputs(project: Path) -> None:
    from devenv.state import fingerprint, note_inputs

    stack = alembic_project(project)
    config = project / "devenv.yaml"
    note_inputs(stack.state_dir, stepkeys.recorded_inputs(stack))
    before = fingerprint(project, config, "dev", {})
    (project / "migrations" / "versions" / "__pycache__").mkdir()
    (project / "migrations" / "versions" / "__pycache__" / "x.pyc").write_bytes(b"x")
    assert fingerprint(project, config, "dev", {}) == before
    (project / "migrations" / "versions" / "002_more.py").write_text("revision = '002'\n")
    assert fingerprint(project, config, "dev", {}) != before


@pytest.mark.parametrize("content", [b"", b"[]", b"\xff", b'{"sql": 3, "inputs": []}', b'{"sql": [], "inputs": [null]}'])
def test_a_damaged_inputs_record_is_hashed_as_it_is(project: Path, content: bytes) -> None:
    from devenv.state import INPUTS_FILE, fingerprint

    (project / ".devenv" / "dev").mkdir(parents=True)
    (project / ".devenv" / "dev" / INPUTS_FILE).write_bytes(content)
    assert len(fingerprint(project, project / "devenv.yaml", "dev", {})) == 64


# --------------------------------------------------------------------------- recipes


RECIPES = {  # docs/migrations.md: the tool's heading word -> the command's shape
    "Alembic": ("alembic", "upgrade", "head"),
    "Django": ("python", "manage.py", "migrate"),
    "Prisma": ("npx", "prisma", "migrate", "deploy"),
    "Flyway": ("sh", "-c"),
    "dbmate": ("dbmate",),
    "sqitch": ("sh", "-c"),
}


def test_each_recipe_parses_into_the_steps_it_shows(project: Path) -> None:
    text = (REPO / "docs" / "migrations.md").read_text()
    recipes = text[text.index("## Recipes"):]
    blocks = re.findall(r"^(\w+)[^\n]*\n(?:[^\n]*\n)*?```yaml\n(.*?)```", recipes, re.M | re.S)
    assert [name for name, _ in blocks] == list(RECIPES)
    base = (project / "devenv.yaml").read_text()
    for name, block in blocks:
        shape = RECIPES[name]
        for named in re.search(r"inputs: \[(.*)\]", block).group(1).split(", "):
            (project / named).parent.mkdir(parents=True, exist_ok=True)
            (project / named).mkdir(exist_ok=True) if "." not in Path(named).name else (project / named).touch()
        (project / "devenv.yaml").write_text(base + "\n" + block)
        [step, *rest] = stack_of(project).steps
        assert step.part == "schema" and step.kind == "run" and step.argv[:len(shape)] == shape, (name, step)
        if name in ("Flyway", "sqitch"):
            assert "migrate" in step.argv[2] or "deploy" in step.argv[2]
            assert "PGPASSWORD" not in step.argv[2] or "FLYWAY_PASSWORD=\"$PGPASSWORD\"" in step.argv[2]
        assert rest == [DEFAULT_STEPS[1]]


# --------------------------------------------------------------------------- running a step


def repo_stack(project: Path, ssl: bool = False) -> Stack:
    stack = build_stack(load_config(REPO / "devenv.yaml", {}), "dev", secrets=SECRETS).replace(root=project)
    return stack.replace(postgres=stack.postgres.replace(settings={**stack.postgres.settings, "ssl": "on"})) if ssl else stack


def test_a_run_step_gets_the_direct_url_and_libpq_s_variables_as_the_application_role(project: Path, monkeypatch) -> None:
    from devenv.db.steps import run_step

    monkeypatch.setenv("PGSSLMODE", "disable")  # the caller's must not redirect the step
    monkeypatch.setenv("KEEP_ME", "1")
    stack = repo_stack(project)
    stack = stack.replace(postgres=stack.postgres.replace(password="pw-123"))  # shown masked (****)
    script = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ('DATABASE_URL', 'PGHOST', 'PGPORT', "
              "'PGUSER', 'PGPASSWORD', 'PGDATABASE', 'PGSSLMODE', 'PYTHONUNBUFFERED', 'KEEP_ME')})); print(os.getcwd())")
    lines: list[str] = []
    run_step(stack, Step("schema", "run", 1, argv=(sys.executable, "-c", script)), "built_db", lines.append)
    assert lines[0] == f"schema step 1 ({sys.executable} -c {__import__('shlex').quote(script)}): running on built_db"
    env = json.loads(lines[1].removeprefix("  schema 1 | "))
    pg = stack.postgres
    assert env == {"DATABASE_URL": f"postgresql://{pg.user}:****@127.0.0.1:{pg.port}/built_db", "PGHOST": "127.0.0.1",
                   "PGPORT": str(pg.port), "PGUSER": pg.user, "PGPASSWORD": "****", "PGDATABASE": "built_db",
                   "PGSSLMODE": None, "PYTHONUNBUFFERED": "1", "KEEP_ME": "1"}
    assert lines[2] == f"  schema 1 | {project}"
    lines.clear()
    run_step(repo_stack(project, ssl=True), Step("seed", "run", 2, argv=(sys.executable, "-c", script)), "db", lines.append)
    env = json.loads(lines[1].removeprefix("  seed 2 | "))
    assert env["PGSSLMODE"] == "require" and env["DATABASE_URL"].endswith("/db?sslmode=require")


def test_a_failing_step_is_exit_7_with_its_status_and_last_lines(project: Path) -> None:
    from devenv.db.steps import TAIL_LINES, run_step
    from devenv.errors import SchemaError

    script = "import sys\nfor i in range(30): print('line', i)\nsys.exit(3)"
    with pytest.raises(SchemaError) as info:
        run_step(repo_stack(project), Step("schema", "run", 1, argv=(sys.executable, "-c", script)), "db")
    message = info.value.message
    assert info.value.exit_code == 7 and "schema step 1 (" in message and "exited with status 3" in message
    assert "| line 29" in message and f"| line {30 - TAIL_LINES}" in message and f"| line {29 - TAIL_LINES}\n" not in message
    with pytest.raises(SchemaError) as info:
        run_step(repo_stack(project), Step("schema", "run", 1, argv=("no-such-tool-here", "up")), "db")
    assert "schema step 1 (no-such-tool-here up): no-such-tool-here: command not found" in info.value.message
    assert info.value.exit_code == 7 and info.value.hint


def test_an_interrupted_step_s_process_group_is_killed(project: Path) -> None:
    import os
    import time

    from devenv.db.steps import run_step

    # The step starts a grandchild, prints its pid and waits: Ctrl-C (here raised from the
    # output callback) must end both.
    script = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(p.pid, flush=True); time.sleep(60)")
    pids: list[int] = []

    def say(line: str) -> None:
        if line.startswith("  schema 1 | "):
            pids.append(int(line.rsplit(" ", 1)[1]))
            raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_step(repo_stack(project), Step("schema", "run", 1, argv=(sys.executable, "-c", script)), "db", say)
    assert time.monotonic() - start < 10
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pids[0], 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the step's own child outlived the interrupt")


def test_status_lines_say_whether_the_working_database_is_at_the_key() -> None:
    from devenv.db import stepstatus

    view = {"steps": [{"part": "schema", "index": 1, "kind": "run", "what": "alembic upgrade head", "inputs": ["migrations"]}],
            "template": "app__tpl_abc", "at_template_key": True, "behind": [], "versions": {"alembic": "003"}}
    assert stepstatus.format_report(view) == [
        "steps:", "  schema 1: run alembic upgrade head  (inputs: migrations)",
        "  working database at the template's key (app__tpl_abc); alembic at 003"]
    behind = {**view, "at_template_key": False, "behind": ["schema step 1 (alembic upgrade head)"]}
    assert "NOT at the template's key" in stepstatus.summary(behind) and "lacks schema step 1" in stepstatus.summary(behind)


def test_a_step_s_output_never_shows_the_password(project: Path) -> None:
    from devenv.db.steps import run_step

    stack = repo_stack(project)
    stack = stack.replace(postgres=stack.postgres.replace(password="s3cr/t"))
    lines: list[str] = []
    run_step(stack, Step("schema", "run", 1, argv=(sys.executable, "-c", "import os; print(os.environ['DATABASE_URL']); "
                                                   "print(os.environ['PGPASSWORD'])")), "db", lines.append)
    assert "s3cr" not in "\n".join(lines) and lines[1].endswith(":****@127.0.0.1:%d/db" % stack.postgres.port)
    assert lines[2] == "  schema 1 | ****"


def test_a_step_s_control_characters_reach_neither_the_terminal_nor_the_error(project: Path) -> None:
    from devenv.db.steps import run_step
    from devenv.errors import SchemaError

    stack = repo_stack(project)
    stack = stack.replace(postgres=stack.postgres.replace(password="s3cr/t"))
    script = ("import os, sys; out = sys.stdout.buffer; "
              "out.write(b'\\x1b[31mred\\x1b[0m\\tok\\x07 \\x1b]0;owned\\x07 nul\\x00 c1\\xc2\\x9b2J '"
              " + os.environ['PGPASSWORD'].encode() + b'\\n'); out.flush(); sys.exit(1)")
    lines: list[str] = []
    with pytest.raises(SchemaError) as info:
        run_step(stack, Step("schema", "run", 1, argv=(sys.executable, "-c", script)), "db", lines.append)
    shown = "^[[31mred^[[0m\tok^G ^[]0;owned^G nul^@ c1\ufffd2J ****"
    assert lines[1] == "  schema 1 | " + shown
    assert f"  | {shown}" in info.value.message
    for text in ("\n".join(lines), info.value.message):
        assert not any(ord(c) < 0x20 and c not in "\t\n" or 0x7F <= ord(c) < 0xA0 for c in text), repr(text)
        assert "s3cr" not in text


# --------------------------------------------------------------------------- property: any command round-trips

WORDS = st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=12),
                 min_size=1, max_size=5).filter(lambda words: words[0].strip() != "")


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=WORDS)
def test_any_command_reads_back_word_for_word_as_a_list_or_a_shell_line(project: Path, words: list[str]) -> None:
    import shlex

    base = (REPO / "devenv.yaml").read_text()
    for form in (json.dumps(words, ensure_ascii=False), json.dumps(shlex.join(words), ensure_ascii=False)):  # JSON is YAML
        (project / "devenv.yaml").write_text(f"{base}\nschema:\n  - run: {form}\n")
        [step, _] = stack_of(project).steps
        assert step.argv == tuple(words)
        assert shlex.split(step.command) == words  # what messages and the ledger name it by


def test_a_step_that_leaves_a_process_behind_holding_its_output_does_not_hang_up(project: Path) -> None:
    import os
    import time

    from devenv.db.steps import run_step

    script = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print('left', p.pid)")
    lines: list[str] = []
    start = time.monotonic()
    run_step(repo_stack(project), Step("schema", "run", 1, argv=(sys.executable, "-c", script)), "db", lines.append)
    assert time.monotonic() - start < 5
    pid = int(lines[-1].rsplit(" ", 1)[1])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("what the step left running was not ended")


def test_a_tool_is_behind_where_its_head_is_not_the_template_s() -> None:
    from devenv.db.versions import template_versions, versions_behind, versions_comment

    comment = versions_comment({"alembic": "005"})
    recorded = template_versions(lambda query: [(comment,)], "taskflow__tpl_0123456789ab")
    assert recorded == {"alembic": "005"}
    assert versions_behind({"alembic": "005"}, recorded) == []
    assert versions_behind({"alembic": "004"}, recorded) == ["alembic at 004, the template at 005"]
    assert versions_behind({}, recorded) == ["alembic at nothing, the template at 005"]
    # A template from before heads were recorded, or a comment that is not devenv's: nothing to compare.
    for other in (None, "", "a comment someone wrote", "devenv versions [not an object", "devenv versions [1]"):
        assert template_versions(lambda query: [(other,)], "t") is None
    assert versions_behind({"alembic": "004"}, None) == []


# --------------------------------------------------------------------------- inputs walked as Alembic reads them


def _signature_and_key(stack: Stack) -> tuple[object, str]:
    return stepkeys.stat_signature(stack), template_key(stack, 16)


def test_a_linked_folder_inside_inputs_is_keyed_and_a_link_loop_ends(project: Path) -> None:
    import os

    stack = alembic_project(project)
    shared = project / "shared_versions"
    shared.mkdir()
    (shared / "002_more.py").write_text("revision = '002'\n")
    os.symlink("../shared_versions", project / "migrations" / "linked")
    signature, key = _signature_and_key(stack)
    assert "migrations/linked/002_more.py" in [rel for rel, _ in stepkeys.input_files(project, stack.steps[0].inputs)]
    (shared / "003_new.py").write_text("revision = '003'\n")  # a new migration behind the link
    assert _signature_and_key(stack)[0] != signature and template_key(stack, 16) != key
    # Two loops: each folder is entered once (the walk used to double at each level and hang).
    os.symlink(".", project / "migrations" / "loop1")
    os.symlink(".", project / "migrations" / "loop2")
    os.symlink("nowhere", project / "migrations" / "dangling")
    looped = stepkeys.stat_signature(stack)
    assert len(looped) < 20 and template_key(stack, 16) == template_key(stack, 16)


def test_a_fifo_in_or_as_an_input_is_keyed_by_its_kind_never_opened(project: Path) -> None:
    import os

    stack = alembic_project(project)
    key = template_key(stack, 16)
    os.mkfifo(project / "migrations" / "versions" / "pipe")  # nobody writes to it: reading it would hang
    with_fifo = template_key(stack, 16)
    assert with_fifo != key
    stepkeys.stat_signature(stack)
    os.mkfifo(project / "named.fifo")
    named = stack.replace(steps=(stack.steps[0].replace(inputs=("named.fifo", "migrations")),))
    assert template_key(named, 16) not in (key, with_fifo)
    from devenv.state import fingerprint, note_inputs

    note_inputs(named.state_dir, stepkeys.recorded_inputs(named))
    assert len(fingerprint(project, project / "devenv.yaml", "dev", {})) == 64


def test_dot_named_migrations_count_and_only_caches_and_vcs_folders_do_not(project: Path) -> None:
    stack = alembic_project(project)
    versions = project / "migrations" / "versions"
    key = template_key(stack, 16)
    for cache in ("__pycache__", ".git", ".hg", ".svn"):
        (versions / cache).mkdir()
        (versions / cache / "x").write_text("x")
    (versions / "001_users.pyo").write_text("x")
    assert template_key(stack, 16) == key
    (versions / ".005_hidden.py").write_text("revision = '005'\n")  # Alembic applies it
    assert template_key(stack, 16) != key


def test_a_missing_input_is_found_when_the_steps_are_needed_naming_its_line(project: Path) -> None:
    stack = alembic_project(project)
    import shutil

    shutil.rmtree(project / "migrations")
    stack = stack_of(project)  # parsing does not look: `down`, `env`, `psql` must work on such a branch
    with pytest.raises(ConfigError) as info:
        template_key(stack, 16)
    where = f"{project / 'devenv.yaml'}:{line_of(project, 'inputs: [alembic.ini, migrations]')}: "
    assert info.value.message == where + "schema.0.inputs: schema step 1: input 'migrations' is missing"
    assert info.value.exit_code == 3 and info.value.hint
    sql = stack_of(project, "seed:\n  - sql: db/missing\n")
    with pytest.raises(ConfigError, match=r"devenv.yaml:\d+: seed.0.sql: seed step 1: 'db/missing' is missing"):
        stepkeys.check_inputs(sql.replace(steps=sql.steps[1:]))
