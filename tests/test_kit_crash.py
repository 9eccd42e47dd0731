"""The testing kit's crash schedules (issue 18, item 4): a durable run abandoned between store writes
and resumed from its store, checked against docs/durability.md's guarantees."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from pydantic import BaseModel

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown
from statemachine_agent.testing import check_crashes, replay_crashes


class Approval(BaseModel):
    ok: bool


class Pay(Context):
    seen: int = 0
    receipt: str | None = None
    note: str = ""
    approval: Approval | None = None


def pay_flow(*, nondeterministic: bool = False, wait: bool = False, pay_again: bool = False) -> Any:
    """work -> [approve (wait)] -> pay (an at_most_once charge) -> done | unknown. ``nondeterministic``:
    work writes a value taken from a process-wide counter (a bug a crash and resume shows)."""
    wf = Workflow("kit_crash_pay", Pay)
    counter = itertools.count()
    charges: list[str] = []

    def charge(amount: int) -> str:
        charges.append(str(amount))
        return f"receipt {amount}"

    wf.tool(effect="at_most_once")(charge)

    @wf.state(initial=True, optional_reads=["seen"], writes=["seen", "note"])
    def work(ctx: Pay) -> None:
        ctx.seen += 1
        ctx.note = f"ticket {next(counter)}" if nondeterministic else "ticket"

    if wait:
        wf.wait("approve", event="approval", payload=Approval, writes=["approval"])

    @wf.state(reads=["seen"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Pay, tools: Any) -> None:
        ctx.receipt = await tools.call("charge", amount=ctx.seen)

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    if wait:
        wf.transition("work", "approve")
        wf.transition("approve", "pay")
    else:
        wf.transition("work", "pay")
    wf.transition("pay", "done")
    if pay_again:  # the bug: an unknown outcome is "handled" by charging again
        @wf.state(reads=["seen"], writes=["receipt"], tools=["charge"])
        async def pay_again_(ctx: Pay, tools: Any) -> None:
            ctx.receipt = await tools.call("charge", amount=ctx.seen)

        wf.on_error("pay", EffectOutcomeUnknown, "pay_again_")
        wf.transition("pay_again_", "done")
        wf.on_error("pay_again_", EffectOutcomeUnknown, "unknown")
    else:
        wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


@pytest.mark.parametrize("wait", [False, True], ids=["plain", "with-wait"])
def test_a_correct_durable_workflow_passes_every_crash_schedule(wait: bool) -> None:
    check_crashes(pay_flow(wait=wait), max_examples=40)


def test_a_step_that_is_not_deterministic_is_found_with_its_crash_story(tmp_path: Path) -> None:
    fixture = tmp_path / "story.json"
    with pytest.raises(AssertionError) as err:
        check_crashes(pay_flow(nondeterministic=True), contexts_from=st.builds(Pay), max_examples=60,
                      save_failure=fixture)
    text = str(err.value)
    assert "the run is not deterministic" in text and "uninterrupted: work -> pay -> done" in text
    assert "run again without a crash" in text  # no crash is needed to show it, and the story says so
    with pytest.raises(AssertionError, match="not deterministic"):
        replay_crashes(pay_flow(nondeterministic=True), fixture)
    replay_crashes(pay_flow(), fixture)  # the same story passes once the step is deterministic


def test_an_invariant_is_checked_on_what_the_store_held_when_the_worker_died() -> None:
    def receipt_only_after_work(ctx: Pay) -> bool:
        return ctx.receipt is not None or ctx.seen == 0  # wrong on purpose: false between work and pay

    with pytest.raises(AssertionError, match="receipt_only_after_work") as err:
        check_crashes(pay_flow(), contexts_from=st.builds(Pay), invariants=[receipt_only_after_work],
                      max_examples=40)
    assert "CRASH " in str(err.value), str(err.value)


def test_charging_again_when_an_outcome_is_unknown_is_found() -> None:
    with pytest.raises(AssertionError, match="makes the call again") as err:
        check_crashes(pay_flow(pay_again=True), contexts_from=st.builds(Pay), max_examples=100)
    assert "CRASH " in str(err.value) and "of charge 1/0" in str(err.value)


def test_bad_options_are_refused_saying_what_to_give() -> None:
    with pytest.raises(ValueError, match="max_crashes"):
        check_crashes(pay_flow(), max_crashes=-1)
    with pytest.raises(ValueError, match="not a crash story"):
        replay_crashes(pay_flow(), {"context": {}})


def test_async_invariants_are_awaited_and_a_path_invariant_is_refused_here() -> None:
    from statemachine_agent.testing import path_invariant

    async def never(ctx: Pay) -> bool:
        return False

    with pytest.raises(AssertionError, match="invariant 'never' failed"):
        check_crashes(pay_flow(), contexts_from=st.builds(Pay), invariants=[never], max_crashes=0, max_examples=5)

    @path_invariant
    def ends_done(result: Any) -> bool:
        return bool(result.terminal == "done")

    with pytest.raises(TypeError, match="path_invariants"):
        check_crashes(pay_flow(), invariants=[ends_done])
