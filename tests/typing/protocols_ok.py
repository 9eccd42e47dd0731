"""User code implementing each protocol of statemachine_agent.protocols, checked by ``mypy --strict``:
a store, a policy (sync and async), a clock and hooks (sync and async), each accepted where the
library takes it."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future
from typing import Any

from statemachine_agent import Context, Decision, Event, Option, RunResult, Workflow
from statemachine_agent.protocols import Clock, Hook, Policy, Store
from statemachine_agent.stores import InboxRecord, MemoryStore, RunRecord, StoredRun


class Ticket(Context):
    text: str
    urgent: bool = False


class CountingStore(Store):
    """A store of one's own: counts commits and keeps the runs in another store.

    The rows and the commit request are the store contract's own types (typed in the same issue that
    adds this module); ``Any`` keeps this class valid whichever form they take."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.commits = 0

    def create(self, run: Any, context: Any) -> Future[None]:
        return self.inner.create(run, context)

    def claim(self, run_id: str) -> Future[StoredRun]:
        return self.inner.claim(run_id)

    def claim_waiting(self, run_id: str) -> Future[StoredRun | None]:
        return self.inner.claim_waiting(run_id)

    def mark_started(self, run_id: str, epoch: int) -> Future[None]:
        return self.inner.mark_started(run_id, epoch)

    def commit(self, commit: Any) -> Future[list[InboxRecord]]:
        self.commits += 1
        return self.inner.commit(commit)

    def suspend(self, run: Any, epoch: int, snapshot: Any) -> Future[list[InboxRecord]]:
        return self.inner.suspend(run, epoch, snapshot)

    def record_call(self, run_id: str, epoch: int, call: Any) -> Future[None]:
        return self.inner.record_call(run_id, epoch, call)

    def load(self, run_id: str, *, at_step: int | None = None) -> Future[StoredRun]:
        return self.inner.load(run_id, at_step=at_step)

    def list_runs(self, workflow: str | None = None) -> Future[list[RunRecord]]:
        return self.inner.list_runs(workflow)

    def deliver(self, run_id: str, event: str, payload: Any) -> Future[int]:
        return self.inner.deliver(run_id, event, payload)

    def fork(self, source: str, at_step: int, run: Any, context: Any) -> Future[None]:
        return self.inner.fork(source, at_step, run, context)

    def close(self) -> None:
        self.inner.close()


def urgent_first(decision: Decision[Ticket]) -> Option | str:
    """A policy: the context is typed, the answer an option or a transition's name."""
    if decision.context.urgent:
        return "triage_to_page"
    return decision.options[-1]


async def ask_someone(decision: Decision[Ticket]) -> str:
    """An async policy."""
    await asyncio.sleep(0)
    return decision.options[0].name


class LoopClock:
    """A clock of one's own: the event loop's time."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout_at(self, when: float | None) -> asyncio.Timeout:
        return asyncio.timeout_at(when)


seen: list[str] = []


def log_event(event: Event) -> None:
    seen.append(type(event).__name__)


async def ship_event(event: Event) -> None:
    await asyncio.sleep(0)


store: Store = CountingStore(MemoryStore())
policy: Policy[Ticket] = urgent_first
async_policy: Policy[Ticket] = ask_someone
clock: Clock = LoopClock()
hooks: list[Hook] = [log_event, ship_event]

wf = Workflow("tickets", Ticket)
wf.add_state("triage", lambda ctx: None, initial=True, decision=True, reads=["urgent"])
wf.terminal("page")
wf.terminal("queue")
wf.terminal("failed", outcome="failure")
wf.transition("triage", "page", description="wake someone up")
wf.transition("triage", "queue", description="it can wait")
compiled = wf.compile()
result: RunResult[Ticket] = compiled.run_sync(Ticket(text="disk full", urgent=True), policy=urgent_first,
                                              clock=LoopClock(), hooks=[log_event, ship_event],
                                              store=CountingStore(MemoryStore()))
again: RunResult[Ticket] = compiled.run_sync(Ticket(text="typo"), policy=ask_someone, clock=clock, hooks=hooks,
                                             store=store)
