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
    ("agent's reference figure when no transfers",
     {"analysis": {"reference": {"rate_bps": 5e6}}}, 5e6),
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
    "bytes": JSONISH, "first_byte_t": JSONISH, "stop": JSONISH,
})


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "transfers": st.lists(FIELDS, max_size=4) | JSONISH,
    "analysis": JSONISH | st.fixed_dictionaries({"sni": st.fixed_dictionaries(
        {"benign_bps": JSONISH})}),
}))
def test_any_test_keys_give_a_positive_finite_rate_or_none(keys: dict[str, Any]) -> None:
    got = benign_rate_bps(keys)
    assert got is None or (math.isfinite(got) and got > 0)
