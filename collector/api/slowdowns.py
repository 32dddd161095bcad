"""The API's whole-network slowdown routes (read-only, like the rest of the API).

    GET /api/v1/slowdowns          slowdown events (since, group, ongoing, limit)
    GET /api/v1/slowdowns/signal   a group's throughput signal per interval (group, since, until)

Times are given twice: Unix seconds as the detector keeps them and RFC 3339 UTC strings
(``start_time``, ``start_lower_time``, ``detected_time``, ``end_time``; ``bin_start_time``).
The signal is computed on request from the samples the detector extracted (the background
detector of ``serve`` or ``vigil-collector throttling-events``), over at most
``MAX_SIGNAL_BINS`` intervals.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from collector.api.params import BadRequest, Params, iso, outage_group
from collector.api.routes import API, json_ok, listed_events, query
from collector.runtime import RUNTIME, SETTINGS, ApiTable
from collector.slowdowns.detector import SignalPoint, SlowdownConfig, SlowdownEvent
from collector.slowdowns.store import SlowdownStore
from collector.slowdowns.watch import MAX_SIGNAL_BINS, group_signal

TABLES = web.AppKey("vigil_slowdown_tables", ApiTable[SlowdownStore])


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso(datetime.fromtimestamp(ts, UTC))


def event_json(e: SlowdownEvent) -> dict[str, Any]:
    item = e.to_json()
    item["start_time"] = _iso(e.start)
    item["start_lower_time"] = _iso(e.start_lower)
    item["detected_time"] = _iso(e.detected_at)
    item["end_time"] = _iso(e.end)
    return item


def point_json(p: SignalPoint) -> dict[str, Any]:
    item = p.to_json()
    item["bin_start_time"] = _iso(p.bin_start)
    return item


async def tables(app: web.Application) -> SlowdownStore:
    """The slowdown tables on the API's connection (created on first use)."""
    return await app[TABLES].get(app)


def detector_config(app: web.Application) -> SlowdownConfig:
    return app[SETTINGS].slowdown_detector


async def slowdowns(request: web.Request) -> web.Response:
    events = await listed_events(request, tables)
    loop = request.app[RUNTIME].slowdowns
    cfg = request.app[SETTINGS].config.slowdowns
    return json_ok({
        "slowdowns": [event_json(e) for e in events],
        "count": len(events),
        "detector": {
            "running": loop.enabled,
            "interval_s": cfg.interval_s,
            "last_success": _iso(loop.last_success),
        },
    })


async def signal(request: web.Request) -> web.Response:
    p = Params(request.query.items(), ("group", "since", "until"))
    group = outage_group(p.get("group"))
    if group is None:
        raise BadRequest("group", "required: asn:AS1234 or cc:IR")
    cfg = detector_config(request.app)
    now = time.time()
    since_dt, until_dt = p.time("since"), p.time("until")
    if until_dt is not None:
        until = min(now, until_dt.timestamp())
    elif since_dt is not None:  # a default never makes a request invalid: the longest window
        until = min(now, since_dt.timestamp() + MAX_SIGNAL_BINS * cfg.interval)
    else:
        until = now
    since = since_dt.timestamp() if since_dt else until - 86400.0
    if since >= until:
        raise BadRequest("until", "must be later than since (and not in the future)")
    if (until - since) / cfg.interval > MAX_SIGNAL_BINS:
        raise BadRequest("since", f"at most {MAX_SIGNAL_BINS} intervals")
    st = await tables(request.app)
    points = await query(request, group_signal, st, group, since, until, cfg)
    return json_ok({
        "group": group,
        "interval_s": cfg.interval,
        "alert_fraction": cfg.alert_fraction,
        "points": [point_json(pt) for pt in points],
        "count": len(points),
    })


def add_routes(app: web.Application) -> None:
    app[TABLES] = ApiTable(SlowdownStore)
    app.router.add_get(f"{API}/slowdowns", slowdowns, name="slowdowns")
    app.router.add_get(f"{API}/slowdowns/signal", signal, name="slowdowns_signal")
