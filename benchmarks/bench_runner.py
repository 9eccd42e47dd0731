"""How much the statemachine-agent runner costs, against hand-written baselines, in one process.

Run it from the repository's root: ``.venv/bin/python benchmarks/bench_runner.py`` (about a minute on
2 cores; ``--quick`` for a ~10 s smoke run, ``--profile`` to force the cProfile breakdown).

What is measured
----------------
1. **Per-step overhead.** A workflow whose state ``work`` adds 1 to ``counter`` and loops back while
   ``counter < 50`` (a transition bounded by ``max_traversals=50``), then goes to ``done``: 50 steps per
   run. The same loop is timed as

   * a bare ``while True`` loop dispatching on a dict of actions, on a plain dict (the article's
     agent loop, no safety at all);
   * raw ``transitions.Machine`` triggers: one shared machine with ``auto_transitions=False``, a model
     object, the guard as a ``conditions`` callback, one trigger per step (the ``transitions``
     logger muted to WARNING, as the runner does);
   * the runner via ``compiled.run_sync(ctx)`` (its per-thread event loop reused between runs);
   * the runner via ``await compiled.run(ctx)`` inside one already-running event loop;
   * the same with a no-op hook attached, so every event is built and delivered.

   The **seed workflow** of the peer benchmark is timed the same way, against the same workflow on
   raw ``transitions`` (the same actions on a plain object): ``plan`` -> ``search`` <-> ``refine``
   (the loop guarded by ``rounds < 25``) -> ``answer`` -> ``done``, each state declaring its reads
   and writes, on a context of five fields: 51 steps per run. Target: <= 1.2x raw ``transitions``
   with ``run_sync`` and with ``await run``, and <= 1.1x for a no-op hook against none.

   A figure is one run's CPU time (of this thread: another process taking the core does not count)
   divided by its steps, so per-run costs (building the run, its id, the result, ``run_sync``'s
   event loop) are spread over the steps. Every run starts from a fresh context.
   Three pieces are also timed alone, per step, to decompose a runner step: the move on the
   workflow's shared ``transitions`` machine (its lean trigger, fired with a token), a pydantic
   validated assignment, and ``asyncio.run`` of an empty coroutine (for scale: ``run_sync`` keeps
   one loop per thread instead).

2. **Memory per in-flight run.** N runs of a plan -> search -> summarize -> done workflow are started
   in one event loop; ``search`` awaits an ``asyncio.Event``, so once all N are parked every run is
   suspended mid-run (``plan`` done and committed). ``tracemalloc`` gives the bytes allocated from
   before the contexts were built to that moment, divided by N; the size of one context, measured
   the same way, is subtracted. The same is done for a bare ``async def`` dict-dispatch loop doing
   the same writes on the same context type.

3. **Concurrent wall time.** 10,000 runs of that workflow (no refine loop), each action doing
   ``await asyncio.sleep(0.01)`` and writing a field, gathered in one event loop, against the same
   work as bare ``async def`` functions gathered the same way. Both use the same pydantic context,
   so the ratio isolates the runner. The floor is 3 x 10 ms of sleeping. Most of both sides' time
   is the garbage collector's (generation-2 passes over every object of 10,000 runs in flight), so
   what a run in flight holds matters more than its CPU per step.

4. **A whole run costs what it changed.** The 50-step loop on a context that also holds a
   100,000-item list no step writes, start to result, per step, against the same with a 3-item list
   (target <= 1.2x: the list is neither copied for the result nor walked).

How to read it
--------------
These machines are shared and noisy, so absolute numbers drift between runs; the ratios are what
to compare. Each repeat measures every variant back to back (in rotating order) and a ratio is the
median over repeats of the per-repeat ratio, so a slow patch of the machine hits both sides. Each
section prints min / median / max over repeats; a wide spread means a noisy machine, not a slow
runner. The final table lists each figure, its baseline, the ratio and the target. When the runner
is over 1.2x raw ``transitions`` per step, or over 2x the bare wall in section 3 (or with
``--profile``), a cProfile of that workload is printed, grouped by package, to show where the time
goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import pstats
import re
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field
from transitions import Machine

from statemachine_agent import CompiledWorkflow, Context, Workflow, guard
from statemachine_agent.events import Event

T = TypeVar("T")

PROJECT = str(Path(__file__).resolve().parents[1]) + "/"

LOOP_STEPS = 50
"""Steps of one run of the loop workflow (section 1)."""
SLEEP = 0.01
"""What each action of the pipeline workflow awaits in section 3, in seconds."""
KB = 1000
"""Bytes in a KB, as the memory target is stated."""
MEMORY_TARGET = 2.0
"""Section 2 target: bytes per in-flight run beyond its context, over the bare async loop's."""
STEP_TARGET = 1.2
"""Section 1 target: runner per-step time over raw ``transitions`` per-step time."""
HOOK_TARGET = 1.1
"""Section 1 target: a step with a no-op hook over the same step without hooks."""
WALL_TARGET = 2.0
"""Section 3 target: runner wall over bare ``async def`` wall."""
SYNC_TARGET = 1.3
"""Section 1 target: ``run_sync`` per step over ``await run`` per step."""
BIG_TARGET = 1.2
"""Section 4 target: a whole run with a never-written 100,000-item field, per step, over a small context."""
BIG_ITEMS = 100_000
SEED_ROUNDS = 25
"""Rounds of the seed workflow's guarded search/refine loop: 1 + 25 + 24 + 1 = 51 steps per run."""
SEED_STEPS = 1 + SEED_ROUNDS + (SEED_ROUNDS - 1) + 1
cpu = time.thread_time
"""The clock of the CPU-bound figures (sections 1 and 4): this thread's CPU time, so that another
process taking the core mid-sample does not count; section 3's wall time is the wall clock."""


@dataclass(frozen=True, slots=True)
class Config:
    """Sizes and repeats; ``--quick`` shrinks them for a smoke run."""

    step_repeats: int
    step_sample_seconds: float
    mem_runs: int
    mem_repeats: int
    wall_runs: int
    wall_repeats: int
    profile_runs: int
    big_repeats: int


FULL = Config(step_repeats=41, step_sample_seconds=0.03, mem_runs=10_000, mem_repeats=5,
              wall_runs=10_000, wall_repeats=5, profile_runs=300, big_repeats=7)
QUICK = Config(step_repeats=7, step_sample_seconds=0.02, mem_runs=1_000, mem_repeats=5,
               wall_runs=1_000, wall_repeats=5, profile_runs=60, big_repeats=5)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the final table."""

    figure: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None
    spread: tuple[float, float] | None = None
    """The min and max of the per-round ratios whose median is ``ratio``."""
    condition: str = ""
    """What the figure holds under."""


# --- small helpers ----------------------------------------------------------------------------------

def median_ratio(values: list[float], baselines: list[float]) -> float:
    """The median of the per-repeat ratios (each pair was measured back to back)."""
    return statistics.median(v / b for v, b in zip(values, baselines, strict=True))


def ratio_spread(values: list[float], baselines: list[float]) -> tuple[float, float]:
    """The min and max of the per-repeat ratios."""
    ratios = [v / b for v, b in zip(values, baselines, strict=True)]
    return min(ratios), max(ratios)


def target_row(figure: str, values: list[float], baselines: list[float], *, scale: float, unit: str,
               baseline_name: str, target: float, condition: str, digits: int = 2) -> Row:
    """A row whose ratio (median of per-round ratios, with their spread) is held to ``<= target``."""
    ratio = median_ratio(values, baselines)
    return Row(figure, f"{statistics.median(values) * scale:.{digits}f} {unit}",
               f"{baseline_name} {statistics.median(baselines) * scale:.{digits}f} {unit}", ratio,
               f"<= {target:g}x", ratio <= target, ratio_spread(values, baselines), condition)


def spread(values: list[float], scale: float, unit: str, digits: int = 2) -> str:
    """``median unit (min .., max ..)`` of ``values``, each multiplied by ``scale``."""
    lo, mid, hi = min(values) * scale, statistics.median(values) * scale, max(values) * scale
    return f"{mid:.{digits}f} {unit} (min {lo:.{digits}f}, max {hi:.{digits}f})"


def rotated(items: list[T], shift: int) -> list[T]:
    """``items`` rotated left by ``shift``, so no variant always runs first."""
    k = shift % len(items)
    return items[k:] + items[:k]


def quiet_logging() -> None:
    """Mute ``transitions``, which logs every trigger at INFO/DEBUG, to WARNING (as the runner does)."""
    logging.getLogger("transitions").setLevel(logging.WARNING)
    logging.getLogger("transitions.core").setLevel(logging.WARNING)


# --- section 1: per-step overhead --------------------------------------------------------------------

class LoopCtx(Context):
    """Context of the loop workflow."""

    counter: int = 0


def build_loop() -> CompiledWorkflow[LoopCtx]:
    """``work`` adds 1 to ``counter`` while ``counter < 50``, then ends in ``done``."""
    wf = Workflow("bench-loop", LoopCtx)

    @wf.state(initial=True, reads=["counter"], writes=["counter"])
    def work(ctx: LoopCtx) -> None:
        ctx.counter += 1

    done = wf.terminal("done")
    failed = wf.terminal("failed", outcome="failure")
    below = guard(lambda ctx: ctx.counter < LOOP_STEPS, name="counter < 50", reads=["counter"])
    wf.transition(work, work, guard=below, max_traversals=LOOP_STEPS)
    wf.transition(work, done, default=True)
    # The checker wants the failure terminal reachable by a declared edge: route validation errors.
    wf.on_error(work, ValueError, failed)
    return wf.compile()


def bare_loop() -> int:
    """The article's agent loop: a dict of actions, each returning the next state, on a dict."""
    ctx: dict[str, Any] = {"counter": 0}

    def work(c: dict[str, Any]) -> str:
        c["counter"] += 1
        return "work" if c["counter"] < LOOP_STEPS else "done"

    actions: dict[str, Callable[[dict[str, Any]], str]] = {"work": work}
    state = "work"
    while True:
        if state == "done":
            break
        state = actions[state](ctx)
    return int(ctx["counter"])


class LoopModel:
    """The model of the raw ``transitions`` machine."""

    def __init__(self) -> None:
        self.counter = 0
        self.state = "work"

    def below(self) -> bool:
        return self.counter < LOOP_STEPS


class RawTransitions:
    """The loop on a raw ``transitions.Machine``: one trigger per step, the guard as a condition."""

    def __init__(self) -> None:
        self.model = LoopModel()
        self.machine = Machine(
            model=self.model,
            states=["work", "done", "failed"],
            initial="work",
            transitions=[
                {"trigger": "next_step", "source": "work", "dest": "work", "conditions": "below"},
                {"trigger": "next_step", "source": "work", "dest": "done"},
            ],
            auto_transitions=False,
        )

        def work(m: LoopModel) -> None:
            m.counter += 1

        self.actions: dict[str, Callable[[LoopModel], None]] = {"work": work}

    def run(self) -> int:
        """One run: reset the model, then act and trigger until ``done``."""
        m, actions = self.model, self.actions
        m.counter = 0
        self.machine.set_state("work", m)
        trigger: Callable[[], bool] = m.next_step  # type: ignore[attr-defined]
        while m.state != "done":
            actions[m.state](m)
            trigger()
        return m.counter


# --- the seed workflow: the peer benchmark's shape (declared reads and writes, a guarded loop) -------

class SeedCtx(Context):
    """A context holding more than a counter: a question, a query, hits, rounds, an answer."""

    question: str
    query: str | None = None
    hits: list[str] = Field(default_factory=list)
    rounds: int = 0
    answer: str | None = None


def build_seed() -> CompiledWorkflow[SeedCtx]:
    """plan -> search <-> refine (guarded: ``rounds < 25``, bounded) -> answer -> done: 51 steps."""
    wf = Workflow("bench-seed", SeedCtx)

    @wf.state(initial=True, reads=["question"], writes=["query"])
    def plan(ctx: SeedCtx) -> None:
        ctx.query = ctx.question

    @wf.state(reads=["query", "rounds"], writes=["hits", "rounds"])
    def search(ctx: SeedCtx) -> None:
        ctx.hits = [f"{ctx.query}"]
        ctx.rounds += 1

    @wf.state(reads=["hits"], writes=["query"])
    def refine(ctx: SeedCtx) -> None:
        ctx.query = ctx.hits[0] + "+"

    @wf.state(reads=["hits"], writes=["answer"])
    def answer(ctx: SeedCtx) -> None:
        ctx.answer = ctx.hits[0]

    done = wf.terminal("done")
    failed = wf.terminal("failed", outcome="failure")
    more = guard(lambda ctx: ctx.rounds < SEED_ROUNDS, name="rounds < 25", reads=["rounds"])
    wf.transition(plan, search)
    wf.transition(search, refine, guard=more, max_traversals=SEED_ROUNDS - 1)
    wf.transition(search, answer, default=True)
    wf.transition(refine, search)
    wf.transition(answer, done)
    wf.on_error(plan, ValueError, failed)
    return wf.compile()


class SeedModel:
    """The raw ``transitions`` model of the seed workflow: the same fields as plain attributes."""

    def __init__(self) -> None:
        self.state = "plan"
        self.reset()

    def reset(self) -> None:
        self.question = "How are loops bounded?"
        self.query: str | None = None
        self.hits: list[str] = []
        self.rounds = 0
        self.answer: str | None = None

    def more(self) -> bool:
        return self.rounds < SEED_ROUNDS


class RawSeed:
    """The seed workflow on a raw ``transitions.Machine``: one trigger per step, the loop's guard
    as a condition, the same actions on a plain object (no validation, no views, no budgets)."""

    def __init__(self) -> None:
        self.model = SeedModel()
        self.machine = Machine(
            model=self.model,
            states=["plan", "search", "refine", "answer", "done", "failed"],
            initial="plan",
            transitions=[
                {"trigger": "next_step", "source": "plan", "dest": "search"},
                {"trigger": "next_step", "source": "search", "dest": "refine", "conditions": "more"},
                {"trigger": "next_step", "source": "search", "dest": "answer"},
                {"trigger": "next_step", "source": "refine", "dest": "search"},
                {"trigger": "next_step", "source": "answer", "dest": "done"},
            ],
            auto_transitions=False,
        )

        def plan(m: SeedModel) -> None:
            m.query = m.question

        def search(m: SeedModel) -> None:
            m.hits = [f"{m.query}"]
            m.rounds += 1

        def refine(m: SeedModel) -> None:
            m.query = m.hits[0] + "+"

        def answer(m: SeedModel) -> None:
            m.answer = m.hits[0]

        self.actions: dict[str, Callable[[SeedModel], None]] = {
            "plan": plan, "search": search, "refine": refine, "answer": answer}

    def run(self) -> int:
        """One run from a fresh context: act and trigger until ``done``; the steps taken."""
        m, actions = self.model, self.actions
        m.reset()
        self.machine.set_state("plan", m)
        trigger: Callable[[], bool] = m.next_step  # type: ignore[attr-defined]
        steps = 0
        while m.state != "done":
            actions[m.state](m)
            trigger()
            steps += 1
        return steps


def seed_context() -> SeedCtx:
    return SeedCtx(question="How are loops bounded?")


class Token:
    """A bare model for a model-less machine, as the runner uses one per run."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = "work"


def machine_trigger_timer(compiled: CompiledWorkflow[LoopCtx]) -> Callable[[int], float]:
    """Time the runner's share of ``transitions``: the move of each step, fired on the compiled
    workflow's shared machine with a token (its lean event: the move checked against the machine's
    table and recorded on the token)."""
    event = compiled.machine.events["work_to_work"]
    token = Token()

    def timer(runs: int) -> float:
        t0 = cpu()
        for _ in range(runs * LOOP_STEPS):
            event.trigger(token)
        return cpu() - t0

    return timer


def copy_assign_timer() -> Callable[[int], float]:
    """Time the runner's share of pydantic: the step's validated assignment."""
    ctx = LoopCtx()

    def timer(runs: int) -> float:
        t0 = cpu()
        for _ in range(runs * LOOP_STEPS):
            ctx.counter = ctx.counter + 1
        return cpu() - t0

    return timer


async def empty() -> None:
    """Nothing: ``asyncio.run(empty())`` is the fixed cost ``run_sync`` adds per run."""


def asyncio_run_timer(runs: int) -> float:
    t0 = cpu()
    for _ in range(runs):
        asyncio.run(empty())
    return cpu() - t0


def noop_hook(event: Event) -> None:
    """A hook that does nothing: measures the cost of building and delivering events."""


def time_sync(fn: Callable[[], object], runs: int) -> float:
    """CPU seconds for ``runs`` calls of ``fn``."""
    t0 = cpu()
    for _ in range(runs):
        fn()
    return cpu() - t0


async def time_async(make: Callable[[], Awaitable[object]], runs: int) -> float:
    """CPU seconds for ``runs`` awaits of ``make()``, inside the already-running loop."""
    t0 = cpu()
    for _ in range(runs):
        await make()
    return cpu() - t0


@dataclass
class StepVariant:
    """One way of running the loop, timed in samples of ``runs`` runs."""

    name: str
    timer: Callable[[int], float]
    steps: int = LOOP_STEPS
    """Steps per run (a sample is divided by them)."""
    runs: int = 1
    samples: list[float] | None = None

    def calibrate(self, seconds: float) -> None:
        """Pick ``runs`` so that one sample takes about ``seconds`` (after a warm-up)."""
        self.timer(3)
        probe = 5
        took = self.timer(probe)
        while took < 0.01:
            probe *= 4
            took = self.timer(probe)
        self.runs = max(1, round(seconds / (took / probe)))
        self.samples = []

    def sample(self) -> None:
        gc.collect()
        assert self.samples is not None
        self.samples.append(self.timer(self.runs) / (self.runs * self.steps))


def paired(cfg: Config, loop: asyncio.AbstractEventLoop | None, a: Callable[[], object], b: Callable[[], object],
           steps: int) -> tuple[list[float], list[float]]:
    """CPU seconds per step of ``a`` and of ``b`` per round, their runs alternated one by one (a b,
    b a, a b, ...) so that both see the same machine: on a shared one, contention drifts between
    samples taken a second apart, not between runs a millisecond apart. ``loop``: run them in it
    (``a``/``b`` may return a coroutine, then awaited); ``None``: call them from plain code."""
    async def in_loop(n: int) -> tuple[float, float]:
        spent = {a: 0.0, b: 0.0}
        for i in range(n):
            for fn in (a, b) if i % 2 == 0 else (b, a):
                t0 = cpu()
                out = fn()
                if asyncio.iscoroutine(out):
                    await out
                spent[fn] += cpu() - t0
        return spent[a], spent[b]

    def plain(n: int) -> tuple[float, float]:
        spent = {a: 0.0, b: 0.0}
        for i in range(n):
            for fn in (a, b) if i % 2 == 0 else (b, a):
                t0 = cpu()
                fn()
                spent[fn] += cpu() - t0
        return spent[a], spent[b]

    def timed(n: int) -> tuple[float, float]:
        return loop.run_until_complete(in_loop(n)) if loop is not None else plain(n)

    timed(3)
    probe = 4
    while sum(timed(probe)) < 0.01:
        probe *= 4
    n = max(2, round(2 * cfg.step_sample_seconds / (sum(timed(probe)) / probe)))
    a_s: list[float] = []
    b_s: list[float] = []
    for _ in range(cfg.step_repeats):
        gc.collect()
        ta, tb = timed(n)
        a_s.append(ta / (n * steps))
        b_s.append(tb / (n * steps))
    return a_s, b_s


def section_steps(cfg: Config, loop: asyncio.AbstractEventLoop,
                  force_profile: bool) -> tuple[list[Row], float]:
    """Section 1; returns the table rows and the median seconds of one bare ``transitions`` trigger."""
    print(f"\n== 1. Per-step overhead: a {LOOP_STEPS}-step bounded loop, trivial action; the {SEED_STEPS}-step "
          "seed workflow (CPU time per step) ==")
    compiled = build_loop()
    raw = RawTransitions()

    # Every variant must really do the loop before it is timed.
    assert bare_loop() == LOOP_STEPS
    assert raw.run() == LOOP_STEPS
    assert raw.model.state == "done"
    sync_result = compiled.run_sync(LoopCtx())
    assert sync_result.terminal == "done", sync_result
    assert sync_result.context.counter == LOOP_STEPS
    assert sync_result.steps == LOOP_STEPS
    hooked = loop.run_until_complete(compiled.run(LoopCtx(), hooks=[noop_hook]))
    assert hooked.terminal == "done", hooked
    assert hooked.context.counter == LOOP_STEPS
    seed, raw_seed = build_seed(), RawSeed()
    assert raw_seed.run() == SEED_STEPS
    seeded = seed.run_sync(seed_context())
    assert seeded.terminal == "done", seeded
    assert seeded.steps == SEED_STEPS, seeded
    assert seeded.context.rounds == SEED_ROUNDS
    assert seeded.context.answer == raw_seed.model.answer

    def seed_await(runs: int, hooks: list[Callable[[Event], None]] | None = None) -> float:
        return loop.run_until_complete(time_async(lambda: seed.run(seed_context(), hooks=hooks or []), runs))

    def run_await(runs: int) -> float:
        return loop.run_until_complete(time_async(lambda: compiled.run(LoopCtx()), runs))

    def run_hooked(runs: int) -> float:
        return loop.run_until_complete(time_async(lambda: compiled.run(LoopCtx(), hooks=[noop_hook]), runs))

    variants = [
        StepVariant("bare dict loop", lambda n: time_sync(bare_loop, n)),
        StepVariant("raw transitions", lambda n: time_sync(raw.run, n)),
        StepVariant("runner run_sync", lambda n: time_sync(lambda: compiled.run_sync(LoopCtx()), n)),
        StepVariant("runner await run", run_await),
        StepVariant("runner await run + no-op hook", run_hooked),
        StepVariant("seed: raw transitions", lambda n: time_sync(raw_seed.run, n), SEED_STEPS),
        StepVariant("seed: runner run_sync", lambda n: time_sync(lambda: seed.run_sync(seed_context()), n),
                    SEED_STEPS),
        StepVariant("seed: runner await run", seed_await, SEED_STEPS),
        StepVariant("seed: await run + no-op hook", lambda n: seed_await(n, [noop_hook]), SEED_STEPS),
        StepVariant("piece: transitions trigger", machine_trigger_timer(compiled)),
        StepVariant("piece: pydantic validated set", copy_assign_timer()),
        StepVariant("piece: asyncio.run(empty) / 50", asyncio_run_timer),
    ]
    for v in variants:
        v.calibrate(cfg.step_sample_seconds)
    for r in range(cfg.step_repeats):
        for v in rotated(variants, r):
            v.sample()

    by = {v.name: v.samples or [] for v in variants}
    bare, rawt = by["bare dict loop"], by["raw transitions"]
    for v in variants:
        print(f"  {v.name:32} {spread(by[v.name], 1e6, 'µs/step', 3):44} "
              f"[{v.runs} runs x {cfg.step_repeats} repeats]")

    step = statistics.median(by["runner await run"])
    trig = statistics.median(by["piece: transitions trigger"])
    trig_share = median_ratio(by["piece: transitions trigger"], by["runner await run"])
    pyd_share = median_ratio(by["piece: pydantic validated set"], by["runner await run"])
    print("  an awaited runner step, decomposed (pieces timed alone; share = median per-repeat ratio):")
    for what, share in (("the move on the shared transitions machine (lean trigger)", trig_share),
                        ("pydantic validated assignment", pyd_share),
                        ("the rest: view, guard, budgets, clocks, Step, asyncio",
                         1 - trig_share - pyd_share)):
        print(f"    {what:56} {share * step * 1e6:7.2f} µs  {100 * share:5.1f} %")

    gap = (statistics.median(by["runner run_sync"]) - step) * LOOP_STEPS
    fresh = statistics.median(by["piece: asyncio.run(empty) / 50"]) * LOOP_STEPS
    print(f"  run_sync - await run: {gap * 1e6:.0f} µs per run; asyncio.run of an empty coroutine "
          f"(a fresh event loop) costs {fresh * 1e6:.0f} µs")

    rows: list[Row] = []
    print("  ratios (median of per-repeat ratios):")
    for name in ("runner await run", "runner run_sync", "runner await run + no-op hook"):
        vs_raw, vs_bare = median_ratio(by[name], rawt), median_ratio(by[name], bare)
        print(f"    {name:32} {vs_raw:6.2f}x raw transitions   {vs_bare:8.1f}x bare loop")
    raw_seed_t = by["seed: raw transitions"]
    for name in ("seed: runner await run", "seed: runner run_sync", "seed: await run + no-op hook"):
        print(f"    {name:32} {median_ratio(by[name], raw_seed_t):6.2f}x raw transitions (seed)")
    per_step: dict[str, Any] = {"scale": 1e6, "unit": "µs/step"}
    paired_how = (f"CPU time; {cfg.step_repeats} rounds, in each the two sides' runs alternated one by one")
    loop_cond = f"{LOOP_STEPS}-step runs of a 1-state loop (counter += 1), fresh context per run; {paired_how}"
    seed_cond = (f"{SEED_STEPS}-step runs of the seed workflow (4 states with reads/writes, a guarded loop), "
                 f"fresh context per run; {paired_how}")
    print(f"  paired rounds (each target below: its runs alternated one by one with its baseline's, "
          f"{cfg.step_repeats} rounds):")
    seed_sync, seed_raw_1 = paired(cfg, None, lambda: seed.run_sync(seed_context()), raw_seed.run, SEED_STEPS)
    seed_await, seed_raw_2 = paired(cfg, loop, lambda: seed.run(seed_context()), raw_seed.run, SEED_STEPS)
    seed_hook, seed_plain = paired(cfg, loop, lambda: seed.run(seed_context(), hooks=[noop_hook]),
                                   lambda: seed.run(seed_context()), SEED_STEPS)
    loop_sync, loop_raw_1 = paired(cfg, None, lambda: compiled.run_sync(LoopCtx()), raw.run, LOOP_STEPS)
    loop_await, loop_raw_2 = paired(cfg, loop, lambda: compiled.run(LoopCtx()), raw.run, LOOP_STEPS)
    loop_hook, loop_plain = paired(cfg, loop, lambda: compiled.run(LoopCtx(), hooks=[noop_hook]),
                                   lambda: compiled.run(LoopCtx()), LOOP_STEPS)
    rows += [
        target_row("1. seed: await run vs raw transitions", seed_await, seed_raw_2,
                   baseline_name="raw transitions", target=STEP_TARGET, condition=seed_cond, **per_step),
        target_row("1. seed: run_sync vs raw transitions", seed_sync, seed_raw_1,
                   baseline_name="raw transitions", target=STEP_TARGET,
                   condition=seed_cond + "; run_sync's event loop per run included", **per_step),
        target_row("1. seed: no-op hook vs no hook", seed_hook, seed_plain,
                   baseline_name="no hook", target=HOOK_TARGET,
                   condition=seed_cond + "; await run, every event built and delivered", **per_step),
        target_row("1. loop: await run vs raw transitions", loop_await, loop_raw_2,
                   baseline_name="raw transitions", target=STEP_TARGET, condition=loop_cond, **per_step),
        target_row("1. loop: run_sync vs raw transitions", loop_sync, loop_raw_1,
                   baseline_name="raw transitions", target=STEP_TARGET,
                   condition=loop_cond + "; run_sync's event loop per run included", **per_step),
        target_row("1. loop: no-op hook vs no hook", loop_hook, loop_plain,
                   baseline_name="no hook", target=HOOK_TARGET,
                   condition=loop_cond + "; await run, every event built and delivered", **per_step),
        target_row("1. loop: run_sync vs await run", by["runner run_sync"], by["runner await run"],
                   baseline_name="await run", target=SYNC_TARGET,
                   condition=f"as the loop's rows, CPU time, {cfg.step_repeats} rotated rounds", **per_step),
    ]
    for name in ("runner await run", "runner run_sync"):
        rows.append(Row(f"1. loop: {name.removeprefix('runner ')}, vs bare",
                        f"{statistics.median(by[name]) * 1e6:.2f} µs/step",
                        f"bare dict loop {statistics.median(bare) * 1e6:.3f} µs/step",
                        median_ratio(by[name], bare), "info", None, ratio_spread(by[name], bare),
                        "no safety at all in the baseline"))

    worst = max(median_ratio(by[n], b) for n, b in (("runner await run", rawt), ("runner run_sync", rawt),
                                                     ("seed: runner await run", raw_seed_t),
                                                     ("seed: runner run_sync", raw_seed_t)))
    if force_profile or worst > STEP_TARGET:
        runs = cfg.profile_runs

        async def many() -> None:
            for _ in range(runs):
                await compiled.run(LoopCtx())

        profile(f"{runs} awaited runs of the loop", many, loop, runs * LOOP_STEPS)

        async def seeds() -> None:
            for _ in range(runs):
                await seed.run(seed_context())

        profile(f"{runs} awaited runs of the seed workflow", seeds, loop, runs * SEED_STEPS)
    return rows, trig


def short_path(filename: str) -> str:
    """A source path without the interpreter's, the venv's or the project's prefix."""
    if filename.startswith(PROJECT):
        return filename[len(PROJECT):]
    return re.sub(r"^.*?(site-packages/|lib/python3\.\d+/)", "", filename)


def profile(label: str, make: Callable[[], Coroutine[Any, Any, object]], loop: asyncio.AbstractEventLoop,
            steps: int) -> None:
    """cProfile one ``make()`` in ``loop``; print the own time per package and the top functions."""
    print(f"\n  cProfile of {label} ({steps:,} steps; read shares, not times: profiling inflates "
          "small calls most):")
    prof = cProfile.Profile()
    prof.enable()
    loop.run_until_complete(make())
    prof.disable()
    raw_stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw_stats.values()) or 1.0

    def package(filename: str) -> str:
        for key, group in (("statemachine_agent", "statemachine_agent (runner)"),
                           ("transitions", "transitions (machine)"), ("pydantic", "pydantic (context)"),
                           ("logging", "logging (calls below level)"), ("asyncio", "asyncio (event loop)"),
                           ("copy.py", "copy"), ("uuid", "uuid"), ("inspect.py", "inspect")):
            if key in filename:
                return group
        if filename == "~":
            return "builtins (isinstance, getattr, ...)"
        return "other (benchmark code, stdlib)"

    shares: dict[str, float] = {}
    for (filename, _line, _fn), v in raw_stats.items():
        shares[package(filename)] = shares.get(package(filename), 0.0) + v[2]
    print("    own time by package:")
    for name, t in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"      {name:38} {100 * t / total:5.1f} %")
    print("    top functions by own time (calls per step, own %, cumulative %):")
    for (filename, line, fn), v in sorted(raw_stats.items(), key=lambda kv: -kv[1][2])[:14]:
        where = "builtin" if filename == "~" else short_path(filename)
        print(f"      {v[1] / steps:5.1f}  {100 * v[2] / total:5.1f} %  {100 * v[3] / total:5.1f} %  "
              f"{fn} ({where}:{line})")


# --- the pipeline workflow (sections 2 and 3) ------------------------------------------------------------

class PipeCtx(Context):
    """Context of the research-shaped pipeline, without the refine loop."""

    question: str
    query: str | None = None
    hits: list[str] | None = None
    answer: str | None = None


Pause = Callable[[str], Awaitable[None]]
"""What each action awaits, given the state's name (a sleep, or a gate)."""


def build_pipeline(pause: Pause) -> CompiledWorkflow[PipeCtx]:
    """plan -> search -> summarize -> done; each action awaits ``pause`` then writes one field."""
    wf = Workflow("bench-pipeline", PipeCtx)

    @wf.state(initial=True, reads=["question"], writes=["query"])
    async def plan(ctx: PipeCtx) -> None:
        await pause("plan")
        ctx.query = ctx.question.lower()

    @wf.state(reads=["query"], writes=["hits"])
    async def search(ctx: PipeCtx) -> None:
        await pause("search")
        assert ctx.query is not None
        ctx.hits = [ctx.query]

    @wf.state(reads=["hits"], writes=["answer"])
    async def summarize(ctx: PipeCtx) -> None:
        await pause("summarize")
        assert ctx.hits is not None
        ctx.answer = ctx.hits[0]

    done = wf.terminal("done")
    not_found = wf.terminal("not_found", outcome="failure")
    has_hits = guard(lambda ctx: bool(ctx.hits), name="has hits", reads=["hits"])
    wf.transition(plan, search)
    wf.transition(search, summarize, guard=has_hits)
    wf.transition(search, not_found, default=True)
    wf.transition(summarize, done)
    return wf.compile()


async def bare_pipeline(ctx: PipeCtx, pause: Pause) -> str:
    """The same work as bare ``async def`` functions in the article's dict-dispatch loop."""

    async def plan(c: PipeCtx) -> str:
        await pause("plan")
        c.query = c.question.lower()
        return "search"

    async def search(c: PipeCtx) -> str:
        await pause("search")
        assert c.query is not None
        c.hits = [c.query]
        return "summarize" if c.hits else "not_found"

    async def summarize(c: PipeCtx) -> str:
        await pause("summarize")
        assert c.hits is not None
        c.answer = c.hits[0]
        return "done"

    actions: dict[str, Callable[[PipeCtx], Coroutine[Any, Any, str]]] = {
        "plan": plan, "search": search, "summarize": summarize,
    }
    state = "plan"
    while state not in ("done", "not_found"):
        state = await actions[state](ctx)
    return state


def question(i: int) -> str:
    return f"How does the checker bound loop number {i}?"


# --- section 2: memory per in-flight run ---------------------------------------------------------------

class Gate:
    """Parks every run in ``search`` until released; tells when all ``expected`` runs are parked."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.parked = 0
        self.open = asyncio.Event()
        self.all_parked = asyncio.Event()

    async def pause(self, state: str) -> None:
        if state != "search":
            return
        self.parked += 1
        if self.parked == self.expected:
            self.all_parked.set()
        await self.open.wait()


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def bytes_per_context(n: int) -> float:
    before = traced()
    contexts = [PipeCtx(question=question(i)) for i in range(n)]
    after = traced()
    assert len(contexts) == n
    return (after - before) / n


async def bytes_per_run(n: int, runner: bool) -> float:
    """Bytes allocated per run, contexts included, with all ``n`` runs parked in ``search``."""
    gate = Gate(n)
    compiled = build_pipeline(gate.pause) if runner else None
    before = traced()
    contexts = [PipeCtx(question=question(i)) for i in range(n)]
    tasks: list[asyncio.Task[Any]]
    if compiled is not None:
        tasks = [asyncio.create_task(compiled.run(c)) for c in contexts]
    else:
        tasks = [asyncio.create_task(bare_pipeline(c, gate.pause)) for c in contexts]
    await asyncio.wait_for(gate.all_parked.wait(), timeout=120)
    after = traced()
    gate.open.set()
    results = await asyncio.gather(*tasks)
    terminals = [r.terminal if compiled is not None else r for r in results]
    assert all(t == "done" for t in terminals), terminals[0]
    return (after - before) / n


def section_memory(cfg: Config, loop: asyncio.AbstractEventLoop) -> list[Row]:
    n = cfg.mem_runs
    print(f"\n== 2. Memory per in-flight run: {n} runs parked mid-run in one loop (tracemalloc) ==")
    tracemalloc.start()
    try:
        # Warm up: first runs fill caches (pydantic, asyncio, code paths) that are not per run.
        loop.run_until_complete(bytes_per_run(50, True))
        loop.run_until_complete(bytes_per_run(50, False))
        ctx_b: list[float] = []
        run_b: list[float] = []
        bare_b: list[float] = []
        for r in range(cfg.mem_repeats):
            for which in rotated(["ctx", "runner", "bare"], r):
                if which == "ctx":
                    ctx_b.append(loop.run_until_complete(bytes_per_context(n)))
                elif which == "runner":
                    run_b.append(loop.run_until_complete(bytes_per_run(n, True)))
                else:
                    bare_b.append(loop.run_until_complete(bytes_per_run(n, False)))
    finally:
        tracemalloc.stop()
    ctx_size = statistics.median(ctx_b)
    runner_beyond = [r - c for r, c in zip(run_b, ctx_b, strict=True)]
    bare_beyond = [b - c for b, c in zip(bare_b, ctx_b, strict=True)]
    print(f"  {'one context':32} {spread(ctx_b, 1, 'B', 0)}")
    print(f"  {'runner run, context included':32} {spread(run_b, 1, 'B', 0)}")
    print(f"  {'bare loop, context included':32} {spread(bare_b, 1, 'B', 0)}")
    r_med, b_med = statistics.median(runner_beyond), statistics.median(bare_beyond)
    print(f"  beyond the context: runner {r_med:.0f} B, bare async loop {b_med:.0f} B "
          f"(runner - bare = {r_med - b_med:.0f} B per run)")
    ratio = median_ratio(runner_beyond, bare_beyond) if min(bare_beyond) > 0 else None
    cond = (f"{n:,} runs parked mid-run in one event loop, tracemalloc, context size subtracted; "
            f"{cfg.mem_repeats} rotated rounds")
    return [
        Row(f"2. memory of {n:,} in-flight runs", f"{r_med / KB:.2f} KB/run",
            f"bare async loop {b_med / KB:.2f} KB/run", ratio, f"<= {MEMORY_TARGET:g}x",
            ratio is not None and ratio <= MEMORY_TARGET,
            ratio_spread(runner_beyond, bare_beyond) if ratio is not None else None, cond),
        Row("2. one context (subtracted above)", f"{ctx_size / KB:.2f} KB", "-", None, "info", None),
    ]


# --- section 3: wall time of many concurrent runs --------------------------------------------------------

async def sleep_pause(state: str) -> None:
    await asyncio.sleep(SLEEP)


async def wall_runner(compiled: CompiledWorkflow[PipeCtx], n: int) -> float:
    contexts = [PipeCtx(question=question(i)) for i in range(n)]
    gc.collect()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(compiled.run(c) for c in contexts))
    wall = time.perf_counter() - t0
    assert all(r.terminal == "done" for r in results), results[0]
    return wall


async def wall_bare(n: int) -> float:
    contexts = [PipeCtx(question=question(i)) for i in range(n)]
    gc.collect()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(bare_pipeline(c, sleep_pause) for c in contexts))
    wall = time.perf_counter() - t0
    assert all(r == "done" for r in results), results[0]
    return wall


def section_wall(cfg: Config, loop: asyncio.AbstractEventLoop, force_profile: bool,
                 trigger: float) -> list[Row]:
    n = cfg.wall_runs
    print(f"\n== 3. Wall time of {n:,} concurrent runs (plan -> search -> summarize -> done, "
          f"{SLEEP * 1000:g} ms sleep per action) ==")
    compiled = build_pipeline(sleep_pause)
    loop.run_until_complete(wall_runner(compiled, min(n, 200)))  # warm up
    loop.run_until_complete(wall_bare(min(n, 200)))
    runner_w: list[float] = []
    bare_w: list[float] = []
    for r in range(cfg.wall_repeats):
        for which in rotated(["runner", "bare"], r):
            if which == "runner":
                runner_w.append(loop.run_until_complete(wall_runner(compiled, n)))
            else:
                bare_w.append(loop.run_until_complete(wall_bare(n)))
    floor = 3 * SLEEP
    print(f"  {'runner (asyncio.gather)':32} {spread(runner_w, 1, 's', 3)}")
    print(f"  {'bare async def (asyncio.gather)':32} {spread(bare_w, 1, 's', 3)}")
    print(f"  floor (3 sleeps): {floor:.3f} s")
    r_med, b_med = statistics.median(runner_w), statistics.median(bare_w)
    extra = (r_med - b_med) / n * 1e6
    print(f"  runner cost beyond bare: {extra:.0f} µs per run, {extra / 3:.0f} µs per step "
          f"(one core runs them all: CPU-bound, not sleep-bound)")
    print(f"  the {3 * n:,} transitions triggers alone (at {trigger * 1e6:.1f} µs, section 1) take "
          f"{3 * n * trigger:.3f} s = {3 * n * trigger / b_med:.2f}x the bare wall")
    ratio = median_ratio(runner_w, bare_w)
    if force_profile or ratio > WALL_TARGET:
        runs = min(n, 2000)

        async def gathered() -> None:
            await asyncio.gather(*(compiled.run(PipeCtx(question=question(i))) for i in range(runs)))

        profile(f"{runs:,} gathered pipeline runs", gathered, loop, runs * 3)
    cond = (f"{n:,} runs of a 3-step pipeline gathered in one event loop, {SLEEP * 1000:g} ms sleep per action, "
            f"wall clock, garbage collector on; {cfg.wall_repeats} rotated rounds")
    return [Row(f"3. wall of {n:,} concurrent runs", f"{r_med:.3f} s", f"bare async def {b_med:.3f} s",
                ratio, f"<= {WALL_TARGET:g}x", ratio <= WALL_TARGET, ratio_spread(runner_w, bare_w), cond)]


# --- section 4: a whole run with a big field it never writes ------------------------------------------

class BigCtx(Context):
    """The loop's counter, and a list no step writes (small or 100,000 items)."""

    counter: int = 0
    items: list[int] = Field(default_factory=list)


def build_big() -> CompiledWorkflow[BigCtx]:
    """The loop of section 1 on ``BigCtx``: ``items`` is never read nor written."""
    wf = Workflow("bench-big", BigCtx)

    @wf.state(initial=True, reads=["counter"], writes=["counter"])
    def work(ctx: BigCtx) -> None:
        ctx.counter += 1

    done = wf.terminal("done")
    failed = wf.terminal("failed", outcome="failure")
    below = guard(lambda ctx: ctx.counter < LOOP_STEPS, name="counter < 50", reads=["counter"])
    wf.transition(work, work, guard=below, max_traversals=LOOP_STEPS)
    wf.transition(work, done, default=True)
    wf.on_error(work, ValueError, failed)
    return wf.compile()


def section_big(cfg: Config, loop: asyncio.AbstractEventLoop) -> list[Row]:
    """Section 4: whole runs (start to result) on a context with a never-written big list vs a small one."""
    print(f"\n== 4. A whole run with a never-written {BIG_ITEMS:,}-item field, per step, vs a small context ==")
    compiled = build_big()
    small, big = BigCtx(items=[1, 2, 3]), BigCtx(items=list(range(BIG_ITEMS)))
    result = loop.run_until_complete(compiled.run(big))
    assert result.context.counter == LOOP_STEPS
    assert result.context.items is big.items  # not copied

    def timer(ctx: BigCtx) -> Callable[[int], float]:
        return lambda n: loop.run_until_complete(time_async(lambda: compiled.run(ctx), n))

    variants = [StepVariant("small context", timer(small)), StepVariant("never-written big field", timer(big))]
    for v in variants:
        v.calibrate(cfg.step_sample_seconds)
    for r in range(cfg.big_repeats):
        for v in rotated(variants, r):
            v.sample()
    small_t, big_t = (v.samples or [] for v in variants)
    for v in variants:
        print(f"  {v.name:32} {spread(v.samples or [], 1e6, 'µs/step', 3)}")
    cond = (f"{LOOP_STEPS}-step runs (await run), start to result, the same context object each run; CPU time, "
            f"{cfg.big_repeats} rotated rounds")
    return [target_row(f"4. never-written {BIG_ITEMS // 1000}k-item field vs small", big_t, small_t, scale=1e6,
                       unit="µs/step", baseline_name="small", target=BIG_TARGET, condition=cond)]


# --- the table ----------------------------------------------------------------------------------------

def print_table(rows: list[Row]) -> None:
    header = ("figure", "value", "baseline", "ratio", "(min, max)", "target", "met")
    cells = [
        (r.figure, r.value, r.baseline, "-" if r.ratio is None else f"{r.ratio:.2f}x",
         "" if r.spread is None else f"({r.spread[0]:.2f}, {r.spread[1]:.2f})", r.target,
         "info" if r.met is None else ("PASS" if r.met else "FAIL"))
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    print("\n== Summary (medians; ratio = median of per-round ratios, value / baseline; (min, max) of them) ==")
    print(line(header))
    print(line(tuple("-" * w for w in widths)))
    for c in cells:
        print(line(c))
    print("\nConditions:")
    for r in rows:
        if r.condition:
            print(f"  {r.figure}: {r.condition}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (~10 s)")
    parser.add_argument("--profile", action="store_true",
                        help="print the cProfile breakdown of the runner even if it is within target")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    quiet_logging()
    started = time.perf_counter()
    print(f"statemachine-agent runner benchmark ({'quick' if args.quick else 'full'}); "
          f"Python {sys.version.split()[0]}, {sys.platform}")
    loop = asyncio.new_event_loop()
    try:
        rows, trigger = section_steps(cfg, loop, args.profile)
        rows += section_memory(cfg, loop)
        rows += section_wall(cfg, loop, args.profile, trigger)
        rows += section_big(cfg, loop)
    finally:
        loop.close()
    print_table(rows)
    print(f"\n(total {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
