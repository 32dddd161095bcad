"""The probe's light record check (fastjsonschema, pure Python) agrees with jsonschema.

The probe validates each record before signing it; on a Raspberry Pi it does so without
jsonschema (whose rpds-py dependency has no 32-bit ARM wheels), so the two validators must
accept and refuse the same records.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SchemaError
from agent.wire import envelope as wire
from lab.probes import TestProbe

JUDGE = jsonschema.Draft202012Validator(wire.measurement_schema())
BASE = TestProbe.new().record()
FIELDS = sorted(wire.measurement_schema()["properties"])

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "ok", "inconclusive", "dns", "IR", "AS1", "0.1.0", "x\n", "a" * 300])
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def light_accepts(record: Any) -> bool:
    try:
        wire._validate_light(record)
    except SchemaError:
        return False
    return True


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    record = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "delete", "verdict", "extra"]))
        if action == "set":
            record[draw(st.sampled_from(FIELDS))] = draw(values)
        elif action == "delete":
            record.pop(draw(st.sampled_from(FIELDS)), None)
        elif action == "verdict" and isinstance(record.get("verdict"), dict):
            key = draw(st.sampled_from(["status", "blocking", "reason", "confirmed", "x"]))
            record["verdict"][key] = draw(values)
        else:
            record[draw(st.text(max_size=10))] = draw(values)
    return record


def _has_trailing_newline(value: Any) -> bool:
    if isinstance(value, str):
        return value.endswith("\n")
    if isinstance(value, dict):
        return any(_has_trailing_newline(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_trailing_newline(v) for v in value)
    return False


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_light_check_agrees_with_jsonschema(record: Any) -> None:
    """Same answer, except that the light check is stricter on a final newline in a patterned
    field (jsonschema's re.search lets "$" match before it; the collector refuses such values
    anyway), so it never accepts a record the collector would refuse."""
    light, judge = light_accepts(record), JUDGE.is_valid(record)
    if light:
        assert judge
    elif judge:
        assert _has_trailing_newline(record)


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        ({}, True),
        ({"test_runtime": True}, False),  # a boolean is not a number
        ({"test_runtime": 3}, True),
        ({"input": None}, True),
        ({"probe_cc": "ir"}, False),
        ({"probe_asn": "AS12\n"}, None),  # jsonschema accepts, the light check refuses
        ({"measurement_id": "not-a-uuid"}, False),
        ({"unexpected": 1}, False),
    ],
)
def test_edge_cases_match(change: dict[str, Any], valid: bool | None) -> None:
    record = {**copy.deepcopy(BASE), **change}
    if valid is None:  # the one known difference: stricter on the probe
        assert JUDGE.is_valid(record) and not light_accepts(record)
        return
    assert JUDGE.is_valid(record) is valid
    assert light_accepts(record) is valid


def test_light_check_names_the_field() -> None:
    record = copy.deepcopy(BASE)
    record["verdict"]["status"] = "censored"
    with pytest.raises(SchemaError, match=r"^verdict/status: .*must be one of"):
        wire._validate_light(record)


def test_without_jsonschema_the_probe_uses_the_light_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # as on a Pi: not installed
    wire._validator.cache_clear()
    try:
        assert wire._validator() is None
        wire.validate_record(BASE)
        bad = copy.deepcopy(BASE)
        bad["probe_cc"] = "ir"
        with pytest.raises(SchemaError, match=r"^probe_cc: "):
            wire.validate_record(bad)
    finally:
        wire._validator.cache_clear()
