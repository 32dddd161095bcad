"""A fast yes/no check compiled from the measurement JSON Schema; jsonschema stays the judge.

Profiling the ingest showed ``jsonschema`` validation at ~115 µs per record, as much as the
Ed25519 verification itself.  The schema file (agent/schema/measurement.schema.json) uses a
small set of keywords, so it compiles into nested closures that answer "valid?" in a few
microseconds.  The contract stays the file:

* only keywords this module understands are compiled; any other keyword makes
  :func:`compile_schema` raise :class:`Unsupported`, and the caller falls back to jsonschema;
* a record the fast check rejects is re-checked by jsonschema
  (``agent.wire.envelope.validate_record``),
  which names the violation, and jsonschema's answer wins;
* semantics follow jsonschema's Python implementation exactly (``pattern`` uses ``re.search``,
  booleans are not numbers, ``1.0`` is an integer, enum equality distinguishes ``True`` from
  ``1``); tests/unit/test_schemacheck.py compares both on generated records.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "examples", "default", "format"}
)
# "format" is an annotation only in draft 2020-12 unless a format checker is configured, which
# agent.wire.envelope does not do: ignoring it matches jsonschema's behaviour there.


class Unsupported(ValueError):
    """The schema uses a keyword this compiler does not implement."""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_integer(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, float) and v.is_integer()


_TYPES: Mapping[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": _is_number,
    "integer": _is_integer,
}


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON Schema (and jsonschema) define it: True is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    return bool(a == b)


def _type_check(spec: Any) -> Check:
    names = [spec] if isinstance(spec, str) else list(spec)
    try:
        checks = [_TYPES[n] for n in names]
    except KeyError as exc:
        raise Unsupported(f"unknown type {exc}") from None
    if len(checks) == 1:
        return checks[0]
    if set(names) <= {"string", "null"}:
        return lambda v: v is None or isinstance(v, str)
    return lambda v: any(c(v) for c in checks)


def _enum_check(values: list[Any]) -> Check:
    if all(v is None or isinstance(v, str) for v in values):
        strings = frozenset(v for v in values if v is not None)
        allow_null = any(v is None for v in values)
        return lambda v: (v is None and allow_null) or (isinstance(v, str) and v in strings)
    return lambda v: any(json_equal(v, e) for e in values)


def _const(c: Any) -> Check:
    return lambda v: json_equal(v, c)


def _pattern(p: str) -> Check:
    rx = re.compile(p)
    return lambda v: not isinstance(v, str) or rx.search(v) is not None


def _max_length(n: int) -> Check:
    return lambda v: not isinstance(v, str) or len(v) <= n


def _min_length(n: int) -> Check:
    return lambda v: not isinstance(v, str) or len(v) >= n


def _minimum(n: float) -> Check:
    return lambda v: not _is_number(v) or v >= n


def _maximum(n: float) -> Check:
    return lambda v: not _is_number(v) or v <= n


def _exclusive_minimum(n: float) -> Check:
    return lambda v: not _is_number(v) or v > n


def _exclusive_maximum(n: float) -> Check:
    return lambda v: not _is_number(v) or v < n


def _max_items(n: int) -> Check:
    return lambda v: not isinstance(v, list) or len(v) <= n


def _min_items(n: int) -> Check:
    return lambda v: not isinstance(v, list) or len(v) >= n


def _items(item: Check) -> Check:
    return lambda v: not isinstance(v, list) or all(item(x) for x in v)


_SIMPLE: Mapping[str, Callable[[Any], Check]] = {
    "const": _const,
    "pattern": _pattern,
    "maxLength": _max_length,
    "minLength": _min_length,
    "minimum": _minimum,
    "maximum": _maximum,
    "exclusiveMinimum": _exclusive_minimum,
    "exclusiveMaximum": _exclusive_maximum,
    "maxItems": _max_items,
    "minItems": _min_items,
}


def _object_check(node: Mapping[str, Any]) -> Check | None:
    """One closure for all object keywords, so each instance dict is walked once."""
    keys = {"properties", "additionalProperties", "required", "maxProperties", "minProperties"}
    if not keys & node.keys():
        return None
    props: dict[str, Check] = {
        name: compile_node(sub) for name, sub in node.get("properties", {}).items()
    }
    additional = node.get("additionalProperties", True)
    extra: Check | None = None if additional is True else compile_node(additional)
    required = tuple(node.get("required", ()))
    max_props = node.get("maxProperties")
    min_props = node.get("minProperties", 0)

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        n = len(v)
        if (max_props is not None and n > max_props) or n < min_props:
            return False
        for name in required:
            if name not in v:
                return False
        for name, value in v.items():
            sub = props.get(name)
            if sub is not None:
                if not sub(value):
                    return False
            elif extra is not None and not extra(value):
                return False
        return True

    return check


_OBJECT_KEYS = frozenset(
    {"properties", "additionalProperties", "required", "maxProperties", "minProperties"}
)


def _keyword_check(key: str, value: Any) -> Check | None:
    """The check one keyword makes (None: an annotation or an object keyword, done apart)."""
    if key in _ANNOTATIONS or key in _OBJECT_KEYS:
        return None
    if key == "type":
        return _type_check(value)
    if key == "enum":
        return _enum_check(list(value))
    if key in _SIMPLE:
        return _SIMPLE[key](value)
    if key == "items":
        return _items(compile_node(value))
    raise Unsupported(f"keyword {key!r} is not compiled")


def _all_of(checks: list[Check]) -> Check:
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda v: a(v) and b(v)
    frozen = tuple(checks)

    def every(v: Any) -> bool:
        for c in frozen:  # noqa: SIM110 - a plain loop: all() with a generator is slower
            if not c(v):
                return False
        return True

    return every


def compile_node(node: Any) -> Check:
    """Compile one schema node; raises Unsupported for keywords outside the known set."""
    if node is True:
        return lambda v: True
    if node is False:
        return lambda v: False
    if not isinstance(node, dict):
        raise Unsupported(f"schema node is not an object: {node!r}")
    checks = [c for key, value in node.items() if (c := _keyword_check(key, value)) is not None]
    obj = _object_check(node)
    if obj is not None:
        checks.append(obj)
    return _all_of(checks)


def compile_schema(schema: Mapping[str, Any]) -> Check:
    """A predicate equivalent to ``jsonschema.Draft202012Validator(schema).is_valid``."""
    return compile_node(dict(schema))
