"""Rare paths on purpose (issue 18, item 5): follow() injects the routed error to follow an error edge;
stateful rules take exactly their transition (error transitions and waits included); exceptions are
matched by class identity; the kit's tool copies keep effect= and reconcile=."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from test_kit_waits import ORDERS, Order, orders

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown, ToolFailed
from statemachine_agent.examples import research
from statemachine_agent.testing import (
    check_workflow,
    contexts,
    faults,
    follow,
    path_invariant,
    replay,
    shortest_paths,
    workflow_state_machine,
)
from statemachine_agent.tools import Tools


def test_follow_takes_every_shortest_path_of_the_example_error_edges_included() -> None:
    """Before: 6 of 21 cases (those through an error edge) were refused."""
    cases = shortest_paths(research.workflow)
    assert any("_on_" in c.goal for c in cases)
    for case in cases:
        result = follow(research.workflow, case, research.ResearchContext(question="How are loops bounded?"))
        assert tuple(result.states[: len(case.states)]) == case.states, case.goal
        assert tuple(s.transition for s in result.path[: len(case.transitions)]) == case.transitions


def test_follow_through_an_error_edge_reaches_the_bug_behind_it() -> None:
    """A bug only an error reaches: the injected error takes the edge, and the bug raises."""
    wf = Workflow("behind", Order)

    @wf.state(initial=True, reads=["amount"], writes=["receipt"])
    def charge(ctx: Order) -> None:
        ctx.receipt = "ok"

    @wf.state(reads=["amount"], writes=["note"])
    def apologise(ctx: Order) -> None:
        ctx.note = f"sorry for {ctx.amount / 0}"  # the bug

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(charge, "done")
    wf.on_error(charge, ConnectionError, apologise)
    wf.transition(apologise, "failed")
    [case] = [c for c in shortest_paths(wf) if c.goal == "transition apologise_to_failed"]
    with pytest.raises(AssertionError, match="left the path at step 1") as info:
        follow(wf, case, Order(amount=3))
    assert "charge raises ConnectionError (injected)" in str(info.value)
    assert "ZeroDivisionError" in str(info.value)


def _unavailable(module: str) -> type[Exception]:
    """An exception class named Unavailable, as two vendors' modules would each define one."""
    return type("Unavailable", (Exception,), {"__module__": module})


def test_exceptions_are_matched_by_class_never_by_name(tmp_path: Path) -> None:
    """Two Unavailable classes in two modules: each fault raises its own class and takes its own route.
    Before: a process-wide registry by name raised the first class registered, so the wrong route."""
    a, b = _unavailable("vendor_a"), _unavailable("vendor_b")

    class Job(Context):
        result: str | None = None

    wf = Workflow("two-vendors", Job)

    @wf.tool
    async def fetch() -> str:
        return "data"

    @wf.state(initial=True, writes=["result"], tools=["fetch"])
    async def call(ctx: Job, tools: Tools) -> None:
        ctx.result = await tools.call("fetch")

    wf.terminal("done")
    wf.terminal("a_down", outcome="failure")
    wf.terminal("b_down", outcome="failure")
    wf.transition(call, "done")
    wf.on_error(call, a, "a_down")
    wf.on_error(call, b, "b_down")
    ends: set[str] = set()

    @path_invariant
    def record(result: Any) -> bool:
        ends.add(result.terminal)
        return True

    for cls, down in ((a, "a_down"), (b, "b_down")):
        ends.clear()
        check_workflow(wf, tool_faults=faults(errors=(cls,), hang=False, invalid=False), path_invariants=[record],
                       max_examples=30, print_coverage=False)
        assert ends == {"done", down}

    @path_invariant
    def never_b(result: Any) -> bool:
        return result.terminal != "b_down"

    fixture = tmp_path / "b.json"
    with pytest.raises(AssertionError, match="never_b"):
        check_workflow(wf, tool_faults=faults(errors=(a, b), hang=False, invalid=False), path_invariants=[never_b],
                       save_failure=fixture, print_coverage=False)
    assert json.loads(fixture.read_text(encoding="utf-8"))["faults"][0]["error"] == "vendor_b.Unavailable"
    with pytest.raises(AssertionError, match="never_b"):  # the routed classes are known to replay
        replay(wf, fixture, path_invariants=[never_b])


def test_at_most_once_tools_keep_their_effect_so_unknown_outcomes_are_explored() -> None:
    """The kit's tool copies keep effect=: an at_most_once call's outcome may be left unknown, as after a
    crash, so the EffectOutcomeUnknown route the checker requires is taken. Before: never."""
    report = check_workflow(orders(), contexts_from=ORDERS, print_coverage=False, derandomize=True)
    assert report.coverage.transitions["pay_on_EffectOutcomeUnknown"] > 0
    assert report.compiled.spec.tools[0].effect == "at_most_once"


def test_reconcile_is_explored_for_unknown_outcomes() -> None:
    """With reconcile=, an unknown outcome is looked up instead; its answer is what the call returns."""
    looked_up: list[tuple[dict[str, Any], str]] = []

    class Payment(Context):
        amount: int = 1
        receipt: str | None = None

    wf = Workflow("reconciled", Payment)

    def find(arguments: dict[str, Any], key: str) -> str:
        looked_up.append((arguments, key))
        return "found 0"  # the bug: the ledger's lookup forgets the amount

    @wf.tool(effect="at_most_once", reconcile=find)
    async def charge(amount: int) -> str:
        return f"charged {amount}"

    @wf.state(initial=True, reads=["amount"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Payment, tools: Tools) -> None:
        ctx.receipt = await tools.call("charge", amount=ctx.amount)

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(pay, "done")
    wf.on_error(pay, ToolFailed, "failed")
    wf.on_error(pay, EffectOutcomeUnknown, "failed")

    @path_invariant
    def receipt_names_the_amount(result: Any) -> bool:
        receipt = result.context.receipt
        return receipt is None or receipt.endswith(str(result.context.amount))

    with pytest.raises(AssertionError, match="receipt_names_the_amount") as info:
        check_workflow(wf, contexts_from=contexts(Payment, receipt=st.none()),
                       path_invariants=[receipt_names_the_amount], print_coverage=False)
    assert "reconcile charge -> 'found 0'" in str(info.value)
    assert looked_up and looked_up[0][0] == {"amount": looked_up[0][0]["amount"]}


def test_stateful_rules_take_waits_timeouts_and_error_transitions() -> None:
    """On a workflow with a wait (and its timeout), an at_most_once tool and error routes, every rule is a
    transition and takes exactly it (a rule that does not is a failure of the machine itself)."""
    machine = workflow_state_machine(orders(), contexts_from=ORDERS)
    rules = {name for name in dir(machine) if name.startswith("take_")}
    spec = orders().spec()
    assert rules == {f"take_{t.name}" for t in spec.transitions} | {f"take_{e.name}" for e in spec.error_transitions}
    run_state_machine_as_test(machine, settings=settings(max_examples=40, stateful_step_count=6, deadline=None,
                                                         database=None, derandomize=True))

