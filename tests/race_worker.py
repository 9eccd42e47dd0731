"""An approval workflow for delivery races across real processes (tests/test_durable_races.py).

prepare -> approve (wait for "approval") -> charge (an at_most_once tool whose every effect is
appended, fsynced, to a log file) -> done; an EffectOutcomeUnknown goes to ``unknown``.

Run as a script: ``python race_worker.py DB LOG RUN_ID...`` delivers the approval to each run (in the
order given) and prints one line per run: its id and what deliver returned.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown
from statemachine_agent.stores import SQLiteStore, StoreError


class Approval(BaseModel):
    ok: bool


class Order(Context):
    amount: int = 1
    order: str = ""
    approval: Approval | None = None
    receipt: str = ""


def make(log: str, *, pause: float = 0.0, gate: tuple[str, str] | None = None) -> Any:
    wf = Workflow("race", Order)

    def charge(amount: int, run: str) -> str:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{run}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if pause:
            time.sleep(pause)  # widens the window between the intent and the outcome
        return f"receipt {amount} {run}"

    wf.tool(charge, effect="at_most_once")

    @wf.state(initial=True, reads=["amount"], writes=[])
    async def prepare(ctx: Order) -> None:
        if gate is not None:  # another process delivers while this step runs
            started, go = gate
            Path(started).touch()
            while not Path(go).exists():
                await asyncio.sleep(0.005)

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"])

    @wf.state(reads=["amount", "order", "approval"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Order, tools: Any) -> None:
        ctx.receipt = await tools.call("charge", amount=ctx.amount, run=ctx.order)

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    wf.terminal("rejected", outcome="failure")
    wf.transition("prepare", "approve")
    wf.transition("approve", "pay", guard=lambda c: c.approval is not None and c.approval.ok)
    wf.transition("approve", "rejected")
    wf.transition("pay", "done")
    wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


def live(db: str, log: str, run_id: str, started: str, go: str) -> int:
    """Run ``run_id`` in this process; its first step signals ``started`` (a file), then waits for
    the file ``go`` before it goes on to the wait."""
    compiled = make(log, gate=(started, go))
    with SQLiteStore(db) as store:
        result = compiled.run_sync(Order(order=run_id), store=store, run_id=run_id)
    print(result.terminal, result.outcome, flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--live":
        return live(*argv[1:])
    db, log, *runs = argv
    compiled = make(log, pause=0.002)
    with SQLiteStore(db) as store:
        for run_id in runs:
            try:
                result = compiled.deliver_sync(run_id, "approval", {"ok": True}, store=store)
            except StoreError as exc:  # the run ended before this delivery: it takes no more events
                if "has ended" not in str(exc):
                    raise
                print(run_id, "ended", flush=True)
                continue
            print(run_id, "none" if result is None else result.terminal, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
