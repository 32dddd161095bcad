"""Experiment registry and the interface every test implements.

An experiment measures (all network I/O, through ``agent.net``) and analyses (pure, no I/O).
It raises only when it could not run at all; censorship is data in the test keys, never an
exception (the same rule as OONI's ``model.ExperimentMeasurer``).

Register with ``@register`` at import time; ``load_all()`` imports the built-in modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from agent.wire.record import Target, Verdict


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one experiment run produced: raw evidence plus the verdict derived from it."""

    test_keys: dict[str, Any]
    verdict: Verdict
    annotations: Mapping[str, str] = field(default_factory=dict)


class Experiment(Protocol):
    """Implemented by every test module's experiment class."""

    name: ClassVar[str]
    version: ClassVar[str]  # semver; bump when test_keys or analysis changes

    async def run(self, target: Target, ctx: Any) -> Outcome:
        """Measure ``target`` using the services in ``ctx`` (agent.engine.runner.MeasureContext)."""
        ...


_REGISTRY: dict[str, type[Experiment]] = {}

# Built-in experiment modules, imported by load_all(); each registers its class(es).
BUILTIN_MODULES: tuple[str, ...] = (
    "agent.experiments.web_connectivity",
    "agent.experiments.throttling",
    "agent.experiments.connectivity",
    "agent.experiments.apps",
)


def register(cls: type[Experiment]) -> type[Experiment]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"experiment {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def load_all(modules: tuple[str, ...] = BUILTIN_MODULES) -> Mapping[str, type[Experiment]]:
    for name in modules:
        importlib.import_module(name)
    return dict(_REGISTRY)


def get(name: str) -> type[Experiment]:
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        from agent.errors import UsageError

        raise UsageError(f"unknown test {name!r} (known: {known})") from None


Factory = Callable[[], Experiment]
