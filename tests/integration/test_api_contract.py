"""The API against its OpenAPI document, and the HTTP behaviour researchers' tools rely on.

The OpenAPI check is the equivalent of a schema-driven fuzzer, done exhaustively: every
route is documented and every documented path is a route; every documented parameter is
accepted with its example value and the answer validates against the documented schema;
an undocumented parameter is refused.  Then: the aggregation endpoint against counts made
here from the archive's rows, ETag/If-None-Match, gzip, the CORS preflight, one time format
in every answer, and an export cut short by its client counted apart from server errors.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator

from collector.config import ApiConfig, CollectorConfig, OutagesConfig, StoreConfig
from collector.outages.detector import OutageEvent
from collector.runtime import METRICS, ServeSettings
from collector.service import create_app
from collector.store.rollups import Grain, bucket_start
from lab.archive import Archive, generate
from tests.support.collector import archive_store

API = "/api/v1"
UNTIL = datetime(2026, 5, 20, 6, 0, tzinfo=UTC).timestamp()
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@pytest.fixture(scope="module")
def archive() -> Archive:
    return generate(700, days=40, until=UNTIL, seed=11)


@pytest.fixture
def store_url(tmp_path: Path, archive: Archive) -> str:
    return archive_store(tmp_path, archive, [
        OutageEvent("ev-iq", "cc:IQ", UNTIL - 5 * 86400, UNTIL - 5 * 86400 + 300,
                    UNTIL - 5 * 86400 + 600, UNTIL - 4 * 86400, ("p1", "p2", "p3"), 0.9, 0.1,
                    {"agent_outages": [{"probe_id": "p1", "start": UNTIL - 5 * 86400,
                                        "end": UNTIL - 4 * 86400}]}, ())])


@pytest.fixture
async def client(store_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    config = CollectorConfig(store=StoreConfig(url=store_url), api=ApiConfig(stats_cache_s=0.0),
                             outages=OutagesConfig(enabled=False))
    app = create_app(ServeSettings(config=config.validate(), ingest=False, outages=False))
    async with TestClient(TestServer(app)) as c:
        yield c


async def get(client: TestClient[Any, Any], path: str, expect: int = 200, **params: Any
              ) -> Any:
    resp = await client.get(path, params=params or None)
    body = await resp.json()
    assert resp.status == expect, body
    return body


# ---- the OpenAPI document against the routes -------------------------------------------------
async def test_every_route_is_documented_and_every_documented_path_is_a_route(
        client: TestClient[Any, Any]) -> None:
    doc = await get(client, f"{API}/openapi.json")
    assert doc["openapi"].startswith("3.")
    app = client.app
    assert app is not None
    routes = {
        r.resource.canonical for r in app.router.routes()
        if r.resource is not None and r.method == "GET"
        and r.resource.canonical.startswith(API)
    }
    assert routes == set(doc["paths"])


def _schema(op: dict[str, Any], status: int) -> dict[str, Any] | None:
    content = op["responses"][str(status)]["content"]
    media = next(iter(content))
    return content[media]["schema"] if media == "application/json" else None


async def _call(client: TestClient[Any, Any], path: str, params: dict[str, Any]
                ) -> aiohttp.ClientResponse:
    q = {k: ("true" if v is True else "false" if v is False else str(v))
         for k, v in params.items()}
    return await client.get(path, params=q or None)


async def test_each_documented_parameter_is_accepted_and_answers_match_their_schema(
        client: TestClient[Any, Any], archive: Archive) -> None:
    doc = await get(client, f"{API}/openapi.json")
    real_id = next(iter(archive.records))
    checked = 0
    for template, item in doc["paths"].items():
        op = item["get"]
        path = template.replace("{measurement_id}", real_id)
        query = [p for p in op["parameters"] if p["in"] == "query"]
        required = {p["name"]: p["example"] for p in query if p.get("required")}
        for p in [None, *query]:
            params = dict(required) if p is None else {**required, p["name"]: p["example"]}
            resp = await _call(client, path, params)
            text = await resp.text()
            assert resp.status == 200, (template, params, text[:300])
            schema = _schema(op, 200)
            if schema is not None:
                Draft202012Validator(schema).validate(await resp.json())
            checked += 1
        # A parameter the document does not name is refused, and named in the error.
        resp = await _call(client, path, {**required, "undocumented_param": "1"})
        assert resp.status == 400, template
        body = await resp.json()
        assert body["param"] == "undocumented_param"
        Draft202012Validator(op["responses"]["400"]["content"]["application/json"]["schema"]
                             ).validate(body)
    assert checked > 60


async def test_documented_error_answers(client: TestClient[Any, Any]) -> None:
    doc = await get(client, f"{API}/openapi.json")
    op = doc["paths"]["/api/v1/measurements/{measurement_id}"]["get"]
    body = await get(client, f"{API}/measurements/00000000-0000-7000-8000-000000000000", 404)
    Draft202012Validator(op["responses"]["404"]["content"]["application/json"]["schema"]
                         ).validate(body)


# ---- aggregation ---------------------------------------------------------------------------
async def test_aggregation_by_day_and_country_counts_the_archive(
        client: TestClient[Any, Any], archive: Archive) -> None:
    body = await get(client, f"{API}/aggregation", by="day,country", limit=10000)
    want: dict[tuple[str, str], Counter[str]] = {}
    for r in archive.rows:
        day = datetime.fromtimestamp(bucket_start(r.start_ts, Grain.DAY), UTC)
        key = (day.strftime("%Y-%m-%dT%H:%M:%S.000000Z"), r.probe_cc)
        want.setdefault(key, Counter())[r.status] += 1
    got = {(row["day"], row["country"]): Counter(row["counts"]) for row in body["results"]}
    assert got == want
    assert body["total"] == len(archive.rows) and body["groups"] == len(want)
    for row in body["results"]:
        c = want[(row["day"], row["country"])]
        assert row["blocked_share"] == round(c["blocked"] / sum(c.values()), 6)
        assert row["down_share"] == round(c["down"] / sum(c.values()), 6)


async def test_aggregation_matrix_names_the_technique(
        client: TestClient[Any, Any], archive: Archive) -> None:
    body = await get(client, f"{API}/aggregation", by="domain,network", probe_cc="IR")
    cell = next(r for r in body["results"]
                if r["domain"] == "twitter.com" and r["network"] == "AS44244")
    rows = [r for r in archive.rows if r.domain == "twitter.com" and r.probe_asn == "AS44244"]
    assert cell["total"] == len(rows)
    assert cell["techniques"] == dict(Counter(r.blocking for r in rows
                                              if r.status in ("blocked", "throttled")))
    assert set(cell["techniques"]) == {"dns"}
    none = await get(client, f"{API}/aggregation", by="blocking", blocking="none")
    assert [r["blocking"] for r in none["results"]] == ["none"]


@pytest.mark.parametrize(("params", "param"), [
    ({"by": "hour,domain", "since": "2026-05-10"}, "by"),
    ({"by": "day,category"}, "by"),
    ({"by": "week"}, "by"),
    ({"by": "day,country,test"}, "by"),
    ({"by": "hour"}, "since"),
    ({"status": "blocked"}, "status"),  # rollups keep no verdict filter: refused, not ignored
])
async def test_aggregation_refuses_what_it_cannot_answer(
        client: TestClient[Any, Any], params: dict[str, str], param: str) -> None:
    body = await get(client, f"{API}/aggregation", 400, **params)
    assert body["param"] == param


# ---- filters and totals on /measurements -----------------------------------------------------
async def test_new_filters_and_total(client: TestClient[Any, Any], archive: Archive) -> None:
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"input": "https://telegram.org/"}, lambda r: r.input == "https://telegram.org/"),
        ({"category_code": "news"}, lambda r: r.category_code == "NEWS"),
        ({"confirmed": "true"}, lambda r: r.confirmed),
        ({"probe_network_name": "ZAIN Iraq"}, lambda r: r.probe_network_name == "ZAIN Iraq"),
        ({"failure": "tls"}, lambda r: r.reason.startswith("tls.")),
    ]
    for params, pred in cases:
        want = [r for r in archive.rows if pred(r)]
        body = await get(client, f"{API}/measurements", limit=7, total="true", **params)
        assert body["total"] == len(want) and body["total_is_lower_bound"] is False, params
        assert len(body["results"]) == min(7, len(want))
        assert body["filters"]
    # By default, a total the rollups cannot give exactly is not counted ...
    body = await get(client, f"{API}/measurements", limit=7, failure="tls")
    assert body["total"] is None
    # ... and one they can is given, exactly, whatever the archive's size.
    body = await get(client, f"{API}/measurements", limit=7, probe_cc="IQ",
                     since="2026-05-01")
    assert body["total"] == sum(1 for r in archive.rows if r.probe_cc == "IQ" and
                                r.start_ts >= datetime(2026, 5, 1, tzinfo=UTC).timestamp())
    body = await get(client, f"{API}/measurements", total="false")
    assert body["total"] is None
    for bad, param in (({"failure": "tls%"}, "failure"), ({"confirmed": "maybe"}, "confirmed"),
                       ({"category_code": "N"}, "category_code")):
        err = await get(client, f"{API}/measurements", 400, **bad)
        assert err["param"] == param


# ---- HTTP: ETag, gzip, CORS, time format ----------------------------------------------------
async def test_etag_and_if_none_match(client: TestClient[Any, Any]) -> None:
    path = f"{API}/aggregation?by=day,network"
    first = await client.get(path)
    etag = first.headers["ETag"]
    assert first.status == 200 and etag.startswith('W/"')
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag
    other = await client.get(path, headers={"If-None-Match": 'W/"something-else"'})
    assert other.status == 200


async def test_gzip_when_accepted(client: TestClient[Any, Any]) -> None:
    path = f"{API}/measurements?limit=200"
    zipped = await client.get(path, headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    raw = await zipped.read()
    assert zipped.headers.get("Content-Encoding") == "gzip"
    import gzip
    import json

    assert json.loads(gzip.decompress(raw))["count"] == 200
    plain = await client.get(path, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert len(raw) < len(await plain.read()) / 3


async def test_cors_preflight(client: TestClient[Any, Any]) -> None:
    resp = await client.options(f"{API}/aggregation", headers={
        "Origin": "https://research.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "if-none-match, x-evil"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    assert resp.headers["Access-Control-Allow-Headers"].lower() == "if-none-match"
    missing = await client.options(f"{API}/nothing-here", headers={"Origin": "https://x"})
    assert missing.status == 404
    simple = await client.get(f"{API}/probes", headers={"Origin": "https://x"})
    assert simple.headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in simple.headers["Access-Control-Expose-Headers"]


def _times(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _times(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _times(v, key)
    elif key in ("start", "end", "t", "since", "until", "day", "hour", "month") or \
            key.endswith(("_at", "_time", "_ts", "last_seen", "last_success")):
        yield key, value


async def test_one_time_format_everywhere(client: TestClient[Any, Any],
                                          archive: Archive) -> None:
    mid = next(iter(archive.records))
    answers = [
        await get(client, f"{API}/measurements", limit=5),
        await get(client, f"{API}/measurements/{mid}"),
        await get(client, f"{API}/probes"),
        await get(client, f"{API}/outages"),
        await get(client, f"{API}/stats"),
        await get(client, f"{API}/aggregation", by="day,country", since="2026-05-01"),
        await get(client, f"{API}/aggregation", by="hour", since="2026-05-18T03:00:00Z",
                  until="2026-05-20T00:00:00Z"),
    ]
    seen = 0
    for body in answers:
        for key, value in _times({k: v for k, v in body.items() if k != "record"}):
            assert value is None or (isinstance(value, str) and RFC3339_Z.match(value)), \
                (key, value)
            seen += value is not None
    assert seen > 20
    outage = answers[3]["outages"][0]
    assert outage["start"] == outage["start_time"] and outage["end"].endswith("Z")
    assert outage["evidence"]["agent_outages"][0]["start"].endswith("Z")


# ---- an export cut short is the client's doing ----------------------------------------------
async def test_interrupted_export_is_not_counted_as_a_server_error(
        client: TestClient[Any, Any]) -> None:
    app = client.app
    assert app is not None
    metrics = app[METRICS]
    url = client.make_url(f"{API}/export?format=jsonl")
    # A tiny receive window, so the export cannot all sit in socket buffers before we leave.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (url.host, url.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {url.path_qs} HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.read(2048), 10)
    assert head.startswith(b"HTTP/1.1 200")
    writer.transport.abort()  # drop the connection mid-stream (RST)
    deadline = loop.time() + 10
    counts: dict[str, float] = {}
    while loop.time() < deadline:
        counts = {}
        for metric in metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["route"].endswith("export"):
                    counts[sample.labels["status"]] = sample.value
        if counts.get("499"):
            break
        await asyncio.sleep(0.05)
    assert counts.get("499") == 1.0, counts
    assert "500" not in counts
