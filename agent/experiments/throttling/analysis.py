"""Throttling verdict: a pure function of the observations (no I/O).

A rate cap is inferred only against a reference over the same path.  Two comparisons:

**SNI** (reference: the same server and the same bytes with another name).  The helper's bulk
endpoint is downloaded from twice per round, SNI = the target and SNI = a random benign name,
in ABBA order, so a link that speeds up or slows down affects both sides alike.  Within a round
``q = rate(target) / rate(benign)`` is paired.  Throttled only when all of:

* **consistency**: ``q <= max_round_ratio`` (0.5) in *every* usable round, with at least
  ``min_rounds_positive`` (3) usable rounds, or ``min_rounds_strong`` (2) when the pooled ratio
  is overwhelming (``strong_ratio``, 0.1);
* **effect size**: pooled ``rate(target) / rate(benign) <= max_ratio`` (0.35): Wehe's
  normalised difference of means of at least 0.65;
* **significance**: a two-sample KS test of the per-interval rates (``stats.ks_2samp``) at
  ``alpha`` when both sides have ``min_samples`` intervals; with fewer (a benign transfer done
  in milliseconds on fibre) only an overwhelming ratio counts.

A round counts only when *both* transfers have a rate (``rates.transfer_figure``).  A target
transfer without one is never a rate of zero: it failed (TLS blocking when it failed before
any answer while the benign name worked: ``sni_blocking``) or it is missing data.

**Address** (reference: a bound from the measured path itself).  The target's own address is
downloaded from (SNI and Host = the target, certificate verified).  A transfer is *paced* when
it ran for at least ``pace_min_rtts`` round trips and ``pace_min_seconds`` after the first
byte of its answer and moved less than ``pace_ratio`` (0.35) of what even an initial congestion
window (10 segments) per RTT delivers, the RTT being the smallest TCP handshake time of the
address transfers.  TCP without a bottleneck sends at least that much per RTT, loss-limited
TCP still about 0.86 of it at 2 % loss and 0.39 at 10 % (Mathis et al.), a small page far away
arrives within a round trip or two; a shaper's cap does not grow.  Pacing says *something*
limits the flow; throttling by address is claimed only when every address transfer is paced
and two other causes are excluded:

* the probe's own access link: its benign rate right now (the bulk endpoint, benign SNI; the
  median of its recent benign rates when the endpoint was unusable) is at least
  ``exclude_margin`` (4) times the paced rate;
* the server itself: the control helper, fetching the same URL from outside, got it at least
  ``exclude_margin`` times faster over a comparable amount of data.

**Two flows at once** (reference: the address's own second flow).  When the single address
transfers all ran that long at under ``shared_max_iw`` (2) initial windows per RTT and under
``shared_max_bps`` (10 Mbit/s), where the
first bound cannot tell a cap from a long or lossy path, measure() downloads from the address
twice at the same time (``address_parallel``, requests sent together).  A cap on the address
is shared by the flows: together they get no more than ``shared_cap_ratio`` (1.25) times the
slower single transfer, each side taken over the second half of its time (slow start weighs
alike).  What a round trip or loss does to TCP, it does to each flow on its own: two get
about twice one.  A shared cap still has to pass the same two exclusions.

A rate of another server is never the reference: those two exclusions only rule out causes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from agent.experiments.throttling.model import ThrottlingObservations, Transfer
from agent.experiments.throttling.rates import (
    RateFigure,
    initial_window_rate,
    pooled,
    transfer_figure,
)
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
    min_rate_bytes: int = 16_384  # a bulk transfer with fewer body bytes has no rate
    pace_ratio: float = 0.35  # paced: sustained rate under this share of IW/RTT
    pace_min_rtts: float = 4.0  # ... for at least this many round trips after the head
    pace_min_seconds: float = 0.25  # ... and at least this long
    exclude_margin: float = 4.0  # access link / server must be this much faster
    shared_max_iw: float = 2.0  # the parallel test: single rate under this many IW per RTT
    shared_max_bps: float = 10e6  # ... and under this rate (see wants_parallel)
    shared_cap_ratio: float = 1.25  # ... and two flows at once together at most this much
    control_min_bytes: int = 32_768  # the helper's transfer must be at least this long


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True)
class TestResult:
    """Outcome of one comparison: ``decision`` is "throttled", "not_throttled" or "unknown"."""

    decision: str
    detail: dict[str, Any]


# ---- shape -------------------------------------------------------------------------------------
def interval_rates(tr: Transfer) -> list[float]:
    """Rates (bit/s) between consecutive random-time samples after the first body byte: the
    shape of a transfer, for the KS test (never its rate)."""
    if tr.first_byte_t is None:
        return []
    pts = [s for s in tr.samples if s.t >= tr.first_byte_t and s.bytes > 0]
    out: list[float] = []
    for prev, cur in itertools.pairwise(pts):
        dt = cur.t - prev.t
        if dt > 0:
            out.append((cur.bytes - prev.bytes) * 8.0 / dt)
    return out


def transfer_rate(tr: Transfer, th: Thresholds = DEFAULT_THRESHOLDS) -> float | None:
    """The transfer's rate (bit/s) from completed bytes and elapsed time, or None."""
    return transfer_figure(tr, th.min_rate_bytes).rate_bps


# ---- SNI comparison ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Round:
    number: int
    benign: Transfer
    target: Transfer
    rb: RateFigure
    rt: RateFigure

    @property
    def usable(self) -> bool:
        return self.rb.usable and self.rt.usable


def paired_rounds(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS
                  ) -> list[Round]:
    by_round: dict[int, dict[str, Transfer]] = {}
    for tr in obs.transfers:
        if tr.kind in ("benign_sni", "target_sni"):
            by_round.setdefault(tr.round, {})[tr.kind] = tr
    out = []
    for rnd in sorted(by_round):
        pair = by_round[rnd]
        if "benign_sni" in pair and "target_sni" in pair:
            b, t = pair["benign_sni"], pair["target_sni"]
            out.append(Round(rnd, b, t, transfer_figure(b, th.min_rate_bytes),
                             transfer_figure(t, th.min_rate_bytes)))
    return out


def sni_blocking(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS) -> str | None:
    """The failure string when every target-SNI transfer failed before any answer while the
    benign SNI worked in the same rounds (so the endpoint and the path are fine), else None."""
    rounds = paired_rounds(obs, th)
    if not rounds:
        return None
    failures: list[str] = []
    for r in rounds:
        t = r.target
        if t.failure is None or t.response_t is not None or t.first_byte_t is not None:
            return None
        if not r.rb.usable:
            return None
        failures.append(t.failure)
    return failures[0]


def sni_test(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS) -> TestResult:
    rounds = paired_rounds(obs, th)
    usable = [r for r in rounds if r.usable]
    detail: dict[str, Any] = {
        "reference": "bulk_endpoint_benign_sni",
        "rounds": len(rounds),
        "usable_rounds": len(usable),
        "transfers": [{"round": r.number, "benign": r.rb.to_json(), "target": r.rt.to_json()}
                      for r in rounds],
    }
    if not usable:
        detail["why"] = _why_unusable(rounds)
        return TestResult("unknown", detail)
    ratios = [q for q in (_ratio(r) for r in usable) if q is not None]
    detail["round_ratios"] = [round(q, 4) for q in ratios]
    rate_b = pooled([r.rb for r in usable])
    rate_t = pooled([r.rt for r in usable])
    if rate_b is None or rate_t is None or not rate_b.rate_bps or rate_t.rate_bps is None:
        detail["why"] = "no_rate"
        return TestResult("unknown", detail)
    detail["benign_bps"] = round(rate_b.rate_bps, 1)
    detail["target_bps"] = round(rate_t.rate_bps, 1)
    detail["benign_bytes"] = rate_b.bytes
    detail["target_bytes"] = rate_t.bytes
    detail["rtt_ms"] = None if rate_b.rtt_s is None else round(rate_b.rtt_s * 1000.0, 3)
    ratio = rate_t.rate_bps / rate_b.rate_bps
    detail["ratio"] = round(ratio, 4)
    detail["normalised_difference"] = round(
        normalised_difference(rate_b.rate_bps, rate_t.rate_bps), 4)
    samples_b = [x for r in usable for x in interval_rates(r.benign)]
    samples_t = [x for r in usable for x in interval_rates(r.target)]
    detail["samples"] = {"benign": len(samples_b), "target": len(samples_t)}
    enough = len(samples_b) >= th.min_samples and len(samples_t) >= th.min_samples
    if enough:
        ks = ks_2samp(samples_t, samples_b)
        detail["ks_statistic"] = round(ks.statistic, 4)
        detail["ks_pvalue"] = ks.pvalue
        detail["ks_method"] = ks.method
        significant = ks.pvalue <= th.alpha
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


def sni_leans_throttled(sni: TestResult, th: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """An SNI comparison left undecided (too few rounds, not significant) whose every usable
    round and pooled ratio were nevertheless under the thresholds: not evidence enough on its
    own, but it says which of the target's name and address a cap seen on the address follows
    (the bulk endpoint is another address, so only the name can slow it)."""
    d = sni.detail
    ratios = d.get("round_ratios") or []
    ratio = d.get("ratio")
    return (sni.decision == "unknown" and bool(ratios) and ratio is not None
            and ratio <= th.max_ratio and all(q <= th.max_round_ratio for q in ratios))


def _ratio(r: Round) -> float | None:
    if r.rt.rate_bps is None or r.rb.rate_bps is None or r.rb.rate_bps <= 0:
        return None
    return r.rt.rate_bps / r.rb.rate_bps


def _why_unusable(rounds: list[Round]) -> str:
    if not rounds:
        return "not_measured"
    if not any(r.rb.usable for r in rounds):
        return f"no_benign_rate:{rounds[0].rb.why}"
    return f"no_target_rate:{next(r.rt.why for r in rounds if r.rb.usable)}"


# ---- the probe's own rate ------------------------------------------------------------------------
def benign_reference(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS
                     ) -> dict[str, Any]:
    """The probe's benign rate right now, as figures anyone can reuse (see the docs): pooled
    over the usable benign-SNI transfers, or null with the reason when there is none."""
    figures = [transfer_figure(t, th.min_rate_bytes) for t in obs.of_kind("benign_sni")]
    pool = pooled(figures)
    out: dict[str, Any] = {
        "kind": "bulk_endpoint_benign_sni",
        "endpoint": obs.bulk_endpoint,
        "transfers": len(figures),
        "usable_transfers": sum(1 for f in figures if f.usable),
        "bytes": 0 if pool is None else pool.bytes,
        "seconds": None if pool is None or pool.seconds is None else round(pool.seconds, 6),
        "rate_bps": None if pool is None or pool.rate_bps is None else round(pool.rate_bps, 1),
        "rtt_ms": (None if pool is None or pool.rtt_s is None
                   else round(pool.rtt_s * 1000.0, 3)),
        "why": None,
    }
    if pool is None:
        out["why"] = (obs.bulk_failure or "not_measured") if not figures else next(
            (f.why for f in figures if f.why), "no_rate")
    return out


def probe_baseline(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS
                   ) -> tuple[float | None, str]:
    """The probe's own benign rate: measured now, else the median of its recent ones."""
    now = benign_reference(obs, th)["rate_bps"]
    if now is not None and now > 0:
        return float(now), "benign_sni"
    if obs.baseline_history_bps:
        return median(obs.baseline_history_bps), "history"
    return None, "none"


# ---- address comparison ------------------------------------------------------------------------
def pace(fig: RateFigure, complete: bool, rtt_s: float | None,
         th: Thresholds = DEFAULT_THRESHOLDS) -> tuple[str, dict[str, Any]]:
    """"paced", "unpaced" or "short" (too little time after the head to tell), judged with
    the path's round trip ``rtt_s``."""
    info: dict[str, Any] = fig.to_json()
    if rtt_s is None or rtt_s <= 0:
        return "short", {**info, "why": "no_rtt"}
    bound = initial_window_rate(rtt_s)
    info["initial_window_bps"] = round(bound, 1)
    long_enough = fig.body_seconds is not None and fig.body_seconds >= max(
        th.pace_min_rtts * rtt_s, th.pace_min_seconds)
    if fig.sustained_bps is None or not long_enough:
        # a complete body within a few round trips: whatever limits this path did not bite;
        # a transfer cut by its time cap that short says nothing
        return ("unpaced" if fig.usable and complete else "short"), info
    info["pace_ratio"] = round(fig.sustained_bps / bound, 4)
    if fig.sustained_bps <= th.pace_ratio * bound:
        return "paced", info
    return "unpaced", info


def _long_enough(fig: RateFigure, rtt_s: float, th: Thresholds) -> bool:
    return fig.body_seconds is not None and fig.body_seconds >= max(
        th.pace_min_rtts * rtt_s, th.pace_min_seconds)


def wants_parallel(singles: list[Transfer] | tuple[Transfer, ...],
                   th: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """True when the single address transfers all ran long enough at a rate low enough
    (under ``shared_max_iw`` initial windows per RTT) for two flows at once to tell a cap on
    the address from a limit of the path's round trip or loss.

    Also under ``shared_max_bps``: on a short path with loss, flows limited by loss alone run at
    tens of Mbit/s and vary from run to run by as much as two flows sharing a cap would differ
    from two flows each on its own (a retransmission timeout of 200 ms is dozens of round
    trips there), so two flows at once say nothing about a cap that high.  Censors' throttles
    by address are far lower (64 kbit/s to a few Mbit/s); the SNI comparison has no such
    limit."""
    figures = [transfer_figure(t) for t in singles]
    rtts = [f.rtt_s for f in figures if f.rtt_s is not None and f.rtt_s > 0]
    if not figures or not rtts:
        return False
    rtt = min(rtts)
    bound = min(th.shared_max_iw * initial_window_rate(rtt), th.shared_max_bps)
    return all(f.usable and f.sustained_bps is not None and f.sustained_bps <= bound
               and _long_enough(f, rtt, th) for f in figures)


def shared_cap(obs: ThrottlingObservations, singles: list[Transfer], rtt_s: float,
               th: Thresholds = DEFAULT_THRESHOLDS) -> tuple[bool, dict[str, Any]]:
    """Whether two flows at once from the address got together no more than one alone: a cap
    on the address, which flows share, rather than a limit of the round trip or loss, which
    applies to each flow on its own (``shared_cap_ratio``).  With the details.

    Like is compared with like: the second half of the time both flows ran against the second
    half of each single transfer, so that slow start (longer on a long path) weighs alike on
    both sides; the slower single transfer is the reference."""
    pair = obs.of_kind("address_parallel")
    figures = [transfer_figure(t) for t in pair]
    info: dict[str, Any] = {"reference": "parallel_flows", "flows": len(pair),
                            "figures": [f.to_json() for f in figures]}
    late_singles = [late_rate(t) for t in singles]
    if len(figures) < 2 or not late_singles or any(r is None for r in late_singles):
        info["why"] = "not_measured"
        return False, info
    if not wants_parallel(singles, th):
        info["why"] = "singles_too_fast"
        return False, info
    single = min(r for r in late_singles if r is not None)
    unusable = next((f.why for f in figures if not f.usable), None)
    if unusable is not None:
        info["why"] = f"no_rate:{unusable}"
        return False, info
    if any(f.sustained_bps is None or not _long_enough(f, rtt_s, th) for f in figures):
        info["why"] = "too_short"
        return False, info
    measured = together_rate(pair)
    if measured is None or not single:
        info["why"] = "no_rate"
        return False, info
    together, overlap, late = measured
    info["overlap_s"] = round(overlap, 6)
    info["together_bps"] = round(together, 1)
    if overlap < max(th.pace_min_rtts * rtt_s, th.pace_min_seconds) or late is None:
        info["why"] = "too_short"
        return False, info
    info["single_late_bps"] = round(single, 1)
    info["together_late_bps"] = round(late, 1)
    info["ratio"] = round(late / single, 4)
    return late <= th.shared_cap_ratio * single, info


Curve = list[tuple[float, int]]


def _curve(tr: Transfer) -> tuple[float, Curve] | None:
    """When a transfer's answer began (absolute time) and its sampled wire byte counts."""
    first = tr.answer_wire_t if tr.answer_wire_t is not None else tr.response_t
    points = [(tr.t0 + s.t, s.bytes) for s in tr.samples]
    if first is None or len(points) < 2:
        return None
    return tr.t0 + first, points


def _window_rate(points: Curve, lo: float, hi: float) -> float | None:
    moved = _bytes_at(points, hi) - _bytes_at(points, lo)
    return moved * 8.0 / (hi - lo) if hi > lo and moved > 0 else None


def late_rate(tr: Transfer) -> float | None:
    """A transfer's rate over the second half of its answer (bit/s), from its samples."""
    curve = _curve(tr)
    if curve is None:
        return None
    start, points = curve
    end = points[-1][0]
    return _window_rate(points, (start + end) / 2.0, end) if end > start else None


def together_rate(pair: tuple[Transfer, ...] | list[Transfer]
                  ) -> tuple[float, float, float | None] | None:
    """What flows run at the same time moved together (bit/s) while all of them ran, how
    long that was (s), and what they moved together in its second half (bit/s): from the
    latest first answer byte to the earliest last byte, each flow's wire bytes read off its
    sampled byte counts.  Over the span from the first start to the last end instead, one
    flow unlucky with loss would make a path without a cap look shared: the time the other
    ran alone would count as if both were capped together."""
    curves = [_curve(tr) for tr in pair]
    if not curves or any(c is None for c in curves):
        return None
    known = [c for c in curves if c is not None]
    lo = max(start for start, _ in known)
    hi = min(points[-1][0] for _, points in known)
    if hi <= lo:
        return None
    mid = (lo + hi) / 2.0
    moved = sum(_bytes_at(points, hi) - _bytes_at(points, lo) for _, points in known)
    late = sum(_bytes_at(points, hi) - _bytes_at(points, mid) for _, points in known)
    if moved <= 0:
        return None
    return moved * 8.0 / (hi - lo), hi - lo, (late * 8.0 / (hi - mid) if late > 0 else None)


def _bytes_at(points: Curve, t: float) -> float:
    """A flow's cumulative byte count at ``t``, linear between its samples."""
    if t <= points[0][0]:
        return float(points[0][1])
    for (t0, b0), (t1, b1) in itertools.pairwise(points):
        if t <= t1:
            return b0 + (b1 - b0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
    return float(points[-1][1])


def address_test(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS) -> TestResult:
    transfers = list(obs.of_kind("address"))
    detail: dict[str, Any] = {"reference": "path_bound_initial_window", "transfers": len(transfers)}
    if not transfers:
        detail["why"] = obs.address_failure or "not_measured"
        return TestResult("unknown", detail)
    figures = [transfer_figure(t) for t in transfers]
    # the path's round trip: the smallest estimate over the transfers (each is at least one
    # real round trip; a larger one carries queueing or a retransmitted SYN)
    rtts = [f.rtt_s for f in figures if f.rtt_s is not None and f.rtt_s > 0]
    rtt = min(rtts) if rtts else None
    detail["rtt_ms"] = None if rtt is None else round(rtt * 1000.0, 3)
    judged = [pace(f, t.complete, rtt, th) for f, t in zip(figures, transfers, strict=True)]
    detail["figures"] = [info for _, info in judged]
    if any(f.rate_bps is None for f in figures):
        detail["why"] = next(f.why for f in figures if f.rate_bps is None)
        return TestResult("unknown", detail)
    kinds = [k for k, _ in judged]
    if "unpaced" in kinds:
        if rtt is None or not obs.of_kind("address_parallel"):
            return TestResult("not_throttled", detail)
        capped, info = shared_cap(obs, transfers, rtt, th)
        detail["parallel"] = info
        if not capped:
            if info.get("why"):
                detail["why"] = f"parallel_{info['why']}"
                return TestResult("unknown", detail)
            return TestResult("not_throttled", detail)
        detail["reference"] = "parallel_flows"
    elif "short" in kinds or len(figures) < 2:
        detail["why"] = "too_short" if "short" in kinds else "too_few_transfers"
        return TestResult("unknown", detail)
    paced = [f.sustained_bps for f in figures if f.sustained_bps is not None]
    if not paced:
        detail["why"] = "too_short"
        return TestResult("unknown", detail)
    return _excluded_causes(obs, figures, max(paced), detail, th)


def _excluded_causes(obs: ThrottlingObservations, figures: list[RateFigure], paced_bps: float,
                     detail: dict[str, Any], th: Thresholds) -> TestResult:
    """Throttled when the probe's access link and the server are both ruled out."""
    detail["address_bps"] = round(paced_bps, 1)
    baseline, source = probe_baseline(obs, th)
    detail["access_link_bps"] = None if baseline is None else round(baseline, 1)
    detail["access_link_source"] = source
    if baseline is None:
        detail["why"] = "access_link_not_measured"
        return TestResult("unknown", detail)
    if baseline < th.exclude_margin * paced_bps:
        detail["why"] = "access_link_as_slow"
        return TestResult("unknown", detail)
    control = obs.control
    control_rate = None
    if (control is not None and control.failure is None and control.rate_bps
            and control.bytes >= min(th.control_min_bytes,
                                     max(f.bytes for f in figures))):
        control_rate = control.rate_bps
    detail["server_bps"] = control_rate
    if control_rate is None:
        detail["why"] = "server_not_measured"
        return TestResult("unknown", detail)
    if control_rate < th.exclude_margin * paced_bps:
        detail["why"] = "server_as_slow"
        return TestResult("unknown", detail)
    detail["normalised_difference"] = round(normalised_difference(
        min(baseline, control_rate), paced_bps), 4)
    return TestResult("throttled", detail)


# ---- failures of the target's own address --------------------------------------------------------
_DNS_REASONS = {
    "dns_nxdomain_error": "dns.nxdomain",
    "dns_no_answer": "dns.no_answer",
    "dns_servfail_error": "dns.servfail",
    "dns_refused_error": "dns.refused",
    "generic_timeout_error": "dns.timeout",
}
_CONNECT_REASONS = {  # a RST answering the SYN is "refused": the same reset, as web tests say
    "connection_reset": "tcp.reset",
    "connection_refused": "tcp.reset",
    "generic_timeout_error": "tcp.timeout",
    "host_unreachable": "tcp.unreachable",
    "network_unreachable": "tcp.unreachable",
}
_TLS_REASONS = {
    "connection_reset": "tls.sni_reset",
    "generic_timeout_error": "tls.sni_timeout",
    "eof_error": "tls.sni_eof",
    "ssl_invalid_hostname": "tls.mitm",
    "ssl_unknown_authority": "tls.mitm",
    "ssl_invalid_certificate": "tls.mitm",
}
_HTTP_REASONS = {
    "connection_reset": "http.reset",
    "eof_error": "http.eof",
    "generic_timeout_error": "http.timeout",
}
_LAYER = {
    "dns": (Blocking.DNS, _DNS_REASONS),
    "connect": (Blocking.TCP_IP, _CONNECT_REASONS),
    "tls": (Blocking.TLS, _TLS_REASONS),
    "request": (Blocking.HTTP_FAILURE, _HTTP_REASONS),
    "body": (Blocking.HTTP_FAILURE, _HTTP_REASONS),
}


def address_failure(obs: ThrottlingObservations) -> tuple[str, str] | None:
    """(layer, failure) when the target's own address could not be downloaded from."""
    if obs.address_failed_at == "dns" and obs.address_failure:
        return "dns", obs.address_failure
    transfers = obs.of_kind("address")
    if not transfers or any(tr.failure is None for tr in transfers):
        return None  # one good transfer: a failure of another is not a blocking pattern
    first = transfers[0]
    return first.failed_at or "body", first.failure or "unknown_failure"


def _failure_verdict(obs: ThrottlingObservations, layer: str, failure: str) -> Verdict:
    control = obs.control
    if control is None:
        return Verdict(Status.INCONCLUSIVE, reason="control.failed")
    if control.failure is not None:
        return Verdict(Status.DOWN, reason="site.down")
    blocking, reasons = _LAYER.get(layer, (Blocking.HTTP_FAILURE, _HTTP_REASONS))
    reason = reasons.get(failure)
    if reason is None:
        return Verdict(Status.INCONCLUSIVE, reason=f"throttling.{layer}_failure")
    return Verdict(Status.BLOCKED, blocking, reason)


# ---- verdict -----------------------------------------------------------------------------------
_SNI_FAILURE_REASONS = {
    "connection_reset": "tls.sni_reset",
    "generic_timeout_error": "tls.sni_timeout",
}


def analyze(
    obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS
) -> tuple[Verdict, dict[str, Any]]:
    """Return the verdict and the analysis details (references, rates, ratios, KS)."""
    sni = sni_test(obs, th)
    addr = address_test(obs, th)
    details: dict[str, Any] = {
        "sni": {"decision": sni.decision, **sni.detail},
        "address": {"decision": addr.decision, **addr.detail},
    }
    blocked = sni_blocking(obs, th)
    if blocked is not None:
        reason = _SNI_FAILURE_REASONS.get(blocked, "tls.sni_failure")
        return Verdict(Status.BLOCKED, Blocking.TLS, reason), details
    if sni.decision == "throttled":
        return Verdict(Status.THROTTLED, Blocking.THROTTLING, "throttling.sni"), details
    failed = address_failure(obs)
    if failed is not None:
        return _failure_verdict(obs, *failed), details
    if addr.decision == "throttled":
        # the address transfers name the target too: when the bulk endpoint (another address)
        # was also slow with the target's name, in every round it had, the name is the trigger
        reason = "throttling.sni" if sni_leans_throttled(sni, th) else "throttling.ip"
        return Verdict(Status.THROTTLED, Blocking.THROTTLING, reason), details
    if "not_throttled" in (sni.decision, addr.decision):
        return Verdict(Status.OK), details
    if obs.bulk_failure is not None and (obs.control is None or obs.control.failure):
        return Verdict(Status.INCONCLUSIVE, reason="control.failed"), details
    return Verdict(Status.INCONCLUSIVE, reason="throttling.insufficient_data"), details


def decided(obs: ThrottlingObservations, th: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """True once the SNI comparison has a clear answer (measure() stops early on it)."""
    if sni_blocking(obs, th) is not None:
        return len(paired_rounds(obs, th)) >= th.min_rounds_negative
    return sni_test(obs, th).decision in ("throttled", "not_throttled")
