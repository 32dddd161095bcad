"""The incident report as one self-contained HTML file (inline CSS and SVG, no script, nothing
fetched), from :class:`collector.report.summary.ReportData` and outage events.  Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

from collector.report.summary import DAY, ReportData
from collector.web.svg import Event, Point, share_chart

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.85em;word-break:break-all}.muted{color:#666}.lede{font-size:1.08em}
figure{margin:1em 0}
"""


def when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def events_for(outages: Sequence[dict[str, object]]) -> list[Event]:
    out = []
    for o in outages:
        start = o.get("start_ts")
        end = o.get("end_ts")
        if not isinstance(start, int | float):
            continue
        out.append(Event(float(start), float(end) if isinstance(end, int | float) else None,
                         f"{o.get('kind', 'outage')} {o.get('group')}",
                         str(o.get("kind", "outage"))))
    return out


def chart(data: ReportData, outages: Sequence[dict[str, object]]) -> str:
    t0, t1 = data.scope.since.timestamp(), data.scope.until.timestamp()
    series = {}
    for asn, s in sorted(data.series.items()):
        label = f"{asn} {data.networks.get(asn, '')}".strip()
        series[label] = [
            Point(float(day), (c["blocked"] + c["throttled"]) / sum(c.values())
                  if sum(c.values()) else None, sum(c.values()))
            for day, c in sorted(s.days.items())
        ]
    return share_chart(series, t0, t1, events_for(outages),
                       title=f"Blocked or throttled share of measurements per day, "
                             f"{data.scope.cc}", bucket_s=DAY)


METHODOLOGY = """
<p>Each measurement was made by a Vigil probe on a volunteer's connection in the network
named, against an input from the Citizen Lab test lists, and compared with what a control
server outside the country saw for the same site at the same time. A verdict is
<em>blocked</em> only when the probe's view differs from the control's in a way that
censorship explains (a DNS answer that is a known blockpage address or a bogon while the
control sees a public one; a connection reset or timed out right after the server name was
sent while the same address with another name works; a blockpage). A site the control
cannot reach either is <em>down</em>, never blocked; a failed control makes the measurement
<em>inconclusive</em>. <em>Confirmed</em> means a known blockpage fingerprint matched.</p>
<p>Every measurement is signed by its probe (Ed25519, DSSE envelope) before it leaves the
volunteer's device; the collector stores the signed bytes unchanged. The evidence bundle
beside this report holds the envelopes cited here and the probes' public keys; its
<code>verify.py</code> re-checks every signature and every cited claim offline.</p>
"""

LIMITS = """
<ul>
<li>Probes measure from a few networks; a network without a probe says nothing here, and one
probe speaks for its own connection, not for every subscriber of its network.</li>
<li>Shares are of the measurements made, which are spread unevenly over time (a probe that
is offline, for instance during a shutdown, makes none: see the outage events).</li>
<li>Outage events are inferred from probes falling silent together; a power cut at one
volunteer's home looks like an outage of one probe, which is why an event needs several.</li>
<li>Throttling verdicts compare transfer rates over the same path only; a slow network is not
throttling.</li>
<li>The control server's own network may itself be filtered by some sites (geoblocking); such
cases show as <em>down</em> or <em>inconclusive</em>, not blocked.</li>
</ul>
"""


def render(data: ReportData, outages: Sequence[dict[str, object]], generated: datetime,
           collector: str) -> str:
    sc = data.scope
    where = sc.cc + (f" ({sc.asn})" if sc.asn else "")
    findings = data.blocked_findings()
    domains = sorted({f.domain for f in findings})
    blocked = data.statuses["blocked"] + data.statuses["throttled"]
    share = pct(blocked / data.total) if data.total else "-"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Vigil incident report: {escape(where)}, {when(sc.since)} to "
        f"{when(sc.until)}</title><style>{CSS}</style></head><body>",
        f"<h1>Network interference in {escape(where)}</h1>",
        f"<p class=muted>{when(sc.since)} to {when(sc.until)}. Generated {when(generated)} "
        f"by {escape(collector)} from signed Vigil measurements.</p>",
        f"<p class=lede>{data.total} measurements from {len(data.probes)} probe(s) on "
        f"{len(data.networks)} network(s); {blocked} ({share}) "
        f"were blocked or throttled. {len(domains)} domain(s) were found blocked on at least "
        f"one network; {len(outages)} outage or slowdown event(s) were detected.</p>",
        "<h2>Blocked share over time</h2>",
        f"<figure>{chart(data, outages)}<figcaption class=muted>Shaded spans: outage "
        "events. A gap in a line: no measurement that day.</figcaption></figure>",
        "<h2 id=blocked>Blocked domains</h2>",
    ]
    if findings:
        parts.append(
            "<table><thead><tr><th>Domain</th><th>Category</th><th>Network</th>"
            "<th>Blocked</th><th>Technique</th><th>First seen blocked</th>"
            "<th>Last seen blocked</th><th>Confirmed</th><th>Evidence (measurement ids)</th>"
            "</tr></thead><tbody>")
        for f in findings:
            parts.append(
                f"<tr><td>{escape(f.domain)}</td><td>{escape(f.category)}</td>"
                f"<td>{escape(f.asn)} {escape(f.network_name)}</td>"
                f"<td class=num>{f.blocked}/{f.total} ({pct(f.share)})</td>"
                f"<td>{escape(f.technique)}<br><span class=muted>"
                f"{escape(', '.join(r for r, _ in f.reasons.most_common(3)))}</span></td>"
                f"<td>{when(f.first_blocked)}</td><td>{when(f.last_blocked)}</td>"
                f"<td class=num>{f.confirmed}</td>"
                f"<td>{'<br>'.join(f'<code>{escape(i)}</code>' for i in f.cited())}</td></tr>")
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No domain was found blocked in this period.</p>")
    parts.append("<h2 id=fingerprints>Confirmed blockpage fingerprints</h2>")
    if data.fingerprints:
        parts.append("<table><thead><tr><th>Fingerprint</th><th>Measurements</th>"
                     "<th>Evidence</th></tr></thead><tbody>")
        counts: dict[str, int] = {}
        for f in findings:
            for name, n in f.fingerprints.items():
                counts[name] = counts.get(name, 0) + n
        for name, ids in sorted(data.fingerprints.items()):
            parts.append(
                f"<tr><td>{escape(name)}</td><td class=num>{counts.get(name, 0)}</td>"
                f"<td>{'<br>'.join(f'<code>{escape(i)}</code>' for i in ids)}</td></tr>")
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No known blockpage fingerprint matched.</p>")
    parts.append("<h2 id=outages>Outage and slowdown events</h2>")
    if outages:
        parts.append("<table><thead><tr><th>Kind</th><th>Where</th><th>Start</th><th>End</th>"
                     "<th>Probes affected</th></tr></thead><tbody>")
        for o in outages:
            start = o.get("start_ts")
            end = o.get("end_ts")
            parts.append(
                f"<tr><td>{escape(str(o.get('kind', 'outage')))}</td>"
                f"<td>{escape(str(o.get('group')))}</td>"
                f"<td>{when(_dt(start))}</td>"
                f"<td>{when(_dt(end)) if end is not None else 'ongoing'}</td>"
                f"<td class=num>{escape(str(o.get('affected', '')))}</td></tr>")
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No outage event was detected in this period.</p>")
    parts.append("<h2 id=networks>Measurements per network</h2><table><thead><tr>"
                 "<th>Network</th><th>Measurements</th><th>Blocked or throttled</th>"
                 "<th>Down</th></tr></thead><tbody>")
    for asn, s in sorted(data.series.items()):
        total = sum(sum(c.values()) for c in s.days.values())
        bl = sum(c["blocked"] + c["throttled"] for c in s.days.values())
        dn = sum(c["down"] for c in s.days.values())
        parts.append(f"<tr><td>{escape(asn)} {escape(data.networks.get(asn, ''))}</td>"
                     f"<td class=num>{total}</td><td class=num>{bl}</td>"
                     f"<td class=num>{dn}</td></tr>")
    parts.append("</tbody></table>")
    parts += [
        "<h2 id=methodology>Methodology</h2>", METHODOLOGY,
        "<h2 id=limits>Limits</h2>", LIMITS,
        "<h2 id=verify>Verifying this report</h2>",
        "<p>In the <code>evidence/</code> folder beside this file: "
        "<code>python3 evidence/verify.py</code> (needs the <code>cryptography</code> "
        "package). It checks each cited envelope's signature against its probe's public key, "
        "that each key hashes to its probe id, that every claim in <code>cited.json</code> is "
        "what the signed record says, and the SHA-256 of every file.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _dt(value: object) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    return None
