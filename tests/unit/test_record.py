"""devenv.record.Record keeps the frozen-dataclass behaviour the Stack relies on."""

from __future__ import annotations

import json
import pickle
from typing import ClassVar

import pytest

from devenv.record import Factory, Record


class Base(Record):
    name: str
    port: int = 5432
    KIND: ClassVar[str] = "base"  # not a field


class Child(Base):
    tags: list[str] = Factory(list)
    extra: str = "x"


def test_fields_are_inherited_first_and_class_vars_are_not_fields() -> None:
    assert Child._fields == ("name", "port", "tags", "extra")
    assert Child.KIND == "base"


def test_positional_keyword_and_default_arguments() -> None:
    child = Child("pg", extra="y")
    assert (child.name, child.port, child.tags, child.extra) == ("pg", 5432, [], "y")
    assert Child("pg").tags is not Child("pg").tags, "a Factory default is made per record"
    with pytest.raises(TypeError, match="missing argument 'name'"):
        Child()
    with pytest.raises(TypeError, match="unexpected or repeated argument 'nope'"):
        Child("pg", nope=1)
    with pytest.raises(TypeError, match="unexpected or repeated argument 'name'"):
        Child("pg", name="again")
    with pytest.raises(TypeError, match="takes 4 fields"):
        Child("pg", 1, [], "y", "too many")


def test_frozen() -> None:
    child = Child("pg")
    with pytest.raises(AttributeError, match="frozen"):
        child.port = 1
    with pytest.raises(AttributeError, match="frozen"):
        del child.name
    assert child.port == 5432


def test_equality_repr_hash_and_replace() -> None:
    assert Base("pg") == Base("pg", 5432) and Base("pg") != Base("pg", 1)
    assert Base("pg") != Child("pg"), "records of different classes differ"
    assert repr(Base("pg")) == "Base(name='pg', port=5432)"
    assert hash(Base("pg")) == hash(Base("pg"))
    moved = Base("pg").replace(port=6000)
    assert moved == Base("pg", 6000) and type(moved) is Base


def test_as_dict_is_recursive_and_round_trips_through_json_and_pickle() -> None:
    class Outer(Record):
        inner: Base
        names: tuple[str, ...] = ()

    outer = Outer(Base("pg"), ("a",))
    assert outer.as_dict() == {"inner": {"name": "pg", "port": 5432}, "names": ("a",)}
    data = json.loads(json.dumps(outer.as_dict()))
    assert Outer(inner=Base(**data["inner"]), names=tuple(data["names"])) == outer
    assert pickle.loads(pickle.dumps(Base("pg", 1))) == Base("pg", 1)
