"""What an experiment may use while it measures: the typed contract between runner and tests.

The runner (``agent.engine.runner.MeasureContext``) implements :class:`MeasurementContext`;
tests implement it with doubles.  An experiment reaches the network only through ``agent.net``
with these settings, and the control helper only through :class:`HelperClient`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from agent.config import AgentConfig, NetConfig
from agent.net.dns import ResolverAddress
from agent.net.tls import TLSContexts
from agent.wire.helper_api import ClientInfo, ControlResponse


class HelperClient(Protocol):
    """The control helper as experiments see it (``agent.engine.helper_client.ControlClient``)."""

    base_url: str

    async def control(
        self, url: str, tcp_connect: Sequence[str], body_cap: int | None = None
    ) -> ControlResponse: ...

    async def request_json(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]: ...


class Budget(Protocol):
    """The run's data budget: how many bytes may still be moved (None: no limit)."""

    def remaining(self) -> int | None: ...


class MeasurementContext(Protocol):
    """Services and settings every experiment's ``run(target, ctx)`` receives."""

    net: NetConfig
    tls: TLSContexts
    resolver: ResolverAddress
    control: HelperClient | None
    config: AgentConfig | None

    @property
    def budget(self) -> Budget: ...

    def on_bytes(self, n: int) -> None:
        """Count bytes moved on the wire against the data budget."""

    def note_local_address(self, ip: str | None) -> None:
        """The local end of a socket the experiment opened (scrubbed from records)."""

    def observe_client(self, client: ClientInfo) -> None:
        """The helper's view of the probe's network (ASN, country)."""


def config_section(ctx: MeasurementContext, name: str) -> Mapping[str, Any]:
    """A module's own config section (``[throttling]``, ``[apps]``...), empty without config."""
    return {} if ctx.config is None else ctx.config.section(name)
