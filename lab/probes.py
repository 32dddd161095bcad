"""Test probes for the collector tests: a key, its probe id, records and signed envelopes.

Built only from the agent's wire format (agent.wire.envelope), as a real probe would sign.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.wire import envelope as wire
from agent.wire.topics import measurements_topic, status_topic


def iso(ts: float) -> str:
    """Unix seconds -> the schema's RFC 3339 UTC form."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class TestProbe:
    __test__ = False  # not a pytest test class

    key: Ed25519PrivateKey
    probe_id: str

    @classmethod
    def new(cls) -> TestProbe:
        key = Ed25519PrivateKey.generate()
        return cls(key, wire.probe_id_for(key.public_key()))

    @property
    def public_raw(self) -> bytes:
        return wire.raw_public_key(self.key.public_key())

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode("ascii")

    @property
    def topic(self) -> str:
        return measurements_topic(self.probe_id)

    @property
    def status_topic(self) -> str:
        return status_topic(self.probe_id)

    def record(self, **overrides: Any) -> dict[str, Any]:
        """A schema-valid web_connectivity record; keyword arguments replace fields."""
        start = overrides.pop("start", None)
        rec: dict[str, Any] = {
            "measurement_id": wire.uuid7(),
            "test_name": "web_connectivity",
            "test_version": "0.1.0",
            "input": "https://www.example.com/news",
            "category_code": "NEWS",
            "probe_id": self.probe_id,
            "probe_asn": "AS44244",
            "probe_cc": "IR",
            "probe_network_name": "Irancell",
            "resolver_asn": "AS44244",
            "measurement_start_time": iso(time.time() if start is None else start),
            "test_runtime": 1.25,
            "software_name": "vigil-agent",
            "software_version": "0.1.0",
            "test_keys": {
                "queries": [{"hostname": "www.example.com", "answers": ["198.18.0.10"]}],
                "tcp_connect": [{"ip": "198.18.0.10", "port": 443, "failure": None}],
                "tls_handshakes": [{"failure": "connection_reset", "t": 0.21}],
            },
            "verdict": {
                "status": "blocked",
                "blocking": "tls",
                "reason": "tls.sni_reset",
                "confirmed": False,
            },
        }
        rec.update(overrides)
        return rec

    def sign(self, payload: bytes, keyid: str | None = None) -> bytes:
        return wire.sign_envelope(payload, self.key, keyid or self.probe_id)

    def envelope(self, record: dict[str, Any] | None = None, **overrides: Any) -> bytes:
        rec = self.record(**overrides) if record is None else record
        return self.sign(wire.encode_record(rec))
