"""Query-string rules of the collector API (collector.api.params) and the serve config sections."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agent.errors import ConfigError
from collector.api.params import (
    FILTER_PARAMS,
    BadRequest,
    Params,
    domain,
    filter_json,
    outage_group,
    parse_filter,
)
from collector.config import parse_config
from collector.store.base import Filter


def params(**values: str) -> Params:
    return Params(values.items(), (*FILTER_PARAMS, "limit", "cursor", "ongoing"))


@pytest.mark.parametrize(
    "query,expected",
    [
        ({}, Filter()),
        ({"probe_cc": "ir"}, Filter(probe_cc="IR")),
        ({"probe_asn": "as0044244"}, Filter(probe_asn="AS44244")),
        ({"probe_asn": "197207"}, Filter(probe_asn="AS197207")),
        ({"blocking": "none"}, Filter(blocking="")),
        ({"blocking": "http-diff"}, Filter(blocking="http-diff")),
        ({"status": "throttled"}, Filter(status="throttled")),
        ({"domain": "Twitter.COM."}, Filter(domain="twitter.com")),
        ({"probe_cc": "  "}, Filter()),  # empty form fields mean "no filter"
        ({"since": "2025-06-13"}, Filter(since=datetime(2025, 6, 13, tzinfo=UTC))),
        ({"until": "2025-06-13T10:00:00+03:30"},
         Filter(until=datetime(2025, 6, 13, 6, 30, tzinfo=UTC))),
    ],
)
def test_filters_parse_and_normalise(query: dict[str, str], expected: Filter) -> None:
    assert parse_filter(params(**query)) == expected


@pytest.mark.parametrize(
    "query,param",
    [
        ({"probe_cc": "IRN"}, "probe_cc"),
        ({"probe_asn": "AS"}, "probe_asn"),
        ({"probe_asn": "AS12345678901"}, "probe_asn"),
        ({"probe_id": "1" * 26}, "probe_id"),
        ({"test_name": "1test"}, "test_name"),
        ({"status": "Blocked"}, "status"),
        ({"blocking": "null"}, "blocking"),
        ({"domain": "a b"}, "domain"),
        ({"domain": "x" * 254}, "domain"),
        ({"domain": "..."}, "domain"),
        ({"since": "13/06/2025"}, "since"),
        ({"since": "2025-06-13", "until": "2025-06-13"}, "until"),
    ],
)
def test_bad_filters_name_their_parameter(query: dict[str, str], param: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_filter(params(**query))
    assert err.value.param == param and err.value.detail


def test_unknown_and_repeated_parameters_are_refused() -> None:
    with pytest.raises(BadRequest, match="unknown parameter") as err:
        Params([("country", "IR")], FILTER_PARAMS)
    assert err.value.param == "country"
    with pytest.raises(BadRequest, match="more than once"):
        Params([("probe_cc", "IR"), ("probe_cc", "IQ")], FILTER_PARAMS)


@pytest.mark.parametrize(
    "text,ok", [("1", True), ("1000", True), ("0", False), ("1001", False), ("-5", False),
                ("1e3", False), ("9" * 20, False), ("", True)],
)
def test_integer_bounds(text: str, ok: bool) -> None:
    p = params(limit=text)
    if ok:
        assert 1 <= p.integer("limit", 50, 1, 1000) <= 1000
    else:
        with pytest.raises(BadRequest):
            p.integer("limit", 50, 1, 1000)


def test_cursor_booleans_groups() -> None:
    assert params(cursor="0190f5f2-8c3b-7a6e-9d1c-0123456789ab").cursor() is not None
    for bad in ("0190F5F2-8C3B-7A6E-9D1C-0123456789AB", "x", "0190f5f2"):
        with pytest.raises(BadRequest):
            params(cursor=bad).cursor()
    assert params(ongoing="yes").boolean("ongoing", False) is True
    assert params(ongoing="0").boolean("ongoing", True) is False
    with pytest.raises(BadRequest):
        params(ongoing="perhaps").boolean("ongoing", False)
    assert outage_group("asn:AS1234") == "asn:AS1234" and outage_group(None) is None
    for bad in ("asn:1234", "cc:ir", "IR"):
        with pytest.raises(BadRequest):
            outage_group(bad)
    assert domain(None) is None


def test_filter_json_echoes_what_was_applied() -> None:
    f = parse_filter(params(probe_cc="ir", blocking="none", since="2025-06-13"))
    assert filter_json(f) == {"probe_cc": "IR", "blocking": "none",
                              "since": "2025-06-13T00:00:00.000000Z"}


def test_serve_config_sections() -> None:
    cfg = parse_config({
        "store": {"url": "sqlite:///x.db"},
        "api": {"host": "127.0.0.1", "port": 9000},
        "outages": {"heartbeat_s": 30, "webhooks": ["https://ops.example.org/hook"]},
    }).validate()
    assert cfg.api.port == 9000 and cfg.outages.heartbeat_s == 30
    assert cfg.outages.webhooks == ("https://ops.example.org/hook",)
    defaults = parse_config({"store": {"url": "sqlite:///x.db"}}).validate()
    assert defaults.api.host == "127.0.0.1"  # loopback unless the operator says otherwise


@pytest.mark.parametrize(
    "section,values",
    [
        ("api", {"port": 70000}),
        ("api", {"listen": "0.0.0.0"}),
        ("outages", {"webhooks": "https://one"}),
        ("outages", {"webhooks": [1, 2]}),
        ("outages", {"webhooks": ["ftp://x"]}),
        ("outages", {"alert_fraction": 1.5}),
        ("outages", {"heartbeat_s": 0}),
    ],
)
def test_bad_serve_config_is_a_config_error(section: str, values: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        parse_config({"store": {"url": "sqlite:///x.db"}, section: values}).validate()
