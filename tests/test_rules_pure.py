"""The checker's rules are pure: each only yields problems, and the verdicts the report shares
(traps, unbounded cycles, unset reads) are computed once, when the analysis is built."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from broken_specs import BROKEN
from hypothesis import HealthCheck, given, settings
from test_check_properties import specs

from statemachine_agent._rules import RULES, Analysis, Edge, build
from statemachine_agent.check import analyze
from statemachine_agent.spec import WorkflowSpec

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _snap(value: Any) -> Any:
    """A copy of ``value`` deep enough to see any change: containers copied, edges and names by
    value, any other object (a spec, a model, a guard) by identity."""
    if isinstance(value, dict):
        return {k: _snap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_snap(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if value is None or isinstance(value, (str, int, Edge)):
        return value
    return ("object", id(value))


def _state(a: Analysis) -> dict[str, Any]:
    """Everything the analysis holds, copied."""
    return {f.name: _snap(getattr(a, f.name)) for f in dataclasses.fields(a)}


def _assert_rules_leave_it_alone(spec: WorkflowSpec) -> None:
    a = build(spec)
    before = _state(a)
    for rule in RULES:
        list(rule(a))
        assert _state(a) == before, f"{rule.__name__} changed the shared analysis"


def _assert_verdicts_come_from_the_build(spec: WorkflowSpec) -> None:
    a = build(spec)
    report = analyze(spec)
    assert frozenset(a.traps) == report.traps
    assert tuple(a.unbounded) == report.unbounded_cycles
    assert frozenset(a.unset) == report.unset_reads
    # Each verdict the report gives with a problem is there before any rule ran.
    codes = {p.code for p in report.problems}
    assert bool(a.unbounded) == ("unbounded-cycle" in codes)
    assert bool(a.unset) == ("unset-read" in codes)


@pytest.mark.parametrize("code", sorted(BROKEN))
def test_no_rule_changes_the_analysis_of_a_broken_example(code: str) -> None:
    spec = BROKEN[code]().spec()
    _assert_rules_leave_it_alone(spec)
    _assert_verdicts_come_from_the_build(spec)


@PROPS
@given(specs())
def test_no_rule_changes_the_analysis(spec: WorkflowSpec) -> None:
    _assert_rules_leave_it_alone(spec)
    _assert_verdicts_come_from_the_build(spec)
