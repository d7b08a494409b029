"""Numbers for people: one size formatter for every message devenv prints."""

from __future__ import annotations


def size(count: float, *, decimal: bool = False) -> str:
    """Bytes for people: '512 B', '1.5 MiB', '78.2 GiB'; with `decimal`, powers of 1000 as
    Docker prints its pulls ('12.3 MB')."""
    base, units = (1000, ("B", "kB", "MB", "GB", "TB")) if decimal else (1024, ("B", "KiB", "MiB", "GiB", "TiB"))
    for unit in units[:-1]:
        if count < base:
            return f"{int(count)} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= base
    return f"{count:.1f} {units[-1]}"
