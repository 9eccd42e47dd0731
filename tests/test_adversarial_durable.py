"""Adversarial review of deliveries, waits, wake-ups, replay and restarts (issue 16, groups 1, 2, 4).

Real SQLite files throughout; the kill test runs real processes (tests/adversarial_worker.py) and
SIGKILLs them at drawn wall-clock moments.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from statemachine_agent import Context, FakeClock, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown, RunError
from statemachine_agent.events import RunStarted
from statemachine_agent.stores import RunStatus, SQLiteStore


class Approval(BaseModel):
    ok: bool


class Order(Context):
    approval: Approval | None = None
    receipt: str = ""


def approval_flow(effects: list[str]) -> Any:
    """approve (initial wait) -> pay (at_most_once charge) -> done | unknown."""
    wf = Workflow("adv", Order)

    def charge(run: str) -> str:
        effects.append(run)
        return f"receipt {run}"

    wf.tool(charge, effect="at_most_once")
    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], initial=True)

    @wf.state(reads=["approval"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Order, tools: Any) -> None:
        ctx.receipt = await tools.call("charge", run="r")

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    wf.transition("approve", "pay")
    wf.transition("pay", "done")
    wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


def test_a_resumed_run_at_its_wait_is_not_taken_by_a_waker_or_a_delivery(tmp_path: Path) -> None:
    """``resume`` claims a waiting run whose event is in its inbox (its deliverer died after
    committing the event). While the resumer is live (here: held in its RunStarted hook, before its
    first commit), a ``wake_due`` and a second delivery must not claim the run from under it (G5):
    the resumer finishes in ``done``, nobody gets ``RunFenced``, the charge happens once."""
    effects: list[str] = []
    compiled = approval_flow(effects)

    async def scenario() -> tuple[Any, Any, Any]:
        store = SQLiteStore(tmp_path / "runs.db")
        try:
            paused = await compiled.run(Order(), store=store, run_id="r")
            assert paused.waiting == "approval"
            await asyncio.wrap_future(store.deliver("r", "approval", {"ok": True}))  # its deliverer died here
            inside, go = asyncio.Event(), asyncio.Event()

            async def hold(event: Any) -> None:
                if isinstance(event, RunStarted):
                    inside.set()
                    await go.wait()

            resumer = asyncio.ensure_future(compiled.resume("r", store=store, hooks=[hold]))
            await inside.wait()
            woken = await compiled.wake_due(store)
            delivered = await compiled.deliver("r", "approval", {"ok": False}, store=store)
            go.set()
            return await resumer, woken, delivered
        finally:
            store.close()

    result, woken, delivered = asyncio.run(scenario())
    assert (result.terminal, woken, delivered) == ("done", [], None)
    assert effects == ["r"]
    with SQLiteStore(tmp_path / "runs.db") as store:
        stored = store.load("r").result()
    assert stored.run.status is RunStatus.DONE
    assert [e.consumed_step for e in stored.inbox] == [0, None]


# --- cancellation at every await ------------------------------------------------------------------
def busy_flow(effects: list[str], *, initial_wait: bool = False) -> Any:
    """work -> approve (wait, timeout 1 h) -> pay (at_most_once) -> done | unknown | expired; with
    ``initial_wait`` the run starts in ``approve``."""
    wf = Workflow("adv_cancel", Order)

    def charge(run: str) -> str:
        effects.append(run)
        return f"receipt {run}"

    wf.tool(charge, effect="at_most_once")

    async def work(ctx: Order) -> None:
        await asyncio.sleep(0)

    if not initial_wait:
        wf.state(work, initial=True, reads=[], writes=[])
        wf.transition("work", "approve")

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=3600,
            on_timeout="expired", initial=initial_wait)

    @wf.state(reads=["approval"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Order, tools: Any) -> None:
        ctx.receipt = await tools.call("charge", run="r")

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    wf.terminal("expired", outcome="failure")
    wf.transition("approve", "pay")
    wf.transition("pay", "done")
    wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


async def _cancel_after(coro: Any, yields: int) -> Any:
    """Run ``coro`` as a task and cancel it after ``yields`` turns of the loop (if still running):
    its result, or ``None`` when it was cancelled."""
    task = asyncio.ensure_future(coro)
    for _ in range(yields):
        if task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return None


async def _settle(compiled: Any, store: Any) -> Any:
    """What a supervisor does: resume the run if stored running, deliver the approval if it waits
    with nothing to take, wake it if it can go on; until it ends."""
    for _ in range(6):
        stored = await asyncio.wrap_future(store.load("r"))
        run = stored.run
        if run.status is RunStatus.DONE:
            return await compiled.resume("r", store=store)
        if run.status is RunStatus.RUNNING:
            await compiled.resume("r", store=store)
        elif not any(e.consumed_step is None for e in stored.inbox):
            await compiled.deliver("r", "approval", {"ok": True}, store=store)
        else:
            await compiled.wake_due(store)
    raise AssertionError(f"run r did not end: {run}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["run", "run-object", "deliver", "wake"]), yields=st.integers(0, 40),
       initial_wait=st.booleans())
def test_a_cancelled_run_delivery_or_wake_up_loses_and_doubles_nothing(tmp_path: Path, where: str,
                                                                        yields: int, initial_wait: bool) -> None:
    """``task.cancel()`` landing at any await of a run entering its wait, of a delivery, or of a
    wake-up; then the run is continued (the same Run object again, or from the store): it ends in
    ``done`` with one charge, or (only when the cancel left an intent without an outcome) in
    ``unknown``; never ``expired`` (its timeout is an hour away), the event consumed once."""
    effects: list[str] = []
    compiled = busy_flow(effects, initial_wait=initial_wait)
    path = tmp_path / f"{where}-{yields}-{initial_wait}.db"
    path.unlink(missing_ok=True)

    async def scenario() -> Any:
        store = SQLiteStore(path)
        try:
            if where in ("run", "run-object"):
                run = compiled.start(Order(), store=store, run_id="r")
                first = await _cancel_after(run.run_to_end(), yields)
                if first is None and where == "run-object":
                    try:  # the same object again: it waits, or says to continue from the store
                        first = await run.run_to_end()
                    except RunError as exc:
                        message = str(exc)
                        assert "compiled.resume(" in message, message
                if first is not None:
                    assert first.waiting == "approval", first
                if not [r for r in compiled.runs(store) if r.run_id == "r"]:  # cancelled before it was stored
                    await compiled.run(Order(), store=store, run_id="r")
            else:
                paused = await compiled.run(Order(), store=store, run_id="r")
                assert paused.waiting == "approval"
                if where == "deliver":
                    await _cancel_after(compiled.deliver("r", "approval", {"ok": True}, store=store), yields)
                else:
                    await asyncio.wrap_future(store.deliver("r", "approval", {"ok": True}))
                    await _cancel_after(compiled.wake_due(store), yields)
            result = await _settle(compiled, store)
            stored = await asyncio.wrap_future(store.load("r"))
            return result, stored
        finally:
            store.close()

    result, stored = asyncio.run(scenario())
    assert len(effects) <= 1
    intents = [c for c in stored.calls if c.tool == "charge"]
    if result.terminal == "unknown":
        assert effects == [] and [str(c.status) for c in intents] == ["intent"]
    else:
        assert (result.terminal, effects, result.context.receipt) == ("done", ["r"], "receipt r")
    assert sum(e.consumed_step is not None for e in stored.inbox) == 1
    assert [s.number for s in stored.steps] == list(range(len(stored.steps)))


class _CancellingClock(FakeClock):
    """A fake clock that cancels the task reading it, at its ``at``-th reading of wall time: the
    cancel lands on the next await, deterministically."""

    def __init__(self, at: int) -> None:
        super().__init__(1000.0)
        self.readings, self.at = 0, at

    def wall(self) -> float:
        self.readings += 1
        if self.readings == self.at:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
        return super().wall()


@pytest.mark.parametrize("initial_wait", [True, False])
def test_a_run_cancelled_while_it_is_stored_as_waiting_still_waits_when_run_again(tmp_path: Path,
                                                                                  initial_wait: bool) -> None:
    """The cancel lands on the await that stores the run as waiting. Running the same Run object
    again must pause it at the wait (its timeout is an hour away), not time the wait out at once;
    then a delivery finishes it."""
    effects: list[str] = []
    compiled = busy_flow(effects, initial_wait=initial_wait)

    async def scenario() -> tuple[Any, Any]:
        store = SQLiteStore(tmp_path / "runs.db")
        try:
            clock = _CancellingClock(at=2)  # 1: the deadline is set; 2: checked, then the suspend's await
            run = compiled.start(Order(), store=store, run_id="r", clock=clock)
            with pytest.raises(asyncio.CancelledError):
                await run.run_to_end()
            assert clock.readings >= 2
            try:
                again = await run.run_to_end()
            except RunError as exc:  # the cancel landed on a step's commit: the store says where it is
                message = str(exc)
                assert not initial_wait and "compiled.resume(" in message, message
                again = await compiled.resume("r", store=store, clock=clock)
            done = await compiled.deliver("r", "approval", {"ok": True}, store=store, clock=clock)
            return again, done
        finally:
            store.close()

    again, done = asyncio.run(scenario())
    assert (again.terminal, again.waiting) == ("approve", "approval")
    assert (done.terminal, effects) == ("done", ["r"])
