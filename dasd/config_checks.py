"""One type and finiteness check for every settings dataclass (``TrainConfig``, ``EvalConfig``
and the probes' configs), driven by the field annotations.

Each config calls :func:`check_fields` first in its ``__post_init__`` (before its own range
checks, which can then compare numbers safely), and :func:`check_known` wherever a mapping of
field values comes from a user or a manifest. Rules, by annotation:

- ``int``: an integer, not a bool and not a float (``4.0`` is refused: a count is not rounded);
- ``float``: a real number (an integer is accepted), not a bool, finite (NaN and ±inf refused);
- ``str``: a string; ``bool``: ``True`` or ``False``;
- ``tuple[T, ...]``: a tuple (or list) of ``T``; ``dict[str, V]`` / ``Mapping[str, V]``: a
  mapping with string keys and ``V`` values; ``X | None``: ``None`` or an ``X``; ``Any``: anything.

Every error is a one-line ``ValueError`` naming the config and the field.
"""

from __future__ import annotations

import ast
import inspect
import math
import numbers
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from functools import cache
from typing import Any

__all__ = ["as_tuple", "check_fields", "check_known", "check_value", "field_docs"]


def as_tuple(value: Any) -> Any:
    """A tuple field's value as given by a user: one string -> a 1-tuple, a list -> a tuple;
    anything else unchanged (for :func:`check_fields` to judge)."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def check_fields(config: Any) -> None:
    """Check every field of the dataclass instance ``config`` against its annotation."""
    hints = _hints(type(config))
    for f in fields(config):
        check_value(getattr(config, f.name), hints[f.name], f"{type(config).__name__}.{f.name}")


def check_value(value: Any, hint: Any, where: str) -> None:
    """Check one ``value`` against the annotation ``hint`` (rules above); the error names
    ``where`` (e.g. ``"TrainConfig.lr"``)."""
    problem = _problem(value, hint)
    if problem is not None:
        raise ValueError(f"{where} must be {problem}, got {_show(value)}")


def check_known(cls: type, values: Iterable[str], *, exclude: Iterable[str] = ()) -> None:
    """Refuse keys of ``values`` that are not fields of the dataclass ``cls`` (or are in
    ``exclude``), listing the valid ones."""
    known = {f.name for f in fields(cls)} - set(exclude)
    if unknown := sorted(set(values) - known):
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(known)}")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of the dataclass ``cls`` (and of its dataclass bases),
    on one line, by field name; a field without one is absent. The string literal right after
    an annotated field is its documentation (PEP 257's attribute docstrings, as ``tyro`` and
    Sphinx read them)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        statements = body.body if isinstance(body, ast.ClassDef) else []
        for field, doc in zip(statements, statements[1:]):
            if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) \
                    and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) \
                    and isinstance(doc.value.value, str):
                docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else \
        f"{text} ({type(value).__name__})"


_NAMES = {int: "an integer", float: "a finite number", str: "a string",
          bool: "true or false"}


def _problem(value: Any, hint: Any) -> str | None:
    """What ``value`` must be to match ``hint``, or None when it matches."""
    if hint is Any:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = [_problem(value, a) for a in options]
        if any(p is None for p in problems):
            return None
        return " or ".join(problems) + (" or null" if type(None) in args else "")
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return "a list"
        element = args[0] if args else Any
        for i, item in enumerate(value):
            if (problem := _problem(item, element)) is not None:
                return f"a list whose items are {problem} (item {i} is {_show(item)})"
        return None
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            return "a mapping (a JSON object such as {\"key\": value})"
        value_hint = args[1] if len(args) == 2 else Any
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a mapping with string keys (key {key!r} is not)"
            if (problem := _problem(item, value_hint)) is not None:
                return f"a mapping whose values are {problem} ({key!r} is {_show(item)})"
        return None
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif hint is float:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and math.isfinite(value))
    elif isinstance(hint, type):
        ok = isinstance(value, hint)
    elif isinstance(origin, type):  # e.g. os.PathLike[str]
        ok = isinstance(value, origin)
    else:  # pragma: no cover - an annotation this checker does not know
        raise TypeError(f"config_checks: unsupported annotation {hint!r}")
    return None if ok else _NAMES.get(hint, f"a {getattr(hint, '__name__', hint)}")
