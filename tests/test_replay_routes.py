"""Replay follows its record through failed steps (issue 16, group 4): the unknown-outcome route,
``reconcile`` (answering or raising), failing tools and model calls; a real divergence is a
NondeterminismError naming the step and the call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_durable import Crash, Order, make, resume_until_done

from statemachine_agent import Context, NondeterminismError, RunError, Workflow
from statemachine_agent.stores import MemoryStore, SQLiteStore


def _replays_clean(compiled: Any, store: Any, run_id: str) -> None:
    report = compiled.replay_sync(run_id, store=store)
    assert report.ok, str(report)
    assert report.error is None
    assert report.matched == report.recorded == store.load(run_id).result().run.next_step


@settings(max_examples=15, deadline=None)
@given(step=st.integers(0, 2), where=st.sampled_from(["inside", "after"]))
def test_the_unknown_outcome_route_replays_without_divergence(step: int, where: str) -> None:
    """An at_most_once call interrupted after its intent ends in the 'unknown' route on resume; a
    replay with unchanged code follows that route and matches every step."""
    effects: list[str] = []
    compiled = make(crash_at={(where, step)}, effects=effects, effect="at_most_once")
    with MemoryStore() as store:
        result = resume_until_done(compiled, store, "u", lambda: compiled.run_sync(Order(), store=store, run_id="u"))
        assert result.terminal == ("unknown" if where == "inside" else "done")
        _replays_clean(compiled, store, "u")


def reconcile_workflow(reconcile: Any, crashes: list[bool], *, route: bool) -> Any:
    """charge (at_most_once, crashing once after its effect) -> done; a LookupError (what the
    reconcile raises) goes to 'lookup' when ``route``."""
    wf = Workflow("reconciled", Order)

    def charge(amount: int) -> str:
        if crashes:
            crashes.pop()
            raise Crash
        return f"receipt-{amount}"

    wf.tool(charge, effect="at_most_once", reconcile=reconcile)

    @wf.state(initial=True, reads=["n"], writes=["receipts"], tools=["charge"])
    async def pay(ctx: Order, tools: Any) -> None:
        ctx.receipts.append(await tools.call("charge", amount=ctx.n))

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("pay", "done")
    if route:
        wf.terminal("lookup", outcome="failure")
        wf.on_error("pay", LookupError, "lookup")
    return wf.compile()


@pytest.mark.parametrize("outcome", ["answers", "raises", "raises-unrouted"])
def test_reconcile_replays_without_divergence(outcome: str, tmp_path: Path) -> None:
    """A crash inside an at_most_once call, then a resume whose reconcile answers, raises a routed
    error, or raises an error nothing routes: a replay follows each recorded path."""
    def reconcile(arguments: dict[str, Any], key: str) -> str:
        if outcome.startswith("raises"):
            raise LookupError(f"the payment service has no record of {key}")
        return f"receipt-{arguments['amount']}"

    compiled = reconcile_workflow(reconcile, [True], route=outcome == "raises")
    with SQLiteStore(tmp_path / "runs.db") as store:
        with pytest.raises(Crash):
            compiled.run_sync(Order(), store=store, run_id="r")
        if outcome == "raises-unrouted":
            with pytest.raises(LookupError):
                compiled.resume_sync("r", store=store)
            assert store.load("r").result().run.terminal == "failed"
        else:
            result = compiled.resume_sync("r", store=store)
            assert result.terminal == ("done" if outcome == "answers" else "lookup")
        _replays_clean(compiled, store, "r")


class Notes(Context):
    text: str = ""


def model_workflow(fail: bool) -> Any:
    wf = Workflow("asks", Notes)

    class Unavailable(Exception):
        pass

    @wf.state(initial=True, reads=[], writes=["text"])
    async def ask(ctx: Notes, tools: Any) -> None:
        async def compute() -> Any:
            if fail:
                raise Unavailable("the model server answered 503 three times")
            return {"text": "an answer"}

        reply = await tools.journaled("model:fake", compute)
        ctx.text = reply["text"]

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("down", outcome="failure")
    wf.transition("ask", "done")
    wf.on_error("ask", Unavailable, "down")
    return wf.compile()


@pytest.mark.parametrize("fail", [False, True])
def test_model_calls_replay_through_success_and_routed_failure(fail: bool) -> None:
    compiled = model_workflow(fail)
    with MemoryStore() as store:
        result = compiled.run_sync(Notes(), store=store, run_id="m")
        assert result.terminal == ("down" if fail else "done")
        _replays_clean(compiled, store, "m")


def test_a_real_divergence_is_a_nondeterminism_error_naming_step_and_call() -> None:
    compiled = model_workflow(False)
    with MemoryStore() as store:
        compiled.run_sync(Notes(), store=store, run_id="m")
        wf = Workflow("asks", Notes)

        @wf.state(initial=True, reads=[], writes=["text"])
        async def ask(ctx: Notes, tools: Any) -> None:
            await tools.journaled("model:fake", _never)
            reply = await tools.journaled("model:other", _never)  # a second call the record lacks
            ctx.text = reply["text"]

        wf.terminal("done")
        wf.terminal("failed", outcome="failure")
        wf.transition("ask", "done")
        changed = wf.compile()
        report = changed.replay_sync("m", store=store)
        assert not report.ok
        error = report.error
        assert isinstance(error, NondeterminismError) and isinstance(error, RunError)
        assert (error.run_id, error.step, error.call) == ("m", 0, 1)
        assert "step 0 call 1" in str(error)
        with pytest.raises(NondeterminismError) as raised:
            changed.replay_sync("m", store=store, raise_on_divergence=True)
        assert raised.value.step == 0


async def _never() -> Any:
    raise AssertionError("a replay must not call anything")


def test_incompatible_run_says_what_to_do_and_pickles_with_its_advice() -> None:
    import pickle

    from statemachine_agent.errors import IncompatibleRun, Problem

    plain = IncompatibleRun("r", [Problem("resume-bad-context", "x")])
    assert "pass migrate=" in str(plain)
    told = IncompatibleRun("r", [Problem("resume-bad-context", "x")], "deliver with the workflow that started it")
    assert "pass migrate=" not in str(told)
    assert "deliver with the workflow that started it:" in str(told)
    back = pickle.loads(pickle.dumps(told))
    assert (str(back), back.advice, back.problems) == (str(told), told.advice, told.problems)
