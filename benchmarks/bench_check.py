"""How the checker scales: ``analyze()`` on six graph shapes at 500 and 5,000 states.

Run with ``python benchmarks/bench_check.py``. For each shape it prints the median time of a few
runs at both sizes and the ratio; the target is near-linear: 10x more states may cost at most
12x more time (PASS/FAIL per shape). Timing is printed, never asserted in tests.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from collections.abc import Callable

from statemachine_agent.check import analyze
from statemachine_agent.context import Context
from statemachine_agent.guards import Guard
from statemachine_agent.spec import Outcome, StateSpec, TransitionSpec, WorkflowSpec

LIMIT = 12.0
SIZES = (500, 5000)
RUNS = 15


class Ctx(Context):
    """One field written mid-way, read after."""

    x: int | None = None


def act(ctx: Ctx) -> None:
    """Does nothing; the checker never runs it."""


def cond(ctx: Ctx) -> bool:
    return True


GUARD = Guard(cond, name="cond")
TERMINALS = (StateSpec("done", terminal=True, outcome=Outcome.SUCCESS),
             StateSpec("failed", terminal=True, outcome=Outcome.FAILURE))


def _spec(states: list[StateSpec], transitions: list[TransitionSpec]) -> WorkflowSpec:
    return WorkflowSpec("bench", Ctx, (*states, *TERMINALS), tuple(transitions))


def _state(name: str, *, initial: bool = False, **kw: object) -> StateSpec:
    return StateSpec(name, act, initial=initial, **kw)  # type: ignore[arg-type]


def chain(n: int) -> WorkflowSpec:
    """s0 -> s1 -> ... -> done."""
    names = [f"s{i}" for i in range(n)]
    states = [_state(s, initial=i == 0) for i, s in enumerate(names)]
    ts = [TransitionSpec(a, b) for a, b in zip(names, [*names[1:], "done"], strict=True)]
    return _spec(states, ts)


def chain_with_reads(n: int) -> WorkflowSpec:
    """A chain whose field is written mid-way and read by every later state."""
    names = [f"s{i}" for i in range(n)]
    mid = n // 2
    states = [_state(s, initial=i == 0, writes=("x",) if i == mid else (), reads=("x",) if i > mid else ())
              for i, s in enumerate(names)]
    ts = [TransitionSpec(a, b) for a, b in zip(names, [*names[1:], "done"], strict=True)]
    return _spec(states, ts)


def self_loops(n: int) -> WorkflowSpec:
    """A chain where every state may repeat itself twice (a bounded self-loop) before moving on."""
    names = [f"s{i}" for i in range(n)]
    states = [_state(s, initial=i == 0) for i, s in enumerate(names)]
    ts: list[TransitionSpec] = []
    for a, b in zip(names, [*names[1:], "done"], strict=True):
        ts.append(TransitionSpec(a, a, guard=GUARD, max_traversals=2, order=0))
        ts.append(TransitionSpec(a, b, default=True, order=1))
    return _spec(states, ts)


def fan(n: int) -> WorkflowSpec:
    """One hub fans out to n-2 branches, which all join in one sink."""
    middles = [f"m{i}" for i in range(n - 2)]
    states = [_state("hub", initial=True, writes=("x",)), *(_state(m) for m in middles),
              _state("sink", reads=("x",))]
    ts = [TransitionSpec("hub", m, guard=GUARD, order=i) for i, m in enumerate(middles)]
    ts.append(TransitionSpec("hub", "sink", default=True, order=len(middles)))
    ts += [TransitionSpec(m, "sink") for m in middles]
    ts.append(TransitionSpec("sink", "done"))
    return _spec(states, ts)


def big_loop(n: int) -> WorkflowSpec:
    """One bounded strongly connected ring of n states, each visited at most 3 times; exits from s0."""
    names = [f"s{i}" for i in range(n)]
    states = [_state(s, initial=i == 0, max_visits=3) for i, s in enumerate(names)]
    ts = [TransitionSpec("s0", "done", guard=GUARD, order=0),
          TransitionSpec("s0", "s1", default=True, order=1)]
    ts += [TransitionSpec(a, b) for a, b in zip(names[1:], [*names[2:], "s0"], strict=True)]
    return _spec(states, ts)


def grid(n: int) -> WorkflowSpec:
    """A side x side grid moving right or down (many paths), written at the corner, read everywhere."""
    side = max(2, math.isqrt(n))
    name = [[f"g{r}_{c}" for c in range(side)] for r in range(side)]
    states, ts = [], []
    for r in range(side):
        for c in range(side):
            first = r == c == 0
            states.append(_state(name[r][c], initial=first, writes=("x",) if first else (),
                                 reads=() if first else ("x",)))
            nxt = [name[r][c + 1]] if c + 1 < side else []
            nxt += [name[r + 1][c]] if r + 1 < side else []
            if not nxt:
                ts.append(TransitionSpec(name[r][c], "done"))
            for i, b in enumerate(nxt):
                last = i == len(nxt) - 1
                ts.append(TransitionSpec(name[r][c], b, guard=None if last else GUARD, default=last, order=i))
    return _spec(states, ts)


SHAPES: dict[str, Callable[[int], WorkflowSpec]] = {
    "chain": chain,
    "chain with reads": chain_with_reads,
    "self-loops": self_loops,
    "fan-out/fan-in": fan,
    "one big bounded loop": big_loop,
    "grid": grid,
}


def _once(spec: WorkflowSpec) -> float:
    gc.collect()  # time the checker, not the collection of what building the spec left behind
    t0 = time.perf_counter()
    report = analyze(spec)
    elapsed = time.perf_counter() - t0
    assert report.ok, report.problems[:3]
    return elapsed


def timed(make: Callable[[int], WorkflowSpec]) -> tuple[float, float]:
    """Median times at both sizes; runs alternate between them so a busy machine slows both alike."""
    small, large = (make(n) for n in SIZES)
    analyze(small)  # warm up caches (signatures, imports)
    runs: tuple[list[float], list[float]] = ([], [])
    for _ in range(RUNS):
        runs[0].append(_once(small))
        runs[1].append(_once(large))
    return statistics.median(runs[0]), statistics.median(runs[1])


def main() -> int:
    failed = 0
    print(f"{'shape':<22}{'500':>10}{'5000':>10}{'ratio':>8}")
    for label, make in SHAPES.items():
        small, large = timed(make)
        ratio = large / small
        verdict = "PASS" if ratio <= LIMIT else "FAIL"
        failed += verdict == "FAIL"
        print(f"{label:<22}{small * 1000:>8.1f}ms{large * 1000:>8.1f}ms{ratio:>7.1f}x {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
