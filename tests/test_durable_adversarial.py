"""Durable runs under attack: cancellation at every await, many runs at once, values with no JSON form."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from statemachine_agent import Context, Workflow
from statemachine_agent.stores import MemoryStore, RunStatus


class Ctx(Context):
    n: int = 0
    seen: list[int] = Field(default_factory=list)
    blob: Any = None


def make(calls: list[str]) -> Any:
    wf = Workflow("loop", Ctx)

    async def echo(x: int, idempotency_key: str) -> int:
        calls.append(idempotency_key)
        await asyncio.sleep(0)
        return x * 10

    wf.tool(echo, effect="idempotent")

    @wf.state(initial=True, reads=["n", "seen"], writes=["n", "seen"], tools=["echo"])
    async def work(ctx: Ctx, tools: Any) -> None:
        ctx.seen.append(await tools.call("echo", x=ctx.n))
        ctx.n += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("work", "work", guard=lambda c: c.n < 4, max_traversals=3)
    wf.transition("work", "done")
    return wf.compile()


@settings(max_examples=40, deadline=None)
@given(ticks=st.integers(min_value=0, max_value=60))
def test_cancelling_a_durable_run_at_any_await_then_resuming_ends_like_a_clean_run(ticks: int) -> None:
    """Cancel the run after any number of event-loop turns; resuming from the store gives the clean
    run's terminal and context, and no journaled call is made twice with another key."""
    calls: list[str] = []
    compiled = make(calls)

    async def main() -> None:
        with MemoryStore() as store:
            task = asyncio.ensure_future(compiled.run(Ctx(), store=store, run_id="r"))
            for _ in range(ticks):
                if task.done():
                    break
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if any(r.run_id == "r" for r in compiled.runs(store)):
                result = await compiled.resume("r", store=store)
            else:  # cancelled before the run was created: nothing to resume
                result = await compiled.run(Ctx(), store=store, run_id="r")
            assert result.terminal == "done"
            assert result.context.seen == [0, 10, 20, 30]
            stored = store.load("r").result()
            assert [s.number for s in stored.steps] == [0, 1, 2, 3]
            assert stored.run.status is RunStatus.DONE

    asyncio.run(main())
    assert sorted(set(calls)) == ["r/0/0", "r/1/0", "r/2/0", "r/3/0"]


def test_many_runs_share_one_store_at_once() -> None:
    """A hundred runs gathered on one store all commit every step, each run's steps contiguous."""
    calls: list[str] = []
    compiled = make(calls)

    async def main() -> None:
        with MemoryStore() as store:
            results = await asyncio.gather(*(compiled.run(Ctx(), store=store, run_id=f"r{i}") for i in range(100)))
            assert {r.terminal for r in results} == {"done"}
            for i in range(100):
                assert [s.number for s in store.load(f"r{i}").result().steps] == [0, 1, 2, 3]

    asyncio.run(main())
    assert len(calls) == 400


def test_a_context_with_no_json_form_is_refused_before_anything_is_stored() -> None:
    """A value that cannot be stored as JSON: a clear TypeError naming the field; the store stays empty."""
    compiled = make([])
    with MemoryStore() as store:
        with pytest.raises(TypeError, match=r"'blob'.*JSON"):
            compiled.run_sync(Ctx(blob=object()), store=store, run_id="r")
        assert compiled.runs(store) == []


def test_a_write_with_no_json_form_fails_the_run_with_a_reason() -> None:
    """A step that writes a value with no JSON form is not committed as such: the run fails, saying why."""
    wf = Workflow("bad", Ctx)

    @wf.state(initial=True, reads=["n"], writes=["blob"])
    def work(ctx: Ctx) -> None:
        ctx.blob = {1, 2, object()}

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("work", "done")
    compiled = wf.compile()
    with MemoryStore() as store:
        result = compiled.run_sync(Ctx(), store=store, run_id="r")
        stored = store.load("r").result()
    assert result.terminal == "failed"
    assert "blob" in (result.reason or "") and "JSON" in (result.reason or "")
    assert stored.run.status is RunStatus.DONE and stored.run.terminal == "failed"
    assert stored.steps[0].delta == {}
