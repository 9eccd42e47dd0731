"""Durable runs in one process: commits, resume, the journal's effects, fencing, changed workflows.

A crash is simulated by an exception that is not an ``Exception`` (like KeyboardInterrupt): the
runner never routes it, undoes the step in memory and lets it through, so what the store holds is
exactly what a killed process would have left. tests/test_crash_matrix.py does it with real kill -9.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from statemachine_agent import Budget, Context, Workflow
from statemachine_agent.errors import EffectOutcomeUnknown, IncompatibleRun, RunExists, RunFenced, StoreCorrupted
from statemachine_agent.stores import MemoryStore, RunStatus, SQLiteStore


class Crash(BaseException):
    """Stands for the process dying: never routed, never caught by the runner."""


class Order(Context):
    n: int = 0
    receipts: list[str] = Field(default_factory=list)
    history: list[str] = Field(default_factory=list)
    note: str = ""


def make(*, crash_at: set[tuple[str, int]] | None = None, effects: list[str] | None = None,
         effect: str = "idempotent", reconcile: Any = None, route_unknown: bool = True) -> Any:
    """A three-step workflow whose state ``pay`` calls a tool, then maybe crashes.

    ``crash_at`` holds (where, step) pairs: ``("before", n)`` crashes before the call in step n,
    ``("inside", n)`` inside the tool after its effect, ``("after", n)`` after the call returned.
    """
    crash_at = crash_at if crash_at is not None else set()
    effects = effects if effects is not None else []
    wf = Workflow("order", Order)

    if effect == "idempotent":
        async def charge(amount: int, idempotency_key: str) -> str:
            effects.append(f"charge {amount} {idempotency_key}")
            if ("inside", amount) in crash_at:
                crash_at.discard(("inside", amount))
                raise Crash
            return f"receipt-{amount}"
    else:
        async def charge(amount: int) -> str:  # type: ignore[misc]
            effects.append(f"charge {amount}")
            if ("inside", amount) in crash_at:
                crash_at.discard(("inside", amount))
                raise Crash
            return f"receipt-{amount}"

    wf.tool(charge, effect=effect, reconcile=reconcile)

    @wf.state(initial=True, reads=["n", "receipts"], writes=["n", "receipts"], tools=["charge"])
    async def pay(ctx: Order, tools: Any) -> None:
        step = ctx.n
        if ("before", step) in crash_at:
            crash_at.discard(("before", step))
            raise Crash
        receipt = await tools.call("charge", amount=step)
        if ("after", step) in crash_at:
            crash_at.discard(("after", step))
            raise Crash
        ctx.receipts.append(receipt)
        ctx.n += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    if route_unknown:
        wf.terminal("unknown", outcome="failure")
    wf.transition("pay", "pay", guard=lambda c: c.n < 3, max_traversals=2)
    wf.transition("pay", "done")
    if route_unknown:
        wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


def resume_until_done(compiled: Any, store: Any, run_id: str, first: Any) -> Any:
    """Start (``first``) and resume after every simulated crash, like a supervisor would."""
    try:
        return first()
    except Crash:
        pass
    for _ in range(20):
        try:
            return compiled.resume_sync(run_id, store=store)
        except Crash:
            continue
    raise AssertionError("did not finish in 20 resumes")


def test_a_run_with_a_store_commits_every_step_and_resume_of_a_done_run_returns_it(tmp_path: Path) -> None:
    """Every step is in the store with its delta; resuming an ended run gives its result back."""
    compiled = make()
    with SQLiteStore(tmp_path / "runs.db") as store:
        result = compiled.run_sync(Order(), store=store, run_id="o-1")
        stored = store.load("o-1").result()
        again = compiled.resume_sync("o-1", store=store)
    assert result.terminal == "done"
    assert stored.run.status is RunStatus.DONE and stored.run.next_step == 3
    assert [s.number for s in stored.steps] == [0, 1, 2]
    assert [s.delta["n"] for s in stored.steps] == [1, 2, 3]
    assert again.context == result.context
    assert [s.transition for s in again.path] == [s.transition for s in result.path]


def test_a_second_run_with_the_same_id_is_refused() -> None:
    """A run id names one run: starting another under it raises RunExists and changes nothing."""
    compiled = make()
    with MemoryStore() as store:
        compiled.run_sync(Order(), store=store, run_id="o-1")
        with pytest.raises(RunExists, match="resume"):
            compiled.run_sync(Order(n=2), store=store, run_id="o-1")
        assert store.load("o-1").result().run.next_step == 3


@pytest.mark.parametrize("where", ["before", "inside", "after"])
@pytest.mark.parametrize("at", [0, 1, 2])
def test_an_idempotent_call_is_journaled_once_and_rerun_only_with_its_key(where: str, at: int) -> None:
    """After a crash the run ends as a crash-free run does; a completed call is never made again,
    and one interrupted inside the tool is made again with the same key (G3, G4)."""
    effects: list[str] = []
    compiled = make(crash_at={(where, at)}, effects=effects)
    with MemoryStore() as store:
        result = resume_until_done(compiled, store, "o-1", lambda: compiled.run_sync(Order(), store=store,
                                                                                     run_id="o-1"))
    clean = make().run_sync(Order())
    assert result.terminal == "done" and result.context == clean.context
    keys = [e.split()[-1] for e in effects]
    assert sorted(set(keys)) == ["o-1/0/0", "o-1/1/0", "o-1/2/0"]
    repeated = [k for k in keys if keys.count(k) > 1]
    assert repeated == ([f"o-1/{at}/0"] * 2 if where == "inside" else [])


def test_an_interrupted_at_most_once_call_is_never_run_again() -> None:
    """A crash inside an at_most_once tool: on resume it raises EffectOutcomeUnknown, routed (G4)."""
    effects: list[str] = []
    compiled = make(crash_at={("inside", 1)}, effects=effects, effect="at_most_once")
    with MemoryStore() as store:
        result = resume_until_done(compiled, store, "o-1", lambda: compiled.run_sync(Order(), store=store,
                                                                                     run_id="o-1"))
    assert effects == ["charge 0", "charge 1"]
    assert result.terminal == "unknown"
    assert isinstance(result.path[-1].error, EffectOutcomeUnknown)


def test_an_at_most_once_call_completed_before_the_crash_is_not_run_again() -> None:
    """A crash after the call returned: its journaled outcome is used (G3)."""
    effects: list[str] = []
    compiled = make(crash_at={("after", 1)}, effects=effects, effect="at_most_once")
    with MemoryStore() as store:
        result = resume_until_done(compiled, store, "o-1", lambda: compiled.run_sync(Order(), store=store,
                                                                                     run_id="o-1"))
    assert effects == ["charge 0", "charge 1", "charge 2"]
    assert result.terminal == "done" and result.context.receipts == ["receipt-0", "receipt-1", "receipt-2"]


def test_reconcile_looks_up_an_interrupted_call() -> None:
    """With reconcile=, the unknown outcome is looked up by the call's key instead of raising."""
    asked: list[tuple[dict[str, Any], str]] = []

    def reconcile(arguments: dict[str, Any], key: str) -> str:
        asked.append((arguments, key))
        return f"receipt-{arguments['amount']}"

    effects: list[str] = []
    compiled = make(crash_at={("inside", 2)}, effects=effects, effect="at_most_once", reconcile=reconcile,
                    route_unknown=False)
    with MemoryStore() as store:
        result = resume_until_done(compiled, store, "o-1", lambda: compiled.run_sync(Order(), store=store,
                                                                                     run_id="o-1"))
    assert asked == [({"amount": 2}, "o-1/2/0")]
    assert effects == ["charge 0", "charge 1", "charge 2"]
    assert result.terminal == "done" and result.context.receipts[-1] == "receipt-2"


def test_a_step_resumed_too_often_fails_the_run_with_a_reason() -> None:
    """A step that crashes every time ends in the failure terminal after max_step_restarts (G6)."""
    compiled = make(crash_at={("before", 0)})
    with MemoryStore() as store:
        with pytest.raises(Crash):
            compiled.run_sync(Order(), store=store, run_id="o-1")
        for _ in range(3):
            with pytest.raises(Crash):
                make(crash_at={("before", 0)}).resume_sync("o-1", store=store)
        result = compiled.resume_sync("o-1", store=store)
    assert result.terminal == "failed"
    assert "max_step_restarts=3" in (result.reason or "")
    assert result.path[-1].ran is False


def test_an_older_worker_cannot_commit_after_another_claimed_the_run() -> None:
    """Two holders of one run: once the second claims it, the first's next commit is refused (G5)."""
    compiled = make()

    async def main() -> None:
        with MemoryStore() as store:
            first = compiled.start(Order(), store=store, run_id="o-1")
            await first.step()
            second = await compiled.reopen("o-1", store=store)
            with pytest.raises(RunFenced):
                await first.step()
            result = await second.run_to_end()
            assert result.terminal == "done"
            stored = store.load("o-1").result()
            assert [s.number for s in stored.steps] == [0, 1, 2]

    asyncio.run(main())


def test_resume_under_a_changed_workflow_is_refused_then_migrated() -> None:
    """A run stored in a state the new workflow lacks is refused, listing why; migrate= fixes it (G7)."""
    compiled = make(crash_at={("before", 1)})
    with MemoryStore() as store:
        with pytest.raises(Crash):
            compiled.run_sync(Order(), store=store, run_id="o-1")

        wf = Workflow("order", Order)

        @wf.state(initial=True, reads=["n"], writes=["n"])
        def charge_card(ctx: Order) -> None:
            ctx.n += 1

        wf.terminal("done")
        wf.terminal("failed", outcome="failure")
        wf.transition("charge_card", "charge_card", guard=lambda c: c.n < 3, max_traversals=2)
        wf.transition("charge_card", "done")
        renamed = wf.compile()
        with pytest.raises(IncompatibleRun) as refused:
            renamed.resume_sync("o-1", store=store)
        codes = {p.code for p in refused.value.problems}
        assert codes == {"resume-unknown-state", "resume-counters"}
        assert "'pay'" in str(refused.value)
        assert store.load("o-1").result().run.epoch == 1  # a refused resume claims nothing

        def migrate(point: Any) -> Any:
            return point.model_copy(update={
                "state": "charge_card", "visits": {"charge_card": point.visits.get("pay", 0)},
                "traversals": {k.replace("pay", "charge_card"): v for k, v in point.traversals.items()}})

        result = renamed.resume_sync("o-1", store=store, migrate=migrate)
    assert result.terminal == "done" and result.context.n == 3


def test_a_damaged_record_is_a_typed_error_never_a_shorter_run(tmp_path: Path) -> None:
    """A record changed behind the store's back fails its checksum: StoreCorrupted, nothing loaded."""
    path = tmp_path / "runs.db"
    compiled = make()
    with SQLiteStore(path) as store:
        compiled.run_sync(Order(), store=store, run_id="o-1")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE sma_steps SET record = replace(record, '\"n\":2', '\"n\":7') WHERE number = 1")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store, pytest.raises(StoreCorrupted, match=r"step 1.*checksum"):
        store.load("o-1").result()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM sma_steps WHERE number = 1")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as store, pytest.raises(StoreCorrupted, match=r"holds steps 0, 2"):
        compiled.resume_sync("o-1", store=store)


@settings(max_examples=15, deadline=None)
@given(history=st.integers(min_value=0, max_value=2000))
def test_bytes_per_step_do_not_grow_with_an_unwritten_history(history: int) -> None:
    """A step stores only what it wrote: its row is the same size whatever the history's length."""
    compiled = make()
    with MemoryStore() as store:
        compiled.run_sync(Order(history=["message " * 10] * history), store=store, run_id="o-1")
        rows = store._submit(lambda c: [len(r[0]) for r in c.execute(
            "SELECT record FROM sma_steps WHERE run_id='o-1' ORDER BY number")]).result()
    baseline = [len(s) for s in _step_rows_without_history()]
    # Rows differ only in their timings' digits, not by the history's size.
    assert all(abs(a - b) <= 40 for a, b in zip(rows, baseline, strict=True))


def _step_rows_without_history() -> list[str]:
    compiled = make()
    with MemoryStore() as store:
        compiled.run_sync(Order(), store=store, run_id="o-1")
        return store._submit(lambda c: [r[0] for r in c.execute(
            "SELECT record FROM sma_steps WHERE run_id='o-1' ORDER BY number")]).result()


def test_budget_names_the_restart_budget() -> None:
    """The restart budget is a Budget like the others, so hooks can tell it apart."""
    assert Budget.MAX_STEP_RESTARTS.value == "max_step_restarts"
