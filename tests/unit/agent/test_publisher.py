"""Publisher pieces that need no broker: backoff, settings, reason codes, topics."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.uplink.publisher import (
    RC_NOT_AUTHORIZED,
    RC_PACKET_TOO_LARGE,
    PublisherSettings,
    _puback_code_valid,
    backoff_delay,
    reason_name,
    settings_from_config,
)
from agent.wire.topics import commands_topic, measurements_topic, status_topic


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(60.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 60.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 40  # jittered: probes do not reconnect in lockstep
    assert backoff_delay(10_000, 1.0, 300.0, rng) <= 300.0


def test_topics() -> None:
    assert measurements_topic("abc") == "vigil/v1/probes/abc/measurements"
    assert status_topic("abc") == "vigil/v1/probes/abc/status"
    assert commands_topic("abc") == "vigil/v1/probes/abc/commands"


def test_puback_codes_paho_rejects_are_the_ones_we_patch() -> None:
    assert _puback_code_valid(0) and _puback_code_valid(0x10)
    assert _puback_code_valid(RC_NOT_AUTHORIZED)
    assert not _puback_code_valid(RC_PACKET_TOO_LARGE)  # what Mosquitto 2.0.11 sends anyway
    assert reason_name(RC_PACKET_TOO_LARGE) == "packet too large"
    assert reason_name(250) == "reason code 250"


def test_settings_from_config(tmp_path: Path) -> None:
    assert settings_from_config({}) is None
    (tmp_path / "pw").write_text("s3cret\nignored\n")
    s = settings_from_config(
        {"host": "broker.example", "port": 8883, "ca_file": "ca.pem", "password_file": "pw",
         "keepalive": 30, "ack_timeout": 10},
        base_dir=tmp_path,
    )
    assert s is not None
    assert s.ca_file == tmp_path / "ca.pem" and s.password == "s3cret"
    assert s.ack_timeout == 10.0 and isinstance(s.ack_timeout, float)
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"port": 1}, "needs a host"),
        ({"host": "h", "prot": 1}, "unknown key"),
        ({"host": "h", "port": "8883"}, "must be a int"),
        ({"host": "h", "port": True}, "must be a int"),
        ({"host": "h", "port": 0}, "positive"),
        ({"host": "h", "ca_file": ""}, "path"),
        ({"host": "h", "password": "a", "password_file": "/nonexistent"}, "exclusive"),
        ({"host": "h", "password_file": "/nonexistent/pw"}, "password_file"),
        ({"host": "h", "cert_file": "c.pem"}, "go together"),
        ({"host": "h", "cert_file": "c", "key_file": "k", "password": "p"}, "not both"),
        ({"host": "h", "max_inflight": 5000}, "positive"),
    ],
)
def test_bad_settings_are_config_errors(table: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        settings_from_config(table)


def test_missing_tls_files_are_config_errors(tmp_path: Path) -> None:
    s = PublisherSettings(host="h", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="TLS"):
        s.tls_context()


async def test_tee_sink_tries_every_sink_then_raises_the_first_error() -> None:
    from agent.errors import OutboxError
    from agent.uplink.oneshot import TeeSink

    got: list[str] = []

    class Broken:
        async def put(self, record: object) -> None:
            raise OutboxError("disk full")

    class Good:
        async def put(self, record: object) -> None:
            got.append("ok")

    with pytest.raises(OutboxError, match="disk full"):
        await TeeSink(Broken(), Good()).put(object())  # type: ignore[arg-type]
    assert got == ["ok"]


def test_the_paho_internals_the_publisher_hooks_still_exist() -> None:
    """The fence around the publisher's hook into paho: an upgrade that renames the PUBACK
    handler or the packet buffer fails here, not silently in the field."""
    import inspect

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    assert callable(getattr(client, "_handle_pubackcomp", None))
    assert isinstance(getattr(client, "_in_packet", None), dict)
    assert "packet" in client._in_packet
    assert list(inspect.signature(client._handle_pubackcomp).parameters) == ["cmd"]
