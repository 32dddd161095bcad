"""Observations of the throttling experiment: the contract between measure() and analyze().

A *transfer* is one download over one TLS connection.  ``kind`` says what it compares:

* ``benign_sni``: the helper's bulk endpoint, SNI = a random benign name (the reference);
* ``target_sni``: the same endpoint and the same bytes, SNI = the target (what a SNI-keyed
  throttle would slow down: Russia's 2021 Twitter throttle matched ``*.twimg.com`` anywhere);
* ``address``: the target's own address with SNI = the target (what an address-keyed throttle
  would slow down), compared with what the control helper measures from outside;
* ``address_parallel``: two downloads from the target's address at the same time (one round
  number for both): a cap on the address is shared by them, a limit of the path's round trip
  or loss applies to each on its own.

Cumulative bytes on the wire are sampled at randomised (exponentially distributed,
memoryless) times, as ndt7/OONI do, so the samples cannot lock onto a shaper's periodic token
refills.  The samples give the *shape* of a transfer; its *rate* always comes from completed
byte counts and elapsed times (``body_bytes`` between ``request_t`` and the end), so a transfer
that ends between two samples still has a rate, and one that failed or ended early has none.

Times are seconds: a transfer's ``t0``/``t`` since the start of the measurement; sample times,
``first_byte_t``, ``request_t`` and ``response_t`` since the transfer's ``t0``.  ``connect_s``
is the TCP handshake (one round trip: the path's RTT as this connection saw it) and ``tls_s``
the TLS handshake.  Rates are bits per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("benign_sni", "target_sni", "address", "address_parallel")


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the transfer's t0 (request sent)
    bytes: int  # cumulative body bytes received at t


@dataclass(frozen=True, slots=True)
class Transfer:
    kind: str  # one of KINDS
    round: int
    server_name: str  # SNI sent
    address: str  # "ip:port" connected to
    failure: str | None  # OONI failure string, None when the transfer ended normally
    t0: float
    t: float
    bytes: int  # body bytes received
    first_byte_t: float | None  # since t0; None when no body byte arrived
    stop: str  # "bytes" (cap reached) | "time" (cap reached) | "eof" | "failure"
    samples: tuple[Sample, ...] = ()
    peer_certificate_sha256: str | None = None
    echoed_server_name: str | None = None  # what the bulk endpoint says it saw in the SNI
    # timings and completed counts (None/0 in records made before they were recorded)
    connect_s: float | None = None  # TCP handshake duration
    tls_s: float | None = None  # TLS handshake duration
    request_t: float | None = None  # request sent, since t0
    response_t: float | None = None  # response head complete, since t0
    first_wire_t: float | None = None  # first wire byte after the request, since t0
    answer_wire_t: float | None = None  # first wire byte of the answer's first record
    pre_answer_bytes: int = 0  # wire bytes after the request that came before the answer
    status_code: int | None = None
    body_bytes: int = 0  # plaintext body bytes received (completed count)
    head_body_bytes: int = 0  # body bytes that came with the response head
    expected_bytes: int | None = None  # Content-Length (or the cap asked for), None: unknown
    failed_at: str | None = None  # "connect" | "tls" | "request" | "body", None: no failure

    @property
    def complete(self) -> bool:
        """Every expected body byte arrived (the page, or the capped share of it)."""
        return self.expected_bytes is not None and self.body_bytes >= self.expected_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "round": self.round,
            "server_name": self.server_name,
            "address": self.address,
            "failure": self.failure,
            "t0": self.t0,
            "t": self.t,
            "bytes": self.bytes,
            "first_byte_t": self.first_byte_t,
            "stop": self.stop,
            "samples": [[s.t, s.bytes] for s in self.samples],
            "peer_certificate_sha256": self.peer_certificate_sha256,
            "echoed_server_name": self.echoed_server_name,
            "connect_s": self.connect_s,
            "tls_s": self.tls_s,
            "request_t": self.request_t,
            "response_t": self.response_t,
            "first_wire_t": self.first_wire_t,
            "answer_wire_t": self.answer_wire_t,
            "pre_answer_bytes": self.pre_answer_bytes,
            "status_code": self.status_code,
            "body_bytes": self.body_bytes,
            "head_body_bytes": self.head_body_bytes,
            "expected_bytes": self.expected_bytes,
            "failed_at": self.failed_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Transfer:
        return cls(
            kind=str(d["kind"]),
            round=int(d["round"]),
            server_name=str(d["server_name"]),
            address=str(d["address"]),
            failure=d["failure"],
            t0=float(d["t0"]),
            t=float(d["t"]),
            bytes=int(d["bytes"]),
            first_byte_t=None if d.get("first_byte_t") is None else float(d["first_byte_t"]),
            stop=str(d["stop"]),
            samples=tuple(Sample(float(t), int(b)) for t, b in d.get("samples", [])),
            peer_certificate_sha256=d.get("peer_certificate_sha256"),
            echoed_server_name=d.get("echoed_server_name"),
            connect_s=_opt_float(d.get("connect_s")),
            tls_s=_opt_float(d.get("tls_s")),
            request_t=_opt_float(d.get("request_t")),
            response_t=_opt_float(d.get("response_t")),
            first_wire_t=_opt_float(d.get("first_wire_t")),
            answer_wire_t=_opt_float(d.get("answer_wire_t")),
            pre_answer_bytes=int(d.get("pre_answer_bytes", 0)),
            status_code=None if d.get("status_code") is None else int(d["status_code"]),
            body_bytes=int(d.get("body_bytes", 0)),
            head_body_bytes=int(d.get("head_body_bytes", 0)),
            expected_bytes=(None if d.get("expected_bytes") is None
                            else int(d["expected_bytes"])),
            failed_at=d.get("failed_at"),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class ControlThroughput:
    """What the control helper measured fetching the target from its uncensored vantage."""

    url: str
    failure: str | None
    bytes: int
    seconds: float  # from first body byte to the end of the transfer
    rate_bps: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "failure": self.failure,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "rate_bps": self.rate_bps,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ControlThroughput:
        rate = d.get("rate_bps")
        return cls(
            url=str(d["url"]),
            failure=d.get("failure"),
            bytes=int(d.get("bytes", 0)),
            seconds=float(d.get("seconds", 0.0)),
            rate_bps=None if rate is None else float(rate),
        )


@dataclass(frozen=True, slots=True)
class ThrottlingObservations:
    target: str  # the host name tested
    input: str  # the URL (or host) as listed
    bulk_endpoint: str | None  # "ip:port" of the helper's bulk endpoint, None if unknown
    benign_sni: str
    transfers: tuple[Transfer, ...] = ()
    control: ControlThroughput | None = None
    control_failure: str | None = None
    bulk_failure: str | None = None  # why the bulk endpoint could not be used at all
    address_failure: str | None = None  # why no address transfer was made (dns failure, ...)
    address_failed_at: str | None = None  # "dns" when the name did not resolve
    baseline_history_bps: tuple[float, ...] = ()  # the probe's recent benign rates
    params: dict[str, Any] = field(default_factory=dict)

    def of_kind(self, kind: str) -> tuple[Transfer, ...]:
        return tuple(t for t in self.transfers if t.kind == kind)

    @property
    def bytes_total(self) -> int:
        return sum(t.bytes for t in self.transfers)

    def to_test_keys(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "bulk_endpoint": self.bulk_endpoint,
            "benign_sni": self.benign_sni,
            "transfers": [t.to_json() for t in self.transfers],
            "control": None if self.control is None else self.control.to_json(),
            "control_failure": self.control_failure,
            "bulk_failure": self.bulk_failure,
            "address_failure": self.address_failure,
            "address_failed_at": self.address_failed_at,
            "baseline_history_bps": list(self.baseline_history_bps),
            "bytes_total": self.bytes_total,
            "params": dict(self.params),
        }

    @classmethod
    def from_test_keys(cls, input_: str, tk: dict[str, Any]) -> ThrottlingObservations:
        control = tk.get("control")
        return cls(
            target=str(tk["target"]),
            input=input_,
            bulk_endpoint=tk.get("bulk_endpoint"),
            benign_sni=str(tk.get("benign_sni", "")),
            transfers=tuple(Transfer.from_json(t) for t in tk.get("transfers", [])),
            control=None if control is None else ControlThroughput.from_json(control),
            control_failure=tk.get("control_failure"),
            bulk_failure=tk.get("bulk_failure"),
            address_failure=tk.get("address_failure"),
            address_failed_at=tk.get("address_failed_at"),
            baseline_history_bps=tuple(float(x) for x in tk.get("baseline_history_bps", [])),
            params=dict(tk.get("params", {})),
        )
