"""The throttling verdict, one row per status/reason, on synthetic transfers."""

from __future__ import annotations

import random

import pytest

from agent.experiments.throttling.analysis import (
    address_test,
    analyze,
    decided,
    interval_rates,
    sni_test,
    transfer_rate,
)
from agent.experiments.throttling.model import (
    ControlThroughput,
    Sample,
    ThrottlingObservations,
    Transfer,
)
from agent.wire.record import Blocking, Status

MBIT = 1_000_000.0


def transfer(
    kind: str,
    rnd: int,
    rate_bps: float,
    *,
    max_bytes: int = 262_144,
    max_time: float = 1.5,
    rtt: float = 0.05,
    seed: int = 0,
    noise: float = 0.0,
    failure: str | None = None,
    eof_bytes: int | None = None,
) -> Transfer:
    """A download at ``rate_bps`` sampled at exponential times (mean 10 ms), as measure() does:
    a sample at the first body byte, random ones, and one when the transfer ends."""
    r = random.Random(seed * 1000 + rnd * 10 + len(kind))
    if failure is not None:
        return Transfer(kind, rnd, "x", "198.19.0.10:8443", failure, 0.0, 0.1, 0, None,
                        "failure")
    cap = max_bytes if eof_bytes is None else eof_bytes
    first = rtt
    samples = [Sample(first, min(cap, 1448))]
    t = first
    got = 0
    stop = "eof" if eof_bytes is not None else "bytes"
    while True:
        t += r.expovariate(1 / 0.010)
        if t > first + max_time:
            stop = "time"
            break
        elapsed = max(0.0, t - first)
        rate = rate_bps * (1 + r.uniform(-noise, noise))
        got = min(cap, int(elapsed * rate / 8))
        if got >= cap:  # the transfer ended between two samples: sample the end
            samples.append(Sample(round(first + cap * 8 / rate, 6), cap))
            break
        samples.append(Sample(round(t, 6), got))
    end = samples[-1].t if samples else first
    return Transfer(kind, rnd, "x", "198.19.0.10:8443", None, rnd * 2.0, rnd * 2.0 + end,
                    got, first, stop, tuple(samples))


def obs(transfers: list[Transfer], **kw: object) -> ThrottlingObservations:
    return ThrottlingObservations(
        target="twitter.com", input="https://twitter.com/", bulk_endpoint="198.19.0.10:8443",
        benign_sni="abc.example", transfers=tuple(transfers), **kw,  # type: ignore[arg-type]
    )


def rounds(target_bps: float, benign_bps: float, n: int, **kw: object) -> list[Transfer]:
    out = []
    for i in range(n):
        out.append(transfer("benign_sni", i, benign_bps, **kw))  # type: ignore[arg-type]
        out.append(transfer("target_sni", i, target_bps, **kw))  # type: ignore[arg-type]
    return out


def test_rates_from_samples() -> None:
    tr = transfer("benign_sni", 0, 8 * MBIT)
    rate = transfer_rate(tr)
    assert rate is not None and rate == pytest.approx(8 * MBIT, rel=0.15)
    rates = interval_rates(tr)
    assert rates and all(x >= 0 for x in rates)


def test_short_eof_transfer_has_no_rate() -> None:
    assert transfer_rate(transfer("address", 0, 8 * MBIT, eof_bytes=2000)) is None


CASES = [
    # (id, target bps, benign bps, rounds, status, blocking, reason)
    ("sni-130k-vs-10M", 130e3, 10 * MBIT, 3, Status.THROTTLED, Blocking.THROTTLING,
     "throttling.sni"),
    ("sni-1M-vs-20M", 1 * MBIT, 20 * MBIT, 3, Status.THROTTLED, Blocking.THROTTLING,
     "throttling.sni"),
    ("equal-fast", 10 * MBIT, 10 * MBIT, 2, Status.OK, None, ""),
    ("equal-slow", 300e3, 300e3, 2, Status.OK, None, ""),
    ("target-faster", 10 * MBIT, 5 * MBIT, 2, Status.OK, None, ""),
    ("mild-difference", 6 * MBIT, 10 * MBIT, 2, Status.OK, None, ""),
]


@pytest.mark.parametrize(("case", "t_bps", "b_bps", "n", "status", "blocking", "reason"), CASES)
def test_sni_verdicts(
    case: str, t_bps: float, b_bps: float, n: int, status: Status,
    blocking: Blocking | None, reason: str,
) -> None:
    verdict, details = analyze(obs(rounds(t_bps, b_bps, n, noise=0.2)))
    assert (verdict.status, verdict.blocking, verdict.reason) == (status, blocking, reason), case
    assert "ratio" in details["sni"]


def test_throttled_details_carry_rates_ratio_and_ks() -> None:
    _, details = analyze(obs(rounds(130e3, 10 * MBIT, 3)))
    sni = details["sni"]
    assert sni["decision"] == "throttled"
    assert sni["ratio"] < 0.05
    assert sni["ks_pvalue"] < 1e-3
    assert sni["target_bps"] == pytest.approx(130e3, rel=0.2)
    assert sni["benign_bps"] == pytest.approx(10 * MBIT, rel=0.2)
    assert sni["normalised_difference"] > 0.9


def test_two_rounds_are_not_enough_for_a_moderate_positive() -> None:
    o = obs(rounds(2 * MBIT, 10 * MBIT, 2))  # fivefold: needs a third round
    assert sni_test(o).decision == "unknown"
    assert not decided(o)
    assert analyze(o)[0].status == Status.INCONCLUSIVE
    assert sni_test(obs(rounds(2 * MBIT, 10 * MBIT, 3))).decision == "throttled"


def test_two_rounds_suffice_for_an_overwhelming_positive() -> None:
    o = obs(rounds(130e3, 10 * MBIT, 2))  # seventyfold
    assert sni_test(o).decision == "throttled"
    assert decided(o)
    assert sni_test(obs(rounds(130e3, 10 * MBIT, 1))).decision == "unknown"


def test_few_samples_need_an_overwhelming_effect() -> None:
    # fast link: the benign transfers end within a couple of samples each
    o = obs(rounds(130e3, 500 * MBIT, 3))
    detail = sni_test(o).detail
    assert detail["samples"]["benign"] < 6 and detail["significant"]
    assert sni_test(o).decision == "throttled"
    slow = obs(rounds(60 * MBIT, 500 * MBIT, 3))  # ratio 0.12: not overwhelming
    assert sni_test(slow).detail["significant"] is False
    assert sni_test(slow).decision == "unknown"


def test_one_contradicting_round_clears() -> None:
    tr = [*rounds(130e3, 10 * MBIT, 2),
          transfer("benign_sni", 2, 10 * MBIT), transfer("target_sni", 2, 10 * MBIT)]
    o = obs(tr)
    assert sni_test(o).decision == "not_throttled"
    assert decided(o)


def test_clear_negative_decides_early() -> None:
    assert decided(obs(rounds(10 * MBIT, 10 * MBIT, 2)))
    assert not decided(obs(rounds(10 * MBIT, 10 * MBIT, 1)))


@pytest.mark.parametrize(
    ("failure", "reason"),
    [("connection_reset", "tls.sni_reset"), ("generic_timeout_error", "tls.sni_timeout"),
     ("eof_error", "tls.sni_failure")],
)
def test_target_sni_failing_while_benign_works_is_tls_blocking(failure: str, reason: str) -> None:
    tr = []
    for i in range(2):
        tr.append(transfer("benign_sni", i, 10 * MBIT))
        tr.append(transfer("target_sni", i, 0, failure=failure))
    verdict, _ = analyze(obs(tr))
    assert (verdict.status, verdict.blocking, verdict.reason) == (
        Status.BLOCKED, Blocking.TLS, reason)


def test_bulk_endpoint_unreachable_is_inconclusive() -> None:
    verdict, _ = analyze(obs([], bulk_failure="connection_refused"))
    assert verdict.status == Status.INCONCLUSIVE and verdict.reason == "control.failed"


def test_nothing_measured_is_insufficient_data() -> None:
    verdict, _ = analyze(obs([]))
    assert verdict.status == Status.INCONCLUSIVE
    assert verdict.reason == "throttling.insufficient_data"


def control(rate: float | None, failure: str | None = None) -> ControlThroughput:
    return ControlThroughput("https://twitter.com/", failure, 262_144, 0.2, rate)


def addr_rounds(bps: float, n: int = 2) -> list[Transfer]:
    return [transfer("address", 10 + i, bps) for i in range(n)]


ADDRESS_CASES = [
    # (id, sni rounds (target, benign), address bps, control bps, status, reason)
    ("ip-throttled", (10 * MBIT, 10 * MBIT), 500e3, 50 * MBIT, Status.THROTTLED,
     "throttling.ip"),
    ("slow-server-everywhere", (10 * MBIT, 10 * MBIT), 500e3, 600e3, Status.OK, ""),
    ("slow-access-link", (1 * MBIT, 1 * MBIT), 900e3, 50 * MBIT, Status.OK, ""),
    ("fast-everywhere", (10 * MBIT, 10 * MBIT), 9 * MBIT, 50 * MBIT, Status.OK, ""),
]


@pytest.mark.parametrize(("case", "sni", "a_bps", "c_bps", "status", "reason"), ADDRESS_CASES)
def test_address_verdicts(
    case: str, sni: tuple[float, float], a_bps: float, c_bps: float, status: Status, reason: str
) -> None:
    o = obs(rounds(sni[0], sni[1], 2) + addr_rounds(a_bps), control=control(c_bps))
    verdict, details = analyze(o)
    assert (verdict.status, verdict.reason) == (status, reason), case
    assert details["address"]["decision"] in ("throttled", "not_throttled")


def test_address_uses_history_when_bulk_endpoint_unusable() -> None:
    o = obs(addr_rounds(400e3), control=control(50 * MBIT), bulk_failure="connection_refused",
            baseline_history_bps=(8 * MBIT, 9 * MBIT, 10 * MBIT))
    result = address_test(o)
    assert result.decision == "throttled"
    assert result.detail["baseline_source"] == "history"
    assert analyze(o)[0].reason == "throttling.ip"


def test_address_without_control_is_unknown() -> None:
    o = obs(rounds(10 * MBIT, 10 * MBIT, 2) + addr_rounds(400e3),
            control=control(None, "connection_refused"))
    assert address_test(o).decision == "unknown"
    assert analyze(o)[0].status == Status.OK  # the SNI comparison still says "not throttled"


def test_small_resource_is_insufficient_for_address_test() -> None:
    o = obs([transfer("address", 0, 400e3, eof_bytes=3000)], control=control(50 * MBIT))
    assert address_test(o).detail["why"] == "insufficient_data"


def test_sni_throttling_takes_precedence_over_address() -> None:
    o = obs(rounds(130e3, 10 * MBIT, 3) + addr_rounds(130e3), control=control(50 * MBIT))
    assert analyze(o)[0].reason == "throttling.sni"


def test_test_keys_round_trip() -> None:
    o = obs(rounds(130e3, 10 * MBIT, 3) + addr_rounds(1e6), control=control(50 * MBIT),
            baseline_history_bps=(1.0, 2.0))
    back = ThrottlingObservations.from_test_keys(o.input, o.to_test_keys())
    assert back == o
    assert analyze(back)[0] == analyze(o)[0]


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
