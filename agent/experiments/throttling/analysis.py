"""Throttling verdict: a pure function of the observations (no I/O).

Decision rule (SNI), chosen to meet "detect a 130 kbit/s throttle against 10 Mbit/s with at
most three paired rounds, never flag an unthrottled lossy, jittery path":

1. The target-SNI and benign-SNI downloads run interleaved in *paired rounds* (ABBA order), so a
   congestion episode or a link that speeds up or slows down over the measurement affects both
   sides alike; within a round the ratio ``q = rate(target) / rate(benign)`` is paired.
2. Throttled only when **all three** hold:
   * **consistency**: ``q <= max_round_ratio`` (0.5) in *every* paired round, with at least
     ``min_rounds_positive`` (3) rounds, or ``min_rounds_strong`` (2) when the pooled ratio is
     overwhelming (at most ``strong_ratio``, 0.1, a tenfold slowdown): one lossy round (a
     retransmission timeout costs a short transfer hundreds of milliseconds) cannot make a
     verdict, while a real throttle slows every round by 10-100x;
   * **effect size**: pooled ``rate(target) / rate(benign) <= max_ratio`` (0.35), i.e. Wehe's
     normalised difference of means ``(benign - target) / benign >= 0.65``;
   * **significance**: a two-sample KS test of the per-interval rates (``stats.ks_2samp``)
     rejects "same distribution" at ``alpha`` (1e-3).  The interval samples within a transfer
     are autocorrelated, which inflates significance; that is why the KS test is never used
     alone, but it protects against a ratio that comes from a handful of samples.  On a very
     fast access link a benign transfer ends within a few sampling intervals, leaving too few
     samples for any test; then only an overwhelming effect counts (pooled ratio at most
     ``strong_ratio``, 0.1, in addition to every round at most 0.5), which a 130 kbit/s
     throttle on a fast link gives by orders of magnitude and noise does not.
3. Clearly *not* throttled as soon as one round has ``q > max_round_ratio`` (after
   ``min_rounds_negative`` rounds), which lets the measurement stop early.

Address rule: the target's own address (SNI = target, certificate valid) is throttled when its
rate is at most ``max_ratio`` of the *reference*, the smaller of what the control helper
measures for the same URL from outside and the probe's own baseline (the benign-SNI rate just
measured, or the median of its recent history when the bulk endpoint was unusable), in every
address transfer.  Comparing with both rules out a slow server (the control sees it slow too)
and a slow access link (the baseline is slow too).  Transfers that ended early because the
resource is small carry no rate information and make the address test inconclusive.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from agent.experiments.throttling.model import ThrottlingObservations, Transfer
from agent.experiments.throttling.stats import ks_2samp, median, normalised_difference
from agent.wire.record import Blocking, Status, Verdict


@dataclass(frozen=True, slots=True)
class Thresholds:
    alpha: float = 1e-3
    max_round_ratio: float = 0.5
    max_ratio: float = 0.35
    min_rounds_positive: int = 3
    min_rounds_strong: int = 2  # enough rounds when the pooled ratio is under strong_ratio
    min_rounds_negative: int = 2
    min_samples: int = 6  # per side, for the KS test
    strong_ratio: float = 0.1  # decisive without the KS test when samples are too few
    min_rate_bytes: int = 16_384  # a transfer shorter than this (by EOF) has no usable rate
    min_rate_seconds: float = 0.002


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True)
class TestResult:
    """Outcome of one comparison: ``decision`` is "throttled", "not_throttled" or "unknown"."""

    decision: str
    detail: dict[str, Any]


# ---- rates -------------------------------------------------------------------------------------
def transfer_rate(tr: Transfer, th: Thresholds = DEFAULT_THRESHOLDS) -> float | None:
    """Body rate in bit/s from the first body byte to the last sample, or None if unusable.

    Measuring from the first byte excludes connection set-up and request latency, which depend
    on the RTT and not on any throttle.  A transfer that failed before its cap, or that ended by
    EOF with too few bytes, has no rate.
    """
    if tr.first_byte_t is None or tr.bytes <= 0:
        return None
    if tr.failure is not None and tr.stop == "failure" and tr.bytes < th.min_rate_bytes:
        return None
    if tr.stop == "eof" and tr.bytes < th.min_rate_bytes:
        return None
    end = max((s.t for s in tr.samples), default=tr.t - tr.t0)
    end = max(end, tr.t - tr.t0)
    duration = end - tr.first_byte_t
    if duration < th.min_rate_seconds:
        return None
    return tr.bytes * 8.0 / duration


def interval_rates(tr: Transfer) -> list[float]:
    """Rates (bit/s) between consecutive random-time samples after the first body byte."""
    if tr.first_byte_t is None:
        return []
    pts = [s for s in tr.samples if s.t >= tr.first_byte_t and s.bytes > 0]
    out: list[float] = []
    for prev, cur in itertools.pairwise(pts):
        dt = cur.t - prev.t
        if dt > 0:
            out.append((cur.bytes - prev.bytes) * 8.0 / dt)
    return out


def _pooled_rate(transfers: list[Transfer], th: Thresholds) -> float | None:
    """Total bytes over total first-byte-to-end time: weights each transfer by its duration."""
    total_bits = 0.0
    total_time = 0.0
    for tr in transfers:
        r = transfer_rate(tr, th)
        if r is None:
            continue
        total_bits += tr.bytes * 8.0
        total_time += tr.bytes * 8.0 / r
    if total_time <= 0:
        return None
    return total_bits / total_time


# ---- SNI comparison ----------------------------------------------------------------------------
def _paired_rounds(
    obs: ThrottlingObservations, th: Thresholds
) -> list[tuple[int, Transfer, Transfer, float | None, float | None]]:
    by_round: dict[int, dict[str, Transfer]] = {}
    for tr in obs.transfers:
        if tr.kind in ("benign_sni", "target_sni"):
            by_round.setdefault(tr.round, {})[tr.kind] = tr
    out = []
    for rnd in sorted(by_round):
        pair = by_round[rnd]
        if "benign_sni" in pair and "target_sni" in pair:
            b, t = pair["benign_sni"], pair["target_sni"]
            out.append((rnd, b, t, transfer_rate(b, th), transfer_rate(t, th)))
    return out


def sni_blocking(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS) -> str | None:
    """The failure string when every target-SNI transfer failed before any body byte while the
    benign SNI worked in the same rounds (so the endpoint and the path are fine), else None."""
    rounds = _paired_rounds(obs, th)
    if not rounds:
        return None
    failures: list[str] = []
    for _, b, t, rb, _ in rounds:
        if t.failure is None or t.first_byte_t is not None:
            return None
        if rb is None and b.failure is not None:
            return None
        failures.append(t.failure)
    return failures[0]


def sni_test(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS) -> TestResult:
    rounds = _paired_rounds(obs, th)
    usable = [(r, b, t, rb, rt) for r, b, t, rb, rt in rounds if rb is not None and rb > 0]
    detail: dict[str, Any] = {"rounds": len(rounds), "usable_rounds": len(usable)}
    if not usable:
        detail["why"] = "no_benign_rate"
        return TestResult("unknown", detail)
    ratios = [(rt or 0.0) / rb for _, _, _, rb, rt in usable]
    detail["round_ratios"] = [round(q, 4) for q in ratios]
    benign = [b for _, b, _, _, _ in usable]
    target = [t for _, _, t, _, _ in usable]
    rate_b = _pooled_rate(benign, th)
    rate_t = _pooled_rate(target, th) or 0.0
    detail["benign_bps"] = rate_b
    detail["target_bps"] = rate_t
    if rate_b is None or rate_b <= 0:
        detail["why"] = "no_benign_rate"
        return TestResult("unknown", detail)
    ratio = rate_t / rate_b
    detail["ratio"] = round(ratio, 4)
    detail["normalised_difference"] = round(normalised_difference(rate_b, rate_t), 4)
    samples_b = [x for tr in benign for x in interval_rates(tr)]
    samples_t = [x for tr in target for x in interval_rates(tr)]
    detail["samples"] = {"benign": len(samples_b), "target": len(samples_t)}
    if samples_b and samples_t:
        ks = ks_2samp(samples_t, samples_b)
        detail["ks_statistic"] = round(ks.statistic, 4)
        detail["ks_pvalue"] = ks.pvalue
        detail["ks_method"] = ks.method
        enough = len(samples_b) >= th.min_samples and len(samples_t) >= th.min_samples
        significant = ks.pvalue <= th.alpha if enough else ratio <= th.strong_ratio
    else:
        significant = ratio <= th.strong_ratio
    detail["significant"] = significant
    if any(q > th.max_round_ratio for q in ratios):
        if len(usable) >= th.min_rounds_negative:
            return TestResult("not_throttled", detail)
        detail["why"] = "too_few_rounds"
        return TestResult("unknown", detail)
    needed = th.min_rounds_strong if ratio <= th.strong_ratio else th.min_rounds_positive
    if len(usable) < needed:
        detail["why"] = "too_few_rounds"
        return TestResult("unknown", detail)
    if ratio <= th.max_ratio and significant:
        return TestResult("throttled", detail)
    if ratio > th.max_ratio:
        return TestResult("not_throttled", detail)
    detail["why"] = "not_significant"
    return TestResult("unknown", detail)


# ---- address comparison ------------------------------------------------------------------------
def probe_baseline(
    obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS
) -> tuple[float | None, str]:
    """The probe's own reference rate: benign rate measured now, else its recent median."""
    now = _pooled_rate([t for t in obs.of_kind("benign_sni")], th)
    if now is not None and now > 0:
        return now, "benign_sni"
    if obs.baseline_history_bps:
        return median(obs.baseline_history_bps), "history"
    return None, "none"


def address_test(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS) -> TestResult:
    transfers = list(obs.of_kind("address"))
    detail: dict[str, Any] = {"transfers": len(transfers)}
    if not transfers:
        detail["why"] = obs.address_failure or "not_measured"
        return TestResult("unknown", detail)
    rates = [transfer_rate(t, th) for t in transfers]
    detail["address_rates_bps"] = rates
    if any(r is None for r in rates):
        detail["why"] = "insufficient_data"
        return TestResult("unknown", detail)
    usable = [r for r in rates if r is not None]
    rate_a = _pooled_rate(transfers, th)
    detail["address_bps"] = rate_a
    baseline, source = probe_baseline(obs, th)
    detail["baseline_bps"] = baseline
    detail["baseline_source"] = source
    control = obs.control
    control_rate = None
    if control is not None and control.failure is None and control.rate_bps:
        control_rate = control.rate_bps
    detail["control_bps"] = control_rate
    if control_rate is None or baseline is None or rate_a is None:
        detail["why"] = "control_failed" if control_rate is None else "no_baseline"
        return TestResult("unknown", detail)
    reference = min(control_rate, baseline)
    detail["reference_bps"] = reference
    ratio = rate_a / reference
    detail["ratio"] = round(ratio, 4)
    detail["normalised_difference"] = round(normalised_difference(reference, rate_a), 4)
    if ratio <= th.max_ratio and all(r <= th.max_round_ratio * reference for r in usable):
        return TestResult("throttled", detail)
    return TestResult("not_throttled", detail)


# ---- verdict -----------------------------------------------------------------------------------
_SNI_FAILURE_REASONS = {
    "connection_reset": "tls.sni_reset",
    "generic_timeout_error": "tls.sni_timeout",
}


def analyze(
    obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS
) -> tuple[Verdict, dict[str, Any]]:
    """Return the verdict and the analysis details (rates, ratios, KS) for the test keys."""
    sni = sni_test(obs, th)
    addr = address_test(obs, th)
    details: dict[str, Any] = {"sni": {"decision": sni.decision, **sni.detail}}
    details["address"] = {"decision": addr.decision, **addr.detail}
    blocked = sni_blocking(obs, th)
    if blocked is not None:
        reason = _SNI_FAILURE_REASONS.get(blocked, "tls.sni_failure")
        return Verdict(Status.BLOCKED, Blocking.TLS, reason), details
    if sni.decision == "throttled":
        return Verdict(Status.THROTTLED, Blocking.THROTTLING, "throttling.sni"), details
    if addr.decision == "throttled":
        return Verdict(Status.THROTTLED, Blocking.THROTTLING, "throttling.ip"), details
    if "not_throttled" in (sni.decision, addr.decision):
        return Verdict(Status.OK), details
    if obs.bulk_failure is not None and obs.control is None:
        return Verdict(Status.INCONCLUSIVE, reason="control.failed"), details
    if obs.bulk_failure is not None and addr.detail.get("why") == "control_failed":
        return Verdict(Status.INCONCLUSIVE, reason="control.failed"), details
    return Verdict(Status.INCONCLUSIVE, reason="throttling.insufficient_data"), details


def decided(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """True once the SNI comparison has a clear answer (measure() stops early on it)."""
    if sni_blocking(obs, th) is not None:
        return len(_paired_rounds(obs, th)) >= th.min_rounds_negative
    return sni_test(obs, th).decision in ("throttled", "not_throttled")
