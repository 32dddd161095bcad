"""collector.ingest.schemacheck must agree with jsonschema on the measurement schema."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.wire import envelope as wire
from collector.ingest.schemacheck import Unsupported, compile_schema, json_equal
from lab.probes import TestProbe

VALIDATOR = jsonschema.Draft202012Validator(wire.measurement_schema())
FAST = compile_schema(wire.measurement_schema())
BASE = TestProbe.new().record()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "ok", "blocked", "dns", "IR", "AS1", "0.1.0", "x\n", "a" * 300])
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)

FIELDS = sorted(wire.measurement_schema()["properties"])
VERDICT_FIELDS = ["status", "blocking", "reason", "confirmed", "fingerprint", "interference",
                  "extra"]


@st.composite
def mutated_records(draw: st.DrawFn) -> Any:
    record = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "delete", "verdict", "annotation", "extra"]))
        if action == "set":
            record[draw(st.sampled_from(FIELDS))] = draw(json_values)
        elif action == "delete":
            record.pop(draw(st.sampled_from(FIELDS)), None)
        elif action == "verdict" and isinstance(record.get("verdict"), dict):
            record["verdict"][draw(st.sampled_from(VERDICT_FIELDS))] = draw(json_values)
        elif action == "annotation":
            record["annotations"] = draw(
                st.dictionaries(st.text(max_size=5), json_values, max_size=40)
            )
        else:
            record[draw(st.text(max_size=10))] = draw(json_values)
    return record


@settings(max_examples=600, deadline=None)
@given(mutated_records())
def test_fast_check_agrees_with_jsonschema(record: Any) -> None:
    assert FAST(record) == VALIDATOR.is_valid(record)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_value_agrees(value: Any) -> None:
    assert FAST(value) == VALIDATOR.is_valid(value)


def test_valid_record_passes() -> None:
    assert FAST(BASE) and VALIDATOR.is_valid(BASE)


@pytest.mark.parametrize(
    ("change", "valid"),
    [
        ({"test_runtime": True}, False),  # a boolean is not a number
        ({"test_runtime": 3}, True),
        ({"test_runtime": 86400.5}, False),
        ({"input": None}, True),
        ({"verdict": dict(BASE["verdict"], confirmed=1)}, False),
        ({"verdict": dict(BASE["verdict"], blocking=None)}, True),  # schema does not tie them
        ({"verdict": dict(BASE["verdict"], interference="dns.injected")}, True),
        ({"verdict": dict(BASE["verdict"], interference="DNS injected")}, False),
        ({"verdict": dict(BASE["verdict"], interference="")}, False),
        ({"verdict": dict(BASE["verdict"], interference=None)}, False),  # omitted, never null
        ({"annotations": {f"k{i}": "v" for i in range(33)}}, False),
        ({"annotations": {"k": 1}}, False),
    ],
)
def test_edge_cases(change: dict[str, Any], valid: bool) -> None:
    record = dict(BASE, **change)
    assert VALIDATOR.is_valid(record) is valid
    assert FAST(record) is valid


def test_unknown_keyword_is_refused_not_ignored() -> None:
    with pytest.raises(Unsupported):
        compile_schema({"type": "object", "patternProperties": {"^x": {}}})
    with pytest.raises(Unsupported):
        compile_schema({"anyOf": [{"type": "string"}]})


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [(1, 1.0, True), (True, 1, False), (False, 0, False), (None, None, True),
     ([1, {"a": True}], [1.0, {"a": True}], True), ({"a": 1}, {"a": 1, "b": 2}, False),
     ("1", 1, False)],
)
def test_json_equal(a: Any, b: Any, equal: bool) -> None:
    assert json_equal(a, b) is equal
