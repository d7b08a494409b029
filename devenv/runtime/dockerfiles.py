"""The Docker runtime's rendered files: rendered (or read back while their inputs are the same),
parsed, remembered, and compared with what a container sees of them.

`.devenv/<profile>/.docker-render.json` (the render record) holds the render key, each file's
digest and the parsed compose file: an `up` whose inputs did not change needs neither Jinja2
(~0.2 s) nor PyYAML (~15 ms).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devenv.render import COMPOSE_FILE, SERVICE_FILES, compose_placement, render_files, service_hashes
from devenv.runtime.compose import ContainerSpec, load_compose
from devenv.runtime.dockerapi import read_file
from devenv.runtime.plan import conf_values, reload_suffices, render_key

if TYPE_CHECKING:
    from docker.models.containers import Container

    from devenv.config.stack import Stack

CACHE_FILE = ".docker-render.json"  # in .devenv/<profile>/: the inputs the rendered files came from


# ---- the render record ---------------------------------------------------------------------------


def rendered(stack: Stack, out_dir: Path) -> dict[str, str]:
    """The compose target's files: as `devenv render` makes them, or read back when its inputs are unchanged.

    Jinja2 costs ~0.2 s per `up`; the key covers the model, the placement and the templates.
    """
    record = _read_json(out_dir / CACHE_FILE)
    key = render_key(stack, compose_placement(stack))
    if record.get("render_key") == key and record.get("files"):
        files = {}
        for name, digest in record["files"].items():
            try:
                text = (out_dir / name).read_text(encoding="utf-8")
            except OSError:
                break
            if hashlib.sha256(text.encode()).hexdigest() != digest:
                break  # edited by hand or rewritten: render again
            files[name] = text
        else:
            return files
    return render_files(stack, compose_placement(stack))


def parsed(out_dir: Path, text: str) -> dict[str, Any]:
    """The rendered compose file, parsed: read back from the render record while the text
    is the same (PyYAML's import and parse take ~15 ms of every `up` that starts a container)."""
    record = _read_json(out_dir / CACHE_FILE)
    if record.get("compose_sha256") == hashlib.sha256(text.encode()).hexdigest():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            compose = json.loads(record["compose"])
            if isinstance(compose, dict):
                return compose
    return load_compose(text)


def remember_render(stack: Stack, out_dir: Path, files: dict[str, str], compose: dict[str, Any]) -> None:
    """Write the render record of files just written to `out_dir` and their parsed compose file."""
    _write_json(out_dir / CACHE_FILE, {
        "render_key": render_key(stack, compose_placement(stack)),
        "files": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()},
        "compose_sha256": hashlib.sha256(files[COMPOSE_FILE].encode()).hexdigest(),
        "compose": json.dumps(compose),  # a string: the record's keys are sorted, the mappings' order counts (Env)
    })


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ---- what a container sees -----------------------------------------------------------------------


def container_files(container: Container, spec: ContainerSpec) -> dict[str, str] | None:
    """The service's config files as the container sees them at their mount points, None if one is missing."""
    out = {}
    for name in SERVICE_FILES[spec.service]:
        target = spec.mounts.get(name)
        text = read_file(container, target) if target else None
        if text is None:
            return None
        out[name] = text
    return out


def has_files(container: Container, spec: ContainerSpec, files: dict[str, str], stack: Stack) -> bool:
    """Whether the container already sees the wanted config files (e.g. after a reload)."""
    if spec.service != "postgres":
        return False  # only Postgres is ever changed in place; elsewhere the label is the truth
    seen = container_files(container, spec)
    if seen is None:
        return False
    return service_hashes({**files, **seen}, stack)[spec.service] == spec.files_hash


def reloadable(container: Container, spec: ContainerSpec, files: dict[str, str], stack: Stack) -> dict[str, str]:
    """The changed Postgres files to write in place when a SIGHUP applies them, else {}."""
    seen = container_files(container, spec)
    if seen is None:
        return {}
    changed = {name: files[name] for name in seen if seen[name] != files[name]}
    for name in changed if not spec.copies else ():  # copies are written into the container itself
        try:  # in place reaches the container only if the host file is still the mounted one
            if (stack.state_dir / name).read_text(encoding="utf-8") != seen[name]:
                return {}
        except OSError:
            return {}
    old, new = conf_values(seen["postgresql.conf"]), conf_values(files["postgresql.conf"])
    return changed if reload_suffices(old, new, stack.postgres.major) else {}
