"""The MQTT topic layout, the one place both sides read it from.

::

    vigil/v1/probes/{probe_id}/measurements   QoS 1, signed records        probe -> collectors
    vigil/v1/probes/{probe_id}/status         retained online, Last Will   probe -> collectors
    vigil/v1/probes/{probe_id}/commands       retained, operator-signed    collector -> probe
    vigil/v1/probes/{probe_id}/receipts       QoS 1, what was stored        collector -> probe
    vigil/v1/campaigns/{CC}                   retained, operator-signed    collector -> probes

Collectors subscribe through a shared subscription (``$share/{group}/...``) so several processes
split the load.  The broker's ACL (configs/mosquitto/) lets a probe write only under its own id.
"""

from __future__ import annotations

from typing import Final

ROOT: Final = "vigil/v1"
PROBES: Final = f"{ROOT}/probes"
CAMPAIGNS: Final = f"{ROOT}/campaigns"

MEASUREMENTS: Final = "measurements"
STATUS: Final = "status"
COMMANDS: Final = "commands"
RECEIPTS: Final = "receipts"

MEASUREMENTS_FILTER: Final = f"{PROBES}/+/{MEASUREMENTS}"
STATUS_FILTER: Final = f"{PROBES}/+/{STATUS}"
DEFAULT_SHARE_GROUP: Final = "collectors"


def probe_topic(probe_id: str, kind: str) -> str:
    """``vigil/v1/probes/{probe_id}/{kind}``."""
    return f"{PROBES}/{probe_id}/{kind}"


def measurements_topic(probe_id: str) -> str:
    return probe_topic(probe_id, MEASUREMENTS)


def status_topic(probe_id: str) -> str:
    return probe_topic(probe_id, STATUS)


def commands_topic(probe_id: str) -> str:
    return probe_topic(probe_id, COMMANDS)


def receipts_topic(probe_id: str) -> str:
    return probe_topic(probe_id, RECEIPTS)


def country_topic(cc: str) -> str:
    """Where campaigns for every probe of a country are published."""
    return f"{CAMPAIGNS}/{cc.upper()}"


def shared(group: str, topic_filter: str) -> str:
    """A shared-subscription filter (MQTT v5), or the plain filter when ``group`` is empty."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter


def topic_parts(topic: str) -> tuple[str, str] | None:
    """``vigil/v1/probes/<id>/<kind>`` -> (id, kind), else None."""
    prefix = PROBES + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    if len(rest) != 2 or not rest[0]:
        return None
    return rest[0], rest[1]
