"""Rates of single transfers, from completed byte counts and elapsed times (pure, no I/O).

A rate exists only for a transfer that delivered what it was asked for, or ran until its time
cap with data still flowing.  Everything else has **no** rate, with the reason why, and is never
turned into a rate of zero: a transfer that failed is a failure (judged by the blocking rules),
one that ended early or moved nothing is missing data.

Three figures per usable transfer:

* ``rate_bps``: body bytes over the time from sending the request to the last byte.  It
  includes one round trip and the server's think time, so it *understates* what the path can
  carry; for two transfers of the same bytes over the same path (the bulk endpoint with two
  SNIs) that bias is the same on both sides, and a transfer done in 5 ms on fibre is a valid,
  very fast, rate.
* ``sustained_bps``: wire bytes of the answer over the time from its first byte on the wire
  (the first packet of the TLS record carrying the response head, after any TLS 1.3 session
  tickets) to the last byte.  It is what a cap limits once the answer flows, and it excludes
  the server's think time.  None when the answer came at once: that says nothing about a cap
  except that this page was not slowed.
* ``rtt_s``: the TCP handshake time, one round trip of the path the data takes (a queue or a
  retransmitted SYN only makes it larger, which makes "far below one initial window per RTT"
  harder to meet: the safe direction).  The address comparison takes the smallest over its
  transfers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.experiments.throttling.model import Transfer

INITIAL_WINDOW_BYTES = 10 * 1448  # RFC 6928: ten segments


@dataclass(frozen=True, slots=True)
class RateFigure:
    """What one transfer says about the path's rate; ``why`` names why a figure is missing."""

    bytes: int
    seconds: float | None
    rate_bps: float | None
    sustained_bps: float | None
    body_seconds: float | None
    rtt_s: float | None
    why: str | None = None

    @property
    def usable(self) -> bool:
        return self.rate_bps is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "seconds": _r(self.seconds),
            "rate_bps": _r(self.rate_bps, 1),
            "sustained_bps": _r(self.sustained_bps, 1),
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000.0, 3),
            "why": self.why,
        }


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


def transfer_rtt(tr: Transfer) -> float | None:
    """Round-trip estimate of the path this transfer took: its TCP handshake (the wait for
    the first byte of the answer when the handshake time was not recorded)."""
    if tr.connect_s is not None and tr.connect_s > 0:
        return tr.connect_s
    ttfb = _ttfb(tr)
    return ttfb if ttfb is not None and ttfb > 0 else None


def _ttfb(tr: Transfer) -> float | None:
    """Request sent to the first byte of the answer (not of a TLS 1.3 session ticket that
    came before it); the head's decryption time when that was not recorded (larger: safe)."""
    if tr.request_t is None:
        return None
    first = tr.answer_wire_t if tr.answer_wire_t is not None else tr.response_t
    if first is None:
        return None
    return max(0.0, first - tr.request_t)


def _end(tr: Transfer) -> float:
    end = tr.t - tr.t0
    if tr.samples:
        end = max(end, tr.samples[-1].t)
    return end


def transfer_figure(tr: Transfer, min_bytes: int = 1) -> RateFigure:
    """The rate figure of one transfer, or no rate and the reason."""
    rtt = transfer_rtt(tr)
    count = tr.body_bytes
    if tr.failure is not None:
        return RateFigure(count, None, None, None, None, rtt, f"failed:{tr.failure}")
    if tr.status_code is not None and not 200 <= tr.status_code < 300:
        return RateFigure(count, None, None, None, None, rtt, f"http_status_{tr.status_code}")
    if tr.request_t is None or tr.response_t is None:
        return RateFigure(count, None, None, None, None, rtt, "no_response")
    if tr.stop == "time":
        # cut by its time cap: count what arrived of the answer on the wire, so a large TLS
        # record still in flight under a low cap is not mistaken for nothing
        count = max(count, tr.bytes - tr.pre_answer_bytes)
    if count <= 0:
        return RateFigure(0, None, None, None, None, rtt,
                          "stalled" if tr.stop == "time" else "no_body")
    if tr.stop not in ("time", "bytes") and not tr.complete:
        return RateFigure(count, None, None, None, None, rtt, "ended_early")
    if count < min_bytes and tr.stop != "time":
        # an answer that ended this short carries no rate; one cut by its time cap after
        # running its whole time is a rate however few bytes it moved
        return RateFigure(count, None, None, None, None, rtt, "too_few_bytes")
    end = _end(tr)
    seconds = end - tr.request_t
    if seconds <= 0:
        return RateFigure(count, None, None, None, None, rtt, "no_elapsed_time")
    rate = count * 8.0 / seconds
    if tr.answer_wire_t is not None:
        # from the first byte of the answer on the wire: a large first TLS record under a cap
        # arrives packet by packet, and the rate counts from its first packet
        body_seconds = max(0.0, end - tr.answer_wire_t)
        moved = tr.bytes - tr.pre_answer_bytes
    else:
        body_seconds = max(0.0, end - tr.response_t)
        moved = count - tr.head_body_bytes
    sustained = None
    if body_seconds > 0 and moved > 0:
        sustained = moved * 8.0 / body_seconds
    return RateFigure(count, seconds, rate, sustained, body_seconds, rtt)


def pooled(figures: list[RateFigure]) -> RateFigure | None:
    """Total bytes over total time of the usable figures (each weighted by its duration)."""
    usable = [(f, f.seconds) for f in figures
              if f.rate_bps is not None and f.seconds is not None and f.seconds > 0]
    if not usable:
        return None
    total_bytes = sum(f.bytes for f, _ in usable)
    total_seconds = sum(s for _, s in usable)
    rtts = sorted(f.rtt_s for f, _ in usable if f.rtt_s is not None)
    rtt = rtts[len(rtts) // 2] if rtts else None
    return RateFigure(total_bytes, total_seconds, total_bytes * 8.0 / total_seconds, None,
                      None, rtt)


def initial_window_rate(rtt_s: float) -> float:
    """What a sender limited only by its initial congestion window delivers per RTT (bit/s)."""
    return INITIAL_WINDOW_BYTES * 8.0 / rtt_s
