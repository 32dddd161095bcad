"""Where a throttling record's benign reference rate is read: missing is never zero."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.slowdowns.rates import MIN_BYTES, benign_rate_bps


def transfer(kind: str = "benign_sni", **over: Any) -> dict[str, Any]:
    tr: dict[str, Any] = {"kind": kind, "round": 0, "server_name": "x.example",
                          "address": "198.18.0.1:443", "failure": None, "t0": 1.0, "t": 2.0,
                          "bytes": 125_000, "first_byte_t": 0.5, "stop": "bytes",
                          "samples": []}
    tr.update(over)
    return tr


# bytes 125,000 over 0.5 s after the first byte: 2 Mbit/s
CASES: list[tuple[str, Any, float | None]] = [
    ("one benign transfer", {"transfers": [transfer()]}, 2_000_000.0),
    ("pooled: total bits over total seconds",
     {"transfers": [transfer(), transfer(bytes=250_000, t=1.75, first_byte_t=0.25)]},
     (125_000 + 250_000) * 8 / (0.5 + 0.5)),
    ("target transfers are not the reference",
     {"transfers": [transfer(kind="target_sni", bytes=10_000_000)]}, None),
    ("failed transfer has no rate", {"transfers": [transfer(failure="connection_reset")]}, None),
    ("too few bytes", {"transfers": [transfer(bytes=MIN_BYTES - 1, stop="eof")]}, None),
    ("ended between two clock ticks", {"transfers": [transfer(t=1.5005)]}, None),
    ("no body byte", {"transfers": [transfer(first_byte_t=None)]}, None),
    ("a failure stop", {"transfers": [transfer(stop="failure")]}, None),
    ("a good one beside a failed one",
     {"transfers": [transfer(failure="generic_timeout_error", bytes=0), transfer()]},
     2_000_000.0),
    ("strings and booleans are not numbers",
     {"transfers": [transfer(bytes="125000"), transfer(t=True)]}, None),
    ("NaN is not a number", {"transfers": [transfer(bytes=math.nan)]}, None),
    ("a busy endpoint's error answer is not a rate",
     {"transfers": [transfer(status_code=503, bytes=20_000)]}, None),
    ("a 2xx answer is", {"transfers": [transfer(status_code=200)]}, 2_000_000.0),
    ("ended before the bytes it expected",
     {"transfers": [transfer(stop="eof", expected_bytes=200_000, body_bytes=120_000)]}, None),
    ("the whole page by EOF", {"transfers": [
        transfer(stop="eof", expected_bytes=120_000, body_bytes=120_000)]}, 2_000_000.0),
    ("agent's published reference when no transfers",
     {"benign_rate": {"kind": "bulk_endpoint_benign_sni", "rate_bps": 5e6}}, 5e6),
    ("agent's published reference with none: missing",
     {"benign_rate": {"rate_bps": None, "why": "failed:connection_reset"}}, None),
    ("agent's reference when the transfers are unusable",
     {"transfers": [transfer(failure="eof_error")], "benign_rate": {"rate_bps": 4e6}}, 4e6),
    ("agent's benign figure when no transfers",
     {"analysis": {"sni": {"benign_bps": 3e6}}}, 3e6),
    ("agent's zero is not a rate", {"analysis": {"sni": {"benign_bps": 0.0}}}, None),
    ("agent's None is not a rate", {"analysis": {"sni": {"benign_bps": None}}}, None),
    ("raw transfers win over the agent's figure",
     {"transfers": [transfer()], "analysis": {"sni": {"benign_bps": 9e9}}}, 2_000_000.0),
    ("nothing at all", {}, None),
    ("not an object", ["transfers"], None),
    ("transfers not a list", {"transfers": "benign_sni"}, None),
]


@pytest.mark.parametrize(("keys", "expected"), [(k, e) for _, k, e in CASES],
                         ids=[name for name, _, _ in CASES])
def test_benign_rate(keys: Any, expected: float | None) -> None:
    got = benign_rate_bps(keys)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["benign_sni", "target_sni", "address"]) | JSONISH,
    "failure": st.none() | st.text(max_size=5), "t0": JSONISH, "t": JSONISH,
    "bytes": JSONISH, "first_byte_t": JSONISH, "stop": JSONISH, "status_code": JSONISH,
    "expected_bytes": JSONISH, "body_bytes": JSONISH,
})


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "transfers": st.lists(FIELDS, max_size=4) | JSONISH,
    "analysis": JSONISH | st.fixed_dictionaries({"sni": st.fixed_dictionaries(
        {"benign_bps": JSONISH})}),
    "benign_rate": JSONISH | st.fixed_dictionaries({"rate_bps": JSONISH}),
}))
def test_any_test_keys_give_a_positive_finite_rate_or_none(keys: dict[str, Any]) -> None:
    got = benign_rate_bps(keys)
    assert got is None or (math.isfinite(got) and got > 0)


def test_reads_the_records_the_agent_writes() -> None:
    """The contract with the agent: test keys from its own model give the benign rate."""
    from agent.experiments.throttling.model import Sample, ThrottlingObservations, Transfer

    def tr(kind: str, rnd: int, size: int, seconds: float) -> Transfer:
        return Transfer(kind=kind, round=rnd, server_name="x.example",
                        address="198.18.0.9:443", failure=None, t0=0.2 * rnd,
                        t=0.2 * rnd + 0.04 + seconds, bytes=size, first_byte_t=0.04,
                        stop="bytes", samples=(Sample(0.04 + seconds, size),))

    obs = ThrottlingObservations(
        target="www.example.com", input="https://www.example.com/",
        bulk_endpoint="198.18.0.9:443", benign_sni="x.example",
        transfers=(tr("benign_sni", 0, 250_000, 0.2), tr("target_sni", 0, 250_000, 2.0),
                   tr("benign_sni", 1, 250_000, 0.3)))
    got = benign_rate_bps(obs.to_test_keys())
    assert got == pytest.approx(2 * 250_000 * 8 / 0.5, rel=1e-6)  # the benign pair only
