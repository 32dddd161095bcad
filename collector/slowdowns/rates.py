"""The benign reference rate of one ``throttling`` record: the only place that reads it.

Every throttling measurement downloads bytes from the control helper's bulk endpoint with a
random benign server name (``test_keys.transfers[]`` with ``kind: "benign_sni"``): nobody
filters that name, so its rate is what the probe's access path gives to ordinary traffic at
that moment.  The slowdown detector follows that rate over time per probe.

Where the rate is read, in order (the first usable answer wins):

1. the benign transfers' completed byte counts and elapsed times (``bytes``, ``t0``, ``t``,
   ``first_byte_t``): bits over seconds from the first body byte to the end, pooled over the
   usable transfers.  Computing it here, the same way for every agent version, keeps a
   probe's history comparable with itself when the agent's own analysis changes;
2. the agent's own figure when the raw transfers are absent or unusable:
   ``test_keys.benign_rate.rate_bps`` (agents that publish their benign reference), else
   ``test_keys.analysis.sni.benign_bps``.

A transfer that failed, got a non-2xx answer, ended before the bytes it expected, moved fewer
than ``MIN_BYTES`` or lasted under ``MIN_SECONDS`` has no rate; a record without any usable
transfer has no rate (``None``): missing data, never a rate of zero.  Malformed fields
(strings, booleans, NaN, negative numbers) count as missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

REFERENCE_KINDS = frozenset({"benign_sni", "benign", "reference"})
MIN_BYTES = 16_384  # fewer body bytes than this (ended by EOF or failure): no usable rate
MIN_SECONDS = 0.002  # a shorter body transfer is below the clocks' resolution
USABLE_STOPS = frozenset({"bytes", "time", "eof"})


def number(value: Any) -> float | None:
    """A finite number, or None (booleans, strings, NaN and infinities are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def transfer_bits_seconds(tr: Mapping[str, Any]) -> tuple[float, float] | None:
    """(body bits, body seconds) of one transfer, or None when it has no usable rate."""
    if tr.get("failure") is not None:
        return None
    stop = tr.get("stop")
    if stop is not None and (not isinstance(stop, str) or stop not in USABLE_STOPS):
        return None
    status = tr.get("status_code")
    if status is not None and not (isinstance(status, int) and 200 <= status < 300):
        return None
    expected, body = number(tr.get("expected_bytes")), number(tr.get("body_bytes"))
    if stop == "eof" and expected is not None and (body is None or body < expected):
        return None  # ended before what it asked for
    size = number(tr.get("bytes"))
    t0, t1 = number(tr.get("t0")), number(tr.get("t"))
    first = number(tr.get("first_byte_t"))
    if size is None or t0 is None or t1 is None or first is None:
        return None
    if size < MIN_BYTES or first < 0:
        return None
    seconds = (t1 - t0) - first
    if seconds < MIN_SECONDS:
        return None
    return size * 8.0, seconds


def pooled_reference_rate(transfers: Sequence[Any]) -> float | None:
    """Total bits over total seconds of the usable reference transfers (None: none usable)."""
    bits = seconds = 0.0
    for tr in transfers:
        if not isinstance(tr, Mapping):
            continue
        kind = tr.get("kind")
        if not isinstance(kind, str) or kind not in REFERENCE_KINDS:
            continue
        got = transfer_bits_seconds(tr)
        if got is None:
            continue
        bits += got[0]
        seconds += got[1]
    if seconds <= 0 or bits <= 0:
        return None
    return bits / seconds


def _reported_rate(test_keys: Mapping[str, Any]) -> float | None:
    analysis = test_keys.get("analysis")
    for part, key in ((test_keys.get("benign_rate"), "rate_bps"),
                      (analysis.get("sni") if isinstance(analysis, Mapping) else None,
                       "benign_bps")):
        if isinstance(part, Mapping):
            value = number(part.get(key))
            if value is not None and value > 0:
                return value
    return None


def benign_rate_bps(test_keys: Any) -> float | None:
    """The record's benign reference rate in bit/s, or None when it has none (see above)."""
    if not isinstance(test_keys, Mapping):
        return None
    transfers = test_keys.get("transfers")
    if isinstance(transfers, Sequence) and not isinstance(transfers, str | bytes):
        rate = pooled_reference_rate(transfers)
        if rate is not None:
            return rate
    return _reported_rate(test_keys)
