"""The throttling verdict on synthetic transfers: one row per class of path, page and censor.

Transfers are produced by a small model of a TCP download (``simulate``): a TCP handshake of
one RTT, the request, the first answer byte one RTT later, then per round trip the smaller of
the congestion window (ten segments, doubling in slow start, halved by a loss) and what a cap
(shaper, slow server, access link) lets through, sampled at exponential times as the agent
does.  Every row states the truth of the path it models.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.experiments.throttling.analysis import (
    address_test,
    analyze,
    benign_reference,
    decided,
    interval_rates,
    sni_test,
    transfer_rate,
    wants_parallel,
)
from agent.experiments.throttling.measure import ThrottlingSettings, next_pace
from agent.experiments.throttling.model import (
    ControlThroughput,
    Sample,
    ThrottlingObservations,
    Transfer,
)
from agent.experiments.throttling.rates import transfer_figure
from agent.wire.record import Blocking, Status

MBIT = 1_000_000.0
KB = 1000
MSS = 1448


def simulate(
    kind: str,
    rnd: int,
    cap_bps: float,
    *,
    size: int = 200_000,
    rtt: float = 0.02,
    max_time: float = 2.5,
    loss: float = 0.0,
    think: float = 0.0,
    seed: int = 0,
    failure: str | None = None,
    failed_at: str | None = None,
    fail_after_bytes: int | None = None,
    content_length: int | None = None,
) -> Transfer:
    """One download of ``size`` body bytes over a path with ``rtt`` and a cap ``cap_bps``."""
    r = random.Random(seed * 7919 + rnd * 31 + len(kind))
    t0 = rnd * 5.0
    connect = rtt
    if failure is not None and failed_at in ("connect", "tls", "request"):
        return Transfer(kind, rnd, "x", "198.19.0.10:443", failure, t0, t0 + connect, 0, None,
                        "failure", connect_s=None if failed_at == "connect" else connect,
                        failed_at=failed_at)
    tls = rtt
    request_t = connect + tls
    first = request_t + rtt + think
    # deliver per round trip: min(cwnd, cap * rtt)
    got = 0
    cwnd = 10.0 * MSS
    t = first
    points = [(first, 0)]
    per_rtt_cap = cap_bps * rtt / 8.0
    limit = size if fail_after_bytes is None else min(size, fail_after_bytes)
    stop = "bytes"
    while got < limit:
        if t - request_t > max_time:
            stop = "time"
            break
        send = min(cwnd, per_rtt_cap, limit - got)
        lost = any(r.random() < loss for _ in range(max(1, int(send // MSS))))
        step = rtt
        if per_rtt_cap < cwnd:  # the cap paces the bytes evenly over the round trip
            step = send * 8.0 / cap_bps
        got += int(send)
        t += step
        points.append((t, got))
        if lost:
            cwnd = max(2.0 * MSS, cwnd / 2)
            if r.random() < 0.1:  # a tail loss: retransmission timeout
                t += max(0.2, 2 * rtt)
        else:
            cwnd = cwnd * 2 if cwnd < 64 * MSS * 16 else cwnd + MSS
    end = min(t, request_t + max_time) if stop == "time" else t
    samples: list[Sample] = [Sample(round(first, 6), min(got, MSS))]
    s = first
    while True:
        s += r.expovariate(1 / 0.010)
        if s >= end:
            break
        b = 0
        for (ta, ba), (tb, bb) in itertools.pairwise(points):
            if ta <= s <= tb:
                b = int(ba + (bb - ba) * (s - ta) / max(1e-9, tb - ta))
                break
        samples.append(Sample(round(s, 6), max(1, b)))
    samples.append(Sample(round(end, 6), got))
    expected = size if content_length is None else content_length
    fail = None
    at = None
    if fail_after_bytes is not None and fail_after_bytes < size:
        fail, at, stop = failure or "connection_reset", "body", "failure"
    elif stop == "bytes" and content_length is not None:
        stop = "eof"
    return Transfer(
        kind, rnd, "x", "198.19.0.10:443", fail, t0, round(t0 + end, 6), got,
        round(first, 6), stop, tuple(samples), connect_s=connect, tls_s=tls,
        request_t=round(request_t, 6), response_t=round(first, 6),
        first_wire_t=round(first, 6), answer_wire_t=round(first, 6), status_code=200,
        body_bytes=got,
        head_body_bytes=min(got, MSS // 2), expected_bytes=expected, failed_at=at,
    )


def obs(transfers: list[Transfer], **kw: object) -> ThrottlingObservations:
    return ThrottlingObservations(
        target="twitter.com", input="https://twitter.com/", bulk_endpoint="198.19.0.10:443",
        benign_sni="abc.example", transfers=tuple(transfers), **kw,  # type: ignore[arg-type]
    )


def rounds(target_bps: float, benign_bps: float, n: int, **kw: object) -> list[Transfer]:
    out = []
    for i in range(n):
        out.append(simulate("benign_sni", i, benign_bps, **kw))  # type: ignore[arg-type]
        out.append(simulate("target_sni", i, target_bps, **kw))  # type: ignore[arg-type]
    return out


def address(cap_bps: float, n: int = 2, **kw: object) -> list[Transfer]:
    return [simulate("address", 10 + i, cap_bps, seed=i, **kw)  # type: ignore[arg-type]
            for i in range(n)]


def with_pair(addr: list[Transfer], cap_bps: float, pair_seed: int = 100,
              **kw: object) -> list[Transfer]:
    """``addr`` and, when the single transfers ask for it (as measure() does), two flows at
    once: a cap below the path's own speed is shared by them, a path without one is not."""
    if not wants_parallel(addr):
        return addr
    each = cap_bps / 2 if cap_bps < 1e9 else cap_bps
    pair = [simulate("address_parallel", 12, each, seed=pair_seed + i,
                     **kw)  # type: ignore[arg-type]
            for i in range(2)]
    return addr + pair


def control(rate: float | None, failure: str | None = None,
            nbytes: int = 200_000) -> ControlThroughput:
    return ControlThroughput("https://twitter.com/", failure, nbytes, 0.2, rate)


def verdict_of(o: ThrottlingObservations) -> tuple[Status, Blocking | None, str]:
    v, _ = analyze(o)
    return v.status, v.blocking, v.reason


# ---- rates ---------------------------------------------------------------------------------------
def test_rate_comes_from_completed_bytes_and_elapsed_time() -> None:
    tr = simulate("benign_sni", 0, 8 * MBIT, size=2_000_000, rtt=0.005)
    fig = transfer_figure(tr)
    assert fig.rate_bps is not None
    assert tr.request_t is not None
    assert fig.rate_bps == pytest.approx(tr.body_bytes * 8 / (tr.t - tr.t0 - tr.request_t))
    assert 4 * MBIT < fig.rate_bps <= 8 * MBIT
    assert interval_rates(tr)


def test_time_capped_transfer_counts_the_answer_on_the_wire() -> None:
    # under a 64 kbit/s cap the first 16 kB TLS record is still in flight at the time cap:
    # no plaintext yet, but 9 kB of the answer arrived in a second: a rate, not a stall
    tr = replace(simulate("target_sni", 0, 64e3, max_time=1.0), body_bytes=0, bytes=9486,
                 pre_answer_bytes=606)
    fig = transfer_figure(tr)
    assert fig.rate_bps is not None and fig.bytes == 9486 - 606


def test_transfer_done_between_two_samples_still_has_a_rate() -> None:
    # fibre: 200 kB in a few milliseconds, only the first and last samples exist
    tr = simulate("benign_sni", 0, 1000 * MBIT, rtt=0.001)
    assert len(tr.samples) <= 3
    rate = transfer_rate(tr)
    assert rate is not None and rate > 100 * MBIT


@pytest.mark.parametrize(("case", "tr", "why"), [
    ("failed-at-connect", simulate("target_sni", 0, 0, failure="connection_reset",
                                   failed_at="connect"), "failed:connection_reset"),
    ("failed-mid-body", simulate("target_sni", 0, 10 * MBIT, fail_after_bytes=50_000),
     "failed:connection_reset"),
    ("ended-early", replace(simulate("target_sni", 0, 10 * MBIT, fail_after_bytes=50_000),
                            failure=None, failed_at=None, stop="eof"), "ended_early"),
    ("stalled", replace(simulate("target_sni", 0, 10 * MBIT), body_bytes=0, bytes=0,
                        stop="time"), "stalled"),
    ("record-without-timings", replace(simulate("target_sni", 0, 10 * MBIT), request_t=None),
     "no_response"),
    ("http-error", replace(simulate("address", 0, 10 * MBIT), status_code=503),
     "http_status_503"),
])
def test_unusable_transfers_have_no_rate(case: str, tr: Transfer, why: str) -> None:
    fig = transfer_figure(tr)
    assert fig.rate_bps is None and fig.sustained_bps is None, case
    assert fig.why == why


# ---- SNI comparison ----------------------------------------------------------------------------
SNI_CASES = [
    # (id, target cap, benign cap, rounds, rtt, expected status, reason)
    ("sni-64k-vs-100M", 64e3, 100 * MBIT, 3, 0.005, Status.THROTTLED, "throttling.sni"),
    ("sni-256k-vs-50M", 256e3, 50 * MBIT, 3, 0.02, Status.THROTTLED, "throttling.sni"),
    ("sni-1M-vs-1G", 1 * MBIT, 1000 * MBIT, 3, 0.002, Status.THROTTLED, "throttling.sni"),
    ("sni-1M-vs-20M", 1 * MBIT, 20 * MBIT, 3, 0.02, Status.THROTTLED, "throttling.sni"),
    ("sni-130k-on-5M-line", 130e3, 5 * MBIT, 3, 0.03, Status.THROTTLED, "throttling.sni"),
    ("equal-fibre", 1000 * MBIT, 1000 * MBIT, 2, 0.001, Status.OK, ""),
    ("equal-5M-line", 5 * MBIT, 5 * MBIT, 2, 0.03, Status.OK, ""),
    ("equal-rural-2M", 2 * MBIT, 2 * MBIT, 2, 0.06, Status.OK, ""),
    ("target-faster", 10 * MBIT, 5 * MBIT, 2, 0.02, Status.OK, ""),
    ("mild-difference", 6 * MBIT, 10 * MBIT, 2, 0.02, Status.OK, ""),
]


@pytest.mark.parametrize(("case", "t_bps", "b_bps", "n", "rtt", "status", "reason"), SNI_CASES)
def test_sni_verdicts(case: str, t_bps: float, b_bps: float, n: int, rtt: float,
                      status: Status, reason: str) -> None:
    o = obs(rounds(t_bps, b_bps, n, rtt=rtt, size=200_000))
    assert verdict_of(o)[0::2] == (status, reason), case


def test_throttled_details_name_the_reference_rates_and_ks() -> None:
    _, details = analyze(obs(rounds(130e3, 10 * MBIT, 3)))
    sni = details["sni"]
    assert sni["decision"] == "throttled"
    assert sni["reference"] == "bulk_endpoint_benign_sni"
    assert sni["ratio"] < 0.05
    assert sni["target_bps"] == pytest.approx(130e3, rel=0.3)
    assert sni["benign_bytes"] > 0 and sni["rtt_ms"] > 0
    assert sni["transfers"][0]["benign"]["rate_bps"] > 0
    assert sni["ks_pvalue"] < 1e-3


def test_two_rounds_are_not_enough_for_a_moderate_positive() -> None:
    o = obs(rounds(2 * MBIT, 10 * MBIT, 2, size=600_000))
    assert sni_test(o).decision == "unknown"
    assert not decided(o)
    assert sni_test(obs(rounds(2 * MBIT, 10 * MBIT, 3, size=600_000))).decision == "throttled"


def test_one_contradicting_round_clears() -> None:
    tr = [*rounds(130e3, 10 * MBIT, 2),
          simulate("benign_sni", 2, 10 * MBIT), simulate("target_sni", 2, 10 * MBIT)]
    assert sni_test(obs(tr)).decision == "not_throttled"


@pytest.mark.parametrize("broken", [
    {"fail_after_bytes": 20_000},  # reset mid-transfer
    {"fail_after_bytes": 0},  # reset before the first body byte
])
def test_target_transfers_without_rate_are_never_a_rate_of_zero(broken: dict[str, Any]) -> None:
    tr = []
    for i in range(4):
        tr.append(simulate("benign_sni", i, 100 * MBIT, rtt=0.005))
        tr.append(simulate("target_sni", i, 100 * MBIT, rtt=0.005, **broken))
    o = obs(tr)
    assert sni_test(o).decision == "unknown"
    assert sni_test(o).detail["why"].startswith("no_target_rate")
    assert verdict_of(o)[0] != Status.THROTTLED


def test_fast_target_transfers_ending_between_samples_are_not_throttled() -> None:
    # the case a fast path produced: target transfers finishing before the second sample
    o = obs(rounds(1000 * MBIT, 1000 * MBIT, 3, rtt=0.0005))
    assert verdict_of(o) == (Status.OK, None, "")


@pytest.mark.parametrize(("failure", "reason"), [
    ("connection_reset", "tls.sni_reset"), ("generic_timeout_error", "tls.sni_timeout"),
    ("eof_error", "tls.sni_failure")])
def test_target_sni_failing_while_benign_works_is_tls_blocking(failure: str, reason: str) -> None:
    tr = []
    for i in range(2):
        tr.append(simulate("benign_sni", i, 10 * MBIT))
        tr.append(simulate("target_sni", i, 0, failure=failure, failed_at="tls"))
    assert verdict_of(obs(tr)) == (Status.BLOCKED, Blocking.TLS, reason)


# ---- address comparison ------------------------------------------------------------------------
FAST_SNI = {"t_bps": 500 * MBIT, "b_bps": 500 * MBIT}


def with_sni(addr: list[Transfer], b_bps: float = 500 * MBIT, **kw: object
             ) -> ThrottlingObservations:
    return obs(rounds(b_bps, b_bps, 2, rtt=0.002) + addr, **kw)


ADDRESS_CASES = [
    # (id, site cap, page size, rtt, loss, helper rate, probe line, status, reason)
    ("small-page-far-server-6k-300ms", 1000 * MBIT, 6 * KB, 0.3, 0.0, 900 * MBIT, 800 * MBIT,
     Status.OK, ""),
    ("small-page-200k-40ms", 1000 * MBIT, 200 * KB, 0.04, 0.0, 900 * MBIT, 800 * MBIT,
     Status.OK, ""),
    ("small-page-200k-300ms-2pc-loss", 1000 * MBIT, 200 * KB, 0.3, 0.02, 900 * MBIT,
     800 * MBIT, Status.OK, ""),
    ("big-page-150ms-2pc-loss", 1000 * MBIT, 5_000 * KB, 0.15, 0.02, 900 * MBIT, 800 * MBIT,
     Status.OK, ""),
    ("big-page-300ms", 1000 * MBIT, 5_000 * KB, 0.3, 0.0, 900 * MBIT, 800 * MBIT,
     Status.OK, ""),
    ("slow-server-2M", 2 * MBIT, 5_000 * KB, 0.005, 0.0, 2 * MBIT, 800 * MBIT, Status.OK, ""),
    ("slow-access-link-5M", 5 * MBIT, 5_000 * KB, 0.005, 0.0, 900 * MBIT, 5 * MBIT,
     Status.OK, ""),
    ("ip-64k-50ms", 64e3, 5_000 * KB, 0.05, 0.0, 900 * MBIT, 800 * MBIT, Status.THROTTLED,
     "throttling.ip"),
    ("ip-256k-20ms", 256e3, 5_000 * KB, 0.02, 0.0, 900 * MBIT, 800 * MBIT, Status.THROTTLED,
     "throttling.ip"),
    ("ip-1M-5ms", 1 * MBIT, 5_000 * KB, 0.005, 0.0, 900 * MBIT, 800 * MBIT, Status.THROTTLED,
     "throttling.ip"),
    ("ip-1M-30ms", 1 * MBIT, 5_000 * KB, 0.03, 0.0, 900 * MBIT, 800 * MBIT, Status.THROTTLED,
     "throttling.ip"),
    ("ip-1M-50ms", 1 * MBIT, 5_000 * KB, 0.05, 0.0, 900 * MBIT, 800 * MBIT,
     Status.THROTTLED, "throttling.ip"),
    ("ip-1M-150ms", 1 * MBIT, 5_000 * KB, 0.15, 0.0, 900 * MBIT, 800 * MBIT,
     Status.THROTTLED, "throttling.ip"),
    ("ip-256k-150ms", 256e3, 5_000 * KB, 0.15, 0.0, 900 * MBIT, 800 * MBIT,
     Status.THROTTLED, "throttling.ip"),
    ("slow-server-1M-150ms", 1 * MBIT, 5_000 * KB, 0.15, 0.0, 1 * MBIT, 800 * MBIT,
     Status.OK, ""),
    ("ip-64k-small-page", 64e3, 30 * KB, 0.05, 0.0, 900 * MBIT, 800 * MBIT, Status.THROTTLED,
     "throttling.ip"),
]


@pytest.mark.parametrize(
    ("case", "cap", "size", "rtt", "loss", "helper", "line", "status", "reason"),
    ADDRESS_CASES)
def test_address_verdicts(case: str, cap: float, size: int, rtt: float, loss: float,
                          helper: float, line: float, status: Status, reason: str) -> None:
    addr = address(min(cap, line), size=size, rtt=rtt, loss=loss)
    addr = with_pair(addr, min(cap, line), size=size, rtt=rtt, loss=loss)
    o = with_sni(addr, b_bps=line, control=control(helper, nbytes=min(size, 200_000)))
    got = verdict_of(o)
    assert got[0::2] == (status, reason), (case, analyze(o)[1]["address"])


def test_address_reference_is_named() -> None:
    o = with_sni(address(64e3, size=5_000_000, rtt=0.05), control=control(900 * MBIT))
    _, details = analyze(o)
    a = details["address"]
    assert a["reference"] == "path_bound_initial_window"
    assert a["figures"][0]["rtt_ms"] > 0 and a["figures"][0]["initial_window_bps"] > 0
    assert a["access_link_source"] == "benign_sni" and a["server_bps"] == 900 * MBIT


def test_address_uses_history_when_bulk_endpoint_unusable() -> None:
    o = obs(address(64e3, size=5_000_000, rtt=0.05), control=control(50 * MBIT),
            bulk_failure="connection_refused",
            baseline_history_bps=(80 * MBIT, 90 * MBIT, 100 * MBIT))
    result = address_test(o)
    assert result.decision == "throttled"
    assert result.detail["access_link_source"] == "history"


def test_paced_address_without_server_reference_is_unknown() -> None:
    o = with_sni(address(64e3, size=5_000_000, rtt=0.05),
                 control=control(None, "connection_refused"))
    assert address_test(o).detail["why"] == "server_not_measured"
    assert verdict_of(o) == (Status.OK, None, "")  # the SNI comparison says "not throttled"


def test_helper_on_a_tiny_transfer_is_no_server_reference() -> None:
    o = with_sni(address(64e3, size=5_000_000, rtt=0.05),
                 control=control(900 * MBIT, nbytes=2000))
    assert address_test(o).detail["why"] == "server_not_measured"


# ---- blocked hosts keep their blocking -----------------------------------------------------------
BLOCKED_CASES = [
    ("dns-nxdomain", {"address_failure": "dns_nxdomain_error", "address_failed_at": "dns"}, [],
     (Status.BLOCKED, Blocking.DNS, "dns.nxdomain")),
    ("tcp-reset", {}, [simulate("address", 10, 0, failure="connection_reset",
                                failed_at="connect")],
     (Status.BLOCKED, Blocking.TCP_IP, "tcp.reset")),
    ("tcp-timeout", {}, [simulate("address", 10, 0, failure="generic_timeout_error",
                                  failed_at="connect")],
     (Status.BLOCKED, Blocking.TCP_IP, "tcp.timeout")),
    ("sni-reset-on-address", {}, [simulate("address", 10, 0, failure="connection_reset",
                                           failed_at="tls")],
     (Status.BLOCKED, Blocking.TLS, "tls.sni_reset")),
    ("http-reset", {}, [simulate("address", 10, 0, failure="connection_reset",
                                 failed_at="request")],
     (Status.BLOCKED, Blocking.HTTP_FAILURE, "http.reset")),
    ("reset-mid-body", {}, [simulate("address", 10 + i, 64e3, size=5_000_000,
                                     fail_after_bytes=9000) for i in range(2)],
     (Status.BLOCKED, Blocking.HTTP_FAILURE, "http.reset")),
]


@pytest.mark.parametrize(("case", "extra", "addr", "expected"), BLOCKED_CASES)
def test_blocked_hosts_keep_their_blocking(case: str, extra: dict[str, Any],
                                           addr: list[Transfer],
                                           expected: tuple[Status, Blocking, str]) -> None:
    o = with_sni(addr, control=control(50 * MBIT), **extra)
    assert verdict_of(o) == expected, case
    down = with_sni(addr, control=control(None, "connection_refused"), **extra)
    assert verdict_of(down) == (Status.DOWN, None, "site.down")
    unknown = with_sni(addr, **extra)
    assert verdict_of(unknown) == (Status.INCONCLUSIVE, None, "control.failed")


def test_blocked_by_sni_on_every_address_is_tls_blocking_not_throttling() -> None:
    tr = []
    for i in range(2):
        tr.append(simulate("benign_sni", i, 100 * MBIT))
        tr.append(simulate("target_sni", i, 0, failure="connection_reset", failed_at="tls"))
    tr.append(simulate("address", 10, 0, failure="connection_reset", failed_at="tls"))
    assert verdict_of(obs(tr, control=control(50 * MBIT))) == (
        Status.BLOCKED, Blocking.TLS, "tls.sni_reset")


# ---- missing data --------------------------------------------------------------------------------
def test_bulk_endpoint_unreachable_and_no_control_is_inconclusive() -> None:
    o = obs([], bulk_failure="connection_refused")
    assert verdict_of(o) == (Status.INCONCLUSIVE, None, "control.failed")


def test_nothing_measured_is_insufficient_data() -> None:
    assert verdict_of(obs([])) == (Status.INCONCLUSIVE, None, "throttling.insufficient_data")


def test_benign_reference_figures_for_other_consumers() -> None:
    o = obs(rounds(10 * MBIT, 10 * MBIT, 2, rtt=0.03))
    ref = benign_reference(o)
    assert ref["kind"] == "bulk_endpoint_benign_sni"
    assert ref["usable_transfers"] == 2 and ref["bytes"] == 400_000
    assert 1 * MBIT < ref["rate_bps"] <= 10 * MBIT
    assert ref["rtt_ms"] == pytest.approx(30.0)
    none = benign_reference(obs([simulate("benign_sni", 0, 0, failure="connection_reset",
                                          failed_at="tls")]))
    assert none["rate_bps"] is None and none["why"] == "failed:connection_reset"


def test_test_keys_round_trip() -> None:
    o = obs(rounds(130e3, 10 * MBIT, 3) + address(1e6), control=control(50 * MBIT),
            baseline_history_bps=(1.0, 2.0), address_failure="x", address_failed_at="dns")
    back = ThrottlingObservations.from_test_keys(o.input, o.to_test_keys())
    assert back == o
    assert analyze(back)[0] == analyze(o)[0]


def test_pace_adapts_to_the_measured_path() -> None:
    st_ = ThrottlingSettings()
    fibre = next_pace(simulate("benign_sni", 0, 1000 * MBIT, rtt=0.002), 200_000, st_)
    assert fibre.max_bytes == 200_000 and fibre.max_seconds == st_.transfer_max_seconds
    rural = next_pace(simulate("benign_sni", 0, 2 * MBIT, rtt=0.06), 200_000, st_)
    assert rural.max_bytes < 200_000 and rural.max_seconds > st_.transfer_max_seconds
    far = next_pace(simulate("benign_sni", 0, 50 * MBIT, rtt=0.3), 200_000, st_)
    assert far.max_seconds >= 3.0
    assert next_pace(None, 200_000, st_).max_bytes == 200_000


# ---- properties ----------------------------------------------------------------------------------
def _unusable(kind: str, rnd: int, how: int, seed: int) -> Transfer:
    base = simulate(kind, rnd, 50 * MBIT, seed=seed)
    if how == 0:
        return simulate(kind, rnd, 0, failure="connection_reset", failed_at="tls")
    if how == 1:
        return simulate(kind, rnd, 50 * MBIT, fail_after_bytes=1000 + seed)
    if how == 2:
        return replace(base, body_bytes=0, bytes=0, stop="time")
    if how == 3:
        return replace(base, stop="eof", body_bytes=base.body_bytes // 2)
    return replace(base, request_t=None, response_t=None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 4),
    hows=st.lists(st.integers(0, 4), min_size=4, max_size=4),
    benign_bps=st.floats(64e3, 2e9),
    seed=st.integers(0, 10_000),
    with_address=st.booleans(),
    helper=st.one_of(st.none(), st.floats(1e3, 2e9)),
)
def test_no_usable_rate_never_yields_throttled(
    n: int, hows: list[int], benign_bps: float, seed: int, with_address: bool,
    helper: float | None,
) -> None:
    tr = []
    for i in range(n):
        tr.append(simulate("benign_sni", i, benign_bps, seed=seed))
        tr.append(_unusable("target_sni", i, hows[i], seed))
    if with_address:
        tr += [_unusable("address", 10 + i, hows[3 - i], seed) for i in range(2)]
    o = obs(tr, control=None if helper is None else control(helper))
    assert verdict_of(o)[0] != Status.THROTTLED


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(6_000, 200_000),
    rtt=st.floats(0.02, 0.3),
    loss=st.sampled_from([0.0, 0.01, 0.02]),
    think=st.floats(0.0, 0.2),
    bulk_bps=st.floats(1e6, 1e9),
    helper=st.floats(1e6, 2e9),
    seed=st.integers(0, 10_000),
)
def test_a_small_page_on_a_far_server_is_never_throttled(
    size: int, rtt: float, loss: float, think: float, bulk_bps: float, helper: float,
    seed: int,
) -> None:
    addr = [simulate("address", 10 + i, 1e9, size=size, rtt=rtt, loss=loss, think=think,
                     seed=seed + i, content_length=size) for i in range(2)]
    o = obs(rounds(bulk_bps, bulk_bps, 2, rtt=0.005, seed=seed) + addr,
            control=control(helper, nbytes=size))
    assert verdict_of(o)[0] != Status.THROTTLED


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rtt=st.floats(0.005, 0.3),
    loss=st.sampled_from([0.0, 0.005, 0.02]),
    seed=st.integers(0, 10_000),
)
# two flows on a lossy path without a cap, one of them much unluckier than the other: over
# the span from the first start to the last end they looked shared
@example(rtt=0.0078125, loss=0.02, seed=93)
# loss-limited flows at tens of Mbit/s on a short path, the pair unlucky: beyond the two-flow
# test's ceiling, where a cap is not claimed from two flows
@example(rtt=0.005859375, loss=0.02, seed=1)
def test_uncapped_tcp_at_any_rtt_and_loss_is_never_throttled(
    rtt: float, loss: float, seed: int
) -> None:
    addr = [simulate("address", 10 + i, 1e9, size=5_000_000, rtt=rtt, loss=loss,
                     seed=seed + i) for i in range(2)]
    addr = with_pair(addr, 1e9, pair_seed=seed + 100, size=5_000_000, rtt=rtt, loss=loss)
    o = obs(rounds(800 * MBIT, 800 * MBIT, 2, rtt=0.002, seed=seed) + addr,
            control=control(900 * MBIT))
    assert verdict_of(o)[0] != Status.THROTTLED


def test_target_selection_prefers_configured_names_and_prone_categories() -> None:
    from agent.experiments.throttling.targets import select_targets
    from agent.wire.record import Target

    listed = [
        Target("https://twitter.com/home", "GRP"),
        Target("https://twitter.com/other", "GRP"),  # same host: once
        Target("https://bank.example/", "ECON"),  # not throttling-prone
        Target("https://news.example/", "NEWS"),
    ]
    chosen = select_targets(listed, names=["Telegram.org."], limit=10)
    assert [t.input for t in chosen] == [
        "https://telegram.org/", "https://twitter.com/home", "https://news.example/"]
    assert len(select_targets(listed, limit=1)) == 1


def test_record_start_finds_the_record_that_carried_the_first_answer_bytes() -> None:
    from agent.experiments.throttling.transfer import record_start

    def record(n: int) -> bytes:
        return bytes([23, 3, 3]) + n.to_bytes(2, "big") + b"x" * n

    stream = record(40) + record(200) + record(16_000)  # handshake, ticket, answer
    assert record_start(stream, len(stream)) == 45 + 205
    assert record_start(stream, 45 + 205) == 45
    assert record_start(b"", 10) is None


def test_think_time_after_a_session_ticket_is_not_a_cap() -> None:
    # the ticket arrives at once, the server thinks for a second, then sends 50 kB at once:
    # counted from the answer's first byte, nothing was slow
    addr = []
    for i in range(2):
        tr = simulate("address", 10 + i, 1000 * MBIT, size=50_000, rtt=0.02, think=1.0,
                      content_length=50_000)
        assert tr.request_t is not None
        addr.append(replace(tr, first_wire_t=tr.request_t + 0.02, pre_answer_bytes=500,
                            bytes=tr.bytes + 500))
    o = with_sni(addr, control=control(900 * MBIT, nbytes=50_000))
    assert address_test(o).decision == "not_throttled"
    assert verdict_of(o) == (Status.OK, None, "")


def test_http_urls_are_fetched_as_listed() -> None:
    from agent.experiments.throttling.measure import target_of

    assert target_of("http://news.example/a?b=1") == (
        "news.example", "http://news.example/a?b=1", 80, "/a?b=1")
    assert target_of("news.example")[1:3] == ("https://news.example/", 443)


def test_two_flows_sharing_a_cap_are_the_reference_beyond_the_path_bound() -> None:
    single = address(1 * MBIT, size=5_000_000, rtt=0.05)
    assert wants_parallel(single)
    o = with_sni(with_pair(single, 1 * MBIT, size=5_000_000, rtt=0.05),
                 control=control(900 * MBIT))
    result = address_test(o)
    assert result.decision == "throttled"
    par = result.detail["parallel"]
    assert result.detail["reference"] == "parallel_flows"
    assert par["flows"] == 2 and par["ratio"] <= 1.25
    assert par["together_bps"] < 1.1 * MBIT


def test_two_flows_each_at_the_single_rate_clear_the_address() -> None:
    single = address(1 * MBIT, size=5_000_000, rtt=0.05)
    pair = [simulate("address_parallel", 12, 1 * MBIT, size=5_000_000, rtt=0.05, seed=i)
            for i in range(2)]
    o = with_sni(single + pair, control=control(900 * MBIT))
    result = address_test(o)
    assert result.decision == "not_throttled"
    assert result.detail["parallel"]["ratio"] > 1.8


def test_a_parallel_pair_that_failed_leaves_the_address_unknown() -> None:
    single = address(1 * MBIT, size=5_000_000, rtt=0.05)
    pair = [simulate("address_parallel", 12, 1 * MBIT, rtt=0.05, seed=i,
                     failure="connection_reset", failed_at="tls") for i in range(2)]
    o = with_sni(single + pair, control=control(900 * MBIT))
    result = address_test(o)
    assert result.decision == "unknown"
    assert result.detail["why"] == "parallel_no_rate:failed:connection_reset"
    assert verdict_of(o)[0] != Status.THROTTLED


def test_fast_single_transfers_do_not_ask_for_two_flows() -> None:
    assert not wants_parallel(address(50 * MBIT, size=5_000_000, rtt=0.05))
    assert not wants_parallel(address(1e9, size=6_000, rtt=0.3))
    assert not wants_parallel([])


def test_a_cap_on_the_address_follows_the_name_when_the_bulk_endpoint_was_slow_with_it() -> None:
    """A throttle by name slows the target's own address transfers too (they name the target):
    when the SNI rounds were too few to decide on their own but every one was slow with the
    target's name, on the helper's address, the name is the trigger, not the address."""
    sni_side = rounds(256e3, 500 * MBIT, 1, rtt=0.002)  # one round: too few to decide alone
    addr = address(256e3, size=5_000_000, rtt=0.02)
    o = obs(sni_side + addr, control=control(900 * MBIT))
    assert sni_test(o).decision == "unknown"
    assert verdict_of(o) == (Status.THROTTLED, Blocking.THROTTLING, "throttling.sni")
    # the same address transfers with the name fast on the bulk endpoint: the address
    o = obs(rounds(500 * MBIT, 500 * MBIT, 2, rtt=0.002) + addr, control=control(900 * MBIT))
    assert verdict_of(o) == (Status.THROTTLED, Blocking.THROTTLING, "throttling.ip")
    # a round whose target transfer has no usable rate says nothing about the name
    unusable = [simulate("benign_sni", 0, 500 * MBIT, rtt=0.002),
                simulate("target_sni", 0, 500 * MBIT, rtt=0.002, size=1_000)]
    o = obs(unusable + addr, control=control(900 * MBIT))
    assert sni_test(o).decision == "unknown"
    assert verdict_of(o) == (Status.THROTTLED, Blocking.THROTTLING, "throttling.ip")
