"""Waits and events (issue 18, item 3): a run reaching a wait state is not a failure; the kit delivers
generated payloads (valid ones, and invalid ones that must be refused and lose nothing), lets wait
timeouts pass on the fake clock, and delivers some events early."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from statemachine_agent import UNSET, Context, Workflow, guard
from statemachine_agent.errors import EffectOutcomeUnknown, ToolFailed
from statemachine_agent.testing import (
    Allowed,
    check_workflow,
    contexts,
    follow,
    invariant,
    path_invariant,
    replay,
    shortest_paths,
)
from statemachine_agent.tools import Tools


class Approval(BaseModel):
    ok: bool
    by: str = Field(min_length=1)


class Order(Context):
    amount: int = Field(ge=0, le=1000)
    approval: Approval = UNSET
    receipt: str = UNSET
    note: str | None = None


def orders(*, charge_rejected: bool = False, expired_bug: bool = False, initial_wait: bool = False) -> Workflow[Order]:
    """(prepare ->) approve (waits for "approval", 1 h timeout) -> pay (at_most_once) -> done | rejected | expired."""
    wf = Workflow("order", Order)

    @wf.tool(effect="at_most_once")
    async def charge(amount: int) -> str:
        return f"charged {amount}"

    if not initial_wait:
        @wf.state(initial=True, reads=["amount"], optional_writes=["note"])
        def prepare(ctx: Order) -> None:
            if ctx.amount > 500:
                ctx.note = "large"

        wf.transition(prepare, "approve")
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=3600,
            on_timeout="expired" if not expired_bug else "remind", initial=initial_wait)

    @wf.state(reads=["amount"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Order, tools: Tools) -> None:
        ctx.receipt = await tools.call("charge", amount=ctx.amount)

    if expired_bug:
        @wf.state(reads=["amount"], optional_reads=["note"], writes=["note"])
        def remind(ctx: Order) -> None:  # the bug: only large orders have a note
            ctx.note = {"large": "call the buyer"}[ctx.note or "small"]

        wf.transition(remind, "expired")
    wf.terminal("done")
    wf.terminal("rejected", outcome="failure")
    wf.terminal("expired", outcome="failure")
    wf.terminal("failed", outcome="failure")
    ok = (lambda c: c.approval.ok or c.amount < 10) if charge_rejected else (lambda c: c.approval.ok)
    wf.transition("approve", pay, guard=guard(ok, name="approved", reads=["approval", "amount"]))
    wf.transition("approve", "rejected", default=True)
    wf.transition(pay, "done")
    wf.on_error(pay, ToolFailed, "failed")
    wf.on_error(pay, EffectOutcomeUnknown, "failed")
    return wf


ORDERS = contexts(Order, note=st.none())


@path_invariant
def paid_only_if_approved(result: Any) -> bool:
    """No order is charged without an approval saying ok."""
    charged = any(s.state == "pay" and s.kind == "transition" for s in result.path)
    return not charged or result.context.approval.ok


def test_runs_through_a_wait_pass_and_every_kind_of_delivery_is_made() -> None:
    """Before: every run reaching the wait failed ("the run ended in 'approve', not a terminal")."""
    report = check_workflow(orders(), contexts_from=ORDERS, path_invariants=[paid_only_if_approved],
                            print_coverage=False)
    cov = report.coverage
    assert {"approve_to_pay", "approve_to_rejected", "approve_timeout"} <= set(cov.transitions)
    assert set(cov.deliveries) == {"valid", "invalid", "timeout", "early"}
    assert "at waits:" in str(report)


def test_an_initial_wait_state_is_driven_too() -> None:
    """A workflow that starts waiting is delivered its event (or times out) like any other."""
    report = check_workflow(orders(initial_wait=True), contexts_from=ORDERS, max_examples=40,
                            path_invariants=[paid_only_if_approved], print_coverage=False)
    assert {"approve_to_pay", "approve_timeout"} <= set(report.coverage.transitions)


def test_a_bug_behind_a_delivered_payload_is_found_and_replays(tmp_path: Path) -> None:
    """Small orders are charged even when refused: only a delivered {"ok": false} shows it."""
    fixture = tmp_path / "wait.json"
    with pytest.raises(AssertionError, match="paid_only_if_approved") as info:
        check_workflow(orders(charge_rejected=True), contexts_from=ORDERS, path_invariants=[paid_only_if_approved],
                       save_failure=fixture, print_coverage=False)
    story = str(info.value)
    assert "deliver approval" in story
    assert "'ok': False" in story
    saved = json.loads(fixture.read_text(encoding="utf-8"))
    assert saved["events"]
    with pytest.raises(AssertionError, match="paid_only_if_approved"):
        replay(orders(charge_rejected=True), fixture, path_invariants=[paid_only_if_approved])
    assert replay(orders(), fixture, path_invariants=[paid_only_if_approved]).terminal == "rejected"


def test_a_bug_on_the_timeout_path_is_found_on_the_fake_clock() -> None:
    """The on_timeout state reads the approval that never came: found by letting the hour pass."""
    with pytest.raises(AssertionError) as info:
        check_workflow(orders(expired_bug=True), contexts_from=ORDERS, print_coverage=False)
    story = str(info.value)
    assert "3600 s pass on the fake clock" in story
    assert "approve --approve_timeout--> remind" in story
    assert "state 'remind' raised KeyError" in story.splitlines()[0]


def test_invalid_payloads_are_refused_and_lose_nothing() -> None:
    """Each invalid payload the kit delivers is refused with pydantic's ValidationError; the run keeps
    waiting as it was, and the valid delivery after it goes through (the stories say so)."""
    seen: list[str] = []

    @invariant
    def approval_is_valid(ctx: Order) -> bool:
        approval = ctx.__dict__.get("approval")
        return approval is UNSET or approval is None or isinstance(approval, Approval)

    @path_invariant
    def record(result: Any) -> bool:
        seen.append(result.terminal)
        return True

    report = check_workflow(orders(), contexts_from=ORDERS, invariants=[approval_is_valid], path_invariants=[record],
                            max_examples=60, print_coverage=False)
    assert report.coverage.deliveries["invalid"] > 0
    assert "approve" not in seen  # every run ended in a terminal: a refused payload lost no run


def test_without_events_a_paused_run_fails_unless_allowed() -> None:
    """events=False: the kit delivers nothing, and a paused run is a failure unless Allowed.UNFINISHED."""
    with pytest.raises(AssertionError, match="the run ended paused in 'approve'"):
        check_workflow(orders(), contexts_from=ORDERS, events=False, print_coverage=False)
    check_workflow(orders(), contexts_from=ORDERS, events=False, allow=frozenset({Allowed.UNFINISHED}),
                   print_coverage=False, max_examples=20)


def test_follow_goes_through_waits_and_their_timeouts() -> None:
    """follow() delivers the payload given (or lets the timeout pass) along each shortest path."""
    wf = orders()
    for case in shortest_paths(wf):
        ok = "rejected" not in case.goal
        result = follow(wf, case, Order(amount=5), payloads={"approval": Approval(ok=ok, by="ann")})
        assert tuple(result.states[: len(case.states)]) == case.states, case.goal
