"""Vigil's censorship lab: simulated censors in Linux network namespaces (issue 3).

``python -m tests.lab up|down|status|run|exec``; from Python::

    from tests.lab import Lab
    lab = Lab.up()              # scenarios.toml (+ scenarios_issue5.toml, selfcheck.toml)
    ...                         # lab.agent_argv(...), lab.client(...), lab.shutdown()...
    lab.down()

Nothing heavy is imported here, so ``import tests.lab.<module>`` stays cheap for the servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.lab.lab import Lab

__all__ = ["Lab"]


def __getattr__(name: str) -> Any:
    if name == "Lab":
        from tests.lab.lab import Lab

        return Lab
    raise AttributeError(name)
