"""Async everywhere (issue 18, item 2): async policies, hooks, tools and invariants, and an async LLM
policy tested against the scripted model server with generated replies, garbage included."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from statemachine_agent import Context, Decision, Workflow
from statemachine_agent.events import Event, TransitionTaken
from statemachine_agent.llm import LLMPolicy
from statemachine_agent.testing import (
    ScriptedModel,
    check_workflow,
    contexts,
    invariant,
    path_invariant,
    replay,
)
from statemachine_agent.tools import Tools


class Claim(Context):
    """A refund claim: looked up, then decided."""

    order: str
    amount: int = 0
    refunded: int = 0


def refunds(*, overpay: bool = False) -> Workflow[Claim]:
    """lookup (async tool) -> decide (a decision) -> refund | reject."""
    wf = Workflow("refunds", Claim)

    @wf.tool
    async def price_of(order: str) -> int:
        await asyncio.sleep(0)
        return len(order) * 10

    @wf.tool
    def ledger(amount: int) -> int:  # a sync tool, run in a thread as in a real run
        return amount

    @wf.state(initial=True, reads=["order"], writes=["amount"], tools=["price_of"])
    async def lookup(ctx: Claim, tools: Tools) -> None:
        ctx.amount = await tools.call("price_of", order=ctx.order)

    wf.add_state("decide", lambda c: None, decision=True, reads=["amount"])

    @wf.state(reads=["amount"], writes=["refunded"], tools=["ledger"])
    async def refund(ctx: Claim, tools: Tools) -> None:
        paid = await tools.call("ledger", amount=ctx.amount)
        ctx.refunded = paid * 2 if overpay and ctx.amount > 30 else paid

    wf.terminal("refunded")
    wf.terminal("rejected")
    wf.terminal("failed", outcome="failure")
    wf.transition(lookup, "decide")
    wf.transition("decide", refund, description="give the money back")
    wf.transition("decide", "rejected", description="refuse the claim")
    wf.transition(refund, "refunded")
    wf.on_error(lookup, Exception, "failed")
    wf.on_error(refund, Exception, "failed")
    return wf


CLAIMS = contexts(Claim, amount=st.just(0), refunded=st.just(0))
ONE_CLAIM = contexts(Claim, order=st.just("A-17"), amount=st.just(0), refunded=st.just(0))
"""For the model's tests: the replies are what varies (each costs a real HTTP request)."""


async def fair(decision: Decision[Any]) -> str:
    """A correct async policy (as every LLM policy is async)."""
    await asyncio.sleep(0)
    return decision.options[0].name


def test_a_correct_async_policy_passes() -> None:
    """Before: every example failed with "the policy answered <coroutine object ...>"."""
    report = check_workflow(refunds(), policy=fair, contexts_from=CLAIMS, print_coverage=False)
    assert report.coverage.transitions["decide_to_refund"] > 0


def test_an_async_policy_answering_off_script_is_found() -> None:
    """An async policy that sometimes names no enabled transition fails, with the shortest story."""

    async def off_script(decision: Decision[Any]) -> str:
        await asyncio.sleep(0)
        return "cancel" if len(decision.context.order) > 3 else decision.options[0].name

    with pytest.raises(AssertionError, match="the policy answered 'cancel' in state 'decide'") as info:
        check_workflow(refunds(), policy=off_script, contexts_from=CLAIMS, print_coverage=False)
    assert "'order': '0000'" in str(info.value)


def test_async_invariants_are_awaited() -> None:
    """An async invariant's False is a failure (before: its coroutine object was truthy, and passed)."""

    @invariant
    async def never_overpaid(ctx: Claim) -> bool:
        await asyncio.sleep(0)
        return ctx.refunded <= ctx.amount

    @path_invariant
    async def refunds_end_refunded(result: Any) -> bool:
        return result.context.refunded == 0 or result.terminal == "refunded"

    check_workflow(refunds(), contexts_from=CLAIMS, invariants=[never_overpaid],
                   path_invariants=[refunds_end_refunded], print_coverage=False)
    with pytest.raises(AssertionError, match="invariant 'never_overpaid' failed after step 2"):
        check_workflow(refunds(overpay=True), contexts_from=CLAIMS, invariants=[never_overpaid],
                       print_coverage=False)


def test_async_hooks_see_every_run() -> None:
    """hooks= are given to every run, async ones awaited."""
    seen: list[str] = []

    async def hook(event: Event) -> None:
        await asyncio.sleep(0)
        if isinstance(event, TransitionTaken):
            seen.append(event.transition)

    report = check_workflow(refunds(), contexts_from=CLAIMS, hooks=[hook], max_examples=20, print_coverage=False,
                            explore_for=0)
    assert report.coverage.runs == 20
    assert seen.count("lookup_to_decide") == report.coverage.transitions["lookup_to_decide"] > 0


@path_invariant
def decided(result: Any) -> bool:
    """A decision never ends the run in failure (broken when the model talks garbage 3 times)."""
    return result.terminal != "failed" or "policy" not in (result.reason or "")


def test_an_llm_policy_against_generated_model_replies(tmp_path: Path) -> None:
    """The kit generates the scripted server's replies (valid decisions, wrong names, invalid JSON,
    prose): the runner rejects the garbage, and a promise only garbage breaks is found, shrunk to
    the story of the replies, and replays through the same replies."""
    fixture = tmp_path / "llm.json"
    with ScriptedModel() as model:
        policy = LLMPolicy(base_url=model.url, model="fake", retries=1)
        report = check_workflow(refunds(), policy=policy, model=model, contexts_from=ONE_CLAIM, max_examples=15,
                                print_coverage=False)
        assert {"decide_to_refund", "decide_to_rejected"} <= set(report.coverage.transitions)
        with pytest.raises(AssertionError, match="path invariant 'decided' failed") as info:
            check_workflow(refunds(), policy=policy, model=model, contexts_from=ONE_CLAIM, path_invariants=[decided],
                           save_failure=fixture, print_coverage=False, derandomize=True, max_examples=25)
        story = str(info.value)
        assert story.count("model replied") == 3  # max_policy_attempts replies, none of them valid
        assert "model replied valid" not in story
        assert "gave no valid choice" in story
        with pytest.raises(AssertionError, match="path invariant 'decided' failed") as again:
            replay(refunds(), fixture, policy=policy, model=model, path_invariants=[decided])
        assert "model replied" in str(again.value)
        assert len(model.server.requests) > 30  # real HTTP requests, one per policy call


def test_an_llm_policy_that_misreads_a_valid_reply_is_found() -> None:
    """A wrapper around the LLM policy that garbles a valid answer is the user's bug: a failure."""
    with ScriptedModel() as model:
        inner = LLMPolicy(base_url=model.url, model="fake", retries=1)

        async def garbled(decision: Decision[Any]) -> Any:
            answer = await inner(decision)
            return answer.upper() if isinstance(answer, str) and answer.endswith("rejected") else answer

        with pytest.raises(AssertionError, match="the policy answered 'DECIDE_TO_REJECTED'"):
            check_workflow(refunds(), policy=garbled, model=model, contexts_from=ONE_CLAIM, print_coverage=False,
                           derandomize=True, max_examples=15)
