"""The collector's HTTP API against real stores (SQLite; PostgreSQL with the postgres marker).

The store is filled the way the ingest fills it: records signed by test probes with the
agent's wire format, checked by collector.ingest.verify, written with ``Store.write_batch``.  Every
expected number is computed from that dataset, never typed in.  The ``serve`` command is then
run for real against a real Mosquitto (broker marker).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import SignatureError
from agent.wire import envelope as wire
from collector.api import routes as api_module
from collector.config import ApiConfig, CollectorConfig, OutagesConfig, StoreConfig
from collector.ingest.verify import Accepted, KeyTable, Rejected, StatusReceived, Verifier
from collector.outages.detector import OutageEvent
from collector.outages.store import OutageEventStore
from collector.runtime import STORE, ServeSettings
from collector.service import create_app
from collector.store import open_store
from collector.store.base import IngestBatch, StoreUnavailable
from lab.ports import free_port
from lab.probes import TestProbe

REPO = Path(__file__).resolve().parents[2]
DAY = 86400.0
API = "/api/v1"

VERDICTS = (  # (test_name, status, blocking, reason)
    ("web_connectivity", "ok", None, ""),
    ("web_connectivity", "blocked", "tls", "tls.sni_reset"),
    ("web_connectivity", "blocked", "dns", "dns.nxdomain"),
    ("throttling", "throttled", "throttling", "throttling.sni"),
    ("web_connectivity", "down", None, "site.down"),
    ("web_connectivity", "inconclusive", None, "control.failed"),
    ("web_connectivity", "blocked", "http-diff", "http.blockpage"),
)
INPUTS = (
    "https://twitter.com/",
    "https://www.bbc.com/persian",
    "https://telegram.org/",
    "https://www.example.com/news",
    "https://twitter.com/search",
)
NETWORKS = (("IR", "AS44244", "Irancell"), ("IR", "AS197207", "MCI"), ("IQ", "AS50710", "EL"))


# ---- dataset --------------------------------------------------------------------------------
@dataclass
class Dataset:
    """What was written to the store, to compute every expected answer from."""

    probes: dict[str, TestProbe] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # by measurement_id
    rejected: Counter[str] = field(default_factory=Counter)
    silent_probe: str = ""  # enrolled, never heard from
    revoked_probe: str = ""
    statuses: dict[str, str] = field(default_factory=dict)

    def matching(self, **conds: Any) -> list[dict[str, Any]]:
        def ok(r: dict[str, Any]) -> bool:
            for key, want in conds.items():
                if key == "status":
                    if r["verdict"]["status"] != want:
                        return False
                elif key == "blocking":
                    if r["verdict"]["blocking"] != want:
                        return False
                elif key == "domain":
                    if domain_of(r["input"]) != want:
                        return False
                elif key == "since":
                    if wire_time(r) < want:
                        return False
                elif key == "until":
                    if wire_time(r) >= want:
                        return False
                elif r[key] != want:
                    return False
            return True

        return [r for r in self.records.values() if ok(r)]


def domain_of(url: str | None) -> str | None:
    if not url:
        return None
    return url.split("://", 1)[1].split("/", 1)[0]


def wire_time(record: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(record["measurement_start_time"]).timestamp()


def iso_z(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_record(probe: TestProbe, i: int, start: float, net: tuple[str, str, str]
                ) -> dict[str, Any]:
    test_name, status, blocking, reason = VERDICTS[i % len(VERDICTS)]
    cc, asn, name = net
    url = INPUTS[i % len(INPUTS)] if i % 11 else None  # a few without input
    if url is None:
        test_name = "connectivity"
    return probe.record(
        measurement_id=wire.uuid7(int(start * 1000)),
        start=start,
        test_name=test_name,
        input=url,
        probe_cc=cc,
        probe_asn=asn,
        probe_network_name=name,
        verdict={"status": status, "blocking": blocking, "reason": reason,
                 "confirmed": reason == "http.blockpage",
                 # an injected DNS answer that still led to the genuine page: evidence on ok
                 **({"interference": "dns.injected"} if status == "ok" and i % 2 else {})},
    )


def fill(url: str, n: int = 84) -> Dataset:
    """Enrol probes and store ``n`` measurements, statuses and rejections through the
    store interface, exactly as the ingest does (Verifier -> write_batch)."""
    ds = Dataset()
    probes = [TestProbe.new() for _ in range(4)]
    silent = TestProbe.new()
    stranger = TestProbe.new()  # never enrolled
    now = time.time()
    store = open_store(url)
    try:
        for p in [*probes, silent]:
            store.add_probe(p.probe_id, p.public_raw,
                            note="volunteer Ali, Tehran, 203.0.113.7")  # must never leak
            ds.probes[p.probe_id] = p
        ds.silent_probe = silent.probe_id
        verifier = Verifier(KeyTable(store.list_probes()))
        messages: list[tuple[str, bytes]] = []
        for i in range(n):
            p = probes[i % len(probes)]
            net = NETWORKS[i % len(probes) % len(NETWORKS)]
            start = now - DAY * 7 + i * (DAY * 6 / n)
            rec = make_record(p, i, start, net)
            ds.records[rec["measurement_id"]] = rec
            messages.append((p.topic, p.envelope(rec)))
        messages.append(messages[3])  # a replay: the store counts it as a duplicate
        ds.rejected["duplicate"] += 1
        a, b = probes[0], probes[1]
        messages += [
            (a.topic, stranger.sign(wire.encode_record(a.record()), keyid=a.probe_id)),
            (stranger.topic, stranger.envelope()),
            (a.topic, b"{not json"),
            (a.topic, a.envelope(probe_cc="Iran")),
            (a.status_topic, b'{"state": "online", "sent": 10}'),
            (b.status_topic, b"offline"),
        ]
        ds.statuses = {a.probe_id: "online", b.probe_id: "offline"}
        outcomes = verifier.check_batch(messages, now)
        ds.rejected.update(o.reason for o in outcomes if isinstance(o, Rejected))
        assert sum(isinstance(o, Accepted) for o in outcomes) == n + 1
        batch = IngestBatch(
            measurements=[o.row for o in outcomes if isinstance(o, Accepted)],
            statuses=[o.update for o in outcomes if isinstance(o, StatusReceived)],
            rejections=[o.item for o in outcomes if isinstance(o, Rejected)],
        )
        result = store.write_batch(batch)
        assert result.new == n
        store.revoke_probe(probes[3].probe_id)
        ds.revoked_probe = probes[3].probe_id
    finally:
        store.close()
    return ds


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture
def dataset(store_url: str) -> Dataset:
    return fill(store_url)


def settings_for(url: str, **api: Any) -> ServeSettings:
    config = CollectorConfig(store=StoreConfig(url=url), api=ApiConfig(**api),
                             outages=OutagesConfig(enabled=False))
    return ServeSettings(config=config.validate(), ingest=False, outages=False)


@pytest.fixture
async def client(store_url: str, dataset: Dataset) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings_for(store_url, stats_cache_s=0.0))
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
async def empty_client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """An app on an empty SQLite store: for what does not depend on the data."""
    app = create_app(settings_for(f"sqlite://{tmp_path}/empty.db"))
    async with TestClient(TestServer(app)) as c:
        yield c


def app_of(client: TestClient[Any, Any]) -> web.Application:
    app: web.Application | None = client.app
    assert app is not None
    return app


async def get_json(client: TestClient[Any, Any], path: str, expect: int = 200,
                   **params: str | int) -> Any:
    resp = await client.get(path, params=params or None)
    body = await resp.json()
    assert resp.status == expect, body
    assert resp.headers["Content-Type"].startswith("application/json")
    return body


async def all_pages(client: TestClient[Any, Any], **params: Any) -> list[dict[str, Any]]:
    """Follow next_cursor to the end (bounded)."""
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        q = dict(params)
        if cursor:
            q["cursor"] = cursor
        page = await get_json(client, f"{API}/measurements", **q)
        out += page["results"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


# ---- measurements: filters and pagination ---------------------------------------------------
async def test_filters_select_exactly_the_matching_measurements(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    some = next(iter(dataset.records.values()))
    week_ago = time.time() - 7 * DAY
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {}),
        ({"probe_cc": "IR"}, {"probe_cc": "IR"}),
        ({"probe_cc": "iq"}, {"probe_cc": "IQ"}),  # case-insensitive input
        ({"probe_asn": "AS197207"}, {"probe_asn": "AS197207"}),
        ({"probe_asn": "44244"}, {"probe_asn": "AS44244"}),
        ({"test_name": "throttling"}, {"test_name": "throttling"}),
        ({"status": "blocked"}, {"status": "blocked"}),
        ({"blocking": "tls"}, {"blocking": "tls"}),
        ({"blocking": "none"}, {"blocking": None}),
        ({"domain": "twitter.com"}, {"domain": "twitter.com"}),
        ({"domain": "WWW.BBC.COM."}, {"domain": "www.bbc.com"}),
        ({"probe_id": some["probe_id"]}, {"probe_id": some["probe_id"]}),
        ({"since": iso_z(week_ago + 3 * DAY)}, {"since": week_ago + 3 * DAY}),
        ({"until": iso_z(week_ago + 2 * DAY)}, {"until": week_ago + 2 * DAY}),
        ({"probe_cc": "IR", "status": "blocked", "domain": "twitter.com"},
         {"probe_cc": "IR", "status": "blocked", "domain": "twitter.com"}),
    ]
    for params, conds in cases:
        expected = {r["measurement_id"] for r in dataset.matching(**conds)}
        got = await all_pages(client, limit=1000, **params)
        assert {m["measurement_id"] for m in got} == expected, params
        assert len(got) == len(expected), params
    nonempty = [c for c in cases if dataset.matching(**c[1])]
    assert len(nonempty) == len(cases)  # the dataset exercises every filter


async def test_summary_fields_match_the_signed_record(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    page = await get_json(client, f"{API}/measurements", limit=1000)
    assert page["count"] == len(dataset.records)
    for m in page["results"]:
        rec = dataset.records[m["measurement_id"]]
        assert m["probe_id"] == rec["probe_id"]
        assert m["probe_cc"] == rec["probe_cc"] and m["probe_asn"] == rec["probe_asn"]
        assert m["test_name"] == rec["test_name"] and m["input"] == rec["input"]
        assert m["domain"] == domain_of(rec["input"])
        assert (m["status"], m["blocking"], m["reason"], m["confirmed"]) == (
            rec["verdict"]["status"], rec["verdict"]["blocking"], rec["verdict"]["reason"],
            rec["verdict"]["confirmed"])
        assert abs(wire_time({"measurement_start_time": m["measurement_start_time"]})
                   - wire_time(rec)) < 1e-3
    starts = [m["measurement_start_time"] for m in page["results"]]
    assert starts == sorted(starts, reverse=True)  # newest first (UUIDv7 order)


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_keyset_pages_never_skip_or_repeat(
    client: TestClient[Any, Any], dataset: Dataset, store_url: str, order: str
) -> None:
    expected = sorted(dataset.records, reverse=order == "desc")
    first = await get_json(client, f"{API}/measurements", limit=7, order=order)
    assert [m["measurement_id"] for m in first["results"]] == expected[:7]
    assert first["next_cursor"] == expected[6]
    assert first["next"].startswith("?") and f"cursor={expected[6]}" in first["next"]
    # Measurements keep arriving while a client pages: the rest of its walk is unaffected
    # (descending: the new ones sort before the cursor; ascending: they come at the end).
    late = fill_more(store_url, dataset, 5)
    rest = await all_pages(client, limit=7, order=order, cursor=first["next_cursor"])
    ids = [m["measurement_id"] for m in first["results"]] + [m["measurement_id"] for m in rest]
    assert len(ids) == len(set(ids))
    if order == "desc":
        assert ids == expected
    else:
        assert ids == expected + sorted(late)


def fill_more(url: str, ds: Dataset, n: int) -> list[str]:
    probe = next(p for pid, p in ds.probes.items() if pid not in (ds.revoked_probe,
                                                                    ds.silent_probe))
    store = open_store(url)
    try:
        verifier = Verifier(KeyTable(store.list_probes()))
        now = time.time()
        recs = [make_record(probe, i, now - 60 + i, NETWORKS[0]) for i in range(n)]
        outcomes = verifier.check_batch([(probe.topic, probe.envelope(r)) for r in recs], now)
        rows = [o.row for o in outcomes if isinstance(o, Accepted)]
        assert store.write_batch(IngestBatch(measurements=rows)).new == n
    finally:
        store.close()
    for r in recs:
        ds.records[r["measurement_id"]] = r
    return [r["measurement_id"] for r in recs]


async def test_last_page_has_no_cursor(client: TestClient[Any, Any], dataset: Dataset) -> None:
    n = len(dataset.records)
    page = await get_json(client, f"{API}/measurements", limit=n)
    assert page["count"] == n and page["next_cursor"] is None and page["next"] is None
    page = await get_json(client, f"{API}/measurements", limit=n - 1)
    assert page["count"] == n - 1 and page["next_cursor"] is not None


# ---- one measurement: record + envelope, re-verified independently ---------------------------
async def test_envelope_reverifies_with_the_published_key(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    keys = {p["probe_id"]: p["public_key"]
            for p in (await get_json(client, f"{API}/probes"))["probes"]}
    for mid in list(dataset.records)[:12]:
        body = await get_json(client, f"{API}/measurements/{mid}")
        probe_id = body["measurement"]["probe_id"]
        raw_key = base64.b64decode(keys[probe_id])
        assert wire.probe_id_for(raw_key) == probe_id  # the key is the probe's, self-certified
        assert body["probe"]["public_key"] == keys[probe_id]
        env = wire.parse_envelope(json.dumps(body["envelope"]).encode())
        payload = wire.verify_envelope(env, Ed25519PublicKey.from_public_bytes(raw_key),
                                       probe_id)
        record = json.loads(payload)
        assert record == dataset.records[mid] == body["record"]
        wire.validate_record(record)
        assert record["probe_id"] == probe_id
        # the check means something: one changed byte of the payload breaks it
        tampered = replace(env, payload=env.payload + b" ")
        with pytest.raises(SignatureError):
            wire.verify_envelope(tampered, Ed25519PublicKey.from_public_bytes(raw_key), probe_id)


async def test_interference_on_an_ok_verdict_is_shown(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    marked = [m for m, r in dataset.records.items() if "interference" in r["verdict"]]
    assert marked
    for mid in marked[:3]:
        body = await get_json(client, f"{API}/measurements/{mid}")
        verdict = body["record"]["verdict"]
        assert (verdict["status"], verdict["interference"]) == ("ok", "dns.injected")


async def test_envelope_matches_the_bytes_the_probe_signed(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    mid = sorted(dataset.records)[0]
    rec = dataset.records[mid]
    probe = dataset.probes[rec["probe_id"]]
    original = json.loads(probe.envelope(rec))  # Ed25519 is deterministic: same signature
    resp = await client.get(f"{API}/measurements/{mid}")
    body = await resp.json()
    assert body["envelope"] == original
    # stored measurements never change, so caches (the reverse proxy) may keep them
    assert "max-age" in resp.headers["Cache-Control"]


async def test_unknown_and_malformed_measurement_ids(
    empty_client: TestClient[Any, Any],
) -> None:
    client = empty_client
    missing = wire.uuid7()
    body = await get_json(client, f"{API}/measurements/{missing}", expect=404)
    assert body["error"] == "not_found" and missing in body["detail"]
    body = await get_json(client, f"{API}/measurements/not-a-uuid", expect=400)
    assert body["error"] == "bad_request" and body["param"] == "measurement_id"
    body = await get_json(client, f"{API}/measurements/{missing.upper()}", expect=400)
    assert body["param"] == "measurement_id"


# ---- stats, probes, rejections, outages -------------------------------------------------------
async def test_stats_count_by_verdict_country_network_domain(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {}),
                                                          ({"probe_cc": "IR"}, {"probe_cc": "IR"})]
    for params, conds in cases:
        recs = dataset.matching(**conds)
        body = await get_json(client, f"{API}/stats", top=500, **params)
        assert body["total"] == len(recs)
        expected = {
            "verdict": Counter(r["verdict"]["status"] for r in recs),
            "country": Counter(r["probe_cc"] for r in recs),
            "network": Counter(r["probe_asn"] for r in recs),
            "domain": Counter(domain_of(r["input"]) or "" for r in recs),
            "blocking": Counter(r["verdict"]["blocking"] or "" for r in recs),
            "test": Counter(r["test_name"] for r in recs),
        }
        for dim, counter in expected.items():
            got = {row["key"]: row["count"] for row in body["counts"][dim]}
            assert got == dict(counter), dim
            counts = [row["count"] for row in body["counts"][dim]]
            assert counts == sorted(counts, reverse=True)
    top = await get_json(client, f"{API}/stats", top=1)
    assert all(len(v) <= 1 for v in top["counts"].values())


async def test_probes_show_keys_and_last_seen_but_no_addresses(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    resp = await client.get(f"{API}/probes")
    text = await resp.text()
    assert resp.status == 200
    assert "203.0.113.7" not in text and "volunteer" not in text  # the operator's note
    body = json.loads(text)
    by_id = {p["probe_id"]: p for p in body["probes"]}
    assert set(by_id) == set(dataset.probes)
    for pid, probe in dataset.probes.items():
        p = by_id[pid]
        assert base64.b64decode(p["public_key"]) == probe.public_raw
        assert p["measurements"] == len(dataset.matching(probe_id=pid))
        assert p["status"] == dataset.statuses.get(pid)
        assert (p["revoked_at"] is not None) == (pid == dataset.revoked_probe)
        assert (p["last_seen"] is None) == (pid == dataset.silent_probe)
        assert not {"ip", "address", "probe_ip", "note"} & set(p)
    active = await get_json(client, f"{API}/probes", revoked="false")
    assert dataset.revoked_probe not in {p["probe_id"] for p in active["probes"]}
    assert active["total"] == len(dataset.probes) - 1


async def test_rejections_counted_per_reason(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    body = await get_json(client, f"{API}/rejections", recent=200)
    assert body["counts"] == dict(dataset.rejected)
    assert body["total"] == sum(dataset.rejected.values())
    assert {"bad_signature", "unknown_key", "malformed_envelope", "schema_violation",
            "duplicate"} <= set(body["counts"])
    quarantined = Counter(q["reason"] for q in body["recent"])
    # every rejection but the plain duplicate keeps its bytes in quarantine
    assert quarantined == dataset.rejected - Counter({"duplicate": 1})
    assert all("raw" not in q and "raw_b64" not in q for q in body["recent"])
    # Public output names the reason only: no parser or exception text (that is for the CLI).
    assert all("detail" not in q for q in body["recent"])
    one = await get_json(client, f"{API}/rejections", reason="bad_signature")
    assert [q["reason"] for q in one["recent"]] == ["bad_signature"]


async def test_outage_events_are_listed_with_filters(
    client: TestClient[Any, Any], store_url: str
) -> None:
    now = time.time()
    events = [
        OutageEvent("e1", "asn:AS44244", now - 3600, now - 3500, now - 3400, None,
                    ("p1", "p2"), 1.0, 0.0),
        OutageEvent("e2", "cc:IQ", now - 7200, now - 7100, now - 7000, now - 5000,
                    ("p3",), 0.9, 0.1),
    ]
    store = open_store(store_url)
    try:
        es = OutageEventStore(store)
        for e in events:
            es.save(e)
    finally:
        store.close()
    body = await get_json(client, f"{API}/outages")
    assert [e["event_id"] for e in body["outages"]] == ["e1", "e2"]  # newest start first
    assert body["outages"][0]["ongoing"] is True and body["outages"][0]["end_time"] is None
    assert body["detector"]["running"] is False
    only = await get_json(client, f"{API}/outages", group="cc:IQ")
    assert [e["event_id"] for e in only["outages"]] == ["e2"]
    ongoing = await get_json(client, f"{API}/outages", ongoing="true")
    assert [e["event_id"] for e in ongoing["outages"]] == ["e1"]
    await get_json(client, f"{API}/outages", expect=400, group="IQ")


# ---- export -----------------------------------------------------------------------------------
async def read_export(client: TestClient[Any, Any], **params: Any) -> list[dict[str, Any]]:
    resp = await client.get(f"{API}/export", params={"format": "jsonl", **params})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    lines = []
    async for raw in resp.content:  # line by line, as it streams
        assert raw.endswith(b"\n")
        lines.append(json.loads(raw))
    return lines


async def test_export_streams_every_envelope_verifiably(
    client: TestClient[Any, Any], dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny pages (~3 rows) so the walk crosses many page boundaries; record page sizes.
    monkeypatch.setattr(api_module, "EXPORT_PAGE_BYTES", 4096)
    store = app_of(client)[STORE].store
    asked: list[int] = []
    original = store.export_page

    def spy(*args: Any) -> Any:
        asked.append(args[1])
        return original(*args)

    monkeypatch.setattr(store, "export_page", spy)
    lines = await read_export(client)
    assert [ln["measurement_id"] for ln in lines] == sorted(dataset.records)
    assert len(asked) > 10 and max(asked) <= api_module.EXPORT_FIRST_PAGE
    keys = {pid: Ed25519PublicKey.from_public_bytes(p.public_raw)
            for pid, p in dataset.probes.items()}
    for ln in lines:
        env = wire.parse_envelope(json.dumps(ln["envelope"]).encode())
        record = json.loads(wire.verify_envelope(env, keys[ln["probe_id"]], ln["probe_id"]))
        assert record == dataset.records[ln["measurement_id"]]


async def test_export_filters_limit_and_resume(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    blocked = sorted(r["measurement_id"] for r in dataset.matching(status="blocked"))
    lines = await read_export(client, status="blocked")
    assert [ln["measurement_id"] for ln in lines] == blocked
    head = await read_export(client, status="blocked", limit=5)
    assert [ln["measurement_id"] for ln in head] == blocked[:5]
    rest = await read_export(client, status="blocked", cursor=head[-1]["measurement_id"])
    assert [ln["measurement_id"] for ln in head + rest] == blocked
    assert await read_export(client, probe_cc="ZZ") == []


async def test_export_refuses_bad_requests_before_streaming(
    empty_client: TestClient[Any, Any],
) -> None:
    for params, param in (({"format": "csv"}, "format"), ({"limit": "-1"}, "limit"),
                          ({"cursor": "x"}, "cursor"), ({"status": "censored"}, "status")):
        body = await get_json(empty_client, f"{API}/export", expect=400, **params)
        assert body["param"] == param


# ---- bad parameters ---------------------------------------------------------------------------
BAD = [
    ("measurements", {"limit": "0"}, "limit"),
    ("measurements", {"limit": "1001"}, "limit"),
    ("measurements", {"limit": "ten"}, "limit"),
    ("measurements", {"country": "IR"}, "country"),
    ("measurements", {"probe_cc": "IRN"}, "probe_cc"),
    ("measurements", {"probe_asn": "ASX"}, "probe_asn"),
    ("measurements", {"probe_id": "NOTBASE32"}, "probe_id"),
    ("measurements", {"test_name": "Web Connectivity"}, "test_name"),
    ("measurements", {"status": "censored"}, "status"),
    ("measurements", {"blocking": "firewall"}, "blocking"),
    ("measurements", {"domain": "https://twitter.com/"}, "domain"),
    ("measurements", {"since": "yesterday"}, "since"),
    ("measurements", {"since": "2025-06-02", "until": "2025-06-01"}, "until"),
    ("measurements", {"cursor": "01890000"}, "cursor"),
    ("measurements", {"order": "random"}, "order"),
    ("stats", {"top": "100000"}, "top"),
    ("stats", {"limit": "5"}, "limit"),
    ("probes", {"revoked": "maybe"}, "revoked"),
    ("outages", {"since": "2025-99-01"}, "since"),
    ("rejections", {"reason": "drop table"}, "reason"),
    ("rejections", {"recent": "1000"}, "recent"),
    # Valid ISO 8601 that no UTC timestamp can hold: a 400, never a 500.
    *((endpoint, {param: value}, param)
      for endpoint in ("measurements", "stats", "outages", "export")
      for param in (("since",) if endpoint == "outages" else ("since", "until"))
      for value in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")),
]


@pytest.mark.parametrize("endpoint,params,param", BAD,
                         ids=[f"{e}-{p}" for e, _, p in BAD])
async def test_bad_parameters_are_clear_400s(
    empty_client: TestClient[Any, Any], endpoint: str, params: dict[str, str], param: str
) -> None:
    body = await get_json(empty_client, f"{API}/{endpoint}", expect=400, **params)
    assert body["error"] == "bad_request"
    assert body["param"] == param
    assert body["detail"]


async def test_repeated_parameter_and_unknown_route(empty_client: TestClient[Any, Any]) -> None:
    client = empty_client
    resp = await client.get(f"{API}/measurements?probe_cc=IR&probe_cc=IQ")
    body = await resp.json()
    assert resp.status == 400 and body["param"] == "probe_cc" and "more than once" in body[
        "detail"]
    body = await get_json(client, f"{API}/nothing-here", expect=404)
    assert body["error"] == "not_found"
    resp = await client.post(f"{API}/measurements", data=b"{}")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"


async def test_store_unavailable_is_a_503(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = app_of(client)[STORE].store

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(store, "measurements_page", down)
    monkeypatch.setattr(store, "schema_version", down)
    resp = await client.get(f"{API}/measurements")
    body = await resp.json()
    assert resp.status == 503 and body["error"] == "store_unavailable"
    assert resp.headers["Retry-After"]
    health = await client.get("/healthz")
    assert health.status == 503 and (await health.json())["store"]["ok"] is False


# ---- metrics, health, dashboard ---------------------------------------------------------------
def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_expose_store_and_http_counters(
    client: TestClient[Any, Any], dataset: Dataset
) -> None:
    await get_json(client, f"{API}/stats")
    await get_json(client, f"{API}/measurements", expect=400, limit="0")
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    m = metric_values(await resp.text())
    assert m[("vigil_store_up", ())] == 1
    assert m[("vigil_measurements_stored", ())] == len(dataset.records)
    for reason, n in dataset.rejected.items():
        assert m[("vigil_rejections_total", (("reason", reason),))] == n
    active = len(dataset.probes) - 1
    probes = {k[1][0][1]: v for k, v in m.items() if k[0] == "vigil_probes"}
    assert sum(probes.values()) == active
    assert probes["online"] == 1 and probes["offline"] == 1 and probes["never"] == 1
    assert m[("vigil_probes_revoked", ())] == 1
    assert m[("vigil_http_requests_total", (("method", "GET"), ("route", "/api/v1/stats"),
                                            ("status", "200")))] == 1
    assert m[("vigil_http_requests_total", (("method", "GET"),
                                            ("route", "/api/v1/measurements"),
                                            ("status", "400")))] == 1
    assert m[("vigil_ingest_enabled", ())] == 0


async def test_healthz_and_dashboard(client: TestClient[Any, Any]) -> None:
    health = await get_json(client, "/healthz")
    assert health["status"] == "ok" and health["store"]["ok"] is True
    assert health["ingest"] == {"enabled": False}
    resp = await client.get("/")
    html = await resp.text()
    assert resp.status == 200 and 'src="static/app.js"' in html
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    for name in ("app.js", "style.css"):
        r = await client.get(f"/static/{name}")
        assert r.status == 200
    static = Path(api_module.__file__).with_name("static")
    for path in static.iterdir():  # no CDN, no external fonts: nothing fetched elsewhere
        text = path.read_text("utf-8")
        assert "//cdn" not in text and "fonts.googleapis" not in text
        assert not [u for u in _urls(text) if not u.startswith(("https://www.example.com",
                                                                  "https://ops.example"))]
    assert api_module.__name__ == "collector.api.routes"


def _urls(text: str) -> list[str]:
    import re

    return re.findall(r"""(?:src|href)\s*=\s*["'](https?://[^"']+)""", text)


async def test_stats_are_cached_briefly(store_url: str, dataset: Dataset) -> None:
    app = create_app(settings_for(store_url, stats_cache_s=60.0))
    async with TestClient(TestServer(app)) as c:
        first = await get_json(c, f"{API}/stats")
        fill_more(store_url, dataset, 2)
        again = await get_json(c, f"{API}/stats")
        assert again == first  # reused within stats_cache_s
        fresh = await get_json(c, f"{API}/stats", top=19)  # another query is not
        assert fresh["total"] == first["total"] + 2


# ---- the serve command ------------------------------------------------------------------------
def test_serve_config_errors_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from collector.cli.main import main

    monkeypatch.delenv("VIGIL_STORE", raising=False)
    assert main(["serve", "--no-ingest"]) == 2  # no store at all
    bad = tmp_path / "c.toml"
    bad.write_text('[api]\nport = 0\n[store]\nurl = "sqlite:///x.db"\n')
    assert main(["serve", "--config", str(bad)]) == 2
    bad.write_text('[api]\nlisten = "0.0.0.0"\n')
    assert main(["serve", "--config", str(bad)]) == 2


def test_serve_runtime_failures_exit_1(tmp_path: Path) -> None:
    from collector.cli.main import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--no-ingest", "--no-outages", "--port", str(port),
                     "--store", f"sqlite://{tmp_path}/c.db"])
    assert code == 1
    code = main(["serve", "--no-ingest", "--no-outages", "--port", str(free_port()),
                 "--store", "postgresql://postgres@127.0.0.1:1/none"])
    assert code == 1


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_file: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text("utf-8", errors="replace")


@pytest.fixture
def serve_proc(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(config: dict[str, dict[str, Any]]) -> ServeProcess:
        port = free_port()
        cfg = tmp_path / "collector.toml"
        lines: list[str] = []
        for section, values in config.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        cfg.write_text("\n".join(lines) + "\n", "utf-8")
        log_file = tmp_path / "serve.log"
        with log_file.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "collector", "serve", "--config", str(cfg),
                 "--port", str(port)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items()
                     if k not in ("VIGIL_STORE", "VIGIL_BROKER_PASSWORD")},
            )
        sp = ServeProcess(proc, port, log_file)
        started.append(sp)
        return sp

    try:
        yield start
    finally:
        for sp in started:
            if sp.proc.poll() is None:
                sp.proc.kill()
                sp.proc.wait(10)


async def wait_json(session: aiohttp.ClientSession, url: str,
                    pred: Callable[[Any], bool], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as resp:
                last = await resp.json()
                if pred(last):
                    return last
        except (aiohttp.ClientError, ValueError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last answer {last!r}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_serve_ingests_from_a_real_broker_and_stops_cleanly(
    broker: Any, serve_proc: Callable[..., ServeProcess], tmp_path: Path, sig: signal.Signals
) -> None:
    probe = TestProbe.new()
    creds = broker.add_probe(probe.probe_id)
    info = broker.info
    url = f"sqlite://{tmp_path}/collector.db"
    store = open_store(url)
    try:
        store.add_probe(probe.probe_id, probe.public_raw)
    finally:
        store.close()
    sp = serve_proc({
        "broker": {"host": info.host, "port": info.collector_port, "tls": True,
                   "ca_file": str(info.ca_file), "username": info.collector.username,
                   "password": info.collector.password, "client_id": "serve-test",
                   "keepalive_s": 5},
        "store": {"url": url},
        "ingest": {"batch_size": 20, "retry_initial_s": 0.1, "retry_max_s": 1.0},
        "outages": {"heartbeat_s": 4.0},
    })
    records = [probe.record() for _ in range(25)]
    async with aiohttp.ClientSession() as session:
        await wait_json(session, f"{sp.base}/healthz",
                        lambda b: b.get("ingest", {}).get("connected") is True,
                        "the ingest to connect")
        async with aiomqtt.Client(
            info.host, info.probe_port, username=probe.probe_id,
            password=creds.password, identifier=probe.probe_id,
            protocol=aiomqtt.ProtocolVersion.V5, tls_context=info.tls_context(),
        ) as mqtt:
            for rec in records:
                await mqtt.publish(probe.topic, probe.envelope(rec), qos=1)
            await mqtt.publish(probe.topic, b"garbage", qos=1)
            await mqtt.publish(probe.status_topic, b"online", qos=1, retain=True)
        page = await wait_json(
            session, f"{sp.base}{API}/measurements?limit=100",
            lambda b: b.get("count") == len(records), "the measurements through the API")
        assert {m["measurement_id"] for m in page["results"]} == {
            r["measurement_id"] for r in records}
        rej = await wait_json(session, f"{sp.base}{API}/rejections",
                              lambda b: b.get("total") == 1, "the rejection")
        assert rej["counts"] == {"malformed_envelope": 1}
        await wait_json(session, f"{sp.base}{API}/probes",
                        lambda b: b["probes"][0]["status"] == "online", "the status")
        await wait_json(session, f"{sp.base}/healthz",
                        lambda b: b["outages"]["passes"] >= 1, "an outage detection pass")
        async with session.get(f"{sp.base}/metrics") as resp:
            m = metric_values(await resp.text())
        assert m[("vigil_ingest_stored_total", ())] == len(records)
        assert m[("vigil_ingest_rejected_total", (("reason", "malformed_envelope"),))] == 1
        assert m[("vigil_ingest_connected", ())] == 1
        assert m[("vigil_ingest_receipts_total", ())] == 0  # none asked (no vigil-receipt)
    sp.proc.send_signal(sig)
    code = await asyncio.to_thread(sp.proc.wait, 30)
    log = sp.log()
    assert code == 0, log
    assert f"{sig.name}: stopping" in log and "ingest stopped" in log and "stopped" in log
    assert "Traceback" not in log, log



async def test_serve_stops_when_the_ingest_cannot_run(
    serve_proc: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    """The ingest dies of a configuration problem it finds only when connecting (an
    unreadable broker CA file): the service must stop with exit 2 (systemd's
    RestartPreventExitStatus) and say why, not serve an API over a store nobody fills."""
    sp = serve_proc({
        "broker": {"host": "127.0.0.1", "port": free_port(), "tls": True,
                   "ca_file": str(tmp_path / "missing-ca.pem"), "password": "x"},
        "store": {"url": f"sqlite://{tmp_path}/collector.db"},
        "outages": {"enabled": False},
    })
    code = await asyncio.to_thread(sp.proc.wait, 60)
    log = sp.log()
    assert code == 2, log
    assert "ingest died" in log and "broker TLS files" in log, log
    assert "Traceback" not in log, log  # an expected failure is explained, not dumped
