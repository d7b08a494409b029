"""The one size formatter: binary units for devenv's own sizes, decimal for Docker's pulls."""

from __future__ import annotations

import pytest

from devenv import humanize


@pytest.mark.parametrize(("count", "decimal", "text"), [
    (512, False, "512 B"),
    (1536, False, "1.5 KiB"),
    (8 << 20, False, "8.0 MiB"),
    (3 << 40, False, "3.0 TiB"),
    (30_000_000, True, "30.0 MB"),
    (999, True, "999 B"),
])
def test_size(count: int, decimal: bool, text: str) -> None:
    assert humanize.size(count, decimal=decimal) == text
