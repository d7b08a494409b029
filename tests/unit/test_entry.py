"""devenv.cli.entry: which `devenv reset` and `devenv status` command lines it runs without click, and with what."""

from __future__ import annotations

import pytest

from devenv.cli.entry import hoist_global_options, plain_reset_options, plain_status_options


def _only(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The DEVENV_* defaults the plain forms read: exactly `env`."""
    for name in ("DEVENV_PROFILE", "DEVENV_CONFIG", "DEVENV_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["reset"], {}, {"profile": "dev", "config": None}),
        (["reset", "-p", "ci"], {}, {"profile": "ci", "config": None}),
        (["reset", "--profile=ci", "--config", "x.yaml"], {}, {"profile": "ci", "config": "x.yaml"}),
        (["reset", "--config=x.yaml"], {"DEVENV_PROFILE": "ci"}, {"profile": "ci", "config": "x.yaml"}),
        (["reset", "-p", "dev"], {"DEVENV_PROFILE": "ci", "DEVENV_CONFIG": "y.yaml"}, {"profile": "dev", "config": "y.yaml"}),
    ],
)
def test_plain_forms_are_read_as_click_would(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                              env: dict[str, str], expected: dict[str, str | None]) -> None:
    _only(monkeypatch, env)
    assert plain_reset_options(args) == expected


@pytest.mark.parametrize(
    "args",
    [
        [], ["up"], ["--debug", "reset"], ["reset", "--debug"], ["reset", "--hard"], ["reset", "--strategy", "clone"],
        ["reset", "--help"], ["reset", "-p"], ["reset", "-p", "--hard"], ["reset", "-pci"], ["reset", "-p=ci"],
        ["reset", "--profile="], ["reset", "-p", "ci", "-p", "dev"], ["reset", "extra"],
    ],
    ids=lambda args: " ".join(args) or "(none)",
)
def test_every_other_form_is_left_to_click(args: list[str]) -> None:
    assert plain_reset_options(args) is None


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["status"], {}, {"profile": "dev", "config": None, "runtime": "auto", "json": False}),
        (["status", "--json"], {}, {"profile": "dev", "config": None, "runtime": "auto", "json": True}),
        (["status", "-p", "ci", "-r", "native", "--json"], {}, {"profile": "ci", "config": None, "runtime": "native", "json": True}),
        (["status", "--runtime=docker", "--config", "x.yaml"], {"DEVENV_PROFILE": "ci"},
         {"profile": "ci", "config": "x.yaml", "runtime": "docker", "json": False}),
        (["status", "-p", "dev"], {"DEVENV_RUNTIME": "podman", "DEVENV_CONFIG": "y.yaml"},
         {"profile": "dev", "config": "y.yaml", "runtime": "podman", "json": False}),
    ],
)
def test_plain_status_forms_are_read_as_click_would(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                    env: dict[str, str], expected: dict[str, object]) -> None:
    _only(monkeypatch, env)
    assert plain_status_options(args) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["--debug", "status"], ["status", "--help"], ["status", "-r", "bogus"], ["status", "-r=native"],
        ["status", "--json", "--json"], ["status", "-p"], ["status", "-p", "--json"], ["status", "--runtime="],
        ["status", "extra"], ["status", "--config", "."], ["reset"], ["doctor"],
    ],
    ids=lambda args: " ".join(args),
)
def test_every_other_status_form_is_left_to_click(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.delenv("DEVENV_RUNTIME", raising=False)
    assert plain_status_options(args) is None


def test_a_runtime_from_the_environment_that_click_refuses_is_left_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVENV_RUNTIME", "bogus")
    assert plain_status_options(["status"]) is None


@pytest.mark.parametrize(("args", "expected"), [
    (["-p", "prod", "settings"], ["settings", "-p", "prod"]),
    (["--config", "F", "render"], ["render", "--config", "F"]),
    (["--profile=ci", "--runtime", "native", "up"], ["up", "--profile=ci", "--runtime", "native"]),
    (["--debug", "-p", "ci", "reset", "--hard"], ["--debug", "reset", "-p", "ci", "--hard"]),
    (["-p", "ci", "snapshot", "save", "x"], ["snapshot", "save", "-p", "ci", "x"]),
    (["-p", "ci", "snapshot", "--help"], ["snapshot", "-p", "ci", "--help"]),
    # Left for click to explain: nothing before the command, a missing value or command.
    (["settings", "-p", "prod"], ["settings", "-p", "prod"]),
    (["-p"], ["-p"]),
    (["-p", "ci"], ["-p", "ci"]),
    (["-p", "ci", "--bogus", "up"], ["-p", "ci", "--bogus", "up"]),
])
def test_options_typed_before_the_command_move_after_it(args: list[str], expected: list[str]) -> None:
    assert hoist_global_options(args) == expected


def test_global_options_before_the_command_work_as_the_readme_says(project, run_devenv) -> None:  # type: ignore[no-untyped-def]
    """`devenv -p prod settings` and `devenv --config F render` were "No such option" before."""
    shown = run_devenv("-p", "prod", "settings")
    assert shown.returncode == 0, shown.stderr
    assert "| prod" in shown.stdout and "| dev " not in shown.stdout
    out = project / "rendered"
    rendered = run_devenv("--config", str(project / "devenv.yaml"), "--profile", "ci", "render", "--out", str(out))
    assert rendered.returncode == 0, rendered.stderr
    assert "save \"\"" in (out / "redis.conf").read_text()  # the ci profile's, not dev's
