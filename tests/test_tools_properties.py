"""Fault injection with Hypothesis: generated failure plans per call, checked on a fake clock."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math
from collections.abc import Awaitable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_agent import Context, Workflow
from statemachine_agent.clock import FakeClock
from statemachine_agent.errors import GatherFailed, ToolFailed, ToolTimeout
from statemachine_agent.tools import Retry, Tool, ToolRegistry, Tools

TIMEOUT = 0.02
OUTCOMES = st.sampled_from(["ok", "conn", "value", "hang", "slow"])


class Plan:
    """A scripted tool: each attempt does what the plan says next (then succeeds).

    Time is fake: a hang moves the clock an hour on and waits forever, a slow attempt moves it a
    tenth of the timeout on. Only the clock decides what times out, never the machine's speed.
    """

    def __init__(self, steps: list[str], clock: FakeClock, name: str = "t") -> None:
        self.steps = steps
        self.clock = clock
        self.name = name
        self.made = 0

    async def __call__(self) -> str:
        kind = self.steps[self.made] if self.made < len(self.steps) else "ok"
        self.made += 1
        if kind == "conn":
            raise ConnectionError(self.made)
        if kind == "value":
            raise ValueError(self.made)
        if kind == "hang":
            self.clock.advance(3600)
            await asyncio.Event().wait()
        if kind == "slow":
            self.clock.advance(TIMEOUT / 10)
            await asyncio.sleep(0)
        return f"{self.name} ok after {self.made}"


def expected_attempts(steps: list[str], attempts: int) -> tuple[int, str]:
    """How many attempts the policy makes, and the outcome of the last one."""
    padded = [*steps, "ok"]
    for i, kind in enumerate(padded, start=1):
        retryable = kind in ("conn", "hang")
        if not retryable or i == attempts:
            return i, kind
    raise AssertionError("unreachable")


def tool_for(plan: Plan, name: str, attempts: int, *, backoff: float, jitter: float, cap: float) -> Tool:
    """A tool running ``plan``, retried on any Exception but ValueError."""

    async def scripted() -> str:
        return await plan()

    return Tool(scripted, name=name, timeout=TIMEOUT,
                retry=Retry(attempts=attempts, backoff=backoff, jitter=jitter, max_delay=cap,
                            on=(Exception,), never=(ValueError,)))


def others() -> list[asyncio.Task[Any]]:
    """Tasks still alive besides the current one."""
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(OUTCOMES, max_size=5), attempts=st.integers(1, 5),
       backoff=st.floats(0.0, 3.0), jitter=st.floats(0.0, 2.0), cap=st.floats(0.5, 10.0))
def test_one_call_follows_its_plan(steps: list[str], attempts: int, backoff: float, jitter: float,
                                   cap: float) -> None:
    """Attempt counts are exact, each backoff is within the policy's bounds, non-retryable errors
    are not retried, and no task outlives the call."""
    clock = FakeClock()
    plan = Plan(steps, clock)
    tool = tool_for(plan, "t", attempts, backoff=backoff, jitter=jitter, cap=cap)
    tools = Tools(ToolRegistry([tool]), frozenset({"t"}), clock=clock)

    async def main() -> Any:
        try:
            out: Any = await tools.call("t")
        except ToolFailed as exc:
            out = exc
        assert others() == []
        return out

    out = asyncio.run(main())
    made, last = expected_attempts(steps, attempts)
    assert plan.made == made
    if last in ("ok", "slow"):
        assert out == f"t ok after {made}"
    else:
        assert isinstance(out, ToolFailed)
        assert len(out.errors) == made
        assert isinstance(out.last, ValueError if last == "value" else
                          ConnectionError if last == "conn" else ToolTimeout)
    assert len(clock.sleeps) == made - 1
    for i, slept in enumerate(clock.sleeps, start=1):
        low = min(backoff * 2 ** (i - 1), cap)
        high = min(backoff * 2 ** (i - 1) + jitter, cap)
        assert low - 1e-9 <= slept <= high + 1e-9


@settings(max_examples=40, deadline=None)
@given(plans=st.lists(st.lists(OUTCOMES, max_size=3), min_size=1, max_size=5), attempts=st.integers(1, 3),
       mode=st.sampled_from(["fail_fast", "collect"]))
def test_gather_modes(plans: list[list[str]], attempts: int, mode: str) -> None:
    """collect returns every outcome in call order; fail_fast raises one GatherFailed when any call
    fails for good; either way no task is left running."""
    clock = FakeClock()
    runs = [Plan(p, clock, f"t{i}") for i, p in enumerate(plans)]
    registry = ToolRegistry([tool_for(p, f"t{i}", attempts, backoff=0.1, jitter=0.0, cap=1.0)
                             for i, p in enumerate(runs)])
    tools = Tools(registry, frozenset(registry.names()), clock=clock)
    outcomes = [expected_attempts(p, attempts) for p in plans]
    any_fails = any(kind not in ("ok", "slow") for _, kind in outcomes)

    async def main() -> Any:
        try:
            out: Any = await tools.gather(*(tools.call(f"t{i}") for i in range(len(runs))),
                                          failures=mode)  # type: ignore[arg-type]
        except GatherFailed as exc:
            out = exc
        assert others() == []
        return out

    out = asyncio.run(main())
    if mode == "collect":
        assert len(out) == len(runs)
        for value, (made, kind), run in zip(out, outcomes, runs, strict=True):
            assert run.made == made
            if kind in ("ok", "slow"):
                assert value == f"{run.name} ok after {made}"
            else:
                assert isinstance(value, ToolFailed)
    elif any_fails:
        assert isinstance(out, GatherFailed)
        assert all(isinstance(e, ToolFailed) for e in out.errors)
    else:
        assert out == [f"t{i} ok after {made}" for i, (made, _) in enumerate(outcomes)]


class StuckClock(FakeClock):
    """A clock whose sleeps never end: the run is caught in a retry wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.waiting.set()
        await asyncio.Event().wait()


class Ctx(Context):
    """Nothing to keep."""

    out: Any = None


def retrying_workflow(kind: str) -> Any:
    """One state whose action retries a failing tool, or gathers calls that hang."""
    wf = Workflow("cancel", Ctx)

    @wf.tool(retry=Retry(attempts=10, backoff=5))
    async def down() -> None:
        raise ConnectionError("down")

    @wf.tool
    async def hang() -> None:
        await asyncio.sleep(3600)

    @wf.state(initial=True, writes=["out"], tools=["down", "hang"])
    async def act(ctx: Ctx, tools: Tools) -> None:
        if kind == "retry":
            ctx.out = await tools.call("down")
        else:
            ctx.out = await tools.gather(tools.call("hang"), tools.call("hang"), tools.call("hang"))

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(act, "done")
    wf.on_error(act, Exception, "failed")
    return wf.compile()


@pytest.mark.parametrize("kind", ["retry", "gather"])
def test_cancelling_the_run_leaves_no_task(kind: str) -> None:
    """Cancelling a run in a retry wait or inside a gather propagates and leaves no task behind."""
    compiled = retrying_workflow(kind)

    async def main() -> None:
        clock = StuckClock()
        task = asyncio.create_task(compiled.run(Ctx(), clock=clock))
        if kind == "retry":
            await clock.waiting.wait()
        else:
            for _ in range(5):
                await asyncio.sleep(0)
            assert len(others()) == 4  # the run and its three calls
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert others() == []

    asyncio.run(main())


class SchedulingClock(FakeClock):
    """Virtual time for concurrent sleepers: time jumps to the earliest sleeper's wake-up only
    once every task has run as far as it can (a discrete-event clock, unlike FakeClock's sleeps
    that each move time on at once)."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.time + max(0.0, seconds), self._seq, future))
        await future

    async def drive(self, work: Awaitable[Any]) -> Any:
        """Run ``work`` to its end, moving time from one wake-up to the next."""
        task = asyncio.ensure_future(work)
        while True:
            for _ in range(50):
                await asyncio.sleep(0)
            if task.done():
                return task.result()
            assert self._sleepers, "nothing left to wake: the calls are stuck"
            when, _, future = heapq.heappop(self._sleepers)
            self.time = max(self.time, when)
            self.advance(0.0)
            future.set_result(None)


def window_counts(starts: list[float], width: float) -> int:
    """The most starts any closed window [t, t + width] holds."""
    ordered = sorted(starts)
    return max((bisect.bisect_right(ordered, s + width) - i for i, s in enumerate(ordered)), default=0)


@settings(max_examples=150, deadline=None)
@given(rate=st.one_of(st.integers(1, 25), st.floats(0.2, 25.0)),
       gaps=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 1.5)), max_size=50))
def test_rate_limit_is_a_sliding_window(rate: float, gaps: list[float]) -> None:
    """For any rate and any pattern of arrivals, no closed window of one second holds more than
    ``rate`` starts (one start per 1/rate s below a rate of 1), and a call that waited started as
    soon as the window allowed: just before it, the window was full."""
    clock = SchedulingClock()
    tools_ = Tools(ToolRegistry([Tool(lambda_ping(clock), name="ping", rate_limit=rate)]),
                   frozenset({"ping"}), clock=clock)
    arrivals = list(itertools.accumulate(gaps))
    calls: list[tuple[float, float]] = []  # (arrival, start) of each call

    async def one(at: float) -> None:
        await clock.sleep(at)
        calls.append((at, await tools_.call("ping")))

    async def main() -> None:
        await clock.drive(asyncio.gather(*(one(at) for at in arrivals)))

    asyncio.run(main())
    assert len(calls) == len(arrivals)
    starts = [start for _, start in calls]
    capacity, width = (math.floor(rate), 1.0) if rate >= 1 else (1, 1.0 / rate)
    assert window_counts(starts, 1.0) <= max(rate, 1)
    assert window_counts(starts, width) <= capacity
    for at, start in calls:
        assert start >= at
        if start > at + 1e-9:  # it waited: just before it started, the window was full
            before = [s for s in starts if start - width - 1e-9 <= s < start]
            assert len(before) >= capacity, (at, start, before)


def lambda_ping(clock: FakeClock) -> Any:
    """A tool answering the instant it started, on ``clock``."""

    async def ping() -> float:
        return clock.now()

    return ping
