"""The offline IP database (iptoasn.com ip2asn TSV format): loading, lookup, bad input."""

from __future__ import annotations

import gzip
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.helper.ipdb import UNKNOWN, IPDBError, LoadReport, NetworkInfo, load, parse_lines

V4 = """\
1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET
1.0.1.0\t1.0.3.255\t0\tNone\tNot routed
5.160.0.0\t5.160.255.255\t58224\tIR\tTCI Iran Telecommunication Company PJS
127.0.0.0\t127.255.255.255\t64500\tZZ\tVigil  Loopback   Net
"""
V6 = """\
2001:db8::\t2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\t64501\tIQ\tEarthlink Iraq
2a00:1450::\t2a00:1450:ffff:ffff:ffff:ffff:ffff:ffff\t15169\tUS\tGOOGLE
"""


@pytest.fixture
def db_files(tmp_path: Path) -> list[Path]:
    v4, v6 = tmp_path / "ip2asn-v4.tsv", tmp_path / "ip2asn-v6.tsv.gz"
    v4.write_text(V4)
    with gzip.open(v6, "wt") as fh:
        fh.write(V6)
    return [v4, v6]


def test_lookup_both_families_from_plain_and_gzip_files(db_files: list[Path]) -> None:
    db, report = load(db_files)
    assert (report.ranges_v4, report.ranges_v6, report.unrouted, report.bad_lines) == (3, 2, 1, 0)
    assert db.lookup("1.0.0.1") == NetworkInfo(13335, "US", "CLOUDFLARENET")
    assert db.lookup("5.160.12.34").client_json() == {
        "asn": "AS58224", "network_name": "TCI Iran Telecommunication Company PJS", "cc": "IR",
    }
    assert db.lookup("2a00:1450::1").asn == 15169
    assert db.lookup("2001:db8::42").cc == "IQ"


def test_range_boundaries_are_inclusive(db_files: list[Path]) -> None:
    db, _ = load(db_files)
    assert db.lookup("1.0.0.0").asn == 13335
    assert db.lookup("1.0.0.255").asn == 13335
    assert db.lookup("0.255.255.255") is UNKNOWN
    assert db.lookup("1.0.1.0") is UNKNOWN  # the "Not routed" row is unknown space
    assert db.lookup("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff").asn == 64501
    assert db.lookup("2001:db9::") is UNKNOWN


def test_unknown_and_odd_inputs(db_files: list[Path]) -> None:
    db, _ = load(db_files)
    assert db.lookup("8.8.8.8").client_json() == {"asn": "AS0", "network_name": "", "cc": "ZZ"}
    assert db.lookup("not an address") is UNKNOWN
    assert db.lookup("::ffff:127.0.0.1").asn == 64500  # v4-mapped is looked up as IPv4
    assert db.lookup(IPv4Address("127.1.2.3")).name == "Vigil Loopback Net"  # spaces collapsed


def test_integer_u32_format() -> None:
    db = parse_lines(["16777216\t16777471\t13335\tUS\tCLOUDFLARENET\n"], "u32.tsv")
    assert db.lookup("1.0.0.7").asn == 13335


def test_bad_lines_are_reported_with_file_and_line_and_skipped() -> None:
    report = LoadReport()
    lines = [
        "1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET",
        "garbage",
        "1.0.1.0\tnot-an-ip\t1\tUS\tx",
        "2.0.0.0\t1.0.0.0\t1\tUS\tend before start",
        "3.0.0.0\t2001:db8::\t1\tUS\tmixed families",
        "4.0.0.0\t4.0.0.255\tASx\tUS\tbad asn",
        "1.0.0.128\t1.0.0.200\t7\tUS\toverlaps the first",
        "9.0.0.0\t9.0.0.255\t3356\tusa\tbad country",
    ]
    db = parse_lines(lines, "bad.tsv", report)
    assert report.bad_lines == 6
    assert [e.split(":")[1] for e in report.errors] == ["2", "3", "4", "5", "6", "7"]
    assert all(e.startswith("bad.tsv:") for e in report.errors)
    assert db.lookup("1.0.0.150").asn == 13335  # the first range kept, the overlap dropped
    assert db.lookup("9.0.0.1").cc == "ZZ"


def test_unsorted_input_is_sorted() -> None:
    db = parse_lines(
        ["9.0.0.0\t9.0.0.255\t9\tUS\tnine", "1.0.0.0\t1.0.0.255\t1\tUS\tone"], "unsorted.tsv"
    )
    assert db.lookup("9.0.0.9").asn == 9
    assert db.lookup("1.0.0.1").asn == 1


def test_file_without_usable_ranges_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("garbage\n")
    with pytest.raises(IPDBError, match="no usable range"):
        load([empty])
    with pytest.raises(IPDBError, match="cannot read"):
        load([tmp_path / "missing.tsv"])


ranges = st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**16), st.integers(1, 4_000_000_000)),
    max_size=40,
)


@settings(max_examples=60)
@given(ranges, st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=30))
def test_lookup_matches_a_linear_scan(
    spans: list[tuple[int, int, int]], probes: list[int]
) -> None:
    lines, kept = [], []
    last_end = -1
    for start, length, asn in sorted(spans):
        end = min(start + length, 2**32 - 1)
        lines.append(f"{IPv4Address(start)}\t{IPv4Address(end)}\t{asn}\tDE\tnet{asn}")
        if start > last_end:  # overlapping rows are dropped, first one wins
            kept.append((start, end, asn))
            last_end = end
    db = parse_lines(lines, "gen.tsv")
    for value in probes + [s for s, _, _ in kept]:
        expected = next((a for s, e, a in kept if s <= value <= e), 0)
        assert db.lookup(IPv4Address(value)).asn == expected
