"""devenv.cli.entry: which `devenv reset` command lines it runs without click, and with what."""

from __future__ import annotations

import pytest

from devenv.cli.entry import plain_reset_options


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
    for name in ("DEVENV_PROFILE", "DEVENV_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
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
