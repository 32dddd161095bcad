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
from agent.errors import ConfigError, locate

# Each parser is imported only when its section is in the file: `doctor` and `--help` stay
# light (the MQTT and HTTP stacks load only for a config that has [mqtt] or an experiment's
# section).


def _mqtt(c: AgentConfig) -> object:
    from agent.daemon.backend import broker_settings

    return broker_settings(c)


def _outbox(c: AgentConfig) -> object:
    from agent.uplink.outbox import limits_from_config

    return limits_from_config(c.section("outbox"))


def _scheduler(c: AgentConfig) -> object:  # [scheduler] and [campaigns] together
    from agent.daemon.settings import settings

    return settings(c)


def _throttling(c: AgentConfig) -> object:
    from agent.experiments.throttling.measure import ThrottlingSettings

    return ThrottlingSettings.from_section(c.section("throttling"))


def _connectivity(c: AgentConfig) -> object:
    from agent.experiments.connectivity import ConnectivitySettings

    return ConnectivitySettings.from_section(c.section("connectivity"))


def _apps(c: AgentConfig) -> object:
    from agent.experiments.apps import directories

    return directories(c)


def _packets(c: AgentConfig) -> object:
    from agent.net.rawprobe.client import PacketSettings

    return PacketSettings.from_section(c.section("packets"))


def _censor_trace(c: AgentConfig) -> object:
    from agent.experiments.censor_trace import TraceSettings

    return TraceSettings.from_section(c.section("censor_trace"))


CHECKS: dict[str, Callable[[AgentConfig], object]] = {
    "mqtt": _mqtt,
    "outbox": _outbox,
    "scheduler": _scheduler,
    "campaigns": _scheduler,
    "throttling": _throttling,
    "connectivity": _connectivity,
    "apps": _apps,
    "packets": _packets,
    "censor_trace": _censor_trace,
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
