"""Which hosts the scheduler tests for throttling (pure).

Throttling targets what people use to talk and to watch: social networks, messaging, media
sharing, news (Russia's 2021 Twitter throttling, Iran's and Turkey's after protests and
elections).  So the scheduler tests the hosts of list entries in those Citizen Lab categories
plus the names the operator lists in ``[throttling] names``, one measurement per host (each
costs up to the data budget), configured names first, at most ``limit`` hosts per run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from agent.wire.record import Target

THROTTLING_PRONE = frozenset({"GRP", "COMT", "MMED", "NEWS", "ANON", "POLR"})


def select_targets(
    listed: Iterable[Target],
    names: Sequence[str] = (),
    categories: frozenset[str] = THROTTLING_PRONE,
    limit: int = 20,
) -> list[Target]:
    out: list[Target] = []
    seen: set[str] = set()
    for name in names:
        host = name.strip().lower().rstrip(".")
        if host and host not in seen:
            seen.add(host)
            out.append(Target(input=f"https://{host}/", category_code=None, source="config"))
    for t in listed:
        if t.input is None or (t.category_code or "") not in categories:
            continue
        try:
            host = (urlsplit(t.input).hostname or "").lower()
        except ValueError:
            continue
        if host and host not in seen:
            seen.add(host)
            out.append(t)
    return out[: max(0, limit)]
