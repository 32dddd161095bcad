"""Citizen Lab CSV parsing: bad rows reported with file:line and skipped, duplicates once."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ListError
from agent.inputs.testlists import (
    bundled_dir,
    default_paths,
    lists_dir,
    normalize_url,
    parse_text,
    read_file,
    read_files,
    url_problem,
)

HEADER = "url,category_code,category_description,date_added,source,notes\n"


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER.strip().split(","))
    writer.writerows(rows)
    return buf.getvalue()


def test_valid_rows_become_targets_with_their_source_line() -> None:
    text = HEADER + (
        "https://example.org/,NEWS,News Media,2020-01-01,citizenlab,\n"
        "http://example.net/path?q=1,HUMR,Human Rights,2020-01-01,citizenlab,note\n"
    )
    parsed = parse_text(text, "x.csv")
    assert [(t.input, t.category_code, t.source) for t in parsed.targets] == [
        ("https://example.org/", "NEWS", "x.csv:2"),
        ("http://example.net/path?q=1", "HUMR", "x.csv:3"),
    ]
    assert parsed.problems == ()


def test_bad_rows_reported_with_file_line_and_skipped() -> None:
    text = HEADER + (
        "https://ok.example/,NEWS,,,,\n"  # 2
        "ftp://files.example/,FILE,,,,\n"  # 3 scheme
        "not a url,NEWS,,,,\n"  # 4 whitespace
        "https://,NEWS,,,,\n"  # 5 no host
        "https://bad_host!.example/,NEWS,,,,\n"  # 6 host
        "https://ok2.example/,,,,,\n"  # 7 empty category
        "https://ok3.example/,news flash,,,,\n"  # 8 bad category
        "https://ok4.example/\n"  # 9 too few fields
        "\n"  # 10 blank: silently ignored
        '"https://multi.example/","NEWS","a\nb",,,\n'  # 11-12 quoted newline: fine
        "https://user:pw@cred.example/,NEWS,,,,\n"  # 13 credentials
        "https://port.example:99999/,NEWS,,,,\n"  # 14 port
        "https://last.example/,NEWS,,,,\n"  # 15
    )
    parsed = parse_text(text, "lists/ir.csv")
    assert [t.input for t in parsed.targets] == [
        "https://ok.example/", "https://multi.example/", "https://last.example/"]
    assert parsed.targets[1].source == "lists/ir.csv:11"
    assert parsed.targets[2].source == "lists/ir.csv:15"
    where = [p.source for p in parsed.problems]
    assert where == [f"lists/ir.csv:{n}" for n in (3, 4, 5, 6, 7, 8, 9, 13, 14)]
    messages = [p.message for p in parsed.problems]
    assert "unsupported scheme" in messages[0]
    assert "whitespace" in messages[1]
    assert "no host" in messages[2]
    assert "invalid host" in messages[3]
    assert messages[4] == "empty category_code"
    assert "invalid category_code" in messages[5]
    assert "expected at least 2 fields" in messages[6]
    assert "credentials" in messages[7]
    assert "invalid url" in messages[8]
    assert str(parsed.problems[0]).startswith("lists/ir.csv:3: ")


def test_duplicates_measured_once_within_and_across_files(tmp_path: Path) -> None:
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text(HEADER + "https://Example.org,NEWS,,,,\nhttps://example.org:443/,NEWS,,,,\n"
                 "https://example.org/#frag,NEWS,,,,\nhttp://example.org/,NEWS,,,,\n")
    b.write_text(HEADER + "https://EXAMPLE.org/,POLR,,,,\nhttps://other.org/,POLR,,,,\n")
    parsed = read_files([a, b])
    assert [t.input for t in parsed.targets] == [
        "https://Example.org", "http://example.org/", "https://other.org/"]
    assert parsed.targets[0].category_code == "NEWS"  # first occurrence wins
    assert parsed.duplicates == 3


def test_unreadable_files_are_list_errors(tmp_path: Path) -> None:
    with pytest.raises(ListError, match="no such file"):
        read_file(tmp_path / "missing.csv")
    with pytest.raises(ListError, match="is a directory"):
        read_file(tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ListError, match="empty file"):
        read_file(empty)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("address,kind\nhttps://x.org/,NEWS\n")
    with pytest.raises(ListError, match=r"wrong.csv:1: header lacks column\(s\) url, categ"):
        read_file(wrong)


def test_invalid_utf8_rejects_only_its_row(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes(b"\xef\xbb\xbf" + HEADER.encode() + b"https://a.org/,NEWS,caf\xe9,,,\n"
                     b"https://b.org/,NEWS,ok,,,\n")
    parsed = read_file(path)
    assert [t.input for t in parsed.targets] == ["https://b.org/"]
    assert parsed.problems[0].source == f"{path}:2"
    assert parsed.problems[0].message == "not valid UTF-8"


def test_header_with_bom_and_other_column_order() -> None:
    text = "\ufeffnotes,CATEGORY_CODE,url\nx,NEWS,https://a.org/\n"
    parsed = parse_text(text, "t.csv")
    assert parsed.targets[0].input == "https://a.org/"


def test_internationalised_and_ip_hosts() -> None:
    assert url_problem("https://xn--80ak6aa92e.com/") is None
    assert url_problem("https://пример.рф/") is None
    assert url_problem("http://198.18.0.1/") is None
    assert url_problem("http://[2001:db8::1]:8080/") is None
    assert url_problem("https://a..b/") is not None
    assert url_problem("https://" + "a" * 64 + ".org/") is not None
    assert url_problem("https://x.org/" + "a" * 3000) is not None


def test_normalize_url() -> None:
    assert normalize_url("HTTPS://Example.ORG:443") == "https://example.org/"
    assert normalize_url("http://example.org:8080/a?b=1#c") == "http://example.org:8080/a?b=1"
    assert normalize_url("http://[2001:DB8::1]/") == "http://[2001:db8::1]/"


def test_bundled_lists_parse_cleanly_and_default_selection(tmp_path: Path) -> None:
    directory = bundled_dir()
    assert (directory / "SOURCE.txt").is_file()  # attribution travels with the lists
    glob = read_file(directory / "global.csv")
    assert len(glob.targets) > 1500 and glob.problems == ()
    paths = default_paths(directory, "IR", ("kz", "xx"))
    assert [p.name for p in paths] == ["global.csv", "ir.csv", "kz.csv"]
    assert [p.name for p in default_paths(directory, "ZZ")] == ["global.csv"]
    assert lists_dir(tmp_path) == directory  # no updated lists yet
    (tmp_path / "testlists").mkdir()
    (tmp_path / "testlists" / "global.csv").write_text(HEADER)
    assert lists_dir(tmp_path) == tmp_path / "testlists"


# ---- properties --------------------------------------------------------------------------------
_label = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
_host = st.builds(lambda a, b: f"{a}.{b}", _label, st.sampled_from(["org", "com", "ir", "test"]))
_path = st.from_regex(r"(/[a-zA-Z0-9_.-]{0,8}){0,3}", fullmatch=True)
_good_url = st.builds(lambda s, h, p: f"{s}://{h}{p or '/'}", st.sampled_from(["http", "https"]),
                      _host, _path)
_category = st.from_regex(r"[A-Z]{2,6}", fullmatch=True)
# A lone "\r" is written unquoted by csv.writer (and read as a line break): not a valid list.
_free_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r"), max_size=30
)
_good_row = st.tuples(_good_url, _category, _free_text, _free_text).map(
    lambda r: ["good", r[0], r[1], r[2], "2020-01-01", "citizenlab", r[3]])
_bad_row = st.one_of(
    st.tuples(st.sampled_from(["ftp://x.org/", "x.org", "http://", "https://a b.org/"]),
              _category).map(lambda r: ["bad", r[0], r[1], "", "", "", ""]),
    st.tuples(_good_url, st.sampled_from(["", "lower", "WAY_TOO_LONG_" * 4])).map(
        lambda r: ["bad", r[0], r[1], "", "", "", ""]),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.one_of(_good_row, _bad_row), max_size=25))
def test_property_every_row_is_either_a_target_or_a_reported_problem(
    rows: list[list[str]],
) -> None:
    text = _csv([r[1:] for r in rows])
    parsed = parse_text(text, "p.csv")
    # Line of each row: header is line 1; quoted newlines in free text shift later rows.
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    starts: list[int] = []
    last = reader.line_num
    for _ in rows:
        next(reader)
        starts.append(last + 1)
        last = reader.line_num
    seen: set[str] = set()
    expect_targets: list[tuple[str, str]] = []
    expect_problems: list[str] = []
    for (kind, url, *_), line in zip(rows, starts, strict=True):
        if kind == "bad":
            expect_problems.append(f"p.csv:{line}")
        elif normalize_url(url) not in seen:
            seen.add(normalize_url(url))
            expect_targets.append((url, f"p.csv:{line}"))
    assert [(t.input, t.source) for t in parsed.targets] == expect_targets
    assert [p.source for p in parsed.problems] == expect_problems
    assert parsed.duplicates == sum(1 for r in rows if r[0] == "good") - len(expect_targets)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_property_arbitrary_text_never_crashes(text: str) -> None:
    try:
        parsed = parse_text(HEADER + text, "fuzz.csv")
    except ListError:
        pytest.fail("a file with a valid header must never be rejected as a whole")
    for target in parsed.targets:
        assert target.input is not None and url_problem(target.input) is None
    for problem in parsed.problems:
        assert problem.source.startswith("fuzz.csv:")
        assert int(problem.source.rsplit(":", 1)[1]) >= 2


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_never_crash(tmp_path_factory: pytest.TempPathFactory,
                                              data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.csv"
    path.write_bytes(data)
    try:
        read_file(path)
    except ListError as exc:
        assert str(path) in str(exc)


@settings(max_examples=50, deadline=None)
@given(st.lists(_good_row, min_size=1, max_size=20))
def test_property_write_then_parse_round_trips(rows: list[list[str]]) -> None:
    first = parse_text(_csv([r[1:] for r in rows]), "a.csv")
    again = parse_text(_csv([[t.input or "", t.category_code or "", "", "", "", ""]
                             for t in first.targets]), "b.csv")
    assert [(t.input, t.category_code) for t in again.targets] == [
        (t.input, t.category_code) for t in first.targets]
    assert again.duplicates == 0 and again.problems == ()
