"""Blocking fingerprints: the shipped file, the CSV loader (property-tested) and matching."""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.inputs.fingerprints import (
    SHIPPED_COLUMNS,
    Fingerprint,
    Fingerprints,
    PatternType,
    Scope,
    canonical_dns_value,
    parse_csv,
    to_csv,
)
from scripts.build_fingerprints import DATA_DIR, UPSTREAM_FILES, build

HEADER = ",".join(SHIPPED_COLUMNS)


@pytest.fixture(scope="module")
def shipped() -> Fingerprints:
    return Fingerprints.load_default()


def rows(*lines: str) -> str:
    return HEADER + "\n" + "\n".join(lines) + "\n"


# ---- the shipped file ----------------------------------------------------------------------
def test_shipped_file_loads_cleanly(shipped: Fingerprints) -> None:
    assert len(shipped) > 1900
    assert shipped.problems == ()
    locations = {f.location for f in shipped}
    assert {"dns", "body", "header.location", "header.server"} <= locations
    assert {f.scope for f in shipped} == set(Scope)


def test_shipped_file_is_built_from_the_upstream_copies() -> None:
    """The committed file equals a fresh build: nobody edited it by hand, nothing is stale."""
    text, built = build([DATA_DIR / n for n in UPSTREAM_FILES], DATA_DIR / "SOURCE.txt")
    assert (DATA_DIR / "fingerprints.csv").read_bytes() == text.encode("utf-8")
    assert built.problems == ()  # upstream rows that share a name across DNS/HTTP are fine


def test_shipped_file_keeps_the_attribution() -> None:
    head = (DATA_DIR / "fingerprints.csv").read_text(encoding="utf-8").split("\nname,", 1)[0]
    assert "ooni/blocking-fingerprints" in head
    assert "Censored Planet" in head and "Citizen Lab" in head
    assert (DATA_DIR / "SOURCE.txt").is_file()


def test_load_default_is_loaded_once(shipped: Fingerprints) -> None:
    assert Fingerprints.load_default() is shipped


def test_crlf_inside_patterns_survives_the_build(shipped: Fingerprints) -> None:
    th = next(f for f in shipped if f.name == "ooni.th_11")
    assert "</h1>\r\n<p>" in th.pattern


# ---- DNS matching ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("10.10.34.35", "ooni.ir_5"),
        ("::ffff:10.10.34.35", "ooni.ir_5"),
        ("D0:0::11", "ooni.ir_ipv6_1"),
        ("restricted.tri.co.id.", "ooni.id_41"),
        ("Restricted.Tri.Co.Id", "ooni.id_41"),
    ],
)
def test_match_dns(shipped: Fingerprints, value: str, name: str) -> None:
    match = shipped.match_dns(value)
    assert match.blockpage is not None and match.blockpage.name == name


def test_match_dns_no_match(shipped: Fingerprints) -> None:
    assert not shipped.match_dns("198.19.1.10")
    assert shipped.match_dns("example.org").blockpage is None


def test_canonical_dns_value() -> None:
    assert canonical_dns_value(" 2001:DB8:0::1 ") == "2001:db8::1"
    assert canonical_dns_value("[::1]") == "::1"
    assert canonical_dns_value("Example.ORG.") == "example.org"


# ---- HTTP matching -----------------------------------------------------------------------------
def test_match_http_body_contains(shipped: Fingerprints) -> None:
    m = shipped.match_http(body='<iframe src="http://10.10.34.34?type=Invalid Site">', headers={})
    assert m.blockpage is not None and m.blockpage.name == "ooni.ir_0"
    assert m.strong is m.blockpage


def test_match_http_header_name_is_case_insensitive(shipped: Fingerprints) -> None:
    m = shipped.match_http(body="", headers={"SERVER": "Protected by WireFilter 8"})
    assert m.blockpage is not None and m.blockpage.name == "ooni.ae_0"


def test_match_http_location_in_redirect_chain(shipped: Fingerprints) -> None:
    m = shipped.match_http(body="", headers={}, redirects=["http://www.warning.or.kr"])
    assert m.blockpage is not None and m.blockpage.name == "ooni.kr_2"


def test_match_http_title_is_searched(shipped: Fingerprints) -> None:
    m = shipped.match_http(body="<html>", headers={}, title="Web Page Blocked!")
    assert m.blockpage is not None and m.blockpage.is_weak


def test_full_body_pattern_needs_the_whole_body(shipped: Fingerprints) -> None:
    whole = shipped.match_http(body="<HTML></HTML>\n", headers={}, body_complete=True)
    head_only = shipped.match_http(body="<HTML></HTML>\n", headers={}, body_complete=False)
    assert "cl.susp_blankhtml_1" in {f.name for f in whole.matches}
    assert "cl.susp_blankhtml_1" not in {f.name for f in head_only.matches}


def test_regexp_patterns_are_compiled_once(shipped: Fingerprints) -> None:
    regexps = [f for f in shipped if f.pattern_type is PatternType.REGEXP]
    assert regexps and all(f.regex is not None for f in regexps)
    m = shipped.match_http(body="<p>Sorry, but the URL you are requesting is prohibited!</p>",
                           headers={})
    assert m.blockpage is not None and m.blockpage.name == "cp.f_gen_blocked_23"


def test_false_positive_never_confirms_and_vetoes_weak_matches() -> None:
    fps = Fingerprints.from_text(rows(
        "x.fp,fp,body,contains,Ray ID:,5,",
        "x.vague,vbw,body,contains,Blocked,5,",
        "x.national,nat,body,contains,national filter,5,IR",
        "x.lowconf,isp,body,contains,lowconf,2,",
    ))
    only_fp = fps.match_http(body="Ray ID: 42", headers={})
    assert only_fp.false_positive is not None and only_fp.blockpage is None
    vague = fps.match_http(body="Blocked", headers={})
    assert vague.blockpage is not None and vague.blockpage.name == "x.vague"
    vetoed = fps.match_http(body="Blocked Ray ID: 42", headers={})
    assert vetoed.blockpage is None and vetoed.weak is None
    strong = fps.match_http(body="national filter Blocked Ray ID: 42", headers={})
    assert strong.blockpage is not None and strong.blockpage.name == "x.national"
    low = fps.match_http(body="lowconf", headers={})
    assert low.blockpage is not None and low.blockpage.is_weak


def _naive_body_matches(fps: Fingerprints, hay: str) -> set[str]:
    return {
        f.name for f in fps
        if f.location == "body" and f.pattern_type is PatternType.CONTAINS and f.pattern in hay
    }


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_indexed_body_matching_equals_testing_every_pattern(
    data: st.DataObject, shipped: Fingerprints
) -> None:
    """The 4-gram index is an optimisation only: it finds exactly what a full scan finds."""
    contains = [f.pattern for f in shipped
                if f.location == "body" and f.pattern_type is PatternType.CONTAINS]
    pieces = data.draw(st.lists(st.one_of(
        st.sampled_from(contains),
        st.sampled_from(contains).flatmap(
            lambda p: st.integers(0, len(p)).map(lambda i: p[:i])),  # truncated patterns
        st.text(max_size=20),
    ), max_size=8))
    body = "".join(pieces)[:1024]
    got = {f.name for f in shipped.match_http(body=body, headers={}).matches
           if f.pattern_type is PatternType.CONTAINS}
    assert got == _naive_body_matches(shipped, body)


def test_hand_built_regexp_fingerprint_compiles() -> None:
    fp = Fingerprint("x", Scope.NAT, "body", PatternType.REGEXP, r"a\d+b")
    assert fp.matches("xa12b") and not fp.matches("ab")


# ---- loading: bad input is reported with file:line, never fatal --------------------------------
def test_malformed_rows_are_reported_with_file_and_line(caplog: pytest.LogCaptureFixture) -> None:
    text = (
        "# a preamble comment\n"
        "\n"
        + HEADER + "\n"
        + "ok.1,nat,dns,full,10.0.0.1,5,IR\n"  # line 4
        + "bad.scope,national,dns,full,10.0.0.2,5,\n"  # line 5
        + 'ok.multi,isp,body,contains,"two\nlines",5,\n'  # lines 6-7
        + "bad.type,isp,body,glob,x*,5,\n"  # line 8
        + "bad.regex,isp,body,regexp,(unclosed,5,\n"  # line 9
        + ",isp,body,contains,no name,5,\n"  # line 10
        + "bad.width,isp,body\n"  # line 11
        + "bad.conf,isp,body,contains,x,eleven,\n"  # line 12
        + "bad.conf2,isp,body,contains,x,11,\n"  # line 13
        + "bad.cc,isp,body,contains,x,5,Iran\n"  # line 14
        + "bad.loc,isp,footer,contains,x,5,\n"  # line 15
        + "bad.empty,isp,body,contains,  ,5,\n"  # line 16
        + "ok.1,nat,dns,full,10.0.0.9,5,\n"  # line 17: duplicate name
        + "ok.1,nat,body,contains,same name on the http side,5,\n"  # line 18: fine
        + "ok.last,nat,header.Location,prefix,http://block.example/,,\n"  # line 19
    )
    path = "lists/fp.csv"
    with caplog.at_level(logging.WARNING):
        fps = Fingerprints.from_text(text, path)
    assert [f.name for f in fps] == ["ok.1", "ok.multi", "ok.1", "ok.last"]
    assert [(p.line, p.message.split()[0]) for p in fps.problems] == [
        (5, "unknown"), (8, "unknown"), (9, "invalid"), (10, "empty"), (11, "expected"),
        (12, "confidence_no_fp"), (13, "confidence_no_fp"), (14, "expected_countries:"),
        (15, "unknown"), (16, "empty"), (17, "duplicate"),
    ]
    assert str(fps.problems[0]).startswith("lists/fp.csv:5: unknown scope 'national'")
    multi = next(f for f in fps if f.name == "ok.multi")
    assert multi.origin == "lists/fp.csv:6"
    last = next(f for f in fps if f.name == "ok.last")
    assert last.location == "header.location" and last.confidence is None


def test_load_reports_problems_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "local.csv"
    path.write_text(rows("a,nat,dns,full,10.0.0.1,5,", "b,zzz,dns,full,10.0.0.2,5,"))
    with caplog.at_level(logging.WARNING, logger="agent.inputs.fingerprints"):
        fps = Fingerprints.load(path)
    assert len(fps) == 1
    assert f"{path}:3: unknown scope" in caplog.text


def test_undecodable_bytes_spoil_only_their_row() -> None:
    data = rows("a,nat,body,contains,ok,5,", "b,nat,body,contains,XX,5,").encode()
    data = data.replace(b"XX", b"\xff\xfe")
    fps = Fingerprints.from_text(data, "f.csv")
    assert [f.name for f in fps] == ["a"]
    assert [(p.line, p.message) for p in fps.problems] == [(3, "not valid UTF-8")]


def test_byte_order_mark_and_crlf_are_accepted() -> None:
    data = ("\ufeff" + rows("a,nat,body,contains,ok,5,").replace("\n", "\r\n")).encode()
    fps = Fingerprints.from_text(data)
    assert [f.pattern for f in fps] == ["ok"] and fps.problems == ()


def test_upstream_format_loads_too() -> None:
    upstream = (
        "name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,"
        "expected_countries,source,exp_url,notes\n"
        'x.1,nat,,body,contains,"say ""hi""",5,"AE,SA",ooni,,a note\n'
    )
    (fp,) = Fingerprints.from_text(upstream)
    assert fp.pattern == 'say "hi"' and fp.countries == ("AE", "SA")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty fingerprint file"),
        ("# only a comment\n\n", "empty fingerprint file"),
        ("name,scope,pattern\nx,nat,y\n", "lacks column(s) location_found, pattern_type"),
        (HEADER + ",name\n", "duplicated column(s) name"),
    ],
)
def test_unusable_header_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Fingerprints.from_text(text, "x.csv")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read fingerprint file"):
        Fingerprints.load(tmp_path / "nope.csv")
    with pytest.raises(ConfigError):
        Fingerprints.load()


def test_load_several_files_and_merge(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text(rows("x.1,nat,dns,full,10.0.0.1,5,"))
    b.write_text(rows("x.2,nat,dns,full,10.0.0.2,5,", "x.1,nat,dns,full,10.0.0.3,5,"))
    both = Fingerprints.load(a, b)
    assert [f.name for f in both] == ["x.1", "x.2"]
    assert [str(p) for p in both.problems] == [
        f"{b}:3: duplicate name 'x.1' (first at {a}:2)"
    ]
    merged = Fingerprints.load(a).merged(Fingerprints.from_text(
        rows("x.1,nat,dns,full,10.0.0.3,5,", "x.4,isp,dns,full,10.0.0.4,5,"), "local.csv"))
    assert [f.name for f in merged] == ["x.1", "x.4"]
    assert [str(p) for p in merged.problems] == ["local.csv:2: duplicate name 'x.1'; skipped"]
    assert merged.match_dns("10.0.0.4").blockpage is not None


def test_to_csv_round_trips(shipped: Fingerprints) -> None:
    again = Fingerprints.from_text(to_csv(shipped, ["comment"]), "again.csv")
    assert again.problems == ()
    assert [(f.name, f.scope, f.location, f.pattern_type, f.pattern, f.confidence, f.countries)
            for f in again] == [
        (f.name, f.scope, f.location, f.pattern_type, f.pattern, f.confidence, f.countries)
        for f in shipped
    ]


# ---- property tests of the CSV loader --------------------------------------------------------
_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=30,
)
_valid_row = st.fixed_dictionaries({
    "name": st.from_regex(r"[a-z]{1,8}\.[a-z0-9_]{1,8}", fullmatch=True),
    "scope": st.sampled_from([s.value for s in Scope]),
    "location_found": st.sampled_from(["dns", "body", "header.location", "header.Server"]),
    "pattern_type": st.sampled_from(["full", "prefix", "contains"]),
    "pattern": _text.filter(lambda s: s.strip() != ""),
    "confidence_no_fp": st.sampled_from(["", "0", "5", "10"]),
    "expected_countries": st.sampled_from(["", "IR", "AE,SA", " ru , cn "]),
})
_any_row = st.lists(_text, min_size=0, max_size=9)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_valid_row, _any_row), max_size=25))
def test_random_rows_never_crash_and_every_row_is_accounted_for(
    generated: list[dict[str, str] | list[str]],
) -> None:
    out = io.StringIO()
    writer = csv.writer(out)  # RFC 4180: CRLF records, fields with CR or LF quoted
    writer.writerow(SHIPPED_COLUMNS)
    starts: list[int] = []
    expected_valid: list[int] = []
    line = 2
    names: set[tuple[str, str]] = set()
    for i, row in enumerate(generated):
        cells = [row[c] for c in SHIPPED_COLUMNS] if isinstance(row, dict) else row
        before = out.tell()
        writer.writerow(cells)
        starts.append(line)
        # lines as the loader counts them: universal newlines (CR, LF, CRLF)
        line += len(io.StringIO(out.getvalue()[before:], newline="").readlines())
        if isinstance(row, dict):
            kind = "dns" if row["location_found"] == "dns" else "http"
            if (kind, row["name"]) not in names:
                names.add((kind, row["name"]))
                expected_valid.append(i)
    fps, problems = parse_csv(out.getvalue(), "gen.csv")
    # every generated valid row is loaded, in order, from the line it starts on
    by_origin = {f.origin: f for f in fps}
    for i in expected_valid:
        assert f"gen.csv:{starts[i]}" in by_origin
    # nothing is lost silently: each non-blank row is loaded or reported, at its own line
    non_blank = [i for i, r in enumerate(generated)
                 if not (isinstance(r, list) and (not r or (len(r) == 1 and not r[0].strip())))]
    assert len(fps) + len(problems) == len(non_blank)
    assert {p.line for p in problems} <= {starts[i] for i in non_blank}
    for f in fps:
        assert f.name and f.pattern.strip() and f.location and isinstance(f.scope, Scope)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_fingerprints_or_a_config_error(data: bytes) -> None:
    try:
        fps = Fingerprints.from_text(data, "junk.csv")
    except ConfigError as exc:
        assert "junk.csv" in str(exc)
    else:
        for p in fps.problems:
            assert p.file == "junk.csv" and p.line >= 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_after_a_valid_header_never_raises(body: str) -> None:
    fps = Fingerprints.from_text(HEADER + "\n" + body, "t.csv")
    assert all(p.line >= 2 for p in fps.problems)
