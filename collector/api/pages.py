"""Server-rendered parts of the dashboard: the share-over-time chart (SVG) and the readable
measurement page (HTML).  Both read the same filters as the JSON API, so a view's URL is the
whole of its state and can be shared.

    GET /charts/share.svg?by=country|network&<aggregation filters>
    GET /measurement/{measurement_id}
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.wire import envelope as wire
from collector.api.params import (
    AGG_FILTER_PARAMS,
    BadRequest,
    Params,
    agg_filter,
    measurement_id,
    parse_filter,
)
from collector.api.routes import query
from collector.runtime import STORE, events_store
from collector.store.base import ProbeRecord, StoredMeasurement
from collector.store.rollups import DAY, HOUR, AggDimension, Aggregation, PlanError
from collector.web import measurement as page
from collector.web.svg import Event, Point, share_chart

DEFAULT_SPAN = timedelta(days=30)
HOURLY_UP_TO = timedelta(days=3)  # shorter ranges are drawn per hour
MAX_SERIES = 8


def _html(text: str, status: int = 200) -> web.Response:
    resp = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


async def share_svg(request: web.Request) -> web.Response:
    """Blocked-or-throttled share per day (or hour) and country or network, with the outage
    events of the same groups on the same time axis."""
    p = Params(request.query.items(), ("by", *AGG_FILTER_PARAMS))
    by = p.choice("by", ("country", "network"), "country") or "country"
    base = parse_filter(p)
    until = base.until or datetime.now(UTC)
    since = base.since or (until - DEFAULT_SPAN)
    if since >= until:
        raise BadRequest("until", "must be later than since")
    hourly = until - since <= HOURLY_UP_TO
    where = replace(agg_filter(base), since=since, until=until)
    dims = (AggDimension.HOUR if hourly else AggDimension.DAY, AggDimension(by))
    store = request.app[STORE].store
    try:
        result: Aggregation = await query(request, store.aggregate, dims, where, 10_000)
    except PlanError as exc:
        raise BadRequest(exc.param, exc.detail) from None
    totals: dict[str, int] = {}
    for r in result.rows:
        totals[str(r.keys[1])] = totals.get(str(r.keys[1]), 0) + r.total
    keep = sorted(totals, key=lambda k: (-totals[k], k))[:MAX_SERIES]
    series: dict[str, list[Point]] = {k: [] for k in sorted(keep)}
    for r in result.rows:
        key = str(r.keys[1])
        if key in series:
            when = r.keys[0]
            assert isinstance(when, datetime)
            series[key].append(Point(when.timestamp(), r.share("blocked", "throttled"),
                                     r.total))
    events = await _events(request, by, set(keep), since, until)
    lo = result.plan.since or since
    hi = result.plan.until or until
    title = f"Blocked or throttled share per {'hour' if hourly else 'day'}, by {by}"
    svg = share_chart(series, lo.timestamp(), hi.timestamp(), events, title=title,
                      bucket_s=HOUR if hourly else DAY)
    resp = web.Response(text=svg, content_type="image/svg+xml", charset="utf-8")
    resp.headers["Cache-Control"] = "no-cache"
    return resp


async def _events(request: web.Request, by: str, groups: set[str], since: datetime,
                  until: datetime) -> list[Event]:
    es = await events_store(request.app)
    found = await query(request, es.events, since.timestamp(), None, False, 1000)
    prefix = "cc:" if by == "country" else "asn:"
    out = []
    for e in found:
        kind, _, key = e.group.partition(":")
        if e.start >= until.timestamp() or f"{kind}:" != prefix or key not in groups:
            continue
        label = (f"{e.to_json().get('kind', 'outage')} {e.group}: "
                 f"{len(e.affected)} probe(s) silent from "
                 f"{datetime.fromtimestamp(e.start, UTC):%Y-%m-%d %H:%M} UTC")
        out.append(Event(e.start, e.end, label, str(e.to_json().get("kind", "outage"))))
    return out


def check_signature(m: StoredMeasurement, probe: ProbeRecord | None) -> page.SignatureCheck:
    """Verify the stored envelope again, here and now, with the probe's enrolled key."""
    if probe is None:
        return page.SignatureCheck(False, "the probe that signed it is not enrolled here",
                                   None, False)
    key_b64 = page.b64(probe.public_key)
    matches = wire.probe_id_for(probe.public_key) == m.summary.probe_id
    try:
        Ed25519PublicKey.from_public_bytes(probe.public_key).verify(
            m.signature, wire.pae(m.payload_type, m.payload))
    except (InvalidSignature, ValueError):
        return page.SignatureCheck(False, "the signature does not match the stored bytes",
                                   key_b64, matches)
    revoked = "" if probe.revoked_at is None else \
        f" (this key was revoked on {probe.revoked_at:%Y-%m-%d}; it was valid when enrolled)"
    return page.SignatureCheck(
        matches,
        "Ed25519 over the DSSE pre-authentication encoding of the stored bytes, checked by "
        "this server when the page was made" + revoked + ".",
        key_b64, matches)


async def measurement_page(request: web.Request) -> web.Response:
    try:
        Params(request.query.items(), ())
        mid = measurement_id(request.match_info["measurement_id"])
    except BadRequest as exc:
        return _html(f"<!doctype html><title>Bad request</title><p>{exc.detail}</p>", 400)
    store = request.app[STORE].store
    stored: StoredMeasurement | None = await query(request, store.get_measurement, mid)
    if stored is None:
        return _html("<!doctype html><title>Not found</title><p>No such measurement.</p>",
                     404)
    probe: ProbeRecord | None = await query(request, store.get_probe, stored.summary.probe_id)
    try:
        record: Any = json.loads(stored.payload)
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}
    check = check_signature(stored, probe)
    return _html(page.render(record, check, f"../api/v1/measurements/{mid}"))


def setup_pages(app: web.Application) -> None:
    app.router.add_get("/charts/share.svg", share_svg, name="share_chart")
    app.router.add_get("/measurement/{measurement_id}", measurement_page,
                       name="measurement_page")

