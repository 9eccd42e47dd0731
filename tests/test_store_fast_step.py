"""The store's fast readers give what the model-validated readers give.

``fast_step`` reads a step row with msgspec instead of pydantic; ``_sqlite._json`` reads a record with
msgspec before Python's json. Each must accept only what the reader it stands in for accepts, and give
the same value: otherwise a resume would rebuild a different run from the same file, or load a row the
model refuses. Rows are built as the store writes them (``step_row`` then ``record_json``) and then
bent: a field of another type, missing, extra, or a number no float holds.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from statemachine_agent.errors import StoreCorrupted
from statemachine_agent.result import StepKind
from statemachine_agent.stores import _records
from statemachine_agent.stores import _sqlite as sqlite_module
from statemachine_agent.stores._records import StepRecord, fast_step, record_json, step_row

_finite = st.floats(allow_nan=False, allow_infinity=False)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _finite | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
_names = st.lists(st.text(max_size=8), max_size=3)


@st.composite
def written_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A step row as ``step_row`` builds it, with any JSON in its delta and operations."""
    return dict(step_row(
        number=draw(st.integers(0, 2**53)), state=draw(st.text(max_size=10)), target=draw(st.text(max_size=10)),
        transition=draw(st.text(max_size=10)), kind=draw(st.sampled_from(list(StepKind))),
        started_at=draw(_finite), duration=draw(_finite),
        error=draw(st.none() | st.text(max_size=10)), error_type=draw(st.none() | st.text(max_size=10)),
        rejected=draw(_names), ran=draw(st.booleans()), writes=draw(_names),
        delta=draw(st.dictionaries(st.text(max_size=6), _json_values, max_size=3)), unset=draw(_names),
        model_calls=draw(st.sampled_from([[], [{"input_tokens": 1, "output_tokens": 2}]])),
        ops=draw(st.dictionaries(st.text(max_size=6), st.lists(_json_values, max_size=3), max_size=2)),
    ))


_other_values = st.sampled_from([None, True, False, 0, 1, -1, 2**53 + 1, 1.0, 0.5, -0.0, "", "x", "transition",
                                 [], ["x"], [1], {}, {"a": 1}, {"a": [1]}, {"a": "x"}])


@st.composite
def bent_rows(draw: st.DrawFn) -> dict[str, Any]:
    """A written row with some fields changed to values of other types, dropped, or added."""
    row = draw(written_rows())
    for name in draw(st.lists(st.sampled_from([*row, "ops", "extra"]), max_size=3)):
        how = draw(st.sampled_from(["change", "drop"]))
        if how == "drop":
            row.pop(name, None)
        else:
            row[name] = draw(_other_values)
    return row


def _validated(text: str) -> StepRecord | None:
    """What the model makes of ``text`` (JSON mode, the store's reader), or None if it refuses it."""
    try:
        record = StepRecord.model_validate_json(text)
    except ValidationError:
        return None
    return record


def _same(fast: StepRecord, slow: StepRecord) -> None:
    assert fast == slow
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_fields_set == slow.model_fields_set
    assert repr(fast) == repr(slow)
    assert type(fast.kind) is type(slow.kind)


@settings(max_examples=300, deadline=None)
@given(written_rows())
def test_a_written_row_reads_as_the_model_reads_it(row: dict[str, Any]) -> None:
    text = record_json(row)
    fast = fast_step(text)
    slow = _validated(text)
    assert slow is not None
    if fast is not None:
        _same(fast, slow)
    else:  # only a row with model calls takes the model's way (their numbers are the model's to check)
        assert row["model_calls"]


@settings(max_examples=500, deadline=None)
@given(bent_rows())
def test_a_bent_row_is_read_fast_only_if_the_model_takes_it_the_same(row: dict[str, Any]) -> None:
    text = json.dumps(row)
    fast = fast_step(text)
    if fast is not None:
        slow = _validated(text)
        assert slow is not None, f"fast_step took a row the model refuses: {text}"
        _same(fast, slow)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1" + "0" * 400 + ".5"])
def test_a_number_no_float_holds_is_not_read_fast_and_the_store_refuses_it(number: str) -> None:
    text = record_json(step_row(number=3, state="a", target="b", transition="t", kind=StepKind.TRANSITION,
                                started_at=1.0, duration=0.5, delta={"x": 1.5}))
    text = text.replace('"x":1.5', f'"x":{number}')
    assert fast_step(text) is None
    crc = sqlite_module._row_crc("step", "r", 3, text)
    with pytest.raises(StoreCorrupted, match="step 3"):
        sqlite_module._parse(StepRecord, text, crc, "run 'r' step 3", kind="step", run_id="r", key=3)


def test_the_fast_reader_has_the_models_fields_in_its_order() -> None:
    assert list(_records._StepRow.__struct_fields__) == list(StepRecord.model_fields)


def test_a_fast_row_is_its_own_values_not_shared_with_another() -> None:
    text = record_json(step_row(number=1, state="a", target="b", transition="t", kind=StepKind.TRANSITION,
                                started_at=1.0, duration=0.5, delta={"h": [1]}))
    first, second = fast_step(text), fast_step(text)
    assert first is not None and second is not None
    first.delta["h"].append(2)
    assert second.delta == {"h": [1]}
    assert second.ops == {} and "ops" not in second.model_fields_set


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_a_record_reads_as_pythons_json_reads_it(value: Any) -> None:
    text = record_json({"v": value})
    assert sqlite_module._json(text) == json.loads(text)


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": 1e400}', '"\\ud800"', '{"a": 1} x', "[" * 5000 + "]" * 5000,
                                  '{"a":1,"a":2}', "\ufeff{}", '{"a": -0.0}'])
def test_what_msgspec_refuses_is_read_by_pythons_json_as_before(text: str) -> None:
    def old(t: str) -> Any:
        return sqlite_module._DECODER.decode(t)

    try:
        expected: Any = old(text)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            sqlite_module._json(text)
    else:
        got = sqlite_module._json(text)
        assert got == expected and repr(got) == repr(expected)
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in (got.values() if isinstance(got, dict)
                                                                              else ()))
