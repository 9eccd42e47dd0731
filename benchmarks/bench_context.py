"""Does a step cost more when the context is big? Per-step cost against a step on a small context.

Run it: ``.venv/bin/python benchmarks/bench_context.py`` (``--quick`` for a smoke run).

Each case is a loop workflow: state ``work`` runs ``STEPS`` times (a self-loop bounded by
``max_traversals``), then ``done``. The action either reads a big field (it only declares it in
``reads``) or appends to it (it declares it in ``writes``), and bumps a counter. A run is started,
its first step taken (that step may copy a caller-supplied value once, the run's copy-on-first-write),
then the next steps are timed one by one with ``await run.step()``: the figure is the median step.
The baseline is the same loop on a context with only the counter, measured in the same process,
interleaved with the case, so the ratio is what matters. The first step's cost is printed too.

Cases: a 100,000-item ``list[int]``, a 1,000-message chat history (``list[dict]``) and a
100,000-item ``list[BaseModel]``, each read and appended to. Target: every ratio <= 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from statemachine_agent import CompiledWorkflow, Context, Workflow

STEPS = 200
TARGET = 2.0


class Item(BaseModel):
    x: int
    label: str = "item"


class Big(Context):
    counter: int = 0
    ints: list[int] = Field(default_factory=list)
    chat: list[dict[str, str]] = Field(default_factory=list)
    models: list[Item] = Field(default_factory=list)


def loop(name: str, field: str | None, write: bool, body: Callable[[Any], None]) -> CompiledWorkflow[Big]:
    """``work`` loops STEPS times over ``body``, reading or writing ``field``."""
    wf: Workflow[Big] = Workflow(name, Big)
    reads = ["counter"] + ([field] if field and not write else [])
    writes = ["counter"] + ([field] if field and write else [])

    def work(ctx: Any) -> None:
        body(ctx)
        ctx.counter += 1

    wf.add_state("work", work, initial=True, reads=reads, writes=writes)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("work", "work", guard=wf.guard(lambda c: c.counter < STEPS, reads=["counter"]),
                  max_traversals=STEPS)
    wf.transition("work", "done", default=True)
    return wf.compile()


def make_cases() -> dict[str, tuple[CompiledWorkflow[Big], Callable[[], Big]]]:
    ints = list(range(100_000))
    chat = [{"role": "user" if i % 2 else "assistant", "content": f"message {i}"} for i in range(1_000)]
    models = [Item(x=i) for i in range(100_000)]
    return {
        "small context": (loop("small", None, False, lambda c: None), Big),
        "read list[int] 100k": (loop("ri", "ints", False, lambda c: c.ints[-1] + len(c.ints)),
                                lambda: Big(ints=ints)),
        "append list[int] 100k": (loop("ai", "ints", True, lambda c: c.ints.append(c.counter)),
                                  lambda: Big(ints=ints)),
        "read chat 1,000 msgs": (loop("rc", "chat", False, lambda c: c.chat[-1]["content"]),
                                 lambda: Big(chat=chat)),
        "append chat 1,000 msgs": (loop("ac", "chat", True,
                                        lambda c: c.chat.append({"role": "assistant", "content": "ok"})),
                                   lambda: Big(chat=chat)),
        "read list[BaseModel] 100k": (loop("rm", "models", False, lambda c: c.models[-1].x),
                                      lambda: Big(models=models)),
        "append list[BaseModel] 100k": (loop("am", "models", True, lambda c: c.models.append(Item(x=1))),
                                        lambda: Big(models=models)),
    }


async def per_step(compiled: CompiledWorkflow[Big], make: Callable[[], Big],
                   samples: int) -> tuple[float, float]:
    """(median seconds per step after the first, seconds of the first step)."""
    run = compiled.start(make())
    t0 = time.perf_counter()
    await run.step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        await run.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


async def main(quick: bool) -> int:
    repeats = 3 if quick else 9
    samples = 50 if quick else 150
    cases = make_cases()
    small = cases.pop("small context")
    rows = []
    for label, (compiled, make) in cases.items():
        ratios, values, bases, firsts = [], [], [], []
        for _ in range(repeats):
            base, _ = await per_step(*small, samples)
            value, first = await per_step(compiled, make, samples)
            ratios.append(value / base)
            values.append(value)
            bases.append(base)
            firsts.append(first)
        rows.append((label, statistics.median(values), statistics.median(bases), statistics.median(ratios),
                     statistics.median(firsts)))
    print(f"{'case':30s} {'step':>10s} {'small step':>11s} {'ratio':>7s} {'first step':>11s}  target")
    ok = True
    for label, value, base, ratio, first in rows:
        met = ratio <= TARGET
        ok &= met
        print(f"{label:30s} {value * 1e6:8.1f}µs {base * 1e6:9.1f}µs {ratio:6.2f}x {first * 1e3:9.2f}ms"
              f"  <= {TARGET}x {'yes' if met else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
