"""The API's OpenAPI 3.1 description, served at ``/api/v1/openapi.json``.

Written here by hand (it is a promise to API users, not a by-product of the code) and held
to the implementation by the tests: every route is described and every description is a
route, every documented parameter is accepted with its example value, an undocumented one
is refused, and each answer validates against its documented schema.  OpenAPI 3.1 schemas
are JSON Schema 2020-12, so one validator checks them.
"""

from __future__ import annotations

from typing import Any

from collector import __version__

TIME = {"type": "string", "format": "date-time",
        "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$"}
OPT_TIME = {"anyOf": [TIME, {"type": "null"}]}
STATUSES = ["ok", "blocked", "throttled", "down", "inconclusive"]
BLOCKINGS = ["none", "dns", "tcp_ip", "tls", "http-failure", "http-diff", "throttling"]
DIMENSIONS = ["hour", "day", "month", "country", "network", "domain", "category", "test",
              "blocking"]
NULLABLE_STR = {"type": ["string", "null"]}


def _p(name: str, schema: dict[str, Any], description: str, example: Any,
       where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema,
            "description": description, "example": example}


FILTERS: list[dict[str, Any]] = [
    _p("probe_cc", {"type": "string", "pattern": "^[A-Za-z]{2}$"},
       "Country of the probe (ISO 3166-1 alpha-2).", "IQ"),
    _p("probe_asn", {"type": "string", "pattern": "^(AS|as)?[0-9]{1,10}$"},
       "Network of the probe (AS number).", "AS50710"),
    _p("probe_id", {"type": "string", "pattern": "^[a-z2-7]{26}$"}, "One probe.",
       "aaaaaaaaaaaaaaaaaaaaaaaaaa"),
    _p("probe_network_name", {"type": "string", "maxLength": 256},
       "Network name as the probe recorded it (exact).", "Earthlink Telecommunications"),
    _p("test_name", {"type": "string", "pattern": "^[a-z][a-z0-9_]{1,63}$"}, "Experiment.",
       "web_connectivity"),
    _p("status", {"type": "string", "enum": STATUSES}, "Verdict status.", "blocked"),
    _p("blocking", {"type": "string", "enum": BLOCKINGS},
       "Blocking technique; none: nothing was blocked.", "dns"),
    _p("failure", {"type": "string", "pattern": r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$"},
       "Verdict reason, exactly or as a dotted prefix (tls matches tls.sni_reset).", "tls"),
    _p("confirmed", {"type": "boolean"},
       "Only measurements where a known blockpage fingerprint matched (or none matched).",
       True),
    _p("domain", {"type": "string", "maxLength": 253}, "Host name of the tested input.",
       "telegram.org"),
    _p("input", {"type": "string", "maxLength": 2048}, "The tested input (URL), exactly.",
       "https://telegram.org/"),
    _p("category_code", {"type": "string", "pattern": "^[A-Za-z_]{2,32}$"},
       "Citizen Lab category of the input.", "COMT"),
    _p("since", {"type": "string", "format": "date-time"},
       "measurement_start_time >= since (RFC 3339; a date means its midnight UTC).",
       "2020-01-01T00:00:00Z"),
    _p("until", {"type": "string", "format": "date-time"},
       "measurement_start_time < until.", "2100-01-01T00:00:00Z"),
]
AGG_FILTER_NAMES = ("probe_cc", "probe_asn", "domain", "category_code", "test_name",
                    "blocking", "since", "until")

ERROR = {
    "description": "Error (bad parameter, unknown id, store unavailable).",
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                       "param": {"type": "string"}}}}},
}

SUMMARY = {
    "type": "object",
    "required": ["measurement_id", "probe_id", "test_name", "input", "domain", "probe_cc",
                 "probe_asn", "status", "blocking", "reason", "confirmed",
                 "measurement_start_time", "received_at"],
    "properties": {
        "measurement_id": {"type": "string"}, "probe_id": {"type": "string"},
        "test_name": {"type": "string"}, "input": NULLABLE_STR, "domain": NULLABLE_STR,
        "category_code": NULLABLE_STR, "probe_cc": {"type": "string"},
        "probe_asn": {"type": "string"}, "probe_network_name": {"type": "string"},
        "status": {"enum": STATUSES}, "blocking": NULLABLE_STR, "reason": {"type": "string"},
        "confirmed": {"type": "boolean"}, "measurement_start_time": TIME, "received_at": TIME,
    },
}


def _ok(schema: dict[str, Any], media: str = "application/json",
        description: str = "Success.") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": schema}}}


def _op(op_id: str, summary: str, params: list[dict[str, Any]], ok: dict[str, Any],
        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok, "400": ERROR, "503": ERROR}
    responses.update(extra or {})
    return {"get": {"operationId": op_id, "summary": summary, "parameters": params,
                    "responses": responses}}


def _filters(*names: str) -> list[dict[str, Any]]:
    return [p for p in FILTERS if p["name"] in names] if names else list(FILTERS)


def _limit(default: int, high: int, example: int = 5) -> dict[str, Any]:
    return _p("limit", {"type": "integer", "minimum": 1, "maximum": high, "default": default},
              "Most items in the answer.", example)



def _event_filters(group_example: str) -> list[dict[str, Any]]:
    """The parameters of an event listing (outages, slowdowns)."""
    return [
        _p("since", {"type": "string", "format": "date-time"},
           "Events still going on or ended after since.", "2020-01-01T00:00:00Z"),
        _p("group", {"type": "string", "pattern": "^(asn:AS[0-9]{1,10}|cc:[A-Z]{2})$"},
           "One network or country.", group_example),
        _p("ongoing", {"type": "boolean"}, "Only events still going on.", False),
        _limit(100, 1000),
    ]


AGG_ROW = {
    "type": "object",
    "required": ["total", "counts", "blocked_share", "throttled_share", "down_share"],
    "properties": {
        **{d: {"type": "string"} for d in DIMENSIONS},
        "total": {"type": "integer", "minimum": 1},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "blocked_share": {"type": "number", "minimum": 0, "maximum": 1},
        "throttled_share": {"type": "number", "minimum": 0, "maximum": 1},
        "down_share": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

PROBE = {
    "type": "object",
    "required": ["probe_id", "public_key", "enrolled_at", "revoked_at", "last_seen"],
    "properties": {
        "probe_id": {"type": "string"}, "public_key": {"type": "string"},
        "enrolled_at": TIME, "revoked_at": OPT_TIME, "status": NULLABLE_STR,
        "status_at": OPT_TIME, "last_seen": OPT_TIME, "last_measurement_start": OPT_TIME,
        "last_received_at": OPT_TIME, "measurements": {"type": "integer"},
        "probe_cc": NULLABLE_STR, "probe_asn": NULLABLE_STR,
    },
}

OUTAGE = {
    "type": "object",
    "required": ["event_id", "group", "start", "end", "detected_at", "ongoing"],
    "properties": {
        "event_id": {"type": "string"}, "group": {"type": "string"},
        "start": TIME, "start_upper": TIME, "detected_at": TIME, "end": OPT_TIME,
        "start_time": TIME, "end_time": OPT_TIME, "ongoing": {"type": "boolean"},
    },
}


def paths() -> dict[str, Any]:
    return {
        "/api/v1": _op("index", "What this API offers.", [], _ok({
            "type": "object", "required": ["version", "endpoints"]})),
        "/api/v1/openapi.json": _op("openapi", "This document.", [], _ok({
            "type": "object", "required": ["openapi", "paths"]})),
        "/api/v1/measurements": _op(
            "listMeasurements",
            "Measurements, newest first, with keyset pagination (cursor = last id seen).",
            [*FILTERS, _limit(50, 1000),
             _p("cursor", {"type": "string"}, "Continue after this measurement_id.",
                "00000000-0000-7000-8000-000000000000"),
             _p("order", {"type": "string", "enum": ["desc", "asc"]}, "Sort order.", "asc"),
             _p("total", {"type": "string", "enum": ["auto", "true", "false"]},
                "auto (default): total when the rollups count it exactly (or the answer "
                "fits on one page), else null; true: count anyway, exactly up to 10,000 "
                "(then total_is_lower_bound); false: no total.", "true")],
            _ok({"type": "object",
                 "required": ["results", "count", "limit", "next_cursor", "filters"],
                 "properties": {
                     "results": {"type": "array", "items": SUMMARY},
                     "count": {"type": "integer"},
                     "total": {"type": ["integer", "null"]},
                     "total_is_lower_bound": {"type": "boolean"},
                     "next_cursor": NULLABLE_STR, "next": NULLABLE_STR}})),
        "/api/v1/measurements/{measurement_id}": _op(
            "getMeasurement",
            "One measurement: summary, record, the signed envelope and the probe's key.",
            [_p("measurement_id", {"type": "string"}, "The measurement's UUID.",
                "00000000-0000-7000-8000-000000000000", where="path")],
            _ok({"type": "object",
                 "required": ["measurement", "record", "envelope", "probe", "verification"],
                 "properties": {"measurement": SUMMARY}}),
            {"404": ERROR},
        ),
        "/api/v1/aggregation": _op(
            "aggregation",
            "Counts and blocked/throttled/down shares grouped by one or two dimensions "
            "(at most one of hour, day, month), answered from rollups plus the measurements "
            "stored since their last fold (exact counts).",
            [_p("by", {"type": "string",
                       "pattern": "^(" + "|".join(DIMENSIONS) + ")(,(" + "|".join(DIMENSIONS)
                       + "))?$"},
                "One or two dimensions, comma-separated.", "day,country"),
             *_filters(*AGG_FILTER_NAMES), _limit(1000, 10000, 50)],
            _ok({"type": "object",
                 "required": ["by", "source", "since", "until", "results", "count", "groups",
                              "total"],
                 "properties": {
                     "by": {"type": "array", "items": {"enum": DIMENSIONS}},
                     "source": {"type": "string"}, "since": OPT_TIME, "until": OPT_TIME,
                     "results": {"type": "array", "items": AGG_ROW},
                     "count": {"type": "integer"}, "groups": {"type": "integer"},
                     "total": {"type": "integer"}}}),
        ),
        "/api/v1/stats": _op(
            "stats", "Counts by verdict, country, network, domain, blocking and test.",
            [*FILTERS, _p("top", {"type": "integer", "minimum": 1, "maximum": 500},
                          "Most keys per dimension.", 5)],
            _ok({"type": "object", "required": ["total", "counts", "generated_at"],
                 "properties": {"total": {"type": "integer"}, "generated_at": TIME}})),
        "/api/v1/probes": _op(
            "probes", "Enrolled probes, their public keys and when they were last heard.",
            [_limit(1000, 10000), _p("revoked", {"type": "boolean"},
                                     "Include revoked probes.", False)],
            _ok({"type": "object", "required": ["probes", "count", "total"],
                 "properties": {"probes": {"type": "array", "items": PROBE}}})),
        "/api/v1/outages": _op(
            "outages", "Outage events found by the detector.", _event_filters("cc:IQ"),
            _ok({"type": "object", "required": ["outages", "count", "detector"],
                 "properties": {"outages": {"type": "array", "items": OUTAGE}}})),
        "/api/v1/slowdowns": _op(
            "slowdowns",
            "Whole-network slowdown events: most probes of a network or country far below "
            "their own baseline throughput.",
            _event_filters("asn:AS44244"),
            _ok({"type": "object", "required": ["slowdowns", "count", "detector"],
                 "properties": {"slowdowns": {"type": "array", "items": {"type": "object"}},
                                "count": {"type": "integer"}}})),
        "/api/v1/slowdowns/signal": _op(
            "slowdownSignal",
            "A network's or country's throughput signal per measurement interval: the share "
            "of its probes below their own baseline.",
            [{**_p("group", {"type": "string", "pattern": "^(asn:AS[0-9]{1,10}|cc:[A-Z]{2})$"},
                   "The network or country.", "cc:IR"), "required": True},
             _p("since", {"type": "string", "format": "date-time"}, "From (default: a day "
                "before until).", "2020-01-01T00:00:00Z"),
             _p("until", {"type": "string", "format": "date-time"}, "To (default: now).",
                "2020-01-02T00:00:00Z")],
            _ok({"type": "object", "required": ["group", "interval_s", "points", "count"],
                 "properties": {"points": {"type": "array", "items": {"type": "object"}},
                                "count": {"type": "integer"}}})),
        "/api/v1/rejections": _op(
            "rejections", "Rejected messages counted by reason, latest quarantined.",
            [_p("recent", {"type": "integer", "minimum": 0, "maximum": 200},
                "How many quarantined messages to list.", 3),
             _p("reason", {"type": "string"}, "One reason.", "bad_signature")],
            _ok({"type": "object", "required": ["counts", "total", "recent"]})),
        "/api/v1/export": _op(
            "export",
            "Every matching signed envelope, one JSON object per line, oldest first.",
            [*FILTERS, _p("format", {"type": "string", "enum": ["jsonl"]}, "Format.", "jsonl"),
             _p("cursor", {"type": "string"}, "Resume after this measurement_id.",
                "00000000-0000-7000-8000-000000000000"),
             _limit(1, 1_000_000_000)],
            _ok({"type": "string"}, media="application/x-ndjson"),
        ),
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Vigil collector API",
            "version": __version__,
            "description": (
                "Read-only access to signed censorship measurements. Times are RFC 3339 "
                "UTC with a Z everywhere. Unknown or repeated parameters are refused (400). "
                "Answers carry an ETag (If-None-Match gives 304) and are gzip-compressed "
                "when the client accepts it; any origin may read them (CORS)."
            ),
            "license": {"name": "AGPL-3.0-or-later",
                        "identifier": "AGPL-3.0-or-later"},
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths(),
    }
