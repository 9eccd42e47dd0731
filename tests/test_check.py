"""The checker: every rule, its message, and the worst-case step bound on known shapes."""

from __future__ import annotations

import pytest
from broken_specs import BROKEN, Ctx, base, noop, unroutable_error, unset_read_via_error

from statemachine_agent import DefinitionError, Workflow, guard
from statemachine_agent.check import analyze, check, fields_set_at_start


@pytest.mark.parametrize("code", sorted(BROKEN))
def test_each_rule_is_reported_with_its_code(code: str) -> None:
    """Every broken example raises DefinitionError naming its rule."""
    with pytest.raises(DefinitionError) as info:
        BROKEN[code]().check()
    assert code in [p.code for p in info.value.problems]
    assert isinstance(info.value, TypeError)


def test_definition_error_lists_every_problem_at_once() -> None:
    """One DefinitionError carries every offender, each on its own line."""
    wf = Workflow("broken", Ctx)
    wf.add_state("a", noop, initial=True, reads=["qestion"])
    wf.add_state("b", noop)
    wf.terminal("done")
    wf.transition("a", "b").transition("b", "a").transition("a", "dne")
    with pytest.raises(DefinitionError) as info:
        wf.check()
    codes = {p.code for p in info.value.problems}
    assert {"unknown-field", "unknown-state", "unbounded-cycle", "no-failure-terminal"} <= codes
    # 'dne' meant 'done': neither 'done' unreachable nor a and b trapped is reported on top of it
    assert not codes & {"unreachable-state", "trap-cycle"}
    text = str(info.value)
    assert text.startswith("workflow 'broken' has ")
    assert len(text.splitlines()) == len(info.value.problems) + 1


def test_unset_read_names_the_path_and_the_fix() -> None:
    """An unset read gives the offending path and where to write the field."""
    report = BROKEN["unset-read"]().analyze()
    [p] = [p for p in report.problems if p.code == "unset-read"]
    assert p.message == (
        "state 'summarize' reads 'hits', but the path plan -> summarize never writes it: write it in "
        "'plan', give it a default, make it a required input, or declare it in optional_reads=['hits'] "
        "of state 'summarize' if the state handles None"
    )
    assert report.unset_reads == {("summarize", "hits")}


def test_error_transitions_carry_no_writes() -> None:
    """A field written by a failing action is not set along the error transition."""
    report = unset_read_via_error().analyze()
    assert ("summarize", "hits") in report.unset_reads
    [p] = [p for p in report.problems if p.code == "unset-read"]
    assert "search -[error]-> summarize" in p.message
    assert "discards the writes of 'search'" in p.message


def test_routing_keyboard_interrupt_is_rejected() -> None:
    """Cancellation and interruption can never be routed."""
    with pytest.raises(DefinitionError, match="must always propagate"):
        unroutable_error().check()


def test_definite_assignment_needs_every_path() -> None:
    """A field written on one branch only is unset on the other."""
    wf = base()
    wf.add_state("plan", noop, initial=True, writes=["attempts"])
    wf.add_state("search", noop, writes=["hits"])
    wf.add_state("skip", noop)
    wf.add_state("summarize", noop, reads=["hits"])
    wf.transition("plan", "search", guard=guard(lambda c: c.attempts == 0, name="fresh"))
    wf.transition("plan", "skip", default=True)
    wf.transition("search", "summarize")
    wf.transition("skip", "summarize")
    wf.transition("summarize", "done")
    report = wf.analyze()
    assert report.unset_reads == {("summarize", "hits")}
    wf2 = base()
    wf2.add_state("plan", noop, initial=True)
    wf2.add_state("search", noop, writes=["hits"])
    wf2.add_state("skip", noop, writes=["hits"])
    wf2.add_state("summarize", noop, reads=["hits"])
    wf2.transition("plan", "search", guard=guard(lambda c: c.attempts == 0, name="fresh"))
    wf2.transition("plan", "skip", default=True)
    wf2.transition("search", "summarize").transition("skip", "summarize").transition("summarize", "done")
    assert wf2.analyze().ok


def test_guard_reads_are_checked_after_the_source_writes() -> None:
    """A guard may read what its source state writes, but not what nobody wrote."""
    wf = base()
    wf.add_state("search", noop, initial=True, writes=["hits"])
    wf.transition("search", "done", guard=guard(lambda c: bool(c.hits), name="has hits", reads=["hits"]))
    wf.transition("search", "failed", guard=guard(lambda c: c.answer is None, name="no answer",
                                                  reads=["answer"]))
    wf.transition("search", "failed", default=True)
    report = wf.analyze()
    assert report.unset_reads == {("search", "answer")}


def test_fields_set_at_start() -> None:
    """Required non-optional fields and non-None defaults count as set before any action."""
    assert fields_set_at_start(Ctx) == {"question", "attempts"}


@pytest.mark.parametrize(
    ("max_visits", "expected"),
    [(1, 3), (2, 5), (5, 11)],
)
def test_bound_of_a_refine_loop(max_visits: int, expected: int) -> None:
    """search <-> refine with refine capped: the bound is exact (1 + 2 * visits + summarize)."""
    wf = base()
    wf.add_state("search", noop, initial=True)
    wf.add_state("refine", noop, max_visits=max_visits)
    wf.add_state("summarize", noop)
    wf.transition("search", "summarize", guard=guard(lambda c: c.attempts > 1, name="enough"))
    wf.transition("search", "refine", default=True)
    wf.transition("refine", "search")
    wf.transition("summarize", "done")
    # search runs max_visits + 1 times, refine max_visits times, summarize once.
    assert wf.check().worst_case_steps == expected + 1


def test_bound_of_a_self_loop_on_a_transition() -> None:
    """A self loop bounded by max_traversals runs at most that many extra times."""
    wf = base()
    wf.add_state("poll", noop, initial=True)
    wf.transition("poll", "done", guard=guard(lambda c: c.attempts > 2, name="ready"))
    wf.transition("poll", "poll", default=True, max_traversals=4)
    assert wf.check().worst_case_steps == 5


def test_bound_of_a_dag_is_its_longest_path() -> None:
    """Without cycles the bound is the longest path, not the number of states."""
    wf = base()
    for name in ("a", "b", "c", "d"):
        wf.add_state(name, noop, initial=name == "a")
    wf.transition("a", "b", guard=guard(lambda c: True, name="left"))
    wf.transition("a", "c", default=True)
    wf.transition("b", "d").transition("c", "d").transition("d", "done")
    assert wf.check().worst_case_steps == 3


def test_max_steps_caps_the_bound() -> None:
    """A workflow-wide max_steps lowers the reported bound, and the graph bound is kept too."""
    wf = Workflow("capped", Ctx, max_steps=4)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.add_state("poll", noop, initial=True)
    wf.transition("poll", "done", guard=guard(lambda c: c.attempts > 2, name="ready"))
    wf.transition("poll", "poll", default=True, max_traversals=10)
    report = wf.check()
    assert (report.graph_bound, report.worst_case_steps) == (11, 4)


def test_on_no_exit_fail_is_an_explicit_exit() -> None:
    """on_no_exit='fail' accepts all-guarded exits and counts the failure terminal as reachable."""
    wf = base()
    wf.add_state("plan", noop, initial=True, on_no_exit="fail")
    wf.transition("plan", "done", guard=guard(lambda c: c.attempts == 0, name="fresh"))
    report = wf.check()
    assert report.ok
    assert report.failure_terminal == "failed"


def test_failure_terminal_is_never_unreachable() -> None:
    """The failure terminal is where budgets end runs, so it is never reported unreachable."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    report = wf.check()
    assert "failed" in report.reachable
    assert report.unreachable == frozenset()


def test_decision_states_may_have_several_unguarded_exits() -> None:
    """In a decision state the policy picks, so unguarded exits do not shadow each other."""
    wf = base()
    wf.add_state("route", noop, initial=True, decision=True)
    wf.transition("route", "done", description="answer now")
    wf.transition("route", "failed", description="give up")
    assert wf.check().worst_case_steps == 1


def test_two_defaults_are_dead() -> None:
    """Only one default exit per state can ever fire."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done", default=True)
    wf.transition("plan", "failed", default=True)
    assert "dead-transition" in [p.code for p in wf.analyze().problems]


def test_guarded_default_is_rejected() -> None:
    """A default transition with a guard is contradictory."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done", default=True, guard=lambda c: True)
    assert "guarded-default" in [p.code for p in wf.analyze().problems]


def test_duplicate_error_route() -> None:
    """Routing the same exception twice from one state is dead code."""
    wf = base()
    wf.add_state("plan", noop, initial=True)
    wf.transition("plan", "done")
    wf.on_error("plan", ValueError, "failed").on_error("plan", ValueError, "done")
    assert "duplicate-error-route" in [p.code for p in wf.analyze().problems]


def test_non_model_context_is_reported_not_crashed() -> None:
    """A context that is not a pydantic model is a problem, not a crash."""
    wf: Workflow[dict[str, int]] = Workflow("dicty", dict)
    wf.add_state("plan", noop, initial=True, reads=["x"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("plan", "done")
    assert [p.code for p in wf.analyze().problems] == ["context-model"]


def test_declaration_reports_a_string_for_reads() -> None:
    """reads='hits' is a common slip: the checker reports it with the other problems and says to
    pass a list."""
    wf = base()
    wf.add_state("plan", noop, initial=True, reads="hits")  # type: ignore[arg-type]
    messages = [p.message for p in wf.analyze().problems if p.code == "bad-field"]
    assert messages == ["state 'plan' reads 'hits': give a list of field names, e.g. reads=['hits']"]


def test_foreign_state_ref_is_reported() -> None:
    """A state handle from another workflow cannot be used as an endpoint: a foreign-state problem."""
    one, two = base("one"), base("two")
    a = one.add_state("a", noop, initial=True)
    two.transition(a, "done")
    problems = [p for p in two.analyze().problems if p.code == "foreign-state"]
    assert [p.subject for p in problems] == ["a"]
    assert "belongs to workflow 'one'" in problems[0].message


def test_check_returns_report_and_analyze_never_raises() -> None:
    """check() raises for problems, analyze() returns them."""
    spec = BROKEN["no-initial"]().spec()
    assert not analyze(spec).ok
    with pytest.raises(DefinitionError):
        check(spec)


def test_definition_error_pickles() -> None:
    """DefinitionError survives pickling (multiprocessing, pytest-xdist)."""
    import pickle

    with pytest.raises(DefinitionError) as info:
        BROKEN["no-initial"]().check()
    again = pickle.loads(pickle.dumps(info.value))
    assert again.problems == info.value.problems
    assert str(again) == str(info.value)


def test_malformed_entries_are_reported_not_crashed_on() -> None:
    """Odd values anywhere in a hand-built spec give problems, never a crash."""
    from statemachine_agent import Guard, Outcome
    from statemachine_agent.spec import StateSpec, TransitionSpec, WorkflowSpec

    g = Guard(lambda c: True, name="g")
    g.reads = None  # type: ignore[assignment]
    deep = Guard(lambda c: True, name="leaf")
    for _ in range(3000):
        deep = deep & Guard(lambda c: True, name="leaf")
    spec = WorkflowSpec(
        name="odd",
        context=Ctx,
        states=(
            StateSpec("a", noop, initial=True, tools=[["search"]]),  # type: ignore[arg-type]
            "not a state",  # type: ignore[arg-type]
            StateSpec("done", terminal=True, outcome=Outcome.SUCCESS),
            StateSpec("failed", terminal=True, outcome=Outcome.FAILURE),
        ),
        transitions=(
            TransitionSpec("a", "done", guard=g, order=0),
            TransitionSpec("a", "done", guard=deep, order=None),  # type: ignore[arg-type]
            "not a transition",  # type: ignore[arg-type]
            TransitionSpec("a", "failed", default=True, order=2),
        ),
    )
    codes = [p.code for p in analyze(spec).problems]
    assert codes.count("bad-transition") == 2
    assert "bad-state" in codes
    assert "bad-field" in codes
    assert len(list(deep.leaves())) == 3001
