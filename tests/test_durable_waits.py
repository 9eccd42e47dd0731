"""Wait states, delivery, fork and replay on stored runs (see docs/durability.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from statemachine_agent import Context, FakeClock, Outcome, Workflow
from statemachine_agent.errors import RunError
from statemachine_agent.stores import MemoryStore, RunStatus


class Approval(BaseModel):
    ok: bool
    by: str = ""


class Order(Context):
    amount: int = 0
    prepared: int = 0
    approval: Approval | None = None
    shipped: bool = False
    notes: list[str] = Field(default_factory=list)


class Crash(BaseException):
    """Stands for the process dying (never routed by the runner)."""


def make(prepared: list[int] | None = None, charged: list[str] | None = None, *, timeout: float | None = 3600.0,
         threshold: int = 100, crash: list[bool] | None = None) -> Any:
    """prepare -> approve (wait) -> ship | rejected | expired."""
    prepared = prepared if prepared is not None else []
    charged = charged if charged is not None else []
    wf = Workflow("order", Order)

    async def charge(amount: int, idempotency_key: str) -> str:
        charged.append(idempotency_key)
        return f"receipt {amount}"

    wf.tool(charge, effect="idempotent")

    @wf.state(initial=True, reads=["amount"], writes=["prepared", "notes"])
    def prepare(ctx: Order) -> None:
        if crash:
            crash.pop()
            raise Crash
        prepared.append(ctx.amount)
        ctx.prepared = ctx.amount
        ctx.notes.append(f"prepared {ctx.amount}")

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"],
            timeout=timeout, on_timeout="expired" if timeout is not None else None)

    @wf.state(reads=["prepared"], optional_reads=["approval"], writes=["shipped", "notes"], tools=["charge"])
    async def ship(ctx: Order, tools: Any) -> None:
        ctx.notes.append(await tools.call("charge", amount=ctx.prepared))
        ctx.shipped = True

    wf.terminal("done")
    wf.terminal("rejected", outcome="failure")
    if timeout is not None:
        wf.terminal("expired", outcome="failure")
    wf.transition("prepare", "approve", guard=lambda c: c.amount >= threshold)
    wf.transition("prepare", "ship")
    wf.transition("approve", "ship", guard=lambda c: c.approval is not None and c.approval.ok)
    wf.transition("approve", "rejected")
    wf.transition("ship", "done")
    return wf.compile()


def test_a_run_pauses_at_a_wait_and_continues_when_the_event_is_delivered() -> None:
    """The run is committed as waiting; deliver() continues it; the code before the wait never re-runs."""
    prepared: list[int] = []
    compiled = make(prepared)
    with MemoryStore() as store:
        paused = compiled.run_sync(Order(amount=500), store=store, run_id="o-1")
        assert paused.outcome is Outcome.WAITING and paused.waiting == "approval"
        assert paused.terminal == "approve"
        stored = store.load("o-1").result()
        assert stored.run.status is RunStatus.WAITING and stored.run.wait is not None
        again = compiled.resume_sync("o-1", store=store)  # nothing delivered: still waiting, unclaimed
        assert again.waiting == "approval"
        assert store.load("o-1").result().run.epoch == 1
        result = compiled.deliver_sync("o-1", "approval", {"ok": True, "by": "ann"}, store=store)
    assert result is not None and result.terminal == "done"
    assert result.context.approval == Approval(ok=True, by="ann")
    assert prepared == [500]
    assert [s.state for s in result.path] == ["prepare", "approve", "ship"]


def test_an_event_delivered_early_waits_in_the_inbox_and_is_consumed_once() -> None:
    """An event delivered while the run is not yet waiting is taken when it gets there, once (G8)."""
    compiled = make(crash=[True])
    with MemoryStore() as store:
        with pytest.raises(Crash):
            compiled.run_sync(Order(amount=500), store=store, run_id="o-1")
        assert compiled.deliver_sync("o-1", "approval", Approval(ok=False), store=store) is None
        stored = store.load("o-1").result()
        assert stored.run.status is RunStatus.RUNNING
        assert [(e.seq, e.consumed_step) for e in stored.inbox] == [(1, None)]
        result = compiled.resume_sync("o-1", store=store)
        assert result.terminal == "rejected"
        stored = store.load("o-1").result()
        assert [(e.seq, e.consumed_step) for e in stored.inbox] == [(1, 1)]
        with pytest.raises(Exception, match="ended"):
            compiled.deliver_sync("o-1", "approval", Approval(ok=True), store=store)



def test_the_timeout_transition_is_taken_when_no_event_came_in_time() -> None:
    """Past the wait's deadline (on the run's clock), resume takes <state>_timeout to on_timeout."""
    clock = FakeClock(1000.0)
    compiled = make()
    with MemoryStore() as store:
        paused = compiled.run_sync(Order(amount=500), store=store, run_id="o-1", clock=clock)
        assert paused.waiting == "approval"
        assert store.load("o-1").result().run.wait.deadline == 4600.0  # type: ignore[union-attr]
        clock.advance(3599)
        assert compiled.resume_sync("o-1", store=store, clock=clock).waiting == "approval"
        clock.advance(1)
        result = compiled.resume_sync("o-1", store=store, clock=clock)
    assert result.terminal == "expired"
    assert result.path[-1].transition == "approve_timeout"


def test_a_bad_payload_or_unknown_event_stores_nothing() -> None:
    """deliver() validates before writing: a wrong payload or event raises and the inbox stays empty."""
    compiled = make()
    with MemoryStore() as store:
        compiled.run_sync(Order(amount=500), store=store, run_id="o-1")
        with pytest.raises(ValidationError):
            compiled.deliver_sync("o-1", "approval", {"ok": "maybe"}, store=store)
        with pytest.raises(ValueError, match="waits for no event 'aproval'"):
            compiled.deliver_sync("o-1", "aproval", {"ok": True}, store=store)
        assert store.load("o-1").result().inbox == []


def test_in_memory_runs_wait_and_take_deliveries_too() -> None:
    """Without a store, a paused run continues after run.deliver(...)."""
    compiled = make(timeout=None)

    async def main() -> None:
        run = compiled.start(Order(amount=500))
        paused = await run.run_to_end()
        assert paused.waiting == "approval"
        with pytest.raises(RunError, match="waiting"):
            await run.step()
        run.deliver("approval", {"ok": True})
        result = await run.run_to_end()
        assert result.terminal == "done"

    asyncio.run(main())


def test_fork_starts_a_new_run_from_a_committed_step_with_a_patch() -> None:
    """A fork re-runs from a step with a patched context; earlier journaled calls are not repeated."""
    charged: list[str] = []
    compiled = make(charged=charged)
    with MemoryStore() as store:
        first = compiled.run_sync(Order(amount=5), store=store, run_id="o-1")
        assert first.terminal == "done" and len(charged) == 1
        forked = compiled.fork_sync("o-1", at_step=1, patch={"prepared": 7}, store=store, new_run_id="o-2")
        assert forked.terminal == "done"
        assert forked.context.notes[-1] == "receipt 7"
        assert charged == ["o-1/1/0", "o-2/1/0"]
        stored = store.load("o-2").result()
        assert stored.run.parent == "o-1" and stored.run.parent_step == 1
        assert [s.number for s in stored.steps] == [0, 1]
        with pytest.raises(ValidationError):
            compiled.fork_sync("o-1", at_step=1, patch={"prepared": "many"}, store=store)
        with pytest.raises(ValueError, match="at_step"):
            compiled.fork_sync("o-1", at_step=9, store=store)


def test_fork_refuses_a_patch_of_fields_the_context_lacks() -> None:
    """A patch naming a field the model does not have is refused before anything is stored."""
    compiled = make()
    with MemoryStore() as store:
        compiled.run_sync(Order(amount=5), store=store, run_id="o-1")
        with pytest.raises(ValueError, match="adress"):
            compiled.fork_sync("o-1", at_step=1, patch={"adress": "x"}, store=store, new_run_id="o-2")
        assert [r.run_id for r in compiled.runs(store)] == ["o-1"]


def test_replay_follows_the_record_without_calling_anything() -> None:
    """Replay takes tool results and answers from the record: same code, no divergence, no calls."""
    charged: list[str] = []
    compiled = make(charged=charged)
    with MemoryStore() as store:
        compiled.run_sync(Order(amount=500), store=store, run_id="o-1")
        compiled.deliver_sync("o-1", "approval", {"ok": True}, store=store)
        assert len(charged) == 1
        report = compiled.replay_sync("o-1", store=store)
        assert report.ok, str(report)
        assert report.matched == report.recorded == 3 and report.calls_replayed == 1
        assert len(charged) == 1

        changed = make(threshold=1000)  # the new code no longer asks for approval of 500
        report = changed.replay_sync("o-1", store=store)
    assert not report.ok
    assert report.diverged_at == 0
    assert report.expected is not None and report.got is not None
    assert (report.expected["target"], report.got["target"]) == ("approve", "ship")


@pytest.mark.parametrize("early", [0.0, 1799.0, 3599.0])
def test_wake_unpauses_an_in_memory_run_only_once_its_wait_timed_out(early: float) -> None:
    """``run.wake()``: False while the wait's deadline is ahead (nothing changes), True once the fake
    clock passed it; the next step then takes the timeout route. A stored run is woken by
    ``compiled.wake_due``."""
    compiled = make()
    clock = FakeClock(1000.0)
    run = compiled.start(Order(amount=500), clock=clock)
    paused = asyncio.run(run.run_to_end())
    assert paused.outcome is Outcome.WAITING and paused.terminal == "approve"
    clock.advance(early)
    assert run.wake() is False and run.result is paused
    clock.advance(3600.0 - early)
    assert run.wake() is True
    result = asyncio.run(run.run_to_end())
    assert result.terminal == "expired" and result.path[-1].transition == "approve_timeout"
    assert run.wake() is False  # an ended run has nothing to wake
    with MemoryStore() as store:
        stored = compiled.start(Order(amount=500), clock=clock, store=store, run_id="s")
        asyncio.run(stored.run_to_end())
        with pytest.raises(RunError, match="wake_due"):
            stored.wake()
