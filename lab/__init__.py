"""Vigil's censorship lab: simulated censors in Linux network namespaces .

``python -m lab up|down|status|run|exec``; from Python::

    from lab import Lab
    lab = Lab.up()              # scenarios.toml (+ scenarios_apps.toml, selfcheck.toml)
    ...                         # lab.agent_argv(...), lab.client(...), lab.shutdown()...
    lab.down()

Nothing heavy is imported here, so ``import lab.<module>`` stays cheap for the servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.lab import Lab

__all__ = ["Lab"]


def __getattr__(name: str) -> Any:
    if name == "Lab":
        from lab.lab import Lab

        return Lab
    raise AttributeError(name)
