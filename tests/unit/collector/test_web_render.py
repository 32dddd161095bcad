"""The server-drawn chart and the measurement page: pure renderers, checked on what they draw
and on escaping what probes wrote."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from collector.web import measurement as page
from collector.web.svg import Event, Point, share_chart

SVG = "{http://www.w3.org/2000/svg}"
DAY = 86400.0


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # also proves the SVG is well-formed XML


def test_one_polyline_per_series_and_gaps_split_lines() -> None:
    t0 = 1_780_000_000.0
    series = {
        "AS1 <b>x</b>": [Point(t0 + i * DAY, 0.5, 10) for i in range(4)],
        "AS2": [Point(t0, 0.1, 5), Point(t0 + DAY, None, 0), Point(t0 + 2 * DAY, 0.2, 5),
                Point(t0 + 3 * DAY, 0.3, 5)],
    }
    root = parse(share_chart(series, t0, t0 + 4 * DAY, title="t", bucket_s=DAY))
    lines = root.findall(f"{SVG}polyline")
    assert [ln.get("data-series") for ln in lines] == ["AS1 <b>x</b>", "AS2"]
    assert len(lines[1].get("points", "").split()) == 2  # the gap ends the first segment
    assert len(root.findall(f"{SVG}circle")) == 1  # the lone point before the gap
    legend = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "legend"]
    assert legend == ["AS1 <b>x</b>", "AS2"]  # text, not markup


@pytest.mark.parametrize(("start", "end", "drawn"), [
    (10.0, 20.0, True), (-50.0, 5.0, True), (90.0, None, True), (200.0, 300.0, False),
    (-100.0, -50.0, False),
])
def test_events_are_clipped_to_the_axis(start: float, end: float | None, drawn: bool) -> None:
    t0 = 1_780_000_000.0
    svg = share_chart({}, t0, t0 + 100, [Event(t0 + start, None if end is None else t0 + end,
                                               "cut <script>", "outage")],
                      title="t", bucket_s=1)
    rects = [r for r in parse(svg).iter(f"{SVG}rect") if r.get("class") == "event event-outage"]
    assert len(rects) == int(drawn)
    for r in rects:
        assert float(r.get("x", "0")) >= 48.0 and float(r.get("width", "0")) > 0
    assert "<script>" not in svg


def test_measurement_page_escapes_what_the_probe_wrote() -> None:
    record = {
        "measurement_id": "m", "test_name": "web_connectivity", "probe_id": "p",
        "input": "https://x/<script>alert(1)</script>",
        "verdict": {"status": "blocked", "blocking": "dns", "reason": "dns.injected",
                    "confirmed": True, "fingerprint": "<img src=x>"},
        "test_keys": {"queries": [{"hostname": "<b id=evil>", "replies": [
            {"t": 0.01, "source": "r", "rcode": "NOERROR",
             "answers": [{"answer_type": "A", "value": "10.10.34.35"}]},
            {"t": 0.09, "source": "r", "rcode": "NOERROR",
             "answers": [{"answer_type": "A", "value": "<i id=evil>"}]}]}],
            "requests": [{"request": {"url": "u", "method": "GET"},
                          "response": {"headers": {"<h id=evil>": "<v id=evil>"},
                                       "body_head": "</pre><x>"}}],
            "control": None, "control_failure": "generic_timeout_error"},
    }
    check = page.SignatureCheck(True, "ok", "KEY", True)
    html = page.render(record, check, "../api/v1/measurements/m")
    for raw in ("<script>", "<img src=x>", "<b id=evil>", "<i id=evil>", "<h id=evil>",
                "<v id=evil>", "</pre><x>"):
        assert raw not in html
    assert "More than one reply to one query with different answers" in html
    assert "signature verified" in html and "generic_timeout_error" in html


def test_failed_signature_is_said_plainly() -> None:
    html = page.render({"measurement_id": "m", "test_keys": {}, "verdict": {}},
                       page.SignatureCheck(False, "bytes differ", "KEY", False), "e")
    assert "signature NOT verified" in html and "does NOT hash to this probe id" in html


def test_the_page_shows_who_sent_the_reset_and_where_the_censor_sits() -> None:
    from collector.web.measurement import packets_section, trace_section, verdict_section

    tk = {"packet_evidence": {"status": "ok", "flows": [
        {"endpoint": "203.0.113.5:443", "terminator": "rst", "verdict": "injected",
         "sender_hop": 3, "server_hop": 11, "reason": "TTL <script>"}], "dns": []}}
    html = packets_section(tk)
    assert "injected" in html and ">3<" in html and ">11<" in html
    assert "<script>" not in html  # probes wrote it: escaped
    assert "not available: no CAP_NET_RAW" in packets_section(
        {"packet_evidence": {"status": "not_available", "reason": "no CAP_NET_RAW"}})
    trace = trace_section({"conclusion": "the reset comes from hop 3, AS64500", "traces": [
        {"protocol": "tls", "address": "203.0.113.5", "port": 443, "hops": [
            {"ttl": 3, "address": "198.18.3.1", "asn": "AS64500", "network_name": "ISP",
             "trigger": [{"result": "reset"}], "twin": [{"result": "time_exceeded"}]}]}]})
    assert "hop 3, AS64500" in trace and "reset" in trace and "time_exceeded" in trace
    verdict = verdict_section({"verdict": {"status": "blocked", "blocking": "tls",
                                           "reason": "tls.sni_reset",
                                           "evidence": "packets.rst_injected.hop3"}})
    assert "packets.rst_injected.hop3" in verdict
