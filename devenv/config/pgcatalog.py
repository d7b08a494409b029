"""Validate PostgreSQL settings against the server's own catalogue, without a server.

`devenv/catalog/pgNN.json` holds `pg_settings` (type, unit, min, max, enum values) as a
real server of major NN reports it; `tools/gen_pg_catalog.py` regenerates them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from devenv.errors import ConfigError

CATALOG_DIR = Path(__file__).parents[1] / "catalog"
SUPPORTED_MAJORS = (15, 16, 17, 18)

# Units PostgreSQL accepts, as multiples of the smallest one of their kind.
_MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 1, "ms": 1000, "s": 1000**2, "min": 60 * 1000**2, "h": 3600 * 1000**2, "d": 86400 * 1000**2}
_BOOL_WORDS = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
# Enum values that depend on how the server was built (lz4/zstd, io_uring, the platform's
# fsync calls); the shipped catalogues come from builds that may lack them.
_BUILD_DEPENDENT_ENUMS = {
    "wal_compression": ("lz4", "zstd"),
    "default_toast_compression": ("lz4",),
    "io_method": ("io_uring",),
    "wal_sync_method": ("open_datasync", "fdatasync", "fsync", "fsync_writethrough", "open_sync"),
}
_NUMBER_WITH_UNIT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class Catalog:
    """The settings one PostgreSQL major version knows."""

    major: int
    version: str
    settings: dict[str, dict[str, Any]]


@lru_cache(maxsize=None)
def load_catalog(major: int) -> Catalog:
    """Load the shipped catalogue for a major version."""
    path = CATALOG_DIR / f"pg{major}.json"
    if not path.is_file():
        raise ConfigError(
            f"PostgreSQL {major} is not supported: no settings catalogue for it",
            hint=f"use one of PostgreSQL {', '.join(map(str, SUPPORTED_MAJORS))} (postgres.image).",
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    return Catalog(major=data["major"], version=data["version"], settings=data["settings"])


def normalize(name: str, value: Any, major: int, where: str) -> str:
    """Check one setting against the catalogue; return it as postgresql.conf text.

    `where` names the key and profile for error messages, e.g.
    "devenv.yaml:38: postgres.settings.work_mem (profile 'dev')".
    """
    catalog = load_catalog(major)
    spec = catalog.settings.get(name)
    if spec is None:
        import difflib  # only for an error message

        close = difflib.get_close_matches(name, catalog.settings, n=1, cutoff=0.6)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{where}: '{name}' is not a PostgreSQL {major} setting{suggestion}",
            hint="setting names are listed by `SHOW ALL` / pg_settings; fix the spelling in devenv.yaml.",
        )
    kind = spec["type"]
    if kind == "bool":
        return _bool(name, value, where)
    if kind == "enum":
        return _enum(name, value, [*spec["enumvals"], *_BUILD_DEPENDENT_ENUMS.get(name, ())], where)
    if kind in ("integer", "real"):
        return _number(name, value, spec, major, where)
    return str(value)


def _bool(name: str, value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    word = str(value).strip().lower()
    if word in _BOOL_WORDS:
        return "on" if _BOOL_WORDS[word] else "off"
    raise ConfigError(f"{where}: {name} = {value!r} is not a boolean", hint=f"write {name}: \"on\" or \"off\".")


def _enum(name: str, value: Any, allowed: list[str], where: str) -> str:
    # YAML 1.1 reads a bare `off` as False; enums such as synchronous_commit take on/off.
    word = ("on" if value else "off") if isinstance(value, bool) else str(value).strip()
    for option in allowed:
        if option.lower() == word.lower():
            return option
    raise ConfigError(
        f"{where}: {name} = {value!r} is not one of its values",
        hint=f"{name} takes one of: {', '.join(allowed)}.",
    )


def _number(name: str, value: Any, spec: dict[str, Any], major: int, where: str) -> str:
    unit = spec.get("unit")
    kind = spec["type"]
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {name} = {value!r} is not a number", hint=_unit_hint(name, unit))
    text = str(value)
    match = _NUMBER_WITH_UNIT.match(text)
    if not match:
        raise ConfigError(f"{where}: {name} = {value!r} is not a number", hint=_unit_hint(name, unit))
    number, suffix = float(match.group(1)), match.group(2)
    if kind == "integer" and not suffix and not number.is_integer():
        raise ConfigError(f"{where}: {name} = {value!r} must be a whole number", hint=_unit_hint(name, unit))
    in_base = number
    if suffix:
        table = _unit_table(unit)
        if table is None:
            raise ConfigError(
                f"{where}: {name} = {value!r} has a unit, but {name} takes a plain number",
                hint=f"write {name} without a unit.",
            )
        if suffix not in table:
            raise ConfigError(f"{where}: {name} = {value!r} has an invalid unit '{suffix}'", hint=_unit_hint(name, unit))
        in_base = number * table[suffix] / table_base(unit)
    low, high = spec.get("min"), spec.get("max")
    if (low is not None and in_base < low) or (high is not None and in_base > high):
        raise ConfigError(
            f"{where}: {name} = {value!r} is out of range",
            hint=f"PostgreSQL {major} allows {_describe(low, unit)} to {_describe(high, unit)} for {name}.",
        )
    return text.strip() if suffix else (str(int(number)) if number.is_integer() else str(number))


def _unit_table(unit: str | None) -> dict[str, int] | None:
    if not unit:
        return None
    base = re.sub(r"^\d+", "", unit)
    if base in _MEMORY_UNITS:
        return _MEMORY_UNITS
    if base in _TIME_UNITS:
        return _TIME_UNITS
    return None


def table_base(unit: str) -> int:
    """Size of a catalogue unit ('8kB', 'ms', '16MB') in the smallest unit of its kind."""
    match = re.match(r"^(\d*)(\D+)$", unit)
    assert match, unit
    factor = int(match.group(1) or 1)
    table = _MEMORY_UNITS if match.group(2) in _MEMORY_UNITS else _TIME_UNITS
    return factor * table[match.group(2)]


def _unit_hint(name: str, unit: str | None) -> str:
    table = _unit_table(unit)
    if table is _MEMORY_UNITS:
        return f"{name} takes a memory size: a number with one of {', '.join(_MEMORY_UNITS)} (e.g. 64MB)."
    if table is _TIME_UNITS:
        return f"{name} takes a duration: a number with one of {', '.join(_TIME_UNITS)} (e.g. 500ms), or a plain number of {unit}."
    return f"{name} takes a plain number."


def _describe(bound: float | None, unit: str | None) -> str:
    if bound is None:
        return "unbounded"
    text = str(int(bound)) if float(bound).is_integer() else str(bound)
    return f"{text} ({unit})" if unit else text


def to_bytes(value: str, major: int, name: str) -> int | None:
    """A validated memory setting in bytes (for the memory-budget warning); None if not memory."""
    spec = load_catalog(major).settings.get(name)
    if not spec or _unit_table(spec.get("unit")) is not _MEMORY_UNITS:
        return None
    match = _NUMBER_WITH_UNIT.match(value)
    if not match:
        return None
    number, suffix = float(match.group(1)), match.group(2)
    scale = _MEMORY_UNITS[suffix] if suffix else table_base(spec["unit"])
    return int(number * scale)


def base_units(name: str, value: str, major: int) -> float | str:
    """A setting's value in the unit `pg_settings.setting` reports it in, for exact comparisons.

    Numbers come back as floats in the setting's own unit: shared_buffers (8kB pages) '128MB'
    -> 16384.0, log_min_duration_statement (ms) '1s' -> 1000.0, a plain '1000' -> 1000.0.
    Other types, and names the catalogue does not know, come back unchanged. Raises ValueError
    for a unit the setting cannot take (devenv.yaml's validation rejects those first).
    """
    spec = load_catalog(major).settings.get(name)
    match = _NUMBER_WITH_UNIT.match(str(value))
    if not spec or spec["type"] not in ("integer", "real") or not match:
        return value
    number, suffix = float(match.group(1)), match.group(2)
    if not suffix:
        return number
    table = _unit_table(spec.get("unit"))
    if table is None or suffix not in table:
        raise ValueError(f"{name} = {value!r}: PostgreSQL {major} takes no unit '{suffix}' for {name}")
    return number * table[suffix] / table_base(spec["unit"])


def same_setting(name: str, expected: str, reported: str, major: int) -> bool:
    """Whether a server's `pg_settings.setting` is the value devenv.yaml gives (in any spelling).

    Numbers are compared in base units (an integer setting rounds as the server does), booleans
    by meaning (on/true/yes/1), enums ignoring case; anything else must match exactly.
    """
    spec = load_catalog(major).settings.get(name) or {}
    kind = spec.get("type")
    if kind in ("integer", "real"):
        try:
            want, got = float(base_units(name, expected, major)), float(reported)
        except ValueError:
            return expected == reported
        if kind == "integer":
            return round(want) == round(got)
        return abs(want - got) <= 1e-9 * max(1.0, abs(want))
    if kind == "bool":
        words = (_BOOL_WORDS.get(str(expected).strip().lower()), _BOOL_WORDS.get(str(reported).strip().lower()))
        return words[0] is not None and words[0] == words[1]
    if kind == "enum":
        return str(expected).strip().lower() == str(reported).strip().lower()
    return str(expected) == str(reported)
