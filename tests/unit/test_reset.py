"""devenv.db.reset.plan: which ways a reset tries, in order, for each strategy and caller (no servers)."""

from __future__ import annotations

import pytest

from devenv.db.reset import plan

IN_PLACE, JANITOR, HARD = "in place", "janitor", "hard"


@pytest.mark.parametrize(
    ("strategy", "hard", "one_shot", "long_lived"),
    [
        # A one-shot caller (the CLI) restores without psycopg first; a Janitor already open
        # restores in place itself, over its connections (cheaper than connecting afresh).
        ("auto", False, (IN_PLACE, JANITOR), (JANITOR,)),
        ("restore", False, (IN_PLACE, JANITOR), (JANITOR,)),
        # A clone or copy was asked for: straight to the Janitor.
        ("clone", False, (JANITOR,), (JANITOR,)),
        ("copy", False, (JANITOR,), (JANITOR,)),
        # --hard rebuilds the template whatever the strategy.
        ("auto", True, (HARD,), (HARD,)),
        ("restore", True, (HARD,), (HARD,)),
        ("clone", True, (HARD,), (HARD,)),
        # An unknown strategy is Janitor.reset's to refuse (ValueError), as it always was.
        ("bogus", False, (JANITOR,), (JANITOR,)),
    ],
)
def test_the_ways_a_reset_is_tried(strategy: str, hard: bool, one_shot: tuple[str, ...],
                                   long_lived: tuple[str, ...]) -> None:
    assert plan(strategy, hard) == one_shot
    assert plan(strategy, hard, janitor_open=True) == long_lived


@pytest.mark.parametrize(
    ("strategy", "hard", "expected"),
    [("auto", False, (IN_PLACE,)), ("restore", False, (IN_PLACE,)), ("clone", False, ()), ("copy", False, ()),
     ("auto", True, ()), ("bogus", False, ())],
)
@pytest.mark.parametrize("janitor_open", [False, True])
def test_in_place_only_never_needs_psycopg(strategy: str, hard: bool, expected: tuple[str, ...],
                                           janitor_open: bool) -> None:
    """The click-free `devenv reset`: a restore in place or nothing (then click's reset takes over)."""
    assert plan(strategy, hard, janitor_open=janitor_open, in_place_only=True) == expected


def test_the_defaults_are_the_plain_devenv_reset() -> None:
    assert plan() == (IN_PLACE, JANITOR)
