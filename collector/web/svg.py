"""Charts as SVG text, rendered on the server: no script, no library, nothing fetched.

The dashboard shows them as images and the incident report inlines them, so one drawing
serves both.  Pure functions: data in, a string out.  Every label that came from a probe is
escaped (an input URL or network name must not be able to inject markup).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
EVENT_FILL = {"outage": "#d62728", "slowdown": "#ff7f0e"}


@dataclass(frozen=True, slots=True)
class Point:
    t: float  # bucket start, Unix seconds
    share: float | None  # 0..1, None when nothing was measured
    total: int


@dataclass(frozen=True, slots=True)
class Event:
    """A span drawn behind the curves (an outage or a slowdown)."""

    start: float
    end: float | None  # None: still going on
    label: str
    kind: str = "outage"


def _x(t: float, t0: float, t1: float, left: float, width: float) -> float:
    return left + (t - t0) / (t1 - t0) * width if t1 > t0 else left


def _ticks(t0: float, t1: float) -> list[float]:
    span = t1 - t0
    step = 3600.0 if span <= 2 * 86400 else 86400.0
    while span / step > 10:
        step *= 2
    first = (t0 // step + 1) * step
    return [first + i * step for i in range(int((t1 - first) // step) + 1)]


def _label(t: float, step_hours: bool) -> str:
    when = datetime.fromtimestamp(t, UTC)
    return when.strftime("%d %b %H:%M" if step_hours else "%d %b")


def share_chart(series: Mapping[str, Sequence[Point]], t0: float, t1: float,
                events: Sequence[Event] = (), *, title: str, bucket_s: float,
                width: int = 900, height: int = 280) -> str:
    """Blocked share (0-100 %) over time, one line per group, events as shaded spans."""
    left, right, top, bottom = 48.0, 170.0, 28.0, 34.0
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" '
        'font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for ev in events:
        x0 = max(left, _x(ev.start, t0, t1, left, pw))
        x1 = min(left + pw, _x(ev.end if ev.end is not None else t1, t0, t1, left, pw))
        if x1 <= left or x0 >= left + pw:
            continue
        fill = EVENT_FILL.get(ev.kind, "#999999")
        out.append(
            f'<rect class="event event-{escape(ev.kind)}" x="{x0:.1f}" y="{top}" '
            f'width="{max(1.5, x1 - x0):.1f}" height="{ph}" fill="{fill}" fill-opacity="0.18">'
            f"<title>{escape(ev.label)}</title></rect>"
        )
    for pct in (0, 25, 50, 75, 100):
        y = top + ph - pct / 100 * ph
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                   'stroke="#dddddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{pct}%</text>')
    ticks = _ticks(t0, t1)
    hours = t1 - t0 <= 2 * 86400
    for t in ticks:
        x = _x(t, t0, t1, left, pw)
        out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" '
                   'stroke="#555555"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">'
                   f"{escape(_label(t, hours))}</text>")
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" '
               'stroke="#555555"/>')
    for i, (name, points) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        segments: list[list[str]] = [[]]
        for p in sorted(points, key=lambda p: p.t):
            if p.share is None:
                segments.append([])
                continue
            x = _x(p.t + bucket_s / 2, t0, t1, left, pw)
            y = top + ph - p.share * ph
            segments[-1].append(f"{x:.1f},{y:.1f}")
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            elif seg:
                out.append(f'<polyline class="series" data-series="{escape(name)}" '
                           f'fill="none" stroke="{color}" stroke-width="2" '
                           f'points="{" ".join(seg)}"/>')
        ly = top + 14 * i + 6
        out.append(f'<rect x="{left + pw + 12}" y="{ly - 8}" width="10" height="10" '
                   f'fill="{color}"/>')
        out.append(f'<text class="legend" x="{left + pw + 26}" y="{ly + 1}">'
                   f"{escape(name[:24])}</text>")
    if not series:
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" '
                   'fill="#777777">no measurements in this range</text>')
    if events:
        ly = top + 14 * len(series) + 14
        for kind in sorted({e.kind for e in events}):
            out.append(f'<rect x="{left + pw + 12}" y="{ly - 8}" width="10" height="10" '
                       f'fill="{EVENT_FILL.get(kind, "#999999")}" fill-opacity="0.3"/>')
            out.append(f'<text x="{left + pw + 26}" y="{ly + 1}">{escape(kind)}</text>')
            ly += 14
    out.append("</svg>")
    return "\n".join(out)
