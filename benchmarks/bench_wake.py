"""Benchmark of waking waits (not a test): what a timer calling ``compiled.wake_due(store)`` costs when
many runs wait for a person, against the generic answer the Store base class gives (it loads every
waiting run). The workload is the one users run: N runs started concurrently, each waiting for an
approval with a timeout, on one SQLite file (``synchronous=NORMAL``).

Figures (each the median of 5 repeats in the same run):
1. ``store.due_runs`` with none due: the query against the generic scan, as a ratio.
2. A ``wake_due`` that finds none due, in ms: the cost of the timer's tick.
3. A ``wake_due`` after every deadline passed: ms per run continued (claim, step, commit).

Run: ``python benchmarks/bench_wake.py [--quick]`` (--quick: 1,000 runs instead of 10,000).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statemachine_agent import Context, FakeClock, Outcome, Workflow
from statemachine_agent.stores import SQLiteStore, Store


class Approval(BaseModel):
    """The person's answer."""

    ok: bool


class Job(Context):
    """What the wait writes."""

    approval: Approval | None = None


def workflow() -> Any:
    """prepare -> approve (waits up to an hour) -> done | expired."""
    wf = Workflow("approvals", Job)

    @wf.state(initial=True, reads=[], writes=[])
    def prepare(ctx: Job) -> None:
        return None

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=3600.0,
            on_timeout="expired")
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("expired", outcome="failure")
    wf.transition("prepare", "approve")
    wf.transition("approve", "done")
    return wf.compile()


def median_ms(fn: Any, repeats: int = 5) -> float:
    """The median wall time of ``fn()`` in ms."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    """Print the figures; exit 1 if a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 runs instead of 10,000")
    n = 1000 if parser.parse_args().quick else 10_000
    compiled = workflow()
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as folder, SQLiteStore(Path(folder) / "runs.db",
                                                                synchronous="NORMAL") as store:
        async def start() -> None:
            results = await asyncio.gather(*(compiled.run(Job(), store=store, run_id=f"r{i}", clock=clock)
                                             for i in range(n)))
            assert all(r.outcome is Outcome.WAITING for r in results)

        t = time.perf_counter()
        asyncio.run(start())
        print(f"{n} runs started concurrently, each waiting: {time.perf_counter() - t:.1f} s")
        now = clock.wall() + 60
        query = median_ms(lambda: store.due_runs("approvals", now).result())
        generic = median_ms(lambda: Store.due_runs(store, "approvals", now).result(), repeats=1)
        tick = median_ms(lambda: compiled.wake_due_sync(store, clock=clock))
        print(f"due_runs, none due: {query:.1f} ms (generic scan {generic:.0f} ms: {generic / query:.0f}x faster)")
        print(f"wake_due tick, none due: {tick:.1f} ms")
        clock.advance(3601)
        t = time.perf_counter()
        woken = compiled.wake_due_sync(store, clock=clock)
        per_run = (time.perf_counter() - t) * 1000 / max(len(woken), 1)
        print(f"wake_due after every deadline: {len(woken)} runs continued, {per_run:.2f} ms per run")
        ok = len(woken) == n and all(r.terminal == "expired" for r in woken) and generic / query >= 10
        print("targets (every run woken once; the query at least 10x the generic scan):", "met" if ok else "MISSED")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
