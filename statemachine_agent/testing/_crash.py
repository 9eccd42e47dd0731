"""Crash schedules: a durable run abandoned between two store operations, then resumed from its store.

:func:`check_crashes` runs every generated input twice, each on its own store (SQLite, in memory):
once without interruption (the reference), and once abandoned at drawn points, each point a store
write of the attempt (before it ran, or after it took effect), then resumed from the store (by one
worker, or by two at once), until the run ends. Nothing is killed: the attempt stops as a killed
process would, mid-await, and its objects are dropped. What the resumed run did is then checked
against docs/durability.md's guarantees and the user's invariants. Shrinking gives the fewest and
earliest crashes that break one; the story saves as JSON that :func:`replay_crashes` runs again.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import functools
import inspect
import itertools
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from ..clock import FakeClock
from ..compile import CompiledWorkflow, compile_spec
from ..errors import RunFenced, RunNotFound
from ..policies import Decision
from ..result import RunResult
from ..stores import MemoryStore, Store
from ..stores._records import CallStatus, InboxRecord, StepRecord, StoredRun
from ..workflow import Workflow
from ._stories import _PHASES, Invariant, _as_json, _checked_invariants, _compiled, _holds, _short
from ._strategies import contexts

__all__ = ["CrashPoint", "check_crashes", "replay_crashes"]


class _Crash(BaseException):
    """The worker died here (in process: nothing is killed; the attempt's objects are dropped)."""


@dataclasses.dataclass(frozen=True)
class CrashPoint:
    """Where an attempt dies: at its ``op``-th store write (from 0), ``after`` it took effect or
    before it ran."""

    op: int
    after: bool

    def to_json(self) -> list[Any]:
        return [self.op, self.after]


_WRITES = ("create", "claim", "claim_tail", "claim_waiting", "claim_waiting_tail", "mark_started", "commit",
           "suspend", "record_call", "deliver")


class _CrashingStore(Store):
    """A real store whose writes may be the last thing a worker does: at the armed point the attempt
    raises :class:`_Crash` before the write, or after it committed (its caller never hears back)."""

    def __init__(self, inner: Store, lines: list[str]) -> None:
        self.inner = inner
        self.snapshot_every = inner.snapshot_every
        self.secrets = inner.secrets
        self.lines = lines
        self.point: CrashPoint | None = None
        self.ops = 0
        self.total = 0
        """Writes made through this store, every attempt's."""
        self.names: list[str] = []
        """What each of those writes was, in order."""

    def arm(self, point: CrashPoint | None) -> None:
        self.point, self.ops = point, 0

    def _write(self, name: str, call: Callable[[], Future[Any]]) -> Future[Any]:
        n = self.ops
        self.ops += 1
        self.total += 1
        self.names.append(name)
        point = self.point
        if point is None or point.op != n:
            return call()
        self.point = None
        if point.after:
            future = call()
            try:
                future.result(timeout=60)
            except Exception as exc:
                self.lines.append(f"    ({name} failed: {type(exc).__name__})")
        self.lines.append(f"    CRASH {'after' if point.after else 'before'} store write {n} ({name})")
        raise _Crash

    def create(self, run: Any, context: Any) -> Future[None]:
        return self._write("create", lambda: self.inner.create(run, context))

    def claim(self, run_id: str) -> Future[StoredRun]:
        return self._write("claim", lambda: self.inner.claim(run_id))

    def claim_tail(self, run_id: str) -> Future[StoredRun]:
        return self._write("claim", lambda: self.inner.claim_tail(run_id))

    def claim_waiting(self, run_id: str) -> Future[StoredRun | None]:
        return self._write("claim_waiting", lambda: self.inner.claim_waiting(run_id))

    def claim_waiting_tail(self, run_id: str) -> Future[StoredRun | None]:
        return self._write("claim_waiting", lambda: self.inner.claim_waiting_tail(run_id))

    def mark_started(self, run_id: str, epoch: int) -> Future[None]:
        return self._write("mark_started", lambda: self.inner.mark_started(run_id, epoch))

    def commit(self, commit: Any) -> Future[list[InboxRecord]]:
        step = commit["step"]["number"]
        return self._write(f"commit of step {step}", lambda: self.inner.commit(commit))

    def suspend(self, run: Any, epoch: int, snapshot: dict[str, Any]) -> Future[list[InboxRecord]]:
        return self._write("suspend", lambda: self.inner.suspend(run, epoch, snapshot))

    def record_call(self, run_id: str, epoch: int, call: Any) -> Future[None]:
        what = f"journal {call['status']} of {call['tool']} {call['step']}/{call['call']}"
        return self._write(what, lambda: self.inner.record_call(run_id, epoch, call))

    def deliver(self, run_id: str, event: str, payload: Any) -> Future[int]:
        return self._write(f"delivery of {event!r}", lambda: self.inner.deliver(run_id, event, payload))

    def load(self, run_id: str, *, at_step: int | None = None) -> Future[StoredRun]:
        return self.inner.load(run_id, at_step=at_step)

    def load_tail(self, run_id: str) -> Future[StoredRun]:
        return self.inner.load_tail(run_id)

    def load_steps(self, run_id: str, start: int, stop: int) -> Future[list[StepRecord]]:
        return self.inner.load_steps(run_id, start, stop)

    def list_runs(self, workflow: str | None = None) -> Future[Any]:
        return self.inner.list_runs(workflow)

    def due_runs(self, workflow: str, now: float) -> Future[list[str]]:
        return self.inner.due_runs(workflow, now)

    def fork(self, source: str, at_step: int, run: Any, context: dict[str, Any]) -> Future[None]:
        return self.inner.fork(source, at_step, run, context)

    def close(self) -> None:
        self.inner.close()


def _counted(compiled: CompiledWorkflow[Any], effects: collections.Counter[str]) -> CompiledWorkflow[Any]:
    """A copy of the workflow whose tools count their executions (every option kept: effect,
    reconcile, retries, timeouts)."""
    spec = compiled.spec
    tools = []
    for tool in spec.tools:
        original = tool.fn

        def make(original: Callable[..., Any], name: str) -> Callable[..., Any]:
            if inspect.iscoroutinefunction(original):
                @functools.wraps(original)
                async def acall(*args: Any, **kwargs: Any) -> Any:
                    effects[name] += 1
                    return await original(*args, **kwargs)
                return acall

            @functools.wraps(original)
            def call(*args: Any, **kwargs: Any) -> Any:
                effects[name] += 1
                return original(*args, **kwargs)
            return call

        tools.append(_copy_tool(tool, make(original, tool.name)))
    return compile_spec(dataclasses.replace(spec, tools=tuple(tools)))


def _copy_tool(tool: Any, fn: Callable[..., Any]) -> Any:
    """``tool`` calling ``fn`` (same signature) instead, with every option as it was."""
    out = copy.copy(tool)
    out.fn = fn
    return out


@dataclasses.dataclass
class _Script:
    """What a run is given, keyed by step number, so a step run again after a crash gets the same:
    the policy's answers and the payloads delivered to waits."""

    draw: Callable[[st.SearchStrategy[Any], str], Any] | None
    answers: dict[int, str] = dataclasses.field(default_factory=dict)
    payloads: dict[int, Any] = dataclasses.field(default_factory=dict)

    def answer(self, decision: Decision[Any]) -> str:
        got = self.answers.get(decision.step)
        names = [o.name for o in decision.options]
        if got is None or got not in names:
            if self.draw is None:
                got = names[0]
            else:
                got = self.draw(st.sampled_from(names), f"policy at step {decision.step} in {decision.state}")
            self.answers[decision.step] = got
        return got

    def payload(self, step: int, model: Any) -> Any:
        if step not in self.payloads:
            if self.draw is None:
                raise AssertionError(f"the story has no payload for the wait at step {step}")
            value = self.draw(contexts(model), f"payload at step {step}")
            self.payloads[step] = value.model_dump(mode="json")
        return self.payloads[step]


def _trace(result: RunResult[Any]) -> list[tuple[str, str, str]]:
    return [(s.state, s.target, s.transition) for s in result.path]


async def _drive(wf: CompiledWorkflow[Any], store: Store, run_id: str, context: Any, script: _Script, *,
                 points: Sequence[CrashPoint], pairs: Sequence[bool], lines: list[str],
                 invariants: Sequence[Invariant], committed: list[list[tuple[str, str, str]]],
                 restarts: int) -> RunResult[Any]:
    """Run ``context`` to its end on ``store``: abandoned at each of ``points`` in turn (one per
    attempt), resumed after each (``pairs[i]``: by two workers at once, without a crash)."""
    crashing = store if isinstance(store, _CrashingStore) else None
    options: dict[str, Any] = {"policy": script.answer, "clock": FakeClock(), "max_step_restarts": restarts}
    inner = crashing.inner if crashing is not None else store
    attempt = 0

    def arm() -> None:
        if crashing is not None:
            crashing.arm(points[attempt] if attempt < len(points) else None)

    async def seen_crash() -> None:
        try:
            stored = inner.load(run_id).result()
        except RunNotFound:  # died before its start was stored: the next attempt starts it again
            committed.append([])
            return
        committed.append([(s.state, s.target, s.transition) for s in stored.steps])
        ctx = wf.context_type.model_validate(stored.context)
        for inv in invariants:
            if not await _holds(inv, ctx):
                raise AssertionError(f"invariant {getattr(inv, '__name__', inv)!r} failed on the context stored "
                                     f"when the worker died (after step {len(stored.steps) - 1})")

    result: RunResult[Any] | None = None
    arm()
    lines.append("  attempt 0: start")
    try:
        result = await wf.run(context.model_copy(deep=True), store=store, run_id=run_id, **options)
    except _Crash:
        await seen_crash()
    for _ in range(len(points) + 2 * len(pairs) + 50):
        if result is not None and result.waiting is None:
            return result
        attempt += 1
        if result is not None:  # waiting: deliver what the wait takes
            wait = wf.spec.state(result.terminal).wait  # a paused run's terminal is its wait state
            assert wait is not None, f"the run waits in {result.terminal!r}, which is not a wait state"
            step = len(result.path)
            payload = script.payload(step, wait.payload)
            arm()
            lines.append(f"  attempt {attempt}: deliver {wait.event!r} {_short(payload)} at step {step}")
            try:
                result = await wf.deliver(run_id, wait.event, payload, store=store, **options)
            except _Crash:
                result = None
                await seen_crash()
            continue
        two = attempt - 1 < len(pairs) and pairs[attempt - 1] and _stored(inner, run_id)
        if two:
            lines.append(f"  attempt {attempt}: two workers resume at once")
            if crashing is not None:
                crashing.arm(None)
            got = await asyncio.gather(wf.resume(run_id, store=store, **options),
                                       wf.resume(run_id, store=store, **options), return_exceptions=True)
            ok = [g for g in got if isinstance(g, RunResult)]
            for g in got:
                if isinstance(g, BaseException) and not isinstance(g, RunFenced):
                    raise g
            result = ok[0] if ok else None
            continue
        arm()
        known = _stored(inner, run_id)
        lines.append(f"  attempt {attempt}: {'resume' if known else 'start again (nothing was stored)'}")
        try:
            if known:
                result = await wf.resume(run_id, store=store, **options)
            else:
                result = await wf.run(context.model_copy(deep=True), store=store, run_id=run_id, **options)
        except _Crash:
            result = None
            await seen_crash()
    raise AssertionError("the run did not end after every crash was spent and 50 resumes more")


def _stored(store: Store, run_id: str) -> bool:
    try:
        store.load_tail(run_id).result()
    except RunNotFound:
        return False
    return True


def _story(data: dict[str, Any], lines: list[str]) -> str:
    return "\n".join([f"crash story of a run of {data['workflow']!r}", f"  input: {_short(data['context'], 200)}",
                      *lines])


_example_ids = itertools.count()


def _check_one(compiled: CompiledWorkflow[Any], context: Any, script: _Script, *,
               points: Callable[[int, list[int]], Sequence[CrashPoint]], pairs: Sequence[bool],
               invariants: Sequence[Invariant], lines: list[str], stores: tuple[Store, Store],
               reject: Callable[[], None] | None = None) -> None:
    """Run the reference and the crashed run (each on its store, under a new run id), the crash
    points given the reference's number of store writes; AssertionError naming the broken guarantee."""
    run_id = f"example-{next(_example_ids)}"
    ref_effects: collections.Counter[str] = collections.Counter()
    ref_wf = _counted(compiled, ref_effects)
    counting = _CrashingStore(stores[0], [])
    try:
        reference = asyncio.run(_drive(ref_wf, counting, run_id, context, script, points=(), pairs=(), lines=[],
                                       invariants=(), committed=[], restarts=3))
    except (ValueError, TypeError) as exc:
        if "cannot be stored" not in str(exc):
            raise
        # A store refuses this input at the start (NaN, a secret with no codec): nothing to crash.
        lines.append(f"  not stored: {exc}")
        if reject is not None:
            reject()
        raise AssertionError(f"the story's input cannot be stored: {exc}") from None
    # The writes around a tool call's journal entries (its intent, its outcome) are where an at_most_once
    # call's outcome is lost: each attempt's crash point is drawn among them as often as among all writes.
    journal = sorted({i + d for i, name in enumerate(counting.names) if name.startswith("journal")
                      for d in (0, 1) if i + d < counting.total})
    crashes = points(counting.total, journal)
    lines.append(f"  uninterrupted: {' -> '.join([s for s, _, _ in _trace(reference)] + [reference.terminal])}")
    effects: collections.Counter[str] = collections.Counter()
    wf = _counted(compiled, effects)
    committed: list[list[tuple[str, str, str]]] = []
    inner = stores[1]
    store = _CrashingStore(inner, lines)
    result = asyncio.run(_drive(wf, store, run_id, context, script, points=crashes, pairs=pairs, lines=lines,
                                invariants=invariants, committed=committed, restarts=len(crashes) + 3))
    stored = inner.load(run_id).result()
    lines.append(f"  end: {' -> '.join([s for s, _, _ in _trace(result)] + [result.terminal])}"
                 f" ({result.outcome.value}{': ' + result.reason if result.reason else ''})")
    trace = _trace(result)
    steps = [(s.state, s.target, s.transition) for s in stored.steps]
    # G5: each step committed once, numbered from 0; G1: the result is what the store holds.
    if [s.number for s in stored.steps] != list(range(len(stored.steps))):
        raise AssertionError(f"G5: the store holds steps {[s.number for s in stored.steps]}: a step committed twice "
                             "or one is missing")
    if steps != trace:
        raise AssertionError("G1: the resumed run's path is not the steps its store holds")
    for before in committed:  # G1: what was committed before a crash is never lost
        if steps[:len(before)] != before:
            raise AssertionError(f"G1: a step committed before a crash was lost or changed: {before} then {steps}")
    if len(trace) > compiled.max_steps:  # G6
        raise AssertionError(f"G6: the run took {len(trace)} steps across its resumes, past the checker's bound "
                             f"{compiled.max_steps}")
    # G3/G4: an at_most_once call runs at most once per journal row (its intent is committed first).
    for tool in compiled.spec.tools:
        if str(tool.effect) == "at_most_once":
            rows = sum(1 for c in stored.calls if c.tool == tool.name)
            if effects[tool.name] > rows:
                raise AssertionError(f"G4: at_most_once tool {tool.name!r} ran {effects[tool.name]} times for "
                                     f"{rows} journaled call(s): a call ran again after a crash")
            if effects[tool.name] > ref_effects[tool.name]:
                raise AssertionError(f"at_most_once tool {tool.name!r} ran {effects[tool.name]} times across the "
                                     f"crashes, {ref_effects[tool.name]} without them: what the run does when an "
                                     "outcome is unknown makes the call again")
    # G8: an event is consumed once, by a wait state's step.
    waits = {s.name for s in compiled.spec.states if s.wait is not None}
    consumed = [e.consumed_step for e in stored.inbox if e.consumed_step is not None]
    if len(consumed) != len(set(consumed)) or any(trace[c][0] not in waits for c in consumed if c < len(trace)):
        raise AssertionError(f"G8: events consumed at steps {consumed}: one step took two, or a step that is "
                             "not a wait took one")
    for inv in invariants:
        if not asyncio.run(_holds(inv, result.context)):
            raise AssertionError(f"invariant {getattr(inv, '__name__', inv)!r} failed at the end of the resumed run")
    unknown = any(c.status is CallStatus.INTENT for c in stored.calls)
    if not unknown and (result.terminal, trace, _as_json(result.context)) != (
            reference.terminal, _trace(reference), _as_json(reference.context)):
        crashed = any("CRASH" in line or "two workers" in line for line in lines)
        if crashed:  # is it the crash, or does the run differ from itself without one?
            again = asyncio.run(_drive(_counted(compiled, collections.Counter()), stores[0], f"{run_id}-again",
                                       context, script, points=(), pairs=(), lines=[], invariants=(),
                                       committed=[], restarts=3))
            crashed = (again.terminal, _trace(again), _as_json(again.context)) == (
                reference.terminal, _trace(reference), _as_json(reference.context))
        what = ("the resumed run ended otherwise than the uninterrupted one" if crashed else
                "the run is not deterministic: run again without a crash, it ended otherwise (a step reads "
                "something besides its context and its tools' journaled results)")
        raise AssertionError(f"{what}: "
                             f"{result.terminal!r} after {len(trace)} steps with {_short(_as_json(result.context))}, "
                             f"against {reference.terminal!r} after {len(_trace(reference))} steps with "
                             f"{_short(_as_json(reference.context))}")


def check_crashes(
    workflow: Workflow[Any] | CompiledWorkflow[Any],
    *,
    contexts_from: st.SearchStrategy[Any] | None = None,
    invariants: Sequence[Invariant] = (),
    max_crashes: int = 3,
    two_workers: bool = True,
    max_examples: int = 100,
    save_failure: str | Path | None = None,
    derandomize: bool = False,
) -> None:
    """Abandon durable runs between store writes and resume them; check the guarantees across resumes.

    Each example draws an input (``contexts_from``, default :func:`contexts` of the workflow's model),
    the policy's answers, payloads for waits, up to ``max_crashes`` crash points and, with
    ``two_workers``, which resumes two workers make at once. A failure raises ``AssertionError`` with
    the shrunk story (also saved as JSON to ``save_failure``; :func:`replay_crashes` runs it again).

    Checked: G1 (a committed step is never lost, and the result's path is what the store holds), G4 (an
    ``at_most_once`` call runs at most once per journaled call), G5 (each step committed once), G6
    (within the checker's bound across resumes), G8 (an event consumed once, by a wait), the user's
    ``invariants`` on what the store held at each crash and at the end, and that the resumed run
    ends as the uninterrupted one did (tools must be deterministic, as a journal replay assumes),
    unless an ``at_most_once`` outcome was left unknown or a tool ran again (then it may not).
    """
    compiled = _compiled(workflow)
    invariants, _ = _checked_invariants(invariants, ())
    strategy = contexts_from if contexts_from is not None else contexts(compiled.context_type)
    if isinstance(max_crashes, bool) or not isinstance(max_crashes, int) or max_crashes < 0:
        raise ValueError(f"max_crashes={max_crashes!r}: give a whole number of crashes per run, from 0")
    last: list[tuple[dict[str, Any], list[str]]] = []

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=derandomize, phases=_PHASES,
              report_multiple_bugs=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(context=strategy, pairs=st.lists(st.booleans(), max_size=2) if two_workers else st.just([]),
           data=st.data())
    def explore(context: Any, pairs: list[bool], data: st.DataObject) -> None:
        __tracebackhide__ = True
        script = _Script(lambda s, label: data.draw(s, label=label))
        lines: list[str] = []
        story: dict[str, Any] = {"workflow": compiled.name, "context": _as_json(context), "crashes": [],
                                 "two_workers": pairs}
        last[:] = [(story, lines)]

        def points(writes: int, journal: list[int]) -> list[CrashPoint]:
            # Each attempt dies at one of the writes the uninterrupted run made (or one more), as often
            # at one beside a tool call's journal entry as anywhere. Every example crashes at least once
            # (the uninterrupted run is the reference already), unless max_crashes=0.
            where = st.sampled_from(journal) | st.integers(0, writes) if journal else st.integers(0, writes)
            drawn = data.draw(st.lists(st.builds(CrashPoint, where, st.booleans()), min_size=min(1, max_crashes),
                                       max_size=max_crashes), label="crash points")
            story["crashes"] = [p.to_json() for p in drawn]
            return drawn

        try:
            _check_one(compiled, context, script, points=points, pairs=pairs, invariants=invariants, lines=lines,
                       stores=stores, reject=hypothesis.reject)
        except AssertionError as exc:
            story.update(answers=script.answers, payloads=script.payloads)
            note(_story(story, lines))
            raise AssertionError(f"{exc}\n{_story(story, lines)}") from None
        finally:
            story.update(answers=script.answers, payloads=script.payloads)

    stores = (MemoryStore(), MemoryStore())
    try:
        explore()
    except AssertionError as exc:
        if save_failure is not None and last:
            Path(save_failure).write_text(json.dumps(last[0][0], indent=1, default=str), encoding="utf-8")
            raise AssertionError(f"{exc}\n(replay it: statemachine_agent.testing.replay_crashes(workflow, "
                                 f"{str(save_failure)!r}))") from None
        raise
    finally:
        for s in stores:
            s.close()


def replay_crashes(workflow: Workflow[Any] | CompiledWorkflow[Any], fixture: str | Path | dict[str, Any], *,
                   invariants: Sequence[Invariant] = ()) -> None:
    """Run a crash story saved by :func:`check_crashes` again exactly; ``AssertionError`` with its
    story if it still breaks a guarantee."""
    compiled = _compiled(workflow)
    invariants, _ = _checked_invariants(invariants, ())
    data = fixture if isinstance(fixture, dict) else json.loads(Path(fixture).read_text(encoding="utf-8"))
    try:
        context = compiled.context_type.model_validate(data["context"])
        points = [CrashPoint(int(op), bool(after)) for op, after in data["crashes"]]
        script = _Script(None, {int(k): v for k, v in data.get("answers", {}).items()},
                         {int(k): v for k, v in data.get("payloads", {}).items()})
        pairs = [bool(p) for p in data.get("two_workers", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a crash story (as saved by check_crashes): {exc}") from None
    lines: list[str] = []
    with MemoryStore() as reference, MemoryStore() as crashed:
        try:
            _check_one(compiled, context, script, points=lambda *_: points, pairs=pairs, invariants=invariants,
                       lines=lines, stores=(reference, crashed))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_story(data, lines)}") from None
