"""The delivery receipt contract (agent.wire.receipts): encode, parse, split, user properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ReceiptError
from agent.wire import receipts
from agent.wire.envelope import uuid7
from agent.wire.receipts import Receipt, Request

IDS = [uuid7() for _ in range(5)]


def test_round_trip() -> None:
    r = Receipt(stored=(IDS[0], IDS[1]), refused={IDS[2]: "bad_signature"},
                retry={IDS[3]: "unknown_key"}, by="collector-1")
    assert receipts.parse(receipts.encode(r)) == r


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"stored": []}', "version None"),
        (b'{"v": 2, "stored": []}', "version 2"),
        (b'{"v": true, "stored": []}', "version True"),
        (b'{"v": 1, "stored": "abc"}', "'stored' is not a list"),
        (b'{"v": 1, "stored": ["a b"]}', "invalid measurement id"),
        (b'{"v": 1, "stored": [1]}', "invalid measurement id"),
        (b'{"v": 1, "refused": []}', "'refused' is not an object"),
        (b'{"v": 1, "retry": {"abc": 3}}', "reasons must be strings"),
        (b'{"v": 1, "by": 7}', "'by' is not a string"),
        (b'{"v": 1, "stored": ["' + b"x" * 300_000 + b'"]}', "bytes >"),
    ],
)
def test_malformed_receipts_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(ReceiptError, match=why):
        receipts.parse(raw)


@given(st.binary(max_size=300))
def test_parse_never_raises_anything_else(raw: bytes) -> None:
    check_parse(raw)


def check_parse(raw: bytes) -> None:
    """A receipt, which then round-trips, or a ReceiptError: never another exception."""
    try:
        r = receipts.parse(raw)
    except ReceiptError as exc:
        assert str(exc)
        return
    assert receipts.parse(receipts.encode(r)) == r


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                      max_size=4),
                    max_leaves=20))
def test_parse_any_json_is_a_receipt_or_a_receipt_error(value: object) -> None:
    check_parse(json.dumps(value).encode())
    if isinstance(value, dict):
        check_parse(json.dumps({**value, "v": 1}).encode())


def test_split_keeps_every_answer() -> None:
    ids = [uuid7() for _ in range(25)]
    r = Receipt(stored=tuple(ids[:10]), refused={i: "schema_violation" for i in ids[10:20]},
                retry={i: "unknown_key" for i in ids[20:]}, by="c")
    parts = receipts.split(r, limit=7)
    assert [len(p) for p in parts] == [7, 7, 7, 4]
    assert sum((p.stored for p in parts), ()) == r.stored
    assert {k: v for p in parts for k, v in p.refused.items()} == r.refused
    assert {k: v for p in parts for k, v in p.retry.items()} == r.retry
    assert receipts.split(Receipt()) == []


@pytest.mark.parametrize(
    ("props", "request_"),
    [
        ([], Request(None, None, None)),
        ([("vigil-receipt", "1"), ("vigil-id", IDS[0])], Request(1, IDS[0], None)),
        ([("vigil-receipt", "7"), ("vigil-id", IDS[0]), ("vigil-age", "12.5")],
         Request(1, IDS[0], 12.5)),  # a newer agent gets the version this side speaks
        ([("vigil-receipt", "x"), ("vigil-id", "bad id"), ("vigil-age", "-3")],
         Request(None, None, None)),
        ([("vigil-receipt", "0"), ("vigil-age", "nan?")], Request(None, None, None)),
        ([("vigil-age", "1e12"), ("other", "1")], Request(None, None, None)),
    ],
)
def test_request_from_user_properties(props: list[tuple[str, str]], request_: Request) -> None:
    assert receipts.request_from(props) == request_


def test_user_properties_round_trip() -> None:
    props = receipts.user_properties(IDS[0], 3.25)
    assert receipts.request_from(props) == Request(receipts.VERSION, IDS[0], 3.25)
    assert receipts.request_from(receipts.user_properties(IDS[0], None)).age_s is None
