"""The event record every detector writes, and the bookkeeping of a batch run.

An event is a frozen dataclass that mixes in :class:`EventRecord` and has at least
``event_id``, ``group`` (``asn:AS1234`` / ``cc:IR``), ``start``, ``detected_at``, ``end``
(None while ongoing), ``affected`` and ``evidence``, besides its detector's own fields.

Its JSON (the API, the webhooks and the stored body) holds the fields in the order the
dataclass declares them, with ``group_kind`` and ``group_key`` after ``group`` and ``ongoing``
after ``end``; a field's type says how it is written and read back:

=====================  ==============  ===============================================
type                   written as      read back (missing key)
=====================  ==============  ===============================================
``str``, ``float``     itself          ``str()`` / ``float()`` (an error)
``float | None``       itself          ``float()`` or None (None)
``int``                itself          ``int()`` (0)
``tuple[str, ...]``    a list          a tuple of ``str()`` (empty)
``dict[str, Any]``     a shallow copy  a shallow copy (empty)
=====================  ==============  ===============================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, Generic, Literal, Protocol, Self, TypeVar, get_type_hints

Transition = Literal["opened", "updated", "closed"]
"""What one detector step did to a group's event (None: nothing)."""


def group_names(asn: str, cc: str) -> list[str]:
    """The groups an observation counts in: its network and its country, when known."""
    out = []
    if asn and asn != "AS0":
        out.append(f"asn:{asn}")
    if cc and cc != "ZZ":
        out.append(f"cc:{cc}")
    return out


def stable_id(*parts: str) -> str:
    """An event id that a recomputation finds again (so it updates, never duplicates)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# ---- JSON --------------------------------------------------------------------------------------
Loader = Callable[[Mapping[str, Any], str], Any]


def _same(value: Any) -> Any:
    return value


def _optional_float(d: Mapping[str, Any], name: str) -> float | None:
    return None if d.get(name) is None else float(d[name])


# (type, how it is written, how it is read back from the JSON object and the field's name)
_CODECS: tuple[tuple[Any, Callable[[Any], Any], Loader], ...] = (
    (str, _same, lambda d, name: str(d[name])),
    (float, _same, lambda d, name: float(d[name])),
    (float | None, _same, _optional_float),
    (int, _same, lambda d, name: int(d.get(name, 0))),
    (tuple[str, ...], list, lambda d, name: tuple(str(p) for p in d.get(name, []))),
    (dict[str, Any], dict, lambda d, name: dict(d.get(name, {}))),
)


Layout = tuple[tuple[str, Callable[[Any], Any], Loader], ...]
_LAYOUTS: dict[type, Layout] = {}


def _layout(cls: type) -> Layout:
    """Each field of an event class with its writer and reader, in declaration order."""
    known = _LAYOUTS.get(cls)
    if known is not None:
        return known
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        for kind, write, read in _CODECS:
            if hints[f.name] == kind:
                out.append((f.name, write, read))
                break
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no JSON form for {hints[f.name]!r}")
    _LAYOUTS[cls] = tuple(out)
    return _LAYOUTS[cls]


class EventRecord:
    """Mixed into a detector's frozen event dataclass: ``ongoing`` and the JSON form."""

    __slots__ = ()
    event_id: str
    group: str
    start: float
    end: float | None

    @property
    def ongoing(self) -> bool:
        return self.end is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, write, _ in _layout(type(self)):
            out[name] = write(getattr(self, name))
            if name == "group":
                kind, _, key = self.group.partition(":")
                out["group_kind"] = kind
                out["group_key"] = key
            elif name == "end":
                out["ongoing"] = self.ongoing
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Self:
        values = {name: read(d, name) for name, _, read in _layout(cls)}
        return cls(**values)


# ---- a batch run -------------------------------------------------------------------------------
class Dated(Protocol):
    @property
    def group(self) -> str: ...

    @property
    def start(self) -> float: ...


E = TypeVar("E", bound=Dated)


class EventLog(Generic[E]):
    """The events of a batch run over several groups: each one closed on the way and the
    one each group still has open at its end, oldest start first."""

    def __init__(self) -> None:
        self._events: list[E] = []

    def step(self, transition: Transition | None, event: E | None) -> None:
        if transition == "closed" and event is not None:
            self._events.append(event)

    def end_of_group(self, open_event: E | None) -> None:
        if open_event is not None:
            self._events.append(open_event)

    def events(self) -> list[E]:
        return sorted(self._events, key=lambda e: (e.start, e.group))
