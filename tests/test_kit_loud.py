"""The kit is loud by default: what run_sync raises, a guard's error, a spent budget and an unfinished
run are failures with their story; each has a typed opt-out (issue 18, item 1)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from statemachine_agent import Context, Workflow, guard
from statemachine_agent.errors import ToolFailed, ToolTimeout
from statemachine_agent.testing import Allowed, check_workflow, contexts, invariant, path_invariant
from statemachine_agent.tools import Tools


class Ticket(Context):
    """A support ticket triaged by priority."""

    text: str
    priority: int = 0
    attempts: int = 0
    answer: str | None = None


def triage(*, route_lookup_errors: bool = True, guard_bug: bool = False, retry_bug: bool = False,
           broad_route: bool = False) -> Workflow[Ticket]:
    """classify -> lookup (a tool, retried through backoff) -> answered | escalated."""
    wf = Workflow("triage", Ticket)

    @wf.tool
    async def kb_lookup(text: str) -> str:
        return text[:10]

    @wf.state(initial=True, reads=["text"], writes=["priority"])
    def classify(ctx: Ticket) -> None:
        ctx.priority = 3 if "urgent" in ctx.text else 1

    @wf.state(reads=["text"], writes=["answer"], tools=["kb_lookup"])
    async def lookup(ctx: Ticket, tools: Tools) -> None:
        ctx.answer = await tools.call("kb_lookup", text=ctx.text)

    @wf.state(reads=["attempts"], writes=["attempts"], max_visits=2)
    def backoff(ctx: Ticket) -> None:
        ctx.attempts += 1

    wf.terminal("answered")
    wf.terminal("escalated")
    wf.terminal("failed", outcome="failure")
    urgent = (lambda c: c.priorty > 2) if guard_bug else (lambda c: c.priority > 2)
    wf.transition(classify, "escalated", guard=guard(urgent, name="urgent", reads=["priority"]))
    wf.transition(classify, lookup, default=True)
    wf.transition(lookup, "answered")
    # The seeded bug routes only the tool's own timeouts, not its other failures.
    wf.on_error(lookup, ToolFailed if route_lookup_errors else ToolTimeout, backoff)
    if broad_route:
        wf.on_error(classify, Exception, "escalated")
    limit = (lambda c: c.attempts <= 2) if retry_bug else (lambda c: c.attempts < 2)
    wf.transition(backoff, lookup, guard=guard(limit, name="may retry", reads=["attempts"]))
    wf.transition(backoff, "escalated", default=True)
    return wf


TICKETS = contexts(Ticket, priority=st.just(0), attempts=st.just(0), answer=st.none())


def test_the_correct_agent_passes_with_default_settings() -> None:
    """No seeded bug: nothing fails (the loud checks do not cry wolf)."""
    check_workflow(triage(), contexts_from=TICKETS, print_coverage=False)


def test_an_unrouted_tool_error_fails_with_its_story() -> None:
    """A tool error no transition routes ends the run as run_sync would raise it: a failure."""
    with pytest.raises(AssertionError) as info:
        check_workflow(triage(route_lookup_errors=False), contexts_from=TICKETS, print_coverage=False)
    message = str(info.value)
    assert "state 'lookup' raised ToolFailed" in message
    assert "no error transition routes it" in message
    assert "story of a run of 'triage'" in message
    assert "-> raise" in message or "-> hang" in message or "-> invalid" in message
    check_workflow(triage(route_lookup_errors=False), contexts_from=TICKETS, print_coverage=False,
                   allow=frozenset({Allowed.UNROUTED_ERRORS}))


def test_a_guard_reading_a_missing_field_fails() -> None:
    """A guard's AttributeError (a typo) fails the run, unrouted or routed by a broad on_error."""
    for broad in (False, True):
        with pytest.raises(AssertionError, match=r"a guard raised \w+Error in state 'classify'") as info:
            check_workflow(triage(guard_bug=True, broad_route=broad), contexts_from=TICKETS,
                           print_coverage=False)
        assert "guard [urgent] raised" in str(info.value)
    check_workflow(triage(guard_bug=True, broad_route=True), contexts_from=TICKETS, print_coverage=False,
                   allow=frozenset({Allowed.GUARD_ERRORS}))


def test_an_off_by_one_retry_guard_spends_a_budget_and_fails() -> None:
    """The retry guard lets a third visit of backoff through: max_visits ends the run, found without
    any invariant of the user's."""
    with pytest.raises(AssertionError, match="a budget ran out: visits of 'backoff' reached 2") as info:
        check_workflow(triage(retry_bug=True), contexts_from=TICKETS, print_coverage=False)
    assert "budget max_visits" in str(info.value)
    check_workflow(triage(retry_bug=True), contexts_from=TICKETS, print_coverage=False,
                   allow=frozenset({Allowed.SPENT_BUDGETS}))


def test_allow_takes_only_allowed_members() -> None:
    """allow= is typed: a string or an unknown member is a clear TypeError naming the members."""
    with pytest.raises(TypeError, match="UNROUTED_ERRORS"):
        check_workflow(triage(), allow=frozenset({"unrouted_errors"}))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="allow= takes Allowed members"):
        check_workflow(triage(), allow="spent_budgets")  # type: ignore[arg-type]


def test_an_invariant_in_the_wrong_list_is_a_clear_type_error() -> None:
    """The @invariant / @path_invariant markers are read: each in the list it belongs to."""

    @path_invariant
    def ends_answered(result: Any) -> bool:
        return bool(result.terminal == "answered")

    @invariant
    def few_attempts(ctx: Ticket) -> bool:
        return ctx.attempts < 5

    with pytest.raises(TypeError, match=r"'ends_answered' is marked @path_invariant .* pass it in "
                                        r"path_invariants="):
        check_workflow(triage(), invariants=[ends_answered])
    with pytest.raises(TypeError, match=r"'few_attempts' is marked @invariant .* pass it in invariants="):
        check_workflow(triage(), path_invariants=[few_attempts])
