"""The property-testing kit: it passes correct workflows and finds seeded bugs, shrunk to a minimal story."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Verbosity, settings
from hypothesis import strategies as st
from hypothesis.errors import UnsatisfiedAssumption
from hypothesis.reporting import with_reporter
from hypothesis.stateful import run_state_machine_as_test

from statemachine_agent import Context, Decision, Workflow, guard
from statemachine_agent.errors import ToolFailed
from statemachine_agent.examples import research
from statemachine_agent.testing import (
    Allowed,
    check_workflow,
    contexts,
    follow,
    invariant,
    path_invariant,
    replay,
    shortest_paths,
    workflow_state_machine,
)
from statemachine_agent.tools import Tools

QUESTIONS = st.sampled_from(["How does the checker bound loops?", "zebra quokka", "checker quokka",
                             "how is it?", "retries with tenacity"])


def test_example_passes_with_full_coverage_of_reachable_moves(capsys: pytest.CaptureFixture[str]) -> None:
    """On the (correct) example the kit reports nothing wrong, and prints its coverage (as
    docs/testing.md says: with derandomize=True, the same on every run)."""
    # The example routes SearchUnavailable only: a ConnectionError or a timeout of its tool makes run_sync
    # raise, by design, so the kit is told so (without allow= it would fail: tests/test_kit_loud.py).
    report = check_workflow(research.workflow, derandomize=True, allow=frozenset({Allowed.UNROUTED_ERRORS}),
                            contexts_from=contexts(research.ResearchContext, question=QUESTIONS), max_examples=100)
    assert report.coverage.runs == 100
    states, transitions = report.coverage.missing(report.compiled)
    assert states == []
    assert transitions == []  # SearchUnavailable is routed, so the default fault plans inject it too
    out = capsys.readouterr().out
    assert "100 runs of 'research': states 7/7, transitions 8/8" in out
    assert "guard outcomes seen: 4/4" in out
    dot = report.diagram().source
    assert "coverage of 100 runs" in dot
    assert "×" in dot


def test_contexts_honour_field_constraints() -> None:
    """Generated contexts are valid instances: min_length on the question holds."""
    strategy = contexts(research.ResearchContext)

    @__import__("hypothesis").given(strategy)
    @__import__("hypothesis").settings(max_examples=50)
    def check(ctx: research.ResearchContext) -> None:
        assert isinstance(ctx, research.ResearchContext)
        assert len(ctx.question) >= 1

    check()


class Job(Context):
    """A job retried after failures."""

    attempts: int = 0
    result: str | None = None


def retrying(off_by_one: bool) -> Workflow[Job]:
    """call -> done; a failed call goes to backoff, which retries while attempts allow.

    The promise: at most 2 retries. The seeded bug uses <= where < was meant.
    """
    wf = Workflow("retrying", Job)

    @wf.tool
    async def fetch() -> str:
        return "data"

    @wf.state(initial=True, writes=["result"], tools=["fetch"])
    async def call(ctx: Job, tools: Tools) -> None:
        ctx.result = await tools.call("fetch")

    @wf.state(reads=["attempts"], writes=["attempts"], max_visits=3)
    def backoff(ctx: Job) -> None:
        ctx.attempts += 1

    limit = (lambda c: c.attempts <= 2) if off_by_one else (lambda c: c.attempts < 2)
    wf.terminal("done")
    wf.terminal("gave_up", outcome="failure")
    wf.transition(call, "done")
    wf.on_error(call, ToolFailed, backoff)
    wf.transition(backoff, call, guard=guard(limit, name="may retry", reads=["attempts"]))
    wf.transition(backoff, "gave_up", default=True)
    return wf


FRESH = contexts(Job, attempts=st.just(0))
"""Jobs that have not been tried yet."""


@invariant
def at_most_two_retries(ctx: Job) -> bool:
    """The promise the seeded bug breaks."""
    return ctx.attempts <= 2


def test_correct_retry_budget_passes() -> None:
    """Without the off-by-one, no generated fault plan breaks the promise."""
    check_workflow(retrying(off_by_one=False), contexts_from=FRESH, invariants=[at_most_two_retries],
                   print_coverage=False)


def test_off_by_one_is_found_and_shrunk_to_the_minimal_story(tmp_path: Path) -> None:
    """The kit finds the off-by-one and shrinks it to three failed calls: the shortest path."""
    fixture = tmp_path / "story.json"
    with pytest.raises(AssertionError) as info:
        check_workflow(retrying(off_by_one=True), contexts_from=FRESH, invariants=[at_most_two_retries],
                       save_failure=fixture, print_coverage=False)
    message = str(info.value)
    assert "invariant 'at_most_two_retries' failed after step 5" in message
    steps = [line for line in message.splitlines() if line.startswith("  ") and "--" in line]
    assert [line.split(":")[1].split("--")[0].strip() for line in steps] == \
        ["call", "backoff", "call", "backoff", "call", "backoff"]
    story = json.loads(fixture.read_text(encoding="utf-8"))
    assert len(story["faults"]) == 3
    assert all(f["kind"] != "ok" for f in story["faults"])
    # The fixture replays exactly, as a one-line regression test.
    with pytest.raises(AssertionError, match="at_most_two_retries"):
        replay(retrying(off_by_one=True), fixture, invariants=[at_most_two_retries])
    assert replay(retrying(off_by_one=False), fixture, invariants=[at_most_two_retries]).terminal == "gave_up"


class Doc(Context):
    """Search then summarise."""

    question: str
    hits: list[str] | None = None
    summary: str | None = None


def missing_write() -> Workflow[Doc]:
    """'search' declares it writes 'summary' but forgets to on one branch: the checker cannot see it."""
    wf = Workflow("missing-write", Doc)

    @wf.state(initial=True, reads=["question"], writes=["hits", "summary"])
    def search(ctx: Doc) -> None:
        ctx.hits = ctx.question.split()
        if ctx.hits:
            ctx.summary = ctx.hits[0]

    @wf.state(reads=["summary"])
    def report(ctx: Doc) -> None:
        assert ctx.summary is not None

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(search, report).transition(report, "done")
    return wf


def test_missing_write_is_found() -> None:
    """A read of a field the run never set is a built-in failure, shrunk to the empty question."""
    with pytest.raises(AssertionError, match="state 'search' ended without writing 'summary'") as info:
        check_workflow(missing_write(), print_coverage=False)
    assert "input: {'question': '', 'hits': None, 'summary': None}" in str(info.value)


def unrouted() -> Workflow[Job]:
    """Only ConnectionError is routed; a timeout from the tool is not."""
    wf = Workflow("unrouted", Job)

    @wf.tool(timeout=1.0)
    async def fetch() -> str:
        return "data"

    @wf.state(initial=True, writes=["result"], tools=["fetch"])
    async def call(ctx: Job, tools: Tools) -> None:
        ctx.result = await tools.call("fetch")

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("offline", outcome="failure")
    wf.transition(call, "done")
    wf.on_error(call, ConnectionError, "offline")
    return wf


@path_invariant
def every_error_is_routed(result: Any) -> bool:
    """No run ends on an exception the workflow did not route."""
    return result.error is None


def test_unhandled_tool_error_is_found() -> None:
    """Injected tool faults reach an unrouted error: a failure of its own, without any invariant."""
    with pytest.raises(AssertionError, match="no error transition routes it") as info:
        check_workflow(unrouted(), print_coverage=False)
    story = str(info.value)
    assert story.count("tool fetch() ->") == 1  # one call, the minimal story
    assert "tool fetch() -> raise TimeoutError" in story


def triage() -> Workflow[Doc]:
    """A decision state with two declared exits."""
    wf = Workflow("triage", Doc)
    wf.add_state("route", lambda c: None, initial=True, decision=True)
    wf.terminal("answered")
    wf.terminal("escalated")
    wf.terminal("failed", outcome="failure")
    wf.transition("route", "answered", description="answer now")
    wf.transition("route", "escalated", description="ask a person")
    return wf


def test_policy_answering_an_undeclared_transition_is_found() -> None:
    """A user policy that sometimes answers a move nobody declared fails the kit."""

    def llm(decision: Decision) -> str:
        question = decision.context.question
        return "cancel" if len(question) > 5 else decision.options[0].name  # an LLM off-script

    with pytest.raises(AssertionError, match="the policy answered 'cancel' in state 'route'") as info:
        check_workflow(triage(), policy=llm, print_coverage=False)
    assert "'question': '000000'" in str(info.value)  # the shortest question that sets it off


def test_wrong_bound_is_found() -> None:
    """A max_steps set below what the workflow needs ends runs on a budget: found."""
    wf = research.build()
    wf.max_steps = 3

    @path_invariant
    def no_budget_failures(result: Any) -> bool:
        return "reached" not in (result.reason or "") or "failure terminal" in (result.reason or "")

    with pytest.raises(AssertionError, match="a budget ran out") as info:
        check_workflow(wf, contexts_from=contexts(research.ResearchContext, question=QUESTIONS),
                       allow=frozenset({Allowed.UNROUTED_ERRORS}), print_coverage=False)
    # Allowed, a spent budget is left to the user's own path invariant.
    with pytest.raises(AssertionError, match="no_budget_failures"):
        check_workflow(wf, contexts_from=contexts(research.ResearchContext, question=QUESTIONS),
                       path_invariants=[no_budget_failures],
                       allow=frozenset({Allowed.SPENT_BUDGETS, Allowed.UNROUTED_ERRORS}), print_coverage=False)
    assert "max_steps of 3 reached before state 'search'" in str(info.value)


@pytest.mark.parametrize("case", shortest_paths(research.workflow), ids=str)
def test_every_edge_of_the_example_has_a_deterministic_case(case: Any) -> None:
    """follow() drives a run along each shortest path (guards and choices forced, actions real, the
    routed error raised for an error edge)."""
    result = follow(research.workflow, case, research.ResearchContext(question="How are loops bounded?"))
    assert tuple(result.states[: len(case.states)]) == case.states


def test_shortest_paths_cover_every_state_and_transition() -> None:
    """There is one case per state and one per transition, error transitions included."""
    spec = research.workflow.spec()
    goals = [c.goal for c in shortest_paths(research.workflow)]
    assert len(goals) == len(spec.states) + len(spec.transitions) + len(spec.error_transitions)
    assert "transition search_to_refine" in goals


TestResearchMachine = workflow_state_machine(
    research.workflow, contexts_from=contexts(research.ResearchContext, question=QUESTIONS)).TestCase


class _Recorded:
    """A run whose steps are written to a shared event list (as ``("step", step)``)."""

    def __init__(self, run: Any, events: list[tuple[str, Any]]) -> None:
        self._run, self._events = run, events

    async def step(self) -> Any:
        taken = await self._run.step()
        self._events.append(("step", taken))
        return taken

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)


def _misnamed_firings(spec: Any, events: list[tuple[str, Any]]) -> tuple[list[str], Counter[str]]:
    """Pair each printed rule firing with the steps it took, and list the firings that did not do what
    their name says: ``take_<transition>`` takes exactly that transition (error transitions included),
    ``terminal_absorbs`` and the rest take none."""
    transitions = {t.name for t in spec.transitions} | {e.name for e in spec.error_transitions}
    misnamed: list[str] = []
    fired: Counter[str] = Counter()
    pending: list[Any] = []
    discarded = False
    for kind, value in events:
        if kind == "step":
            pending.append(value)
            continue
        if kind == "discarded":
            discarded = True
            continue
        m = re.fullmatch(r"state\.(\w+)\(.*\)", value, re.S)
        if m is None:
            continue
        name, taken, pending = m.group(1), pending, []
        if discarded:  # the rule could not take its transition (an action raised on its own): no claim
            discarded = False
            fired["(discarded)"] += 1
            continue
        fired[name] += 1
        claim = name.removeprefix("take_") if name.startswith("take_") else None
        if claim in transitions:
            ok = len(taken) == 1 and taken[0].transition == claim
        elif name == "spend_a_budget":
            ok = len(taken) == 1 and taken[0].kind == "fail"
        else:
            ok = not taken
        if not ok:
            misnamed.append(f"{name} took {[(t.state, t.transition) for t in taken]}")
    return misnamed, fired


def test_every_stateful_rule_firing_takes_the_step_it_is_named_for() -> None:
    """In runs of workflow_state_machine(research), each rule firing (as Hypothesis prints it) is paired
    with the steps the run really took: 0 firings did something other than what the rule's name says,
    and a rule fired from every non-terminal state."""
    events: list[tuple[str, Any]] = []
    # Questions plan can turn into a query: a plan that raises on its own ("how is it?") cannot take
    # plan_to_search, so such an example is discarded (assume) after its firing was printed.
    searchable = st.sampled_from(["How does the checker bound loops?", "zebra quokka", "checker quokka",
                                  "retries with tenacity"])
    machine = workflow_state_machine(research.workflow,
                                     contexts_from=contexts(research.ResearchContext, question=searchable))

    class Recorded(machine):  # type: ignore[misc, valid-type]
        @property
        def run(self) -> Any:
            return self.__dict__.get("_run")

        @run.setter
        def run(self, value: Any) -> None:
            self.__dict__["_run"] = None if value is None else _Recorded(value, events)

        def _take(self, name: str, data: Any) -> None:
            try:
                super()._take(name, data)
            except UnsatisfiedAssumption:
                events.append(("discarded", name))
                raise

    with with_reporter(lambda text: events.append(("printed", str(text)))):
        run_state_machine_as_test(Recorded, settings=settings(
            max_examples=100, stateful_step_count=10, verbosity=Verbosity.debug, deadline=None,
            database=None, derandomize=True))
    misnamed, fired = _misnamed_firings(research.workflow.spec(), events)
    assert misnamed == []
    assert sum(n for name, n in fired.items() if name.startswith("take_")) >= 30
    spec = research.workflow.spec()
    every = {f"take_{t.name}" for t in spec.transitions} | {f"take_{e.name}" for e in spec.error_transitions}
    assert {name for name in fired if name.startswith("take_")} == every  # error transitions included


def test_custom_fault_types_and_policy_answers_replay(tmp_path: Path) -> None:
    """Faults raise the workflow's own exception types, and a bad answer of the user's policy replays."""
    from statemachine_agent.examples.research import SearchUnavailable
    from statemachine_agent.testing import faults

    seen: list[str] = []

    @path_invariant
    def never_unavailable(result: Any) -> bool:
        err = result.path[-1].error
        seen.append(type(getattr(err, "last", err)).__name__)
        return not isinstance(getattr(err, "last", None), SearchUnavailable)

    with pytest.raises(AssertionError, match="never_unavailable"):
        check_workflow(research.workflow,
                       contexts_from=contexts(research.ResearchContext, question=QUESTIONS),
                       tool_faults=faults(errors=(SearchUnavailable,)), path_invariants=[never_unavailable],
                       allow=frozenset({Allowed.UNROUTED_ERRORS}), print_coverage=False)
    fixture = tmp_path / "policy.json"

    def sometimes_wrong(decision: Decision) -> str:
        return "nowhere" if len(decision.context.question) > 2 else decision.options[0].name

    with pytest.raises(AssertionError, match="answered 'nowhere'"):
        check_workflow(triage(), policy=sometimes_wrong, save_failure=fixture, print_coverage=False)
    with pytest.raises(AssertionError, match="answered 'nowhere'"):
        replay(triage(), fixture)


def test_follow_reaches_a_decision_default_and_reports_divergence() -> None:
    """follow() takes a decision state's default exit, and says so when a run leaves the path."""
    wf = Workflow("choose", Doc)
    wf.add_state("choose", lambda c: None, initial=True, decision=True)
    wf.terminal("a")
    wf.terminal("b")
    wf.terminal("failed", outcome="failure")
    wf.transition("choose", "a", guard=guard(lambda c: True, name="fits a"), description="to a")
    wf.transition("choose", "b", default=True, description="otherwise")
    [case] = [c for c in shortest_paths(wf) if c.goal == "transition choose_to_b"]
    assert follow(wf, case, Doc(question="q")).terminal == "b"

    broken = Workflow("broken", Doc)

    def boom(ctx: Any) -> None:
        raise ValueError("no")

    broken.add_state("act", boom, initial=True)
    broken.terminal("done")
    broken.terminal("failed", outcome="failure")
    broken.transition("act", "done")
    [case] = [c for c in shortest_paths(broken) if c.goal == "transition act_to_done"]
    with pytest.raises(AssertionError, match="left the path at step 0: planned 'act_to_done'"):
        follow(broken, case, Doc(question="q"))
