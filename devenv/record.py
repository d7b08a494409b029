"""`Record`: a frozen dataclass for the modules `devenv reset` loads, without dataclasses' cost.

`devenv reset` runs between tests, so its start-up counts. Importing dataclasses (it imports
inspect, ast, dis and tokenize) and generating six methods per class with `exec` cost ~17 ms
for the Stack's classes (`python -c "import devenv.config.stack"`, interleaved with the same imports
minus dataclasses): more than the reset itself. A Record keeps what devenv uses of a frozen
dataclass: fields from the class annotations (inherited ones first), defaults, `Factory`
defaults, keyword or positional construction, immutability, equality, repr, `replace` and a
recursive `as_dict`.

The rule: every module on the `devenv reset` path (devenv.cli.entry and .output, devenv.db.reset,
devenv.config.resolve, devenv.config.stack, devenv.db.janitor and what they import at module level) uses
Record, not dataclasses; modules off that path keep `@dataclass`. A test enforces it:
`python -X importtime -m devenv reset` on a running stack loads no dataclasses, psycopg, click
or yaml (tests/integration/test_reset.py).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

try:
    from typing import dataclass_transform
except ImportError:  # Python 3.10: only type checkers read it
    def dataclass_transform(**_: Any) -> Callable[[type], type]:  # type: ignore[no-redef]
        return lambda cls: cls


class Factory:
    """A default made anew for each record (dataclasses' `field(default_factory=...)`)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


@dataclass_transform(frozen_default=True)
class Record:
    """Base of a frozen record; subclasses declare fields as class annotations."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = [name for name, kind in cls.__dict__.get("__annotations__", {}).items()
               if not name.startswith("_") and not str(kind).startswith(("ClassVar", "typing.ClassVar"))]
        cls._fields = (*cls._fields, *(name for name in own if name not in cls._fields))
        cls._defaults = {**cls._defaults, **{name: cls.__dict__[name] for name in own if name in cls.__dict__}}
        for name in own:  # an instance's value, not the class attribute, is what a field reads
            if name in cls.__dict__:
                delattr(cls, name)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        name = type(self).__name__
        if len(args) > len(self._fields):
            raise TypeError(f"{name}() takes {len(self._fields)} fields, {len(args)} given")
        given = dict(zip(self._fields, args))
        for key, value in kwargs.items():
            if key not in self._fields or key in given:
                raise TypeError(f"{name}() got an unexpected or repeated argument '{key}'")
            given[key] = value
        values = {}
        for key in self._fields:
            if key in given:
                values[key] = given[key]
            elif key in self._defaults:
                default = self._defaults[key]
                values[key] = default.make() if isinstance(default, Factory) else default
            else:
                raise TypeError(f"{name}() missing argument '{key}'")
        object.__setattr__(self, "__dict__", values)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field '{key}': {type(self).__name__} is frozen")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"cannot delete field '{key}': {type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (dataclasses.replace)."""
        return type(self)(**{**self.__dict__, **changes})

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict, nested records as dicts too (dataclasses.asdict)."""
        return {k: _as_plain(v) for k, v in self.__dict__.items()}


def _as_plain(value: Any) -> Any:
    """A field's value with records (also inside a tuple, e.g. the Stack's steps) as dicts."""
    if isinstance(value, Record):
        return value.as_dict()
    if isinstance(value, tuple) and any(isinstance(item, Record) for item in value):
        return tuple(_as_plain(item) for item in value)
    return value
