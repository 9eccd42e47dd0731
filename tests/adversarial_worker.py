"""Workers for tests/test_adversarial_durable.py's kill test: deliver and wake concurrently.

Two workflows share one SQLite file, both ``prepare -> approve (wait) -> pay -> done``, where
``pay`` calls ``charge``, an at_most_once tool, and ``EffectOutcomeUnknown`` goes to ``unknown``:

* ``chaos_ev``: the wait has no timeout; the workers deliver its ``approval``;
* ``chaos_to``: the wait times out after ``TIMEOUT`` seconds of the run's clock into ``pay``; the
  test starts these runs on a fake clock at 0, so on wall time every deadline has passed and only
  ``wake_due`` moves them on.

``python adversarial_worker.py DB EFFECTS SEED RUN_ID...``: prints ``ready`` once imported and the
store is open, waits for a line on stdin, then in an order drawn from SEED delivers the approval
to each ``chaos_ev`` run given, calling both workflows' ``wake_due`` between deliveries. The charge
appends ``start <run> <pid>`` to EFFECTS before its effect and ``effect <run> <pid>`` after it (each
fsync'd), so the test knows which process was inside which call when it was killed.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from typing import Any

from pydantic import BaseModel

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown
from statemachine_agent.stores import SQLiteStore, StoreError

TIMEOUT = 10.0


class Approval(BaseModel):
    ok: bool


class Job(Context):
    name: str = ""
    approval: Approval | None = None
    receipt: str = ""


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def make(effects: str, *, timeout: bool) -> Any:
    wf = Workflow("chaos_to" if timeout else "chaos_ev", Job)

    def charge(name: str) -> str:
        _append(effects, f"start {name} {os.getpid()}")
        time.sleep(0.001)  # widens the window between the intent and the outcome
        _append(effects, f"effect {name} {os.getpid()}")
        return f"receipt {name}"

    wf.tool(charge, effect="at_most_once")

    @wf.state(initial=True, reads=["name"], writes=[])
    def prepare(ctx: Job) -> None:
        pass

    if timeout:
        wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=TIMEOUT,
                on_timeout="pay")
    else:
        wf.wait("approve", event="approval", payload=Approval, writes=["approval"])

    @wf.state(reads=["name"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Job, tools: Any) -> None:
        ctx.receipt = await tools.call("charge", name=ctx.name)

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    wf.transition("prepare", "approve")
    wf.transition("approve", "pay")
    wf.transition("pay", "done")
    wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


def crasher(attempts: str, *, kill: bool = True) -> Any:
    """ok -> approve (wait) -> boom -> done, where ``boom`` appends a line to ``attempts`` and then
    SIGKILLs its own process: a step that really crashes every time (``kill=False``, for the test's
    own process: it raises instead, routed to nothing)."""
    wf = Workflow("crasher", Job)

    @wf.state(initial=True, reads=[], writes=[])
    def ok(ctx: Job) -> None:
        pass

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"])

    @wf.state(reads=[], writes=[])
    def boom(ctx: Job) -> None:
        _append(attempts, f"attempt {os.getpid()}")
        if not kill:
            raise RuntimeError("boom ran in the test's own process")
        os.kill(os.getpid(), signal.SIGKILL)

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("ok", "approve")
    wf.transition("approve", "boom")
    wf.transition("boom", "done")
    return wf.compile()


def crash(db: str, attempts: str, how: str) -> int:
    """``--crash DB ATTEMPTS deliver|resume``: continue run ``c`` of :func:`crasher` one way."""
    flow = crasher(attempts)
    with SQLiteStore(db) as store:
        if how == "deliver":
            result = flow.deliver_sync("c", "approval", {"ok": True}, store=store)
        else:
            result = flow.resume_sync("c", store=store)
    print(result, flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "--crash":
        return crash(*argv[1:])
    db, effects, seed, *runs = argv
    ev, to = make(effects, timeout=False), make(effects, timeout=True)
    rng = random.Random(int(seed))
    rng.shuffle(runs)
    with SQLiteStore(db) as store:
        print("ready", flush=True)
        sys.stdin.readline()
        for i, run_id in enumerate(runs):
            try:
                ev.deliver_sync(run_id, "approval", {"ok": True}, store=store)
            except StoreError as exc:  # the run ended before this delivery: it takes no more events
                if "has ended" not in str(exc):
                    raise
            if i % 4 == rng.randrange(4):
                (ev if rng.random() < 0.3 else to).wake_due_sync(store)
        to.wake_due_sync(store)
    print("finished", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
