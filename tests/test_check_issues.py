"""Regression tests for the checker items of the hardening issue: each failed before its fix."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from broken_specs import Ctx, base, noop
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_check_properties import specs, true_guard

from statemachine_agent import Context, Workflow, guard
from statemachine_agent.check import analyze
from statemachine_agent.context import UNSET
from statemachine_agent.errors import Problem
from statemachine_agent.spec import (
    TRANSITION_NAME,
    ErrorTransitionSpec,
    Outcome,
    StateSpec,
    TransitionSpec,
    WorkflowSpec,
)

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.filter_too_much])


def codes(spec_or_wf: Any) -> list[str]:
    report = spec_or_wf.analyze() if isinstance(spec_or_wf, Workflow) else analyze(spec_or_wf)
    return [p.code for p in report.problems]


def simple() -> Workflow[Ctx]:
    """plan -> done, nothing wrong."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    return wf


# --- declaration problems and tools --------------------------------------------------------------


def test_declaration_problems_come_first_with_the_rest() -> None:
    """Problems carried on the spec are reported first, and the checker's own follow."""
    found = Problem("bad-guard", "guard 'g' on transition 'x' is not callable", "x")
    wf = base()
    wf.add_state("plan", noop, initial=True, reads=["qestion"])
    wf.transition("plan", "done")
    spec = dataclasses.replace(wf.spec(), problems=(found,))
    problems = analyze(spec).problems
    assert problems[0] == found
    assert [p.code for p in problems[1:]] == ["unknown-field"]


class _Tool:
    """A stand-in for a Tool whose options the tools module checks lazily."""

    def __init__(self, name: str, found: Any = (), raises: bool = False) -> None:
        self.name = name
        self.fallback = None
        self._found = found
        self._raises = raises

    def definition_problems(self) -> Any:
        if self._raises:
            raise RuntimeError("boom")
        return self._found


def test_tool_definition_problems_are_reported() -> None:
    """What a tool's definition_problems() returns is reported; a raising one becomes bad-tool."""
    bad_timeout = Problem("bad-option", "tool 'search': timeout=0: give a positive number", "search")
    spec = dataclasses.replace(simple().spec(), tools=(
        _Tool("search", [bad_timeout]), _Tool("fetch", raises=True), _Tool("rank", ["junk"]),
    ))
    problems = analyze(spec).problems
    assert bad_timeout in problems
    bad = [p.message for p in problems if p.code == "bad-tool"]
    assert bad == ["tool 'fetch': definition_problems() raised RuntimeError: boom",
                   "tool 'rank': definition_problems() gave 'junk', which is not a Problem"]


def test_two_tools_with_one_name_are_reported_once() -> None:
    """Registering a name twice (or thrice) is one duplicate-tool problem."""
    spec = dataclasses.replace(simple().spec(), tools=(_Tool("search"), _Tool("search"), _Tool("search")))
    report = analyze(spec)
    assert [p.message for p in report.problems] == [
        "a tool named 'search' is registered twice: rename one of them"]


@given(st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3),
                          st.builds(Problem, st.just("bad-option"), st.text(max_size=5))), max_size=4)
       | st.one_of(st.none(), st.integers(), st.text(max_size=3)))
@PROPS
def test_junk_in_spec_problems_never_crashes(junk: Any) -> None:
    """Whatever ``spec.problems`` holds, the Problems in it are reported and the rest is bad-option."""
    spec = simple().spec()
    object.__setattr__(spec, "problems", tuple(junk) if isinstance(junk, list) else junk)
    report = analyze(spec)
    if isinstance(junk, list):
        assert [p for p in report.problems if p in junk] == [p for p in junk if isinstance(p, Problem)]
        assert len(report.problems) == len(junk)
    else:
        assert [p.code for p in report.problems] == ([] if junk in (None, ()) else ["bad-option"])


# --- transition names ----------------------------------------------------------------------------


@given(st.text(max_size=70))
@PROPS
def test_transition_names_must_be_llm_function_names(name: str) -> None:
    """A name is accepted exactly when it is 1 to 64 letters, digits, '_' and '-'."""
    assume(name != "")  # an empty name gets the default
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done", name=name)
    valid = TRANSITION_NAME.fullmatch(name) is not None and name.isascii()
    assert (codes(wf) == []) == valid
    if not valid:
        [p] = wf.analyze().problems
        assert p.code == "bad-name"
        assert p.message == (f"transition plan->done has name {name!r}: use 1 to 64 letters, digits, '_' "
                             "and '-' (policies see it as an LLM function name)")


def test_names_shared_by_a_transition_and_an_error_route_are_duplicates() -> None:
    """Transition names are unique across transitions and error transitions."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done", name="go")
    wf.on_error("plan", ValueError, "failed", name="go")
    [p] = wf.analyze().problems
    assert (p.code, p.subject) == ("duplicate-name", "go")
    assert "plan->done, plan-[ValueError]->failed" in p.message


def test_non_string_names_are_reported_not_crashed_on() -> None:
    """A name that is not a string is a bad-name problem."""
    spec = WorkflowSpec("odd", Ctx, (StateSpec("plan", noop, initial=True),
                                     StateSpec("done", terminal=True, outcome=Outcome.SUCCESS),
                                     StateSpec("failed", terminal=True, outcome=Outcome.FAILURE)),
                        (TransitionSpec("plan", "done", name=7),),  # type: ignore[arg-type]
                        (ErrorTransitionSpec("plan", ValueError, "failed", name=["x"]),))  # type: ignore[arg-type]
    assert codes(spec) == ["bad-name", "bad-name"]


def test_edge_labels_and_messages_use_transition_names() -> None:
    """Report edges carry the transition's name, and problems about a transition name it."""
    wf = base()
    wf.add_state("route", noop, initial=True, decision=True)
    wf.transition("route", "done", name="answer", description="answer now")
    wf.transition("route", "failed", name="give_up")
    report = wf.analyze()
    assert {e.label for e in report.edges} == {"answer", "give_up"}
    [p] = report.problems
    assert p.subject == "give_up"
    assert p.message.startswith("transition 'give_up' (route->failed) leaves decision state 'route'")


# --- optional reads and writes -------------------------------------------------------------------


def test_optional_writes_do_not_count_as_written() -> None:
    """A field only optionally written before a reader is unset there; written for sure, it is fine."""
    wf = base()
    wf.add_state("search", noop, initial=True, optional_writes=["hits"])
    wf.add_state("summarize", noop, reads=["hits"])
    wf.transition("search", "summarize").transition("summarize", "done")
    assert wf.analyze().unset_reads == {("summarize", "hits")}
    wf2 = base()
    wf2.add_state("search", noop, initial=True, writes=["hits"])
    wf2.add_state("summarize", noop, reads=["hits"])
    wf2.transition("search", "summarize").transition("summarize", "done")
    assert wf2.analyze().ok


def test_optional_reads_are_exempt_but_must_exist() -> None:
    """optional_reads need no write before them, but name real fields."""
    wf = base()
    wf.add_state("summarize", noop, initial=True, optional_reads=["hits", "hitz"], optional_writes=["anser"])
    wf.transition("summarize", "done")
    messages = [p.message for p in wf.analyze().problems]
    assert messages == [
        "state 'summarize' lists 'hitz' in optional_reads, but Ctx has no such field (did you mean 'hits'?)",
        "state 'summarize' lists 'anser' in optional_writes, but Ctx has no such field (did you mean "
        "'answer'?)",
    ]


def test_a_field_both_written_and_optionally_written_is_bad() -> None:
    """writes and optional_writes (like reads and optional_reads) do not share a field."""
    wf = base()
    wf.add_state("plan", noop, initial=True, writes=["query"], optional_writes=["query"])
    wf.transition("plan", "done")
    [p] = wf.analyze().problems
    assert p.code == "bad-field"
    assert "'query' in both writes and optional_writes" in p.message


@pytest.mark.parametrize("kind", ["optional_reads", "optional_writes"])
@pytest.mark.parametrize("value", ["hits", None, 3, ("hits", 4)])
def test_malformed_optional_lists_are_bad_fields(kind: str, value: Any) -> None:
    """A string, None or non-name entries in an optional list are a bad-field problem, not a crash."""
    spec = simple().spec()
    states = tuple(dataclasses.replace(s, **{kind: value}) if s.name == "plan" else s for s in spec.states)
    assert codes(dataclasses.replace(spec, states=states)) == ["bad-field"]


class Draft(Context):
    """Fields of each kind the unset-read message distinguishes."""

    draft: str | None = None
    maybe: str | None
    hits: list[str] = UNSET


def _reader(field: str) -> str:
    wf: Workflow[Draft] = Workflow("msg", Draft)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.add_state("plan", noop, initial=True)
    wf.add_state("x", noop, reads=[field])
    wf.transition("plan", "x").transition("x", "done")
    [p] = wf.analyze().problems
    return p.message


def test_unset_read_offers_optional_reads_for_a_field_that_may_be_none() -> None:
    """A None-able field with a default: the reader may declare it optional."""
    assert _reader("draft") == (
        "state 'x' reads 'draft', but the path plan -> x never writes it: write it in 'plan', give it a "
        "default, make it a required input, or declare it in optional_reads=['draft'] of state 'x' if the "
        "state handles None")


def test_unset_read_does_not_ask_to_require_a_required_field() -> None:
    """A required field whose type admits None is already required: the fix is its type."""
    message = _reader("maybe")
    assert "make it a required input" not in message
    assert message.endswith(": write it in 'plan', make its type exclude None so the caller must supply "
                            "it, or declare it in optional_reads=['maybe'] of state 'x' if the state "
                            "handles None")


def test_unset_read_of_an_unset_field_says_where_to_write_it() -> None:
    """A field defaulting to UNSET is meant to be written first: the fix is where."""
    assert _reader("hits") == ("state 'x' reads 'hits', but the path plan -> x never writes it: write it in "
                               "'plan'")


# --- messages ------------------------------------------------------------------------------------


def test_unbounded_cycle_does_not_blame_a_bounded_error_route() -> None:
    """An unguarded transition and a bounded error route join the same states: the cycle is the transition."""
    wf = base()
    wf.add_state("a", noop, initial=True)
    wf.add_state("b", noop)
    wf.transition("a", "b")
    wf.on_error("a", ValueError, "b", max_traversals=2)
    wf.transition("b", "done", guard=guard(lambda c: c.attempts > 2, name="enough"))
    wf.transition("b", "a", default=True)
    [p] = wf.analyze().problems
    assert p.code == "unbounded-cycle"
    assert p.message.startswith("the cycle a -> b -> a has no bound")


def test_a_self_loop_trap_reads_as_one_state() -> None:
    """A state looping on itself with no way out is named alone, not as a group forming a trap."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.add_state("poll", noop)
    wf.transition("plan", "poll", guard=guard(lambda c: c.attempts > 0, name="waiting"))
    wf.transition("plan", "done", default=True)
    wf.transition("poll", "poll", max_traversals=3)
    [p] = wf.analyze().problems
    assert p.message == ("state 'poll' loops on itself with no way out to a terminal state: add an exit from "
                         "it to a terminal state")


def test_an_unbounded_self_loop_names_its_transition() -> None:
    """An unbounded self-loop says which transition to bound."""
    wf = base()
    wf.add_state("poll", noop, initial=True)
    wf.transition("poll", "done", guard=guard(lambda c: c.attempts > 2, name="ready"))
    wf.transition("poll", "poll", default=True, name="again")
    [p] = wf.analyze().problems
    assert p.message == ("state 'poll' loops on itself with no bound, so a run could loop forever: give it "
                         "max_visits=N or its transition 'again' max_traversals=N")


def test_one_typo_in_a_target_is_one_problem() -> None:
    """A mistyped target: no 'no exits', no 'none is a default', no unreachable or trapped follow-ons."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.add_state("search", noop)
    wf.add_state("summarize", noop)
    wf.transition("plan", "serch", default=True)  # the only exit: a typo
    wf.transition("search", "summarize").transition("summarize", "done")
    wf.on_error("summarize", ValueError, "faild")
    problems = wf.analyze().problems
    assert [p.message for p in problems] == [
        "transition 'plan_to_serch' (plan->serch) has unknown target state 'serch' (did you mean 'search'?)",
        "error transition 'summarize_on_ValueError' (summarize-[ValueError]->faild) has unknown target "
        "state 'faild' (did you mean 'failed'?)",
    ]


def test_one_typo_in_a_source_is_one_problem() -> None:
    """A mistyped source: the state it meant is not said to have no exits, nor its target unreachable."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.add_state("search", noop)
    wf.transition("plan", "search")
    wf.transition("serch", "done")
    assert codes(wf) == ["unknown-state"]


@st.composite
def ok_specs_with_a_typo(draw: st.DrawFn) -> tuple[WorkflowSpec, WorkflowSpec]:
    """A spec with no problem, and the same with one transition's target (or error route's) mistyped."""
    spec = draw(specs())
    # no reads, so no unset-read: what is left to go wrong is the graph
    spec = dataclasses.replace(
        spec, states=tuple(dataclasses.replace(s, reads=()) for s in spec.states),
        transitions=tuple(dataclasses.replace(t, guard=true_guard()) if t.guard else t
                          for t in spec.transitions))
    assume(analyze(spec).ok)
    routes = [*spec.transitions, *spec.error_transitions]
    assume(routes)
    victim = draw(st.sampled_from(routes))
    typo = dataclasses.replace(victim, target=victim.target + "x")
    if isinstance(victim, TransitionSpec):
        mistyped = dataclasses.replace(spec, transitions=tuple(typo if t is victim else t
                                                               for t in spec.transitions))
    else:
        mistyped = dataclasses.replace(spec, error_transitions=tuple(typo if t is victim else t
                                                                     for t in spec.error_transitions))
    return spec, mistyped


@given(ok_specs_with_a_typo())
@PROPS
def test_a_typo_in_a_well_formed_spec_is_exactly_one_problem(case: tuple[WorkflowSpec, WorkflowSpec]) -> None:
    """Mistyping one target of a spec with no problem gives one unknown-state problem and nothing else."""
    _, mistyped = case
    assert codes(mistyped) == ["unknown-state"]
