"""Adversarial review of deliveries, waits, wake-ups, replay and restarts (issue 16, groups 1, 2, 4).

Real SQLite files throughout; the kill test runs real processes (tests/adversarial_worker.py) and
SIGKILLs them at drawn wall-clock moments.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown
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
