"""The collector's read-only HTTP API (JSON), the dashboard's files, /metrics and /healthz.

    GET /api/v1/measurements        filters, limit, keyset pagination (cursor)
    GET /api/v1/measurements/{id}   summary, record, the signed envelope and the probe's key
    GET /api/v1/stats               counts by verdict, country, network, domain, blocking, test
    GET /api/v1/probes              enrolled probes, public keys, last seen (no addresses)
    GET /api/v1/outages             outage events from the detector
    GET /api/v1/slowdowns           whole-network slowdown events (collector.api.slowdowns)
    GET /api/v1/slowdowns/signal    a network's or country's throughput signal per interval
    GET /api/v1/rejections          rejection counters by reason, latest quarantined (metadata)
    GET /api/v1/export?format=jsonl every matching envelope, streamed in bounded pages
    GET /metrics                    Prometheus text format
    GET /healthz                    200 while the store answers and background work runs

Every list is bounded (``limit``), every parameter checked (collector.api.params): a bad one
is a 400 with ``{"error": "bad_request", "param": ..., "detail": ...}``.  The store being
away is a 503 with Retry-After, never a stack trace.

Why the envelope can be re-verified by anyone: the store keeps the record bytes exactly as
signed and the raw signature; ``/measurements/{id}`` rebuilds the DSSE envelope from them
(docs/envelope-spec.md) and ``/probes`` lists the public keys, each of which hashes to its
probe id, so a reader needs to trust neither this collector nor its database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from collector import __version__
from collector.api import openapi
from collector.api.jsonview import quarantine_json, summary_json
from collector.api.params import (
    AGG_FILTER_PARAMS,
    FILTER_PARAMS,
    BadRequest,
    Params,
    agg_filter,
    filter_json,
    iso,
    measurement_id,
    outage_group,
    parse_dimensions,
    parse_filter,
    query_string,
)
from collector.events.table import EventTable, Stored
from collector.metrics import StoreSnapshot, store_snapshot
from collector.runtime import METRICS, RUNTIME, SETTINGS, STORE, events_store
from collector.store.base import (
    QUARANTINE_DROPPED,
    DeliveryGaps,
    Dimension,
    Filter,
    MeasurementSummary,
    ProbeActivity,
    ProbeRecord,
    QuarantinedRow,
    Store,
    StoredMeasurement,
    StoreError,
    StoreUnavailable,
)
from collector.store.rollups import AggDimension, Aggregation, PlanError

log = logging.getLogger("vigil.collector.api")

API = "/api/v1"
MAX_LIMIT = 1000  # rows per page of /measurements
TOTAL_CAP = 10_000  # /measurements counts matches exactly up to this many, then says "10000+"
AGG_MAX_LIMIT = 10_000
STATS_DIMENSIONS = (
    Dimension.VERDICT, Dimension.COUNTRY, Dimension.NETWORK, Dimension.DOMAIN,
    Dimension.BLOCKING, Dimension.TEST,
)
# Export pages adapt to the rows' size so one page stays near EXPORT_PAGE_BYTES whatever the
# records weigh; the first page is small because nothing is known yet.
EXPORT_PAGE_BYTES = 4 * 1024 * 1024
EXPORT_FIRST_PAGE = 32
EXPORT_MAX_PAGE = 1000
STORE_TIMEOUT = 30.0  # an API query taking longer is answered 503 (the query finishes anyway)
HEALTH_TIMEOUT = 5.0
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_STREAMING = web.RequestKey("vigil_streaming", bool)  # set once an export has begun
_CLIENT_GONE = web.RequestKey("vigil_client_gone", bool)  # the client closed mid-answer
CLIENT_CLOSED = 499  # nginx's code for "client closed the request": counted apart from 5xx
GZIP_MIN_BYTES = 1024  # smaller answers are not worth compressing
PREFLIGHT_MAX_AGE = "86400"


# ---- plumbing --------------------------------------------------------------------------------
def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_ok(data: Any, *, cache: str | None = None) -> web.Response:
    resp = web.json_response(data, dumps=_dumps)
    if cache is not None:
        resp.headers["Cache-Control"] = cache
    return resp


def json_error(status: int, error: str, detail: str, param: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": error, "detail": detail}
    if param is not None:
        body["param"] = param
    resp = web.json_response(body, status=status, dumps=_dumps)
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def query(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` on the API's store thread, bounded in time."""
    store = request.app[STORE]
    try:
        return await asyncio.wait_for(store.call(fn, *args), STORE_TIMEOUT)
    except TimeoutError:
        raise StoreUnavailable(f"the store did not answer within {STORE_TIMEOUT:.0f}s") from None


def _store(request: web.Request) -> Store:
    return request.app[STORE].store


def _is_api(path: str) -> bool:
    return path.startswith(("/api/", "/healthz", "/metrics", "/charts/")) or path == "/api"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request counts and latency per route (route templates: bounded label values)."""
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        # The client went away (an export cut short, a closed tab): not a server error.
        status = CLIENT_CLOSED
        raise
    finally:
        if request.get(_CLIENT_GONE):
            status = CLIENT_CLOSED
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe(route, request.method, status, time.perf_counter() - start)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API errors as JSON: bad parameters 400, store away 503, bugs 500 (logged)."""
    if not _is_api(request.path):
        return await handler(request)
    try:
        return await handler(request)
    except BadRequest as exc:
        return json_error(400, "bad_request", exc.detail, exc.param)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return json_error(exc.status, error, exc.reason)
    except StoreUnavailable as exc:
        if request.get(_STREAMING):
            raise
        log.warning("store unavailable for %s: %s", request.path, exc)
        resp = json_error(503, "store_unavailable", "the database is unavailable; retry later")
        resp.headers["Retry-After"] = "5"
        return resp
    except StoreError as exc:
        if request.get(_STREAMING):
            raise
        log.error("store error for %s: %s", request.path, exc)
        return json_error(500, "store_error", "the database failed to answer")
    except ConnectionResetError:  # the client went away
        raise
    except Exception:
        if request.get(_STREAMING):
            raise
        log.exception("internal error for %s", request.path)
        return json_error(500, "internal_error", "internal error (logged)")


@web.middleware
async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS preflight for the read-only API: any origin may GET (no credentials)."""
    if request.method != "OPTIONS" or not request.path.startswith("/api/"):
        return await handler(request)
    exc = request.match_info.http_exception
    if exc is not None and exc.status == 404:
        return json_error(404, "not_found", "no such resource")
    resp = web.Response(status=204)
    h = resp.headers
    h["Access-Control-Allow-Origin"] = "*"
    h["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
    asked = request.headers.get("Access-Control-Request-Headers", "")
    allowed = {"accept", "accept-encoding", "if-none-match", "content-type", "range"}
    wanted = [x.strip() for x in asked.split(",") if x.strip().lower() in allowed]
    h["Access-Control-Allow-Headers"] = ", ".join(wanted) if wanted else "If-None-Match"
    h["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    h["Vary"] = "Origin, Access-Control-Request-Headers"
    return resp


def etag_of(body: bytes) -> str:
    """A weak validator: the same JSON bytes, whatever the content coding on the wire."""
    return 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    bare = etag.removeprefix("W/")
    return "*" in tags or any(t.removeprefix("W/") == bare for t in tags)


@web.middleware
async def conditional(request: web.Request, handler: Handler) -> web.StreamResponse:
    """ETag and If-None-Match (304) on API answers, and gzip when the client accepts it."""
    resp = await handler(request)
    if not request.path.startswith("/api/") or request.method not in ("GET", "HEAD"):
        return resp
    if not isinstance(resp, web.Response) or resp.prepared or resp.status != 200:
        return resp
    body = resp.body
    if not isinstance(body, bytes):
        return resp
    etag = etag_of(body)
    if etag_matches(request.headers.get("If-None-Match", ""), etag):
        not_modified = web.Response(status=304)
        not_modified.headers["ETag"] = etag
        for name in ("Cache-Control", "Vary"):
            if name in resp.headers:
                not_modified.headers[name] = resp.headers[name]
        return not_modified
    resp.headers["ETag"] = etag
    resp.headers["Access-Control-Expose-Headers"] = "ETag"
    if len(body) >= GZIP_MIN_BYTES:
        resp.enable_compression()  # gzip or deflate as Accept-Encoding allows; else as is
    return resp


def middlewares() -> list[Any]:
    return [preflight, observe, errors, conditional]


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: headers every answer carries (static files and streams too)."""
    h = response.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Content-Security-Policy", CSP)
    if request.path.startswith("/api/"):
        # Public, read-only data without cookies: any site may read it.
        h.setdefault("Access-Control-Allow-Origin", "*")
        h.setdefault("Cache-Control", "no-cache")


# ---- representations -------------------------------------------------------------------------
def envelope_json(m: StoredMeasurement) -> dict[str, Any]:
    """The DSSE envelope as the probe signed it: same payload bytes, same signature."""
    return {
        "payloadType": m.payload_type,
        "payload": base64.b64encode(m.payload).decode("ascii"),
        "signatures": [
            {"keyid": m.summary.probe_id, "sig": base64.b64encode(m.signature).decode("ascii")}
        ],
    }


def _opt_iso(value: datetime | None) -> str | None:
    return None if value is None else iso(value)


def probe_json(p: ProbeRecord, a: ProbeActivity | None) -> dict[str, Any]:
    """A probe as the public sees it: key, enrolment, last seen.  Never an address, and not
    the operator's note (it may name the volunteer or where the probe sits)."""
    seen = [t for t in (a.status_at, a.last_received_at) if t is not None] if a else []
    return {
        "probe_id": p.probe_id,
        "public_key": base64.b64encode(p.public_key).decode("ascii"),
        "enrolled_at": iso(p.enrolled_at),
        "revoked_at": _opt_iso(p.revoked_at),
        "status": a.status if a else None,
        "status_at": _opt_iso(a.status_at) if a else None,
        "last_seen": _opt_iso(max(seen)) if seen else None,
        "last_measurement_start": _opt_iso(a.last_measurement_start) if a else None,
        "last_received_at": _opt_iso(a.last_received_at) if a else None,
        "measurements": a.measurements if a else 0,
        "probe_cc": a.probe_cc if a else None,
        "probe_asn": a.probe_asn if a else None,
    }


def delivery_json(g: DeliveryGaps | None) -> dict[str, int] | None:
    """Sequence numbers seen from a probe: the highest, how many arrived, how many never did."""
    if g is None:
        return None
    return {"last_seq": g.last_seq, "received": g.received, "missing": g.missing}


def export_line(m: StoredMeasurement) -> bytes:
    line = {
        "measurement_id": m.summary.measurement_id,
        "probe_id": m.summary.probe_id,
        "received_at": iso(m.summary.received_at),
        "envelope": envelope_json(m),
    }
    return json.dumps(line, separators=(",", ":")).encode("ascii") + b"\n"


OUTAGE_TIMES = ("start", "start_upper", "detected_at", "end")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso(datetime.fromtimestamp(float(value), UTC))
    return value


def outage_json(item: dict[str, Any]) -> dict[str, Any]:
    """An outage event with every time as RFC 3339 UTC (the detector keeps Unix seconds):
    its own times, and those of the evidence it carries (keys ending in ``_at``, ``start``,
    ``end``, ``t`` or ``_ts``, at any depth)."""
    out = dict(item)
    for key in OUTAGE_TIMES:
        if key in out:
            out[key] = _rfc3339(out[key])
    out["start_time"] = out.get("start")
    out["end_time"] = out.get("end")
    out["evidence"] = _times_in(out.get("evidence", {}))
    return out


def _is_time_key(key: str) -> bool:
    return key in ("start", "end", "t", "since", "until") or key.endswith(("_at", "_ts"))


def _times_in(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _times_in(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_times_in(v, key) for v in value]
    if _is_time_key(key):
        return _rfc3339(value)
    return value


def aggregation_json(result: Aggregation, dims: tuple[AggDimension, ...]) -> dict[str, Any]:
    rows = []
    for r in result.rows:
        item: dict[str, Any] = {}
        for d, k in zip(dims, r.keys, strict=True):
            if isinstance(k, datetime):
                item[d.value] = iso(k)
            elif d is AggDimension.BLOCKING:
                item[d.value] = k or "none"
            else:
                item[d.value] = k
        item.update(
            total=r.total,
            counts=dict(sorted(r.counts.items())),
            techniques=dict(sorted(r.techniques.items(), key=lambda kv: (-kv[1], kv[0]))),
            blocked_share=r.share("blocked"),
            throttled_share=r.share("throttled"),
            down_share=r.share("down"),
        )
        rows.append(item)
    p = result.plan
    return {
        "by": [d.value for d in dims],
        "source": p.source,
        "since": None if p.since is None else iso(p.since),
        "until": None if p.until is None else iso(p.until),
        "results": rows,
        "count": len(rows),
        "groups": result.groups,
        "total": result.total,
    }


# ---- handlers --------------------------------------------------------------------------------
async def api_index(request: web.Request) -> web.Response:
    Params(request.query.items(), ())
    return json_ok({
        "version": __version__,
        "endpoints": [
            "measurements", "measurements/{measurement_id}", "aggregation", "stats",
            "probes", "outages", "slowdowns", "slowdowns/signal", "rejections",
            "export?format=jsonl", "openapi.json",
        ],
        "filters": list(FILTER_PARAMS),
        "docs": "docs/envelope-spec.md (verifying exported envelopes)",
    })


async def list_measurements(request: web.Request) -> web.Response:
    p = Params(request.query.items(), (*FILTER_PARAMS, "limit", "cursor", "order", "total"))
    where = parse_filter(p)
    limit = p.integer("limit", 50, 1, MAX_LIMIT)
    cursor = p.cursor()
    order = p.choice("order", ("desc", "asc"), "desc")
    want_total = p.choice("total", ("auto", "true", "false"), "auto")
    rows: list[MeasurementSummary] = await query(
        request, _store(request).measurements_page, where, limit + 1, cursor, order == "desc"
    )
    total: int | None = None
    lower_bound = False
    if want_total != "false":
        if cursor is None and len(rows) <= limit:
            total = len(rows)  # the whole answer fits on this page
        else:
            total, lower_bound = await query(request, _total, _store(request), where,
                                             want_total == "true")
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = rows[-1].measurement_id if more else None
    return json_ok({
        "results": [summary_json(m) for m in rows],
        "count": len(rows),
        "total": total,
        "total_is_lower_bound": lower_bound,
        "limit": limit,
        "order": order,
        "filters": filter_json(where),
        "next_cursor": next_cursor,
        "next": None if next_cursor is None
        else "?" + request.rel_url.update_query(cursor=next_cursor).query_string,
    })


async def get_measurement(request: web.Request) -> web.Response:
    Params(request.query.items(), ())
    mid = measurement_id(request.match_info["measurement_id"])
    store = _store(request)
    stored: StoredMeasurement | None = await query(request, store.get_measurement, mid)
    if stored is None:
        return json_error(404, "not_found", f"no measurement {mid}")
    probe: ProbeRecord | None = await query(request, store.get_probe, stored.summary.probe_id)
    try:
        record: Any = json.loads(stored.payload)
    except ValueError:  # stored bytes were validated at ingest; keep answering regardless
        record = None
    body = {
        "measurement": summary_json(stored.summary),
        "record": record,
        "envelope": envelope_json(stored),
        "probe": None if probe is None else {
            "probe_id": probe.probe_id,
            "public_key": base64.b64encode(probe.public_key).decode("ascii"),
            "revoked_at": _opt_iso(probe.revoked_at),
        },
        "verification": (
            "Ed25519 signature by probe.public_key over the DSSE PAE of payloadType and the "
            "base64-decoded payload; probe_id is base32(SHA-256(public key)[:16]). "
            "See docs/envelope-spec.md."
        ),
    }
    # A stored measurement never changes (dedup never overwrites): caches may keep it.
    return json_ok(body, cache="public, max-age=3600")


# Which aggregation dimension answers each stats dimension from the rollups (the verdict is
# the status every rollup row already carries).
STATS_FROM_ROLLUP: dict[Dimension, AggDimension] = {
    Dimension.VERDICT: AggDimension.TEST,
    Dimension.COUNTRY: AggDimension.COUNTRY,
    Dimension.NETWORK: AggDimension.NETWORK,
    Dimension.DOMAIN: AggDimension.DOMAIN,
    Dimension.BLOCKING: AggDimension.BLOCKING,
    Dimension.TEST: AggDimension.TEST,
}
ROLLUP_MAX_GROUPS = 100_000


def _rollup_counts(store: Store, d: Dimension, where: Filter, top: int,
                   seen: dict[AggDimension, Aggregation] | None = None
                   ) -> tuple[list[tuple[str, int]], int] | None:
    """``count_by`` from the rollups when they count exactly what was asked (the filters are
    ones they keep and the time bounds fall on their buckets); None otherwise.  ``seen``
    keeps the answers already read for the same filter (verdicts and tests share one)."""
    if any(getattr(where, f) is not None for f in (
            "status", "probe_id", "input", "confirmed", "probe_network_name", "failure")):
        return None
    dim = STATS_FROM_ROLLUP[d]
    result = None if seen is None else seen.get(dim)
    if result is None:
        try:
            result = store.aggregate((dim,), agg_filter(where), ROLLUP_MAX_GROUPS)
        except PlanError:
            return None
        if seen is not None:
            seen[dim] = result
    if result.plan.since != where.since or result.plan.until != where.until:
        return None
    if d is Dimension.VERDICT:
        by_status: dict[str, int] = {}
        for r in result.rows:
            for status, n in r.counts.items():
                by_status[status] = by_status.get(status, 0) + n
        pairs = sorted(by_status.items(), key=lambda kv: (-kv[1], kv[0]))
    else:
        pairs = sorted(((str(r.keys[0]), r.total) for r in result.rows),
                       key=lambda kv: (-kv[1], kv[0]))
    return pairs[:top], result.total


def _total(store: Store, where: Filter, count: bool) -> tuple[int | None, bool]:
    """How many measurements match: exact from the rollups when they can say; else, when
    ``count`` (``total=true``), counted, exact up to TOTAL_CAP and then a lower bound; else
    unknown (None): counting rare matches of an unindexed filter reads the whole range."""
    fast = _rollup_counts(store, Dimension.TEST, where, 1)
    if fast is not None:
        return fast[1], False
    if not count:
        return None, False
    return store.count_matching(where, TOTAL_CAP)


def _stats(store: Store, where: Filter, top: int) -> dict[str, Any]:
    counts: dict[str, list[dict[str, Any]]] = {}
    total: int | None = None
    seen: dict[AggDimension, Aggregation] = {}
    for d in STATS_DIMENSIONS:
        fast = _rollup_counts(store, d, where, top, seen)
        if fast is None:
            pairs = store.count_by(d, where, top)
        else:
            pairs, total = fast
        counts[d.value] = [{"key": k, "count": n} for k, n in pairs]
    if total is None:
        total = store.measurement_count(where)
    return {"total": total, "counts": counts}


class TTLCache:
    """A few recent answers, each reused for ``ttl`` seconds (dashboards poll the same query)."""

    def __init__(self, ttl: float, size: int = 64) -> None:
        self.ttl = ttl
        self.size = size
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, key: str, value: Any) -> None:
        self._items[key] = (time.monotonic() + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


STATS_CACHE = web.AppKey("vigil_stats_cache", TTLCache)


async def stats(request: web.Request) -> web.Response:
    p = Params(request.query.items(), (*FILTER_PARAMS, "top"))
    where = parse_filter(p)
    top = p.integer("top", 20, 1, 500)
    cache = request.app[STATS_CACHE]
    key = query_string({**filter_json(where), "top": str(top)})
    body = cache.get(key)
    if body is None:
        result = await query(request, _stats, _store(request), where, top)
        body = {**result, "top": top, "filters": filter_json(where),
                "generated_at": iso(datetime.now(UTC))}
        if cache.ttl > 0:
            cache.put(key, body)
    return json_ok(body)


async def aggregation(request: web.Request) -> web.Response:
    """Counts and shares grouped by one or two dimensions, answered from the rollups."""
    p = Params(request.query.items(), ("by", *AGG_FILTER_PARAMS, "limit"))
    dims = parse_dimensions(p.get("by"))
    where = agg_filter(parse_filter(p))
    limit = p.integer("limit", 1000, 1, AGG_MAX_LIMIT)
    try:
        result: Aggregation = await query(request, _store(request).aggregate, dims, where,
                                          limit)
    except PlanError as exc:
        raise BadRequest(exc.param, exc.detail) from None
    body = aggregation_json(result, dims)
    body["filters"] = filter_json(parse_filter(p))
    return json_ok(body)


async def openapi_document(request: web.Request) -> web.Response:
    Params(request.query.items(), ())
    return json_ok(openapi.document(), cache="public, max-age=300")


def _probe_rows(
    store: Store,
) -> tuple[list[ProbeRecord], list[ProbeActivity], dict[str, DeliveryGaps]]:
    return store.list_probes(), store.last_seen(), store.delivery_gaps()


async def probes(request: web.Request) -> web.Response:
    p = Params(request.query.items(), ("limit", "revoked"))
    limit = p.integer("limit", 1000, 1, 10_000)
    with_revoked = p.boolean("revoked", True)
    records, activity, gaps = await query(request, _probe_rows, _store(request))
    by_id = {a.probe_id: a for a in activity}
    chosen = [r for r in records if with_revoked or r.revoked_at is None]
    chosen.sort(key=lambda r: r.probe_id)
    return json_ok({
        "probes": [probe_json(r, by_id.get(r.probe_id)) | {"delivery": delivery_json(
            gaps.get(r.probe_id))} for r in chosen[:limit]],
        "count": min(len(chosen), limit),
        "total": len(chosen),
    })


E = TypeVar("E", bound=Stored)


async def listed_events(request: web.Request,
                        table: Callable[[web.Application], Awaitable[EventTable[E]]]
                        ) -> list[E]:
    """The stored events an event listing asks for (since, group, ongoing, limit)."""
    p = Params(request.query.items(), ("since", "group", "ongoing", "limit"))
    since = p.time("since")
    group = outage_group(p.get("group"))
    ongoing = p.boolean("ongoing", False)
    limit = p.integer("limit", 100, 1, 1000)
    es = await table(request.app)
    events: list[E] = await query(request, es.events, since.timestamp() if since else None,
                                  group, ongoing, limit)
    return events


async def outages(request: web.Request) -> web.Response:
    events = await listed_events(request, events_store)
    rt = request.app[RUNTIME]
    out = []
    for e in events:
        out.append(outage_json(e.to_json()))
    return json_ok({
        "outages": out,
        "count": len(out),
        "detector": {
            "running": rt.outages.enabled,
            "heartbeat_s": request.app[SETTINGS].config.outages.heartbeat_s,
            "last_success": None if rt.outages.last_success is None
            else iso(datetime.fromtimestamp(rt.outages.last_success, UTC)),
        },
    })


def _rejections(store: Store, recent: int, reason: str | None
                ) -> tuple[dict[str, int], list[QuarantinedRow]]:
    counts = store.rejection_counts()
    rows = store.quarantined(recent, reason) if recent else []
    return counts, rows


async def rejections(request: web.Request) -> web.Response:
    p = Params(request.query.items(), ("recent", "reason"))
    recent = p.integer("recent", 20, 0, 200)
    reason = p.get("reason")
    if reason is not None and not (reason.replace("_", "").isalpha() and len(reason) <= 64):
        raise BadRequest("reason", "must be a rejection reason like bad_signature")
    counts, rows = await query(request, _rejections, _store(request), recent, reason)
    dropped = counts.pop(QUARANTINE_DROPPED, 0)  # not a reason: rejected, bytes not kept
    ordered = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return json_ok({
        "counts": ordered,
        "total": sum(counts.values()),
        "quarantine_dropped": dropped,
        "recent": [quarantine_json(q, detail=False) for q in rows],
    })


async def export(request: web.Request) -> web.StreamResponse:
    """Every matching envelope, one JSON object per line, oldest first.

    Memory stays bounded whatever the archive's size: rows are read in pages (keyset on
    measurement_id, sized to ~EXPORT_PAGE_BYTES) and each page is written, and drained to the
    client, before the next is read.  An interrupted download resumes with
    ``cursor=<last measurement_id received>``.  A failure after the first byte closes the
    connection without the final chunk, so a client never mistakes a cut export for a
    complete one.
    """
    p = Params(request.query.items(), (*FILTER_PARAMS, "format", "cursor", "limit"))
    p.choice("format", ("jsonl",), "jsonl")
    where = parse_filter(p)
    after = p.cursor()
    limit = p.integer("limit", 0, 1, 1_000_000_000) or None
    store = _store(request)
    size = EXPORT_FIRST_PAGE if limit is None else min(EXPORT_FIRST_PAGE, limit)
    page: list[StoredMeasurement] = await query(request, store.export_page, where, size, after)
    resp = web.StreamResponse(headers={
        "Content-Type": "application/x-ndjson; charset=utf-8",
        "Content-Disposition": 'attachment; filename="vigil-measurements.jsonl"',
        "Cache-Control": "no-store",
    })
    resp.enable_chunked_encoding()
    resp.enable_compression()  # gzip when the client accepts it (JSON lines shrink ~10x)
    request[_STREAMING] = True
    await resp.prepare(request)
    sent = 0
    while page:
        chunk = b"".join(export_line(m) for m in page)
        await resp.write(chunk)  # waits while the client is slow: backpressure
        sent += len(page)
        if len(page) < size or (limit is not None and sent >= limit):
            break
        size = _next_page_size(len(chunk), len(page))
        if limit is not None:
            size = min(size, limit - sent)
        after = page[-1].summary.measurement_id
        page = await query(request, store.export_page, where, size, after)
    await resp.write_eof()
    return resp


def _next_page_size(chunk_bytes: int, rows: int) -> int:
    per_row = max(1, chunk_bytes // max(1, rows))
    return max(1, min(EXPORT_MAX_PAGE, EXPORT_PAGE_BYTES // per_row))


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    rt, settings = app[RUNTIME], app[SETTINGS]
    store_ok, store_detail = True, "ok"
    try:
        store = app[STORE]
        await asyncio.wait_for(store.call(store.store.schema_version), HEALTH_TIMEOUT)
    except (StoreError, TimeoutError) as exc:
        # The reason only: the exception text (hosts, paths, driver messages) goes to the log.
        log.warning("health check: store not answering: %s", exc)
        store_ok = False
        store_detail = "timeout" if isinstance(exc, TimeoutError) else "unavailable"
    ingest: dict[str, Any] = {"enabled": settings.ingest}
    if rt.ingest is not None:
        s = rt.ingest.stats
        ingest.update(connected=rt.ingest.connected.is_set(), received=s.received,
                      stored=s.stored, last_error=s.last_error or None)
    o = rt.outages
    outage = {"enabled": o.enabled, "passes": o.passes, "failures": o.failures,
              "last_error": o.last_error or None}
    if rt.failure is not None or not store_ok:
        status, code = "failing", 503
    elif rt.ingest is not None and not rt.ingest.connected.is_set():
        status, code = "degraded", 200  # the API still answers; the broker may be restarting
    else:
        status, code = "ok", 200
    body = {
        "status": status,
        "version": __version__,
        "uptime_s": round(time.time() - rt.started_at, 1),
        "store": {"ok": store_ok, "detail": store_detail},
        "ingest": ingest,
        "outages": outage,
        "slowdowns": {"enabled": rt.slowdowns.enabled, "passes": rt.slowdowns.passes,
                      "failures": rt.slowdowns.failures,
                      "last_error": rt.slowdowns.last_error or None},
        "failure": rt.failure,
    }
    resp = web.json_response(body, status=code, dumps=_dumps)
    resp.headers["Cache-Control"] = "no-store"
    return resp


async def metrics(request: web.Request) -> web.StreamResponse:
    m = request.app[METRICS]
    try:
        store = request.app[STORE]
        m.sources.snapshot = await asyncio.wait_for(
            store.call(store_snapshot, store.store), HEALTH_TIMEOUT * 2
        )
    except (StoreError, TimeoutError) as exc:
        log.warning("metrics: store snapshot failed: %s", exc)
        m.sources.snapshot = StoreSnapshot(ok=False)
    resp = await m.handler(request)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _index_handler(static_dir: Path) -> Handler:
    async def index(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(static_dir / "index.html")
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    return index


def setup_routes(app: web.Application, static_dir: Path) -> None:
    app[STATS_CACHE] = TTLCache(app[SETTINGS].config.api.stats_cache_s)
    r = app.router
    r.add_get("/", _index_handler(static_dir), name="dashboard")
    r.add_static("/static/", static_dir, name="static")
    r.add_get("/healthz", healthz, name="healthz")
    r.add_get("/metrics", metrics, name="metrics")
    r.add_get(API, api_index, name="api_index")
    r.add_get(f"{API}/measurements", list_measurements, name="measurements")
    r.add_get(f"{API}/measurements/{{measurement_id}}", get_measurement, name="measurement")
    r.add_get(f"{API}/stats", stats, name="stats")
    r.add_get(f"{API}/aggregation", aggregation, name="aggregation")
    r.add_get(f"{API}/openapi.json", openapi_document, name="openapi")
    r.add_get(f"{API}/probes", probes, name="probes")
    r.add_get(f"{API}/outages", outages, name="outages")
    r.add_get(f"{API}/rejections", rejections, name="rejections")
    r.add_get(f"{API}/export", export, name="export", allow_head=False)
    from collector.api import slowdowns  # imported here: it uses this module's helpers

    slowdowns.add_routes(app)

