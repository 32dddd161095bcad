"""IP location database: the country where an address is used, beside where it is registered."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.helper import geodb, ipdb
from collector.helper.ipdb import IPDBError, LoadReport


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def parse(text: str) -> tuple[geodb.GeoDB, LoadReport]:
    report = LoadReport()
    return geodb.parse_rows(rows(text), "geo.csv", report), report


@pytest.mark.parametrize(
    ("text", "address", "expected"),
    [
        ("1.0.0.0,1.0.0.255,AU\n", "1.0.0.7", "AU"),  # DB-IP lite
        ("start_ip,end_ip,country,country_name\n1.0.0.0,1.0.0.255,AU,Australia\n",
         "1.0.0.255", "AU"),  # IPinfo, with its header row
        ('"16777216","16777471","AU","Australia"\n', "1.0.0.1", "AU"),  # IP2Location DB1
        ("2001:2::,2001:2:0:ffff:ffff:ffff:ffff:ffff,IR\n", "2001:2::1", "IR"),
        ("2001:2::,2001:2::ff,IR\n", "::ffff:1.0.0.1", None),
        ("1.0.0.0,1.0.0.255,AU\n", "::ffff:1.0.0.9", "AU"),  # v4-mapped is the v4 address
        ("1.0.0.0,1.0.0.255,AU\n", "1.0.1.0", None),
        ('"0","16777215","-","-"\n', "0.0.0.1", None),  # unknown country: no location
        ("1.0.0.0,1.0.0.255,ZZ\n", "1.0.0.1", None),
        ("1.0.0.0,1.0.0.255,au\n", "1.0.0.1", "AU"),
        ("1.0.0.0,1.0.0.255,AU\n", "not an address", None),
    ],
    ids=["dbip", "ipinfo-header", "ip2location-integers", "ipv6", "v6-miss", "v4-mapped",
         "miss", "ip2location-unknown", "zz-unknown", "lower-case", "garbage-query"],
)
def test_lookup(text: str, address: str, expected: str | None) -> None:
    db, _ = parse(text)
    assert db.country(address) == expected


def test_bad_rows_are_reported_with_file_and_line_and_skipped() -> None:
    db, report = parse(
        "1.0.0.0,1.0.0.255,AU\n"
        "1.0.1.0,1.0.1.255\n"  # too few fields
        "1.0.2.0,1.0.2.255,Australia\n"  # not a code
        "1.0.3.255,1.0.3.0,AU\n"  # end before start
        "1.0.4.0,2001:2::1,AU\n"  # mixed families
        "banana,1.0.5.0,AU\n"  # not an address (not line 1: an error, not a header)
        "1.0.0.128,1.0.0.200,NZ\n"  # overlaps the first range
    )
    assert len(db) == 1 and db.country("1.0.0.130") == "AU"
    assert report.bad_lines == 6
    assert report.errors[0].startswith("geo.csv:2:")


def test_load_plain_and_gzip_files(tmp_path: Path) -> None:
    plain = tmp_path / "v4.csv"
    plain.write_text("1.0.0.0,1.0.0.255,AU\n", encoding="utf-8")
    packed = tmp_path / "v6.csv.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as fh:
        fh.write("2001:2::,2001:2::ffff,IR\n")
    db, report = geodb.load([plain, packed])
    assert (db.country("1.0.0.1"), db.country("2001:2::1")) == ("AU", "IR")
    assert (report.ranges_v4, report.ranges_v6) == (1, 1)


def test_unusable_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(IPDBError, match="cannot read"):
        geodb.load([tmp_path / "absent.csv"])
    empty = tmp_path / "empty.csv"
    empty.write_text("start,end,country\n", encoding="utf-8")
    with pytest.raises(IPDBError, match="no usable range"):
        geodb.load([empty])


def test_client_info_prefers_location_and_keeps_registration() -> None:
    networks = ipdb.parse_lines(
        ["198.18.0.0\t198.18.255.255\t64500\tUS\tSatellite Co"], "ipdb.tsv"
    )
    located, _ = parse("198.18.1.0,198.18.1.255,IR\n")
    assert geodb.client_info(networks, located, "198.18.1.2") == {
        "asn": "AS64500", "network_name": "Satellite Co", "cc": "IR", "registration_cc": "US",
    }
    # no location known: the registration country is the best there is
    assert geodb.client_info(networks, located, "198.18.2.2")["cc"] == "US"
    assert geodb.client_info(networks, geodb.GeoDB.empty(), "203.0.113.1") == {
        "asn": "AS0", "network_name": "", "cc": "ZZ", "registration_cc": "ZZ",
    }


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.text(max_size=20), max_size=5), max_size=20))
def test_any_rows_load_or_report_never_crash(data: list[list[str]]) -> None:
    report = LoadReport()
    db = geodb.parse_rows(data, "fuzz.csv", report)
    assert len(db) + report.bad_lines + report.unrouted <= len(data)
