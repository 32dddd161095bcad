"""The agent's one strict config check: every section of the file, each by its owner's parser.

:func:`agent.config.load` refuses a section no part of the agent owns (``[schedular]``) and
checks its own sections' keys; the sections other parts own (``[mqtt]``, ``[scheduler]``,
``[throttling]``...) are checked here by the parser that will use them, so a misspelt key
(``max_roundz``) is an error at start-up and in ``vigil-agent doctor``, with the file and line,
instead of being found (or silently ignored) when the experiment first runs.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.config import AgentConfig
from agent.daemon.backend import broker_settings
from agent.daemon.settings import settings
from agent.errors import ConfigError, locate
from agent.experiments.apps import directories
from agent.experiments.connectivity import ConnectivitySettings
from agent.experiments.throttling.measure import ThrottlingSettings
from agent.uplink.outbox import limits_from_config

CHECKS: dict[str, Callable[[AgentConfig], object]] = {
    "mqtt": broker_settings,
    "outbox": lambda c: limits_from_config(c.section("outbox")),
    "scheduler": settings,  # [scheduler] and [campaigns] together
    "campaigns": settings,
    "throttling": lambda c: ThrottlingSettings.from_section(c.section("throttling")),
    "connectivity": lambda c: ConnectivitySettings.from_section(c.section("connectivity")),
    "apps": directories,
}


def check_all(config: AgentConfig) -> None:
    """Run every section's parser; ConfigError naming the file and line of the first bad one."""
    for section in dict.fromkeys(CHECKS[name] for name in CHECKS if name in config.sections):
        try:
            section(config)
        except ConfigError as exc:
            where = str(config.path) if config.path is not None else "config"
            message = str(exc)
            if config.path is not None and not message.startswith(where):
                message = f"{locate(config.path, message)}: {message}"
            raise ConfigError(message) from None
