"""The MQTT topic layout, the one place both sides read it from.

::

    vigil/v1/probes/{probe_id}/measurements   QoS 1, signed records        probe -> collectors
    vigil/v1/probes/{probe_id}/status         retained online, Last Will   probe -> collectors
    vigil/v1/probes/{probe_id}/commands       retained, operator-signed    collector -> probe
    vigil/v1/probes/{probe_id}/receipts       QoS 1, what was stored        collector -> probe
    vigil/v1/campaigns/{CC}                   retained, operator-signed    collector -> probes

Collectors subscribe through a shared subscription (``$share/{group}/...``) so several processes
split the load.  The broker's ACL (configs/mosquitto/) lets a probe write only its own
measurements and status topics.

**Mount point.**  The broker's probe listeners prefix every topic a probe names with
:data:`PROBE_MOUNT` (Mosquitto ``mount_point``), so a probe can never name a shared subscription
and take (and drop, being refused by the read ACL) the collectors' messages.  Probes keep using
the names above; collectors, on their own listener, see and use them with the prefix
(:func:`at_broker`, :data:`COLLECTOR_MEASUREMENTS_FILTER`).  Mosquitto 2.0.11 does not remove the
prefix from what it delivers to a probe, later versions do: :func:`probe_view` accepts both.
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

# Mosquitto mount_point of the probe listeners (configs/mosquitto/vigil.conf.in, *.acl).
PROBE_MOUNT: Final = "edge/"
COLLECTOR_MEASUREMENTS_FILTER: Final = PROBE_MOUNT + MEASUREMENTS_FILTER
COLLECTOR_STATUS_FILTER: Final = PROBE_MOUNT + STATUS_FILTER


def at_broker(topic: str) -> str:
    """The name a probe topic has on the collectors' listener (with the probe mount point)."""
    return PROBE_MOUNT + topic


def probe_view(topic: str) -> str:
    """A topic as a probe names it: the mount point removed if the broker left it on."""
    return topic[len(PROBE_MOUNT) :] if topic.startswith(PROBE_MOUNT) else topic


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
    """``[edge/]vigil/v1/probes/<id>/<kind>`` -> (id, kind), else None."""
    topic = probe_view(topic)
    prefix = PROBES + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    if len(rest) != 2 or not rest[0]:
        return None
    return rest[0], rest[1]
