"""Let a measurement give back its concurrency slot while it only waits.

web_connectivity keeps its DNS socket open for half a second after the first reply so that an
injected second answer is seen.  During that window it sends nothing and connects nowhere, so
holding one of the run's few concurrency slots would only idle the Raspberry Pi.  The runner
puts a release callback in a context variable for each job; the experiment calls
:func:`release_slot` when only passive waiting is left, and the runner starts the next job.
The job still counts for politeness and finishes normally.  Outside a runner (a single
measurement) this is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

_RELEASE: ContextVar[Callable[[], None] | None] = ContextVar("vigil_slot_release", default=None)


def bind(release: Callable[[], None]) -> None:
    """Called by the runner at the start of a job's task (the context is the task's own)."""
    _RELEASE.set(release)


def release_slot() -> None:
    """Give the slot back now (idempotent; the runner ignores a second call)."""
    release = _RELEASE.get()
    if release is not None:
        release()
