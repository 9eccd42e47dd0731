"""Deliveries racing live runs and each other, wake-ups, restart counting (issue 16, group 1).

Real SQLite files; the multi-process test runs real worker processes (tests/race_worker.py).
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from statemachine_agent import Context, FakeClock, Outcome, Workflow
from statemachine_agent.stores import MemoryStore, RunStatus, SQLiteStore, StoreError

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import race_worker  # noqa: E402


class Approval(BaseModel):
    ok: bool


class Job(Context):
    approval: Approval | None = None
    done: bool = False


def gated(gate: asyncio.Event, started: asyncio.Event, *, timeout: float | None = None) -> Any:
    """work (blocks on ``gate``) -> approve (wait) -> finish -> done | expired."""
    wf = Workflow("gated", Job)

    @wf.state(initial=True, reads=[], writes=[])
    async def work(ctx: Job) -> None:
        started.set()
        await gate.wait()

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=timeout,
            on_timeout="expired" if timeout is not None else None)

    @wf.state(reads=["approval"], writes=["done"])
    def finish(ctx: Job) -> None:
        ctx.done = True

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    if timeout is not None:
        wf.terminal("expired", outcome="failure")
    wf.transition("work", "approve")
    wf.transition("approve", "finish")
    wf.transition("finish", "done")
    return wf.compile()


@settings(max_examples=12, deadline=None)
@given(when=st.sampled_from(["before", "during", "after"]), file=st.booleans())
def test_an_event_delivered_while_the_run_is_busy_is_taken_not_lost(tmp_path_factory: Any, when: str,
                                                                     file: bool) -> None:
    """Delivered before the run starts, while it is inside the step before its wait, or once it
    waits: in every case the run ends in ``done`` without anyone calling resume."""
    async def scenario() -> tuple[Any, Any, Any]:
        gate, started = asyncio.Event(), asyncio.Event()
        compiled = gated(gate, started)
        path = tmp_path_factory.mktemp("race") / "runs.db"
        store = SQLiteStore(path) if file else MemoryStore()
        try:
            task = asyncio.ensure_future(compiled.run(Job(), store=store, run_id="r"))
            await started.wait()
            delivered = None
            if when in ("before", "during"):
                delivered = await compiled.deliver("r", "approval", {"ok": True}, store=store)
            gate.set()
            live = await task
            if when == "after":
                delivered = await compiled.deliver("r", "approval", {"ok": True}, store=store)
            stored = store.load("r").result()
            return live, delivered, stored
        finally:
            store.close()

    live, delivered, stored = asyncio.run(scenario())
    final = delivered if when == "after" else live
    assert final is not None and final.terminal == "done", (when, live, delivered)
    assert final.context.done
    assert stored.run.status is RunStatus.DONE
    assert [e.consumed_step for e in stored.inbox] == [1]
    if when != "after":
        assert delivered is None  # the live run was not preempted: it took the event itself


def _start_waiting(db: Path, log: Path, runs: list[str]) -> None:
    compiled = race_worker.make(str(log))
    with SQLiteStore(db) as store:
        for r in runs:
            result = compiled.run_sync(race_worker.Order(order=r), store=store, run_id=r)
            assert result.outcome is Outcome.WAITING


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_delivering_one_approval_at_once_never_preempt_each_other(tmp_path: Path, processes: int) -> None:
    """2 or 4 real processes each deliver the same approval to the same 50 runs (each in its own
    order): every run ends in ``done`` (never the unknown-outcome route), each charge happens once."""
    db, log = tmp_path / "runs.db", tmp_path / "effects.log"
    runs = [f"run-{i}" for i in range(50)]
    _start_waiting(db, log, runs)
    rng = random.Random(processes)
    procs = []
    for _ in range(processes):
        order = runs[:]
        rng.shuffle(order)
        procs.append(subprocess.Popen([sys.executable, str(HERE / "race_worker.py"), str(db), str(log), *order],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    continued = [line.split()[1] for out, _ in outs for line in out.splitlines()]
    assert continued.count("done") == len(runs)  # each run continued by exactly one deliverer
    assert set(continued) <= {"done", "none", "ended"}
    effects = log.read_text().split()
    assert sorted(effects) == sorted(runs)  # every charge exactly once
    compiled = race_worker.make(str(log))
    with SQLiteStore(db) as store:
        records = {r.run_id: r for r in compiled.runs(store)}
        for r in runs:
            assert (records[r].status, records[r].terminal) == (RunStatus.DONE, "done")
            stored = store.load(r).result()
            assert sum(e.consumed_step is not None for e in stored.inbox) == 1


def test_wake_due_times_out_waits_whose_deadline_passed_and_only_those() -> None:
    clock = FakeClock()
    gate, started = asyncio.Event(), asyncio.Event()
    gate.set()
    compiled = gated(gate, started, timeout=60.0)
    with MemoryStore() as store:
        for r in ("early", "late"):
            assert compiled.run_sync(Job(), store=store, run_id=r, clock=clock).outcome is Outcome.WAITING
            clock.advance(20)
        assert compiled.wake_due_sync(store, clock=clock) == []  # deadlines at +60 s and +80 s; now +40 s
        clock.advance(21)  # now +61 s: early's deadline passed, late's not
        woken = compiled.wake_due_sync(store, clock=clock)
        assert [(r.run_id, r.terminal) for r in woken] == [("early", "expired")]
        assert compiled.wake_due_sync(store, clock=clock) == []  # done once
        status = {r.run_id: r.status for r in compiled.runs(store)}
        assert status == {"early": RunStatus.DONE, "late": RunStatus.WAITING}
        clock.advance(20)
        assert [r.terminal for r in compiled.wake_due_sync(store, clock=clock)] == ["expired"]


def test_wake_due_also_continues_a_waiting_run_whose_event_is_in_its_inbox() -> None:
    """An event delivered while nobody continued the run (e.g. the deliverer died right after
    committing it) is taken by the next wake-up."""
    gate, started = asyncio.Event(), asyncio.Event()
    gate.set()
    compiled = gated(gate, started)
    with MemoryStore() as store:
        assert compiled.run_sync(Job(), store=store, run_id="w").outcome is Outcome.WAITING
        store.deliver("w", "approval", {"ok": True}).result()  # committed; nobody continued it
        assert [r.terminal for r in compiled.wake_due_sync(store)] == ["done"]


def test_claims_superseded_before_starting_count_no_restart() -> None:
    """A crash mid-step, then several resumes each superseded before it did anything: only
    claims whose holder had started the step count, so max_step_restarts is not spent."""
    class Crash(BaseException):
        pass

    crashes = [True]
    wf = Workflow("restarts", Job)

    @wf.state(initial=True, reads=[], writes=["done"])
    def work(ctx: Job) -> None:
        if crashes:
            crashes.pop()
            raise Crash
        ctx.done = True

    wf.terminal("end")
    wf.terminal("failed", outcome="failure")
    wf.transition("work", "end")
    compiled = wf.compile()
    with MemoryStore() as store:
        with pytest.raises(Crash):
            compiled.run_sync(Job(), store=store, run_id="r")
        for _ in range(5):  # claimed, then superseded before starting: no restart each time
            run = asyncio.run(compiled.reopen("r", store=store))
            assert run.result is None
        rec = store.load("r").result().run
        assert rec.restarts == 1 and rec.started is False
        result = compiled.resume_sync("r", store=store, max_step_restarts=1)
        assert result.terminal == "end"


class Reading(BaseModel):
    value: float
    extra: dict[str, Any] = {}


class Metered(Context):
    start: float = 0.0
    reading: Reading | None = None


def metered() -> Any:
    wf = Workflow("metered", Metered)

    @wf.state(initial=True, reads=["start"], writes=[])
    def begin(ctx: Metered) -> None:
        return None

    wf.wait("measure", event="reading", payload=Reading, writes=["reading"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("begin", "measure")
    wf.transition("measure", "done")
    return wf.compile()


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_number_in_an_input_or_a_payload_is_refused_naming_the_field(number: float) -> None:
    compiled = metered()
    with MemoryStore() as store:
        with pytest.raises(ValueError, match="field 'start' is not a finite number"):
            compiled.run_sync(Metered(start=number), store=store, run_id="bad")
        assert compiled.runs(store) == []  # nothing stored
        assert compiled.run_sync(Metered(), store=store, run_id="m").outcome is Outcome.WAITING
        with pytest.raises(ValueError, match="payload field 'value' is not a finite number"):
            compiled.deliver_sync("m", "reading", {"value": number}, store=store)
        with pytest.raises(ValueError, match=r"payload field 'extra.deep\[1\]' is not a finite number"):
            compiled.deliver_sync("m", "reading", {"value": 1.0, "extra": {"deep": [1.0, number]}}, store=store)
        assert store.load("m").result().inbox == []  # nothing delivered
        assert compiled.deliver_sync("m", "reading", {"value": 2.5}, store=store).terminal == "done"


def test_a_delivery_from_another_process_during_a_step_is_taken_by_the_live_run(tmp_path: Path) -> None:
    """Process A runs a step; process B delivers the approval meanwhile (B's deliver returns
    'none': it does not preempt A); A then reaches the wait, takes the event and ends in done."""
    db, log = tmp_path / "runs.db", tmp_path / "effects.log"
    started, go = tmp_path / "started", tmp_path / "go"
    worker = str(HERE / "race_worker.py")
    a = subprocess.Popen([sys.executable, worker, "--live", str(db), str(log), "r", str(started), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(6000):  # up to 60 s for the interpreter to start and reach the step
            if started.exists() or a.poll() is not None:
                break
            time.sleep(0.01)
        assert started.exists(), a.communicate()[1][-2000:]
        b = subprocess.run([sys.executable, worker, str(db), str(log), "r"], capture_output=True, text=True,
                           timeout=120, check=False)
        assert b.returncode == 0, b.stderr[-2000:]
        assert b.stdout.split() == ["r", "none"]
        go.touch()
        out, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, err[-2000:]
    assert out.split()[0] == "done"
    assert log.read_text().split() == ["r"]


def test_due_runs_finds_exactly_the_runs_a_wake_up_may_continue(tmp_path: Path) -> None:
    """The store's one-query answer equals the generic one (the Store base class's, which loads every
    waiting run); a run whose record was damaged is passed over, and stops no other run's wake-up."""
    from statemachine_agent.stores import Store

    clock = FakeClock()
    gate, started = asyncio.Event(), asyncio.Event()
    gate.set()
    compiled = gated(gate, started, timeout=60.0)
    with SQLiteStore(tmp_path / "runs.db") as store:
        for i in range(6):
            assert compiled.run_sync(Job(), store=store, run_id=f"r{i}", clock=clock).outcome is Outcome.WAITING
            clock.advance(20)
        store.deliver("r5", "approval", {"ok": True}).result()  # r5: event in the inbox, deadline not passed
        now = clock.wall()  # deadlines at +60, +80, ... +160 s; now +120 s: r0 to r3 timed out
        fast = store.due_runs("gated", now).result()
        slow = Store.due_runs(store, "gated", now).result()
        assert fast == slow == ["r0", "r1", "r2", "r3", "r5"]
        assert store.due_runs("other", now).result() == []
        clock.advance(20)  # r4 is due too, but its record is damaged
        import sqlite3
        with sqlite3.connect(tmp_path / "runs.db") as raw:
            raw.execute("UPDATE sma_runs SET record='{' WHERE run_id='r4'")
        assert "r4" not in store.due_runs("gated", clock.wall()).result()
        woken = compiled.wake_due_sync(store, clock=clock)  # the damaged run stops no other
        assert sorted((r.run_id, r.terminal) for r in woken) == [
            ("r0", "expired"), ("r1", "expired"), ("r2", "expired"), ("r3", "expired"), ("r5", "done")]
        assert store.due_runs("gated", clock.wall()).result() == []


class Hostile(str):
    """A run id or event name whose own comparison, hash and repr raise."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ ran")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__ ran")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ ran")


def test_run_ids_and_events_whose_eq_hash_and_repr_raise_act_as_the_text_they_hold() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    gate.set()
    compiled = gated(gate, started)
    with MemoryStore() as store:
        assert compiled.run_sync(Job(), store=store, run_id="r").outcome is Outcome.WAITING
        assert store.claim_waiting(Hostile("ghost")).exception() is not None  # RunNotFound, not RuntimeError
        assert store.due_runs(Hostile("gated"), 0.0).result() == []
        done = compiled.deliver_sync(Hostile("r"), Hostile("approval"), {"ok": True}, store=store)
        assert done is not None and done.terminal == "done"
        assert store.load(Hostile("r")).result().run.terminal == "done"
        assert compiled.replay_sync(Hostile("r"), store=store).ok
        forked = compiled.fork_sync(Hostile("r"), at_step=1, store=store, new_run_id=Hostile("f"))
        assert (forked.run_id, forked.outcome) == ("f", Outcome.WAITING)
        assert type(forked.run_id) is str
        with pytest.raises(StoreError, match="'r' has ended in 'done'"):
            compiled.deliver_sync(Hostile("r"), Hostile("approval"), {"ok": True}, store=store)
