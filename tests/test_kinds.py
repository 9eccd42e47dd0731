"""Kinds are enums: the checker's edges, the diagrams' nodes and edges and the coverage overlay,
timeout scopes and budgets. Each is a ``StrEnum``, so it still equals the text it had."""

from __future__ import annotations

import asyncio
import pickle

import pytest
from hypothesis import given, settings
from test_check_properties import specs
from test_diagrams import chains
from test_tools import handle

from statemachine_agent import (
    Budget,
    BudgetExceeded,
    ProblemCode,
    ResumeCode,
    TimeoutScope,
    ToolFailed,
    ToolTimeout,
    events,
)
from statemachine_agent.check import EdgeKind, analyze
from statemachine_agent.clock import FakeClock
from statemachine_agent.diagrams import DiagramEdgeKind, DiagramNodeKind, OverlayOutcome, RunOverlay, extract, to_dot
from statemachine_agent.examples import research
from statemachine_agent.spec import Outcome, WorkflowSpec
from statemachine_agent.tools import Tool


@settings(max_examples=40, deadline=None)
@given(specs())
def test_the_checked_edges_have_an_edge_kind(spec: WorkflowSpec) -> None:
    """Each edge of the checked graph is a declared transition, an error route or an implicit fail,
    said by an EdgeKind member."""
    names = {t.name for t in spec.transitions}
    routes = {t.name for t in spec.error_transitions}
    for e in analyze(spec).edges:
        assert type(e.kind) is EdgeKind
        if e.kind is EdgeKind.TRANSITION:
            assert e.label in names
        elif e.kind is EdgeKind.ERROR:
            assert e.label in routes
        else:
            assert e.label == f"{e.source}->(no exit)"


@settings(max_examples=25, deadline=None)
@given(chains())
def test_diagram_nodes_and_edges_have_their_kinds(compiled) -> None:  # type: ignore[no-untyped-def]
    """A node is a terminal, a decision or a plain state; an edge a default exit, a transition, an
    error route, or (over a run) a move to the failure terminal."""
    spec = compiled.spec
    first = next(s.name for s in spec.states if s.initial)
    recorded = {"path": [{"state": first, "transition": "", "kind": "fail", "ran": True, "error": None}],
                "terminal": "failed", "outcome": "failure", "run_id": "r", "reason": "no exit"}
    nodes, edges = extract(compiled, recorded)
    for n in nodes:
        s = spec.state(n.name)
        want = (DiagramNodeKind.TERMINAL if s.terminal else DiagramNodeKind.DECISION if s.decision
                else DiagramNodeKind.STATE)
        assert n.kind is want
        assert n.outcome is s.outcome and (n.outcome is None or type(n.outcome) is Outcome)
    defaults = {(t.source, t.target) for t in spec.transitions if t.default}
    kinds = [e.kind for e in edges]
    assert all(type(k) is DiagramEdgeKind for k in kinds)
    assert kinds.count(DiagramEdgeKind.ERROR) == len(spec.error_transitions)
    assert kinds.count(DiagramEdgeKind.DEFAULT) == len(defaults)
    assert kinds.count(DiagramEdgeKind.FAIL) == 1
    assert kinds.count(DiagramEdgeKind.TRANSITION) == len(spec.transitions) - len(defaults)


def test_a_coverage_overlay_is_titled_as_coverage() -> None:
    """An overlay whose outcome is OverlayOutcome.COVERAGE sums runs; the plain text still works."""
    compiled = research.build().compile()
    for outcome in (OverlayOutcome.COVERAGE, "coverage"):
        overlay = RunOverlay("3 runs", "coverage", outcome, 0, None, {}, {}, {})
        assert "coverage of 3 runs" in to_dot(compiled, overlay).source
    run = RunOverlay("abcdef123", "done", "success", 1, None, {}, {}, {})
    assert "coverage of" not in to_dot(compiled, run).source


@pytest.mark.parametrize("scope", ["call", "state"])
def test_a_tool_timeout_says_its_scope_with_an_enum(scope: str) -> None:
    """A real timeout, of the tool's own limit or of the state's deadline, carries a TimeoutScope
    that survives pickling."""
    clock = FakeClock(start=100.0)

    async def slow() -> None:
        await clock.sleep(3600)

    async def main() -> ToolTimeout:
        deadline = clock.now() + 0.03 if scope == "state" else None
        tools = handle(Tool(slow, timeout=0.05 if scope == "call" else 10), clock=clock, deadline=deadline)
        with pytest.raises((ToolTimeout, ToolFailed)) as info:
            await tools.call("slow")
        # The tool's own timeout is retryable, so it comes wrapped once retries (none here) run out.
        error = info.value.last if isinstance(info.value, ToolFailed) else info.value
        assert isinstance(error, ToolTimeout)
        return error

    error = asyncio.run(main())
    assert type(error.scope) is TimeoutScope and error.scope == scope
    again = pickle.loads(pickle.dumps(error))
    assert again.scope is error.scope and str(again) == str(error)


def test_a_timeout_scope_must_be_one_of_the_scopes() -> None:
    assert ToolTimeout("t", 1.0, "state").scope is TimeoutScope.STATE
    with pytest.raises(ValueError, match="TimeoutScope"):
        ToolTimeout("t", 1.0, "global")


@pytest.mark.parametrize("budget", list(Budget))
def test_budget_exceeded_names_a_budget_member(budget: Budget) -> None:
    """``BudgetExceeded.budget`` is a Budget member (given as one or as its text), pickled as one;
    ``events.Budget`` is the same enum."""
    assert events.Budget is Budget
    for given_as in (budget, str(budget)):
        error = BudgetExceeded(given_as, "spent")
        assert error.budget is budget
        assert pickle.loads(pickle.dumps(error)).budget is budget


def test_problem_and_resume_codes_are_distinct_str_enums() -> None:
    assert {str(c) for c in ProblemCode}.isdisjoint({str(c) for c in ResumeCode})
    assert ProblemCode.UNSET_READ == "unset-read"
