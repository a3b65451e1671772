"""Typed config declarations: a key is a dataclass field with its default, help text and range;
:func:`keys` lists a config's keys and :func:`check_of` gives the check their type implies."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

from t2iroute.cli import checks as ck


def key(default, help: str, *, check=None, **meta):
    """A config key: its default, help text, and range (``ge``, ``le``, ``length``, ``min_len``)
    or a ``check(key, value)`` of its own."""
    meta = {"help": help, "check": check, **meta}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, help: str = ""):
    return field(default_factory=cls, metadata={"help": help})


@dataclass(frozen=True)
class Group:
    """A config group of ``conf/`` the command composes (``NAME=OPTION``; a list group: ``[A,B]``)."""

    name: str
    default: Any
    help: str


@dataclass(frozen=True)
class Key:
    """One leaf key of a command's config (``section`` True: a section's own line in the help)."""

    name: str
    type: Any
    default: Any
    help: str
    meta: dict
    section: bool = False


def keys(cls, prefix: str = "") -> list[Key]:
    """Every key of ``cls`` (sections first as their own entry, then their keys), dotted."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if dataclasses.is_dataclass(tp):
            out.append(Key(prefix + f.name, tp, None, f.metadata.get("help", ""), dict(f.metadata), section=True))
            out += keys(tp, prefix + f.name + ".")
        else:
            out.append(Key(prefix + f.name, tp, default, f.metadata.get("help", ""), dict(f.metadata)))
    return out


def _optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return tp, False


def _item_check(tp, meta: dict, optional: bool):
    ge, le = meta.get("ge"), meta.get("le")
    if tp is bool:
        return ck.boolean
    if tp is int:
        return ck.integer(0 if ge is None else ge, le, optional=optional)
    if tp is float:
        return ck.number(optional=optional, minimum=ge)
    if tp is str:
        return ck.text(optional=optional)
    if typing.get_origin(tp) is Literal:
        return ck.choice(*typing.get_args(tp))
    return None


def check_of(k: Key):
    """The check of one key: its own, else the one its type and range give (None: unchecked)."""
    tp, optional = _optional(k.type)
    own = k.meta.get("check")
    if own is not None:
        return (lambda key, v: v is None or own(key, v)) if optional else own
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        kw = {"length": k.meta["length"]} if "length" in k.meta else {"min_len": k.meta.get("min_len", 1)}
        return ck.list_of(_item_check(item, k.meta, False), **kw)
    return _item_check(tp, k.meta, optional)
