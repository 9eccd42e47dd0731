"""Benchmark of the tool layer (not a test): fan-out efficiency and per-call overhead.

1. Fan-out: 100 concurrent calls (``tools.gather``) of a tool that awaits 50 ms, against the ideal
   of 50 ms (target: wall under 60 ms).
2. Per-call overhead of ``tools.call`` (argument and result validation, the retry wrapper, a
   timeout, events) for a trivial async tool, against awaiting the function directly (target:
   under 30 µs per call). Both run inside a real workflow action, N calls per action.

Machines here are shared and noisy: every figure is the median of several repeats, and each
overhead is the difference to the direct baseline measured in the same repeat.
Run: ``python benchmarks/bench_tools.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from statemachine_agent import Context, Workflow
from statemachine_agent.events import Event
from statemachine_agent.tools import Retry, Tools


class Ctx(Context):
    """Only a counter."""

    calls: int = 0


async def nap() -> str:
    """Sleep 50 ms."""
    await asyncio.sleep(0.05)
    return "ok"


async def echo(x: int) -> int:
    """Return x: the trivial tool."""
    return x


def build(calls: int, mode: str, options: dict[str, Any]) -> Any:
    """A one-state workflow whose action makes ``calls`` calls, through the layer or directly."""
    wf = Workflow(f"bench-{mode}", Ctx)
    wf.tool(name="echo", **options)(echo)
    wf.tool(nap)

    @wf.state(initial=True, writes=["calls"], tools=["echo", "nap"])
    async def work(ctx: Ctx, tools: Tools) -> None:
        total = 0
        if mode == "direct":
            for i in range(calls):
                total += await echo(i)
        elif mode == "fanout":
            await tools.gather(*(tools.call("nap") for _ in range(100)))
        else:
            for i in range(calls):
                total += await tools.call("echo", x=i)
        ctx.calls = calls

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(work, "done")
    return wf.compile()


def noop(event: Event) -> None:
    """A hook that does nothing: events are built and delivered."""


async def timed(compiled: Any, hooks: list[Any]) -> float:
    t0 = time.perf_counter()
    result = await compiled.run(Ctx(), hooks=hooks)
    assert result.ok, result.reason
    return time.perf_counter() - t0


async def main(quick: bool) -> None:
    repeats = 5 if quick else 15
    calls = 2000 if quick else 10000
    fan = build(1, "fanout", {})
    walls = [await timed(fan, []) for _ in range(repeats)]
    fan_ms = statistics.median(walls) * 1000
    configs: list[tuple[str, dict[str, Any], bool]] = [
        ("validation only", {}, False),
        ("+ retry policy", {"retry": Retry(attempts=3)}, False),
        ("+ retry + timeout", {"retry": Retry(attempts=3), "timeout": 5.0}, False),
        ("+ retry + timeout + events", {"retry": Retry(attempts=3), "timeout": 5.0}, True),
    ]
    direct = build(calls, "direct", {})
    rows = []
    for label, options, events in configs:
        layer = build(calls, "layer", options)
        overheads, bases = [], []
        for _ in range(repeats):
            base = await timed(direct, [])
            with_layer = await timed(layer, [noop] if events else [])
            overheads.append((with_layer - base) / calls * 1e6)
            bases.append(base / calls * 1e6)
        rows.append((label, statistics.median(overheads), statistics.median(bases)))
    print("statemachine-agent tool benchmark" + (" (quick)" if quick else ""))
    print(f"{'figure':50s} {'value':>12s}  {'baseline':>22s}  {'target':>10s}  met")
    print(f"{'1. fan-out: 100 x 50 ms via gather, wall':50s} {fan_ms:9.1f} ms  {'ideal 50.0 ms':>22s}  "
          f"{'< 60 ms':>10s}  {'yes' if fan_ms < 60 else 'NO'}")
    for label, over, base in rows:
        print(f"{'2. per-call overhead, ' + label:50s} {over:9.2f} µs  {f'direct await {base:.2f} µs':>22s}  "
              f"{'< 30 µs':>10s}  {'yes' if over < 30 else 'NO'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and calls (a smoke run)")
    asyncio.run(main(parser.parse_args().quick))
