"""Experiment registry and the interface every test implements.

An experiment measures (all network I/O, through ``agent.net``) and analyses (pure, no I/O).
It raises only when it could not run at all; censorship is data in the test keys, never an
exception (the same rule as OONI's ``model.ExperimentMeasurer``).

Register with ``@register`` at import time; ``load_all()`` imports the built-in modules.  Each
experiment declares what it measures (:class:`InputPolicy`) and whether it runs when nobody
names it (``default_enabled``); ``vigil-agent run --once`` and the long-running agent both
choose tests and inputs from these declarations (:func:`enabled_by_default`).
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from agent.wire.record import Target, Verdict

if TYPE_CHECKING:
    from agent.experiments.context import MeasurementContext


class InputPolicy(enum.StrEnum):
    """Where an experiment's inputs come from when nobody names them."""

    TEST_LISTS = "test_lists"  # every URL of the Citizen Lab lists (web_connectivity)
    OWN = "own"  # its own inputs (``default_targets``): app endpoint lists, connectivity anchors
    SELECTED_HOSTS = "selected_hosts"  # a few hosts picked from the lists (throttling: the
    # operator's names and throttling-prone categories); on the command line, only lists named


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
    input_policy: ClassVar[InputPolicy]
    default_enabled: ClassVar[bool]  # runs when no test is named
    category_code: ClassVar[str | None]  # what an input-less test measures, for opt-outs
    # True: the runner measures one job of this experiment at a time (bulk downloads sharing
    # the access link would blur each other); the wait for its turn is no part of its timeout
    one_at_a_time: ClassVar[bool]

    @classmethod
    def default_targets(cls) -> list[Target]:
        """The experiment's own inputs (``InputPolicy.OWN``); one input-less run otherwise."""
        ...

    async def run(self, target: Target, ctx: MeasurementContext) -> Outcome:
        """Measure ``target`` using the services in ``ctx``."""
        ...


class ExperimentBase:
    """Defaults for an experiment class: measures the lists, on by default, no own inputs."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"
    input_policy: ClassVar[InputPolicy] = InputPolicy.TEST_LISTS
    default_enabled: ClassVar[bool] = True
    # The Citizen Lab category of what an input-less test measures (apps: COMT), for the
    # volunteer's category opt-out; None: the inputs carry their own.
    category_code: ClassVar[str | None] = None
    one_at_a_time: ClassVar[bool] = False

    @classmethod
    def default_targets(cls) -> list[Target]:
        return [Target(input=None)]


_REGISTRY: dict[str, type[Experiment]] = {}

# Built-in experiment modules, imported by load_all(); each registers its class(es).
BUILTIN_MODULES: tuple[str, ...] = (
    "agent.experiments.web_connectivity",
    "agent.experiments.throttling",
    "agent.experiments.connectivity",
    "agent.experiments.apps",
    "agent.experiments.censor_trace",
)


def register(cls: type[Experiment]) -> type[Experiment]:
    for attr in ("name", "version", "input_policy", "default_enabled", "default_targets"):
        if not hasattr(cls, attr):
            raise TypeError(f"experiment class {cls.__qualname__} lacks {attr!r}")
    if not cls.name:
        raise TypeError(f"experiment class {cls.__qualname__} has no name")
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


def enabled_by_default(
    available: Mapping[str, type[Experiment]] | None = None,
) -> list[type[Experiment]]:
    """The tests that run when none is named, by name: on by default and able to find their
    own inputs (the lists, or their own).  ``run --once`` and the long-running agent agree."""
    reg = load_all() if available is None else available
    return [
        cls for _, cls in sorted(reg.items())
        if cls.default_enabled and cls.input_policy is not InputPolicy.SELECTED_HOSTS
    ]
