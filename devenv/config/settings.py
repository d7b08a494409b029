"""devenv.yaml + environment overrides -> a validated, frozen `Config`.

The file holds the settings tables as data: for each service, rows of settings whose
columns are profiles. `Config.column(service, profile)` resolves one column, following
`extends` and falling back to the row's `default`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devenv.config.rules import control_character, database_problem, role_problem, stack_name_problem
from devenv.config.stack import DEFAULT_STEPS, SERVICES, Limits, Step  # the model's types, parsed here
from devenv.errors import ConfigError, byte_position

DEFAULT_COLUMN = "default"
# A Docker image reference: [registry[:port]/]path[:tag][@digest], nothing a compose file or a
# command line could read as more than one word.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
_PROFILE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
# Keys allowed at each level of devenv.yaml: anything else is a typo worth reporting.
_TOP_KEYS = {"project", "profiles", "env_file", "schema", "seed", *SERVICES}
# devenv.sh (cachix/devenv) has a `devenv` command and a devenv.yaml too: the top-level keys of
# theirs (devenv.sh/reference/yaml-options), none of them ours.
_CACHIX_KEYS = {"inputs", "imports", "allowUnfree", "allowBroken", "permittedInsecurePackages",
                "permittedUnfreePackages", "nixpkgs", "impure", "clean", "backend", "secretspec"}
_PROFILE_KEYS = {"description", "extends", "ephemeral", "limits", "seed_scale"}
_LIMIT_KEYS = {"memory", "cpus"}
_SERVICE_KEYS = {
    "postgres": {"image", "major", "port", "pin_port", "database", "user", "limits", "settings"},
    "pgbouncer": {"image", "port", "pin_port", "database", "admin_user", "settings"},
    "redis": {"image", "port", "pin_port", "settings"},
}
_DEFAULT_PORTS = {"postgres": 5432, "pgbouncer": 6432, "redis": 6379}


@dataclass(frozen=True)
class Profile:
    """One column of the settings tables."""

    name: str
    description: str = ""
    extends: str | None = None
    ephemeral: bool = False
    limits: Limits | None = None
    seed_scale: int = 0


@dataclass(frozen=True)
class ServiceConfig:
    """A service as devenv.yaml describes it, environment overrides applied."""

    name: str
    image: str
    port: int
    rows: Mapping[str, Mapping[str, Any]]
    options: Mapping[str, Any] = field(default_factory=dict)
    configured_port: int = 0  # devenv.yaml's (or the default), before DEVENV_<S>_PORT
    pinned_by: str = ""  # "DEVENV_<S>_PORT" or "pin_port" when the port must not move


@dataclass(frozen=True)
class Config:
    """The whole of devenv.yaml, validated."""

    path: Path
    project: str
    profiles: Mapping[str, Profile]
    services: Mapping[str, ServiceConfig]
    limits: Limits
    env_file: str | None = None  # `env_file:`, relative to the project root; None: off
    steps: tuple[Step, ...] = DEFAULT_STEPS  # `schema:` then `seed:` (devenv.config.steps)

    @property
    def root(self) -> Path:
        """The project directory: where devenv.yaml lives and `.devenv/` is kept."""
        return self.path.parent

    def profile(self, name: str) -> Profile:
        """Return the named profile, or a ConfigError listing the known ones."""
        if name in self.profiles:
            return self.profiles[name]
        known = ", ".join(sorted(self.profiles))
        raise ConfigError(
            f"{self.path}: unknown profile '{name}'{did_you_mean(name, self.profiles)}",
            hint=f"profiles defined under `profiles:` are: {known}. "
            "Add a profile there to use a new one.",
        )

    def lineage(self, profile: str) -> list[str]:
        """The profile followed by the profiles it extends, nearest first."""
        chain = [profile]
        while (parent := self.profiles[chain[-1]].extends) is not None:
            chain.append(parent)
        return chain

    def column(self, service: str, profile: str) -> dict[str, Any]:
        """The settings of one service for one profile: the profile's column of the table."""
        chain = self.lineage(profile) + [DEFAULT_COLUMN]
        resolved: dict[str, Any] = {}
        for name, row in self.services[service].rows.items():
            for column in chain:
                if column in row:
                    resolved[name] = row[column]
                    break
        return resolved

    def limits_for(self, profile: str) -> Limits:
        """Resource limits for a profile: its own, an ancestor's, or postgres.limits."""
        for name in self.lineage(profile):
            if (limits := self.profiles[name].limits) is not None:
                return limits
        return self.limits


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate devenv.yaml; apply DEVENV_*_PORT and DEVENV_*_IMAGE overrides.

    Bounded for any input: a size cap, UTF-8 only, aliases expanded to a bounded size (no
    "billion laughs"), and duplicate keys refused (YAML would keep the last one silently).
    """
    import yaml  # deferred: `devenv --help` must stay fast

    env = os.environ if env is None else env
    text = read_config_text(path)
    try:
        data = safe_load_bounded(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{where}: invalid YAML: {problem}",
            hint="fix the syntax at that line (indentation, a missing colon or quote).",
        ) from exc
    except RecursionError:  # the pure-Python composer recurses per level (libyaml's does not)
        raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep",
                          hint="devenv.yaml's tables are a few levels deep; check the indentation.") from None
    return _Parser(path, text).parse(data, env)


MAX_CONFIG_BYTES = 1 << 20  # devenv.yaml is a few kilobytes of tables; a megabyte is a wrong file
MAX_NODES = 20_000  # values after expanding aliases: the repo's devenv.yaml has about 300
MAX_DEPTH = 32  # nesting: devenv.yaml's deepest value is 5 levels down


def read_config_text(path: Path) -> str:
    """devenv.yaml's text: at most MAX_CONFIG_BYTES, UTF-8, else a ConfigError naming the spot."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}",
                          hint="check that the file exists and is readable (--config / DEVENV_CONFIG).") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; devenv.yaml holds a few kilobytes of settings tables",
            hint="check that --config / DEVENV_CONFIG names your devenv.yaml, not another file.",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = byte_position(data, exc.start)
        raise ConfigError(
            f"{path}:{line}:{column}: not UTF-8 (byte 0x{data[exc.start]:02x})",
            hint="save devenv.yaml as UTF-8 (your editor's encoding setting), or remove that character.",
        ) from exc


def safe_load_bounded(text: str, path: Path) -> Any:
    """yaml.safe_load, refusing duplicate keys and documents that aliases blow up.

    The node graph is composed first (aliases stay shared references there, so it is as small
    as the text) and measured as it would expand; only then is it turned into Python objects.
    """
    import yaml

    loader = safe_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def safe_loader() -> Any:
    """yaml's safe loader: libyaml's (about 10x faster) unless its nodes are not this `yaml`'s.

    libyaml's extension module is loaded once per process and keeps the node classes of the
    first `yaml` imported; after a re-import (pytest's in-process runs restore sys.modules)
    the pure-Python constructor would not know its nodes ("no constructor for the tag None").
    """
    import yaml

    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None and getattr(getattr(yaml, "_yaml", None), "ScalarNode", None) is yaml.nodes.ScalarNode:
        return fast
    return yaml.SafeLoader


def _check_nodes(root: Any, path: Path) -> None:
    """Duplicate keys, nesting depth and expanded size of a composed YAML document, iteratively."""
    import yaml

    sizes: dict[int, int] = {}  # expanded size of each node already measured (aliases share nodes)
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else node.value
        if done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_NODES:
                line = node.start_mark.line + 1
                raise ConfigError(
                    f"{path}:{line}: expands to more than {MAX_NODES} values (through aliases `*name`)",
                    hint="devenv.yaml needs no more than a few hundred values: write the tables out, "
                    "or use fewer nested aliases.",
                )
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: an alias refers to a value that contains it",
                              hint="a recursive alias never ends: remove the `*name` inside its own `&name` value.")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep",
                              hint="devenv.yaml's tables are a few levels deep; check the indentation.")
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node, path)
        on_path.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)


def _check_duplicate_keys(node: Any, path: Path) -> None:
    import yaml

    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.value == "<<":  # merge keys may repeat a key
            continue
        line = key.start_mark.line + 1
        if key.value in seen:
            raise ConfigError(
                f"{path}:{line}: duplicate key '{key.value}' (first at line {seen[key.value]})",
                hint="YAML would keep only the last one: keep one of the two lines.",
            )
        seen[key.value] = line


class _Parser:
    """Turns the parsed YAML into a Config, reporting errors with key path and line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, keypath: str, message: str, hint: str) -> ConfigError:
        """A ConfigError naming the file, the line of `keypath` and the key; every one has a hint."""
        line = line_of(self.text, keypath)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: {keypath}: {message}", hint=hint)

    def mapping(self, value: Any, keypath: str, allowed: set[str] | None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(keypath, f"expected a mapping, got {type(value).__name__}",
                            hint="write the key, a colon, then its entries indented below it (`name: value`).")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(keypath, f"key {key!r} is not a string",
                                hint="quote the key (YAML reads yes/no/on/off and numbers as other types).")
            bad = control_character(key)
            if bad is not None:
                raise self.fail(keypath, f"key {key!r} contains a control character ({bad})",
                                hint="retype the key: names are letters, digits, '_' and '-'.")
            if allowed is not None and key not in allowed:
                raise self.fail(
                    f"{keypath}.{key}" if keypath else key,
                    f"unknown key{did_you_mean(key, allowed)}",
                    hint=f"allowed here: {', '.join(sorted(allowed))}.",
                )
        return value

    def parse(self, data: Any, env: Mapping[str, str]) -> Config:
        if isinstance(data, dict) and _CACHIX_KEYS & set(data) and not _TOP_KEYS & set(data):
            raise ConfigError(
                f"{self.path} is devenv.sh's devenv.yaml (cachix/devenv), not this devenv's",
                hint="this `devenv` is the PostgreSQL + PgBouncer + Redis stack; point it at its own "
                "devenv.yaml with `--config PATH` or `DEVENV_CONFIG=PATH` (or run it where that file is "
                "the nearest devenv.yaml upwards).")
        try:
            top = self.mapping(data, "", _TOP_KEYS)
        except ConfigError as exc:  # ours with one of theirs in it: say whose that key is
            stray = next((key for key in data if key in _CACHIX_KEYS), None) if isinstance(data, dict) else None
            if stray is not None and f": {stray}: unknown key" in exc.message:
                exc.hint = (f"`{stray}:` is a key of devenv.sh's devenv.yaml (cachix/devenv), another tool also "
                            "called `devenv`: keep its keys in its own devenv.yaml, elsewhere. " + (exc.hint or ""))
            raise
        for required in ("profiles", *SERVICES):
            if required not in top:
                raise self.fail(required, "missing", hint=f"devenv.yaml needs a `{required}:` section.")
        project = top.get("project", self.path.parent.name)
        if not isinstance(project, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", project):
            raise self.fail("project", f"{project!r} is not a valid project name (lowercase letters, digits, - and _)",
                            hint="write e.g. `project: taskflow`; it names the Docker project and containers.")
        profiles = self.parse_profiles(top["profiles"])
        for name in profiles:
            problem = stack_name_problem(project, name)
            if problem is not None:
                raise self.fail(f"profiles.{name}", f"project '{project}' with profile '{name}': {problem}",
                                hint="shorten the project name (`project:`) or the profile's.")
        services = {name: self.parse_service(name, top[name], profiles, env) for name in SERVICES}
        limits = services["postgres"].options.get("limits") or Limits(memory_bytes=1 << 30, cpus=1.0)
        env_file = self.parse_env_file(top["env_file"]) if top.get("env_file") is not None else None
        from devenv.config.steps import parse_steps

        return Config(self.path, project, profiles, services, limits, env_file, parse_steps(self, top))

    def parse_env_file(self, value: Any) -> str:
        """`env_file:`: a relative path inside the project, not one of devenv's own files."""
        hint = "write a path relative to the project directory, e.g. `env_file: .env`, or remove the line."
        if not isinstance(value, str) or not value.strip() or control_character(value) is not None:
            raise self.fail("env_file", f"{value!r} is not a file name", hint=hint)
        path = Path(value)
        if path.is_absolute() or ".." in path.parts:
            raise self.fail("env_file", f"{value!r} is outside the project directory", hint=hint)
        if value.endswith("/") or path.name in ("", "."):
            raise self.fail("env_file", f"{value!r} names a directory, not a file", hint=hint)
        first = path.parts[0]
        if first in (".devenv", "seeds") or path.suffix in (".yaml", ".yml", ".j2", ".sql") or path.name == "secrets.json":
            raise self.fail("env_file", f"{value!r} is one of devenv's own files (or where they live)", hint=hint)
        return path.as_posix()

    def parse_profiles(self, raw: Any) -> dict[str, Profile]:
        table = self.mapping(raw, "profiles", None)
        if not table:
            raise self.fail("profiles", "no profiles defined", hint="define at least `dev:`.")
        profiles: dict[str, Profile] = {}
        for name, body in table.items():
            keypath = f"profiles.{name}"
            if not _PROFILE_NAME.match(name) or name == DEFAULT_COLUMN:
                raise self.fail(keypath, "a profile name is lowercase letters, digits, - and _, and not 'default'",
                                hint="rename the profile, e.g. `staging:`; `default` is the column every profile falls back to.")
            body = self.mapping(body, keypath, _PROFILE_KEYS)
            extends = body.get("extends")
            if extends is not None and extends not in table:
                raise self.fail(f"{keypath}.extends", f"unknown profile '{extends}'{did_you_mean(str(extends), table)}",
                                hint=f"extend one of: {', '.join(map(str, table))}.")
            limits = self.parse_limits(body["limits"], f"{keypath}.limits") if "limits" in body else None
            scale = body.get("seed_scale", 0)
            if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
                raise self.fail(f"{keypath}.seed_scale", f"{scale!r} is not a number of tasks (0 or more)",
                                hint="write a whole number, e.g. `seed_scale: 10000`, or remove the line.")
            description = body.get("description", "")
            if not isinstance(description, (str, int, float)) or control_character(str(description)):
                raise self.fail(f"{keypath}.description", "a description is one line of text",
                                hint="write it on one line, without control characters (quote it if needed).")
            profiles[name] = Profile(
                name=name,
                description=str(description),
                extends=extends,
                ephemeral=self.boolean(body.get("ephemeral", False), f"{keypath}.ephemeral"),
                limits=limits,
                seed_scale=scale,
            )
        for name in profiles:  # an `extends` cycle would loop forever in Config.lineage
            seen = [name]
            while (parent := profiles[seen[-1]].extends) is not None:
                if parent in seen:
                    raise self.fail(f"profiles.{name}.extends", f"cycle: {' -> '.join(seen + [parent])}",
                                    hint="one profile of the cycle must extend none (or another profile).")
                seen.append(parent)
        return profiles

    def parse_service(
        self, name: str, raw: Any, profiles: Mapping[str, Profile], env: Mapping[str, str]
    ) -> ServiceConfig:
        body = self.mapping(raw, name, _SERVICE_KEYS[name])
        image = env.get(f"DEVENV_{name.upper()}_IMAGE") or body.get("image")
        if not isinstance(image, str) or not image.strip():
            raise self.fail(f"{name}.image", "missing image", hint=f"set {name}.image, e.g. the tag you pull.")
        if not _IMAGE.fullmatch(image.strip()):
            where = f"DEVENV_{name.upper()}_IMAGE" if env.get(f"DEVENV_{name.upper()}_IMAGE") else f"{name}.image"
            raise self.fail(f"{name}.image", f"{where}: {image!r} is not an image reference",
                            hint="write e.g. postgres:16 or registry.example.com/team/postgres:16.4@sha256:<digest>.")
        port = configured = self.port(body.get("port", _DEFAULT_PORTS[name]), f"{name}.port")
        pinned_by = "pin_port" if self.boolean(body.get("pin_port", False), f"{name}.pin_port") else ""
        env_port = env.get(f"DEVENV_{name.upper()}_PORT")
        if env_port:
            pinned_by = f"DEVENV_{name.upper()}_PORT"
            if not (env_port.isascii() and env_port.isdigit()) or not 1 <= int(env_port) <= 65535:
                raise ConfigError(
                    f"DEVENV_{name.upper()}_PORT={env_port!r} is not a TCP port",
                    hint="set it to a number between 1 and 65535, or unset it.",
                )
            port = int(env_port)
        rows: dict[str, dict[str, Any]] = {}
        columns = {DEFAULT_COLUMN, *profiles}
        for setting, row in self.mapping(body.get("settings"), f"{name}.settings", None).items():
            keypath = f"{name}.settings.{setting}"
            if not isinstance(row, dict):
                raise self.fail(
                    keypath,
                    "a settings row is a mapping of profile to value",
                    hint=f"write e.g. `{setting}: {{default: {row!r}}}` (a `default` column applies to every profile).",
                )
            rows[setting] = self.mapping(row, keypath, columns)
            for column, value in rows[setting].items():
                if not isinstance(value, (str, int, float)):  # bool is an int; not None, lists, dates, bytes
                    raise self.fail(
                        f"{keypath}.{column}",
                        f"{'an empty' if value is None else 'a ' + type(value).__name__} value for profile '{column}'",
                        hint="a setting's value is one string, number or boolean (quote \"\" for an empty string).",
                    )
        options: dict[str, Any] = {}
        for key in ("database", "user", "admin_user"):
            if key in body:
                value = body[key]
                if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
                    raise self.fail(f"{name}.{key}", f"{value!r} is not a valid identifier",
                                    hint="letters, digits and '_', not starting with a digit (e.g. taskflow).")
                problem = (database_problem(value, derives=name == "postgres") if key == "database"
                           else role_problem(value))
                if problem is not None:
                    raise self.fail(f"{name}.{key}", f"'{value}' cannot be used: {problem}",
                                    hint=f"choose another {'database' if key == 'database' else 'role'} name.")
                options[key] = value
        if "limits" in body:
            options["limits"] = self.parse_limits(body["limits"], f"{name}.limits")
        if "major" in body:
            major = body["major"]
            if not isinstance(major, int) or isinstance(major, bool):
                raise self.fail(f"{name}.major", f"{major!r} is not a major version number",
                                hint="write e.g. `major: 16`.")
            options["major"] = major
        return ServiceConfig(name=name, image=image.strip(), port=port, rows=rows, options=options,
                             configured_port=configured, pinned_by=pinned_by)

    def parse_limits(self, raw: Any, keypath: str) -> Limits:
        body = self.mapping(raw, keypath, _LIMIT_KEYS)
        try:
            memory = parse_bytes(str(body.get("memory", "1g")))
        except ValueError as exc:
            raise self.fail(f"{keypath}.memory", str(exc), hint="write e.g. 512m, 1g or 2GB.") from exc
        cpus = body.get("cpus", 1)
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0:
            raise self.fail(f"{keypath}.cpus", f"{cpus!r} is not a positive number of CPUs",
                            hint="write e.g. `cpus: 1` or `cpus: 0.5`.")
        return Limits(memory_bytes=memory, cpus=float(cpus))

    def port(self, value: Any, keypath: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.fail(keypath, f"{value!r} is not a TCP port (1-65535)", hint="write a number from 1 to 65535.")
        return value

    def boolean(self, value: Any, keypath: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(keypath, f"{value!r} is not true or false", hint="write true or false (unquoted).")
        return value


_BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


def parse_bytes(text: str) -> int:
    """Parse a Docker/Redis-style size ('512m', '1g', '2GB') into bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"{text!r} is not a size")
    return int(match.group(1)) * _BYTE_UNITS[match.group(2).lower()]


def did_you_mean(word: str, candidates: Any) -> str:
    import difflib  # only for an error message

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def line_of(text: str, keypath: str) -> int | None:
    """Best-effort line number of a dotted key path in the YAML source (errors only)."""
    import yaml

    if not keypath:
        return None
    try:
        node = yaml.compose(text, Loader=safe_loader())
    except yaml.YAMLError:
        return None
    line = None
    for part in keypath.split("."):
        if isinstance(node, yaml.SequenceNode) and part.isdigit():  # `schema.0.run`: a list's item
            if int(part) >= len(node.value):
                break
            node = node.value[int(part)]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line
