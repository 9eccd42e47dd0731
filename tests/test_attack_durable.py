"""Attacks on the merged main (issues 21 and 22): the runner's own state (``Run.restore``,
``run.snapshot()``, ``RunState``), ``RunConfig.of``, ``Workflow.state`` options and durable paths
after the refactor.

Each test states the expected behaviour; the house rule it holds main to: bad input at a public
entry point gets a clear, typed error (``TypeError``/``ValueError``/``StateMachineAgentError``)
raised at that entry point, never a raw ``AttributeError``/``KeyError`` or a library internal's
error later on, and writes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from statemachine_agent import Context, FakeClock, Run, Workflow
from statemachine_agent.errors import StateMachineAgentError
from statemachine_agent.protocols import RunState
from statemachine_agent.runner import RunConfig
from statemachine_agent.stores import SQLiteStore

TYPED = (TypeError, ValueError, StateMachineAgentError)
RAW = (AttributeError, KeyError, IndexError)


class Count(Context):
    n: int = 0
    log: list[int] = Field(default_factory=list)


def _count(stop: int = 4) -> Any:
    wf = Workflow("count", Count)

    @wf.state(initial=True, reads=["n", "log"], writes=["n", "log"], max_visits=stop + 1)
    def tick(ctx: Count) -> None:
        ctx.n += 1
        ctx.log.append(ctx.n)

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("tick", "tick", guard=lambda c: c.n < stop, max_traversals=stop)
    wf.transition("tick", "done")
    return wf.compile()


class Pick(Context):
    n: int = 0


def _decision() -> Any:
    wf = Workflow("pick", Pick)
    wf.add_state("choose", lambda c: None, initial=True, decision=True)
    wf.terminal("left")
    wf.terminal("right")
    wf.terminal("failed", outcome="failure")
    wf.transition("choose", "left", description="go left")
    wf.transition("choose", "right", description="go right")
    return wf.compile()


def _expect_typed(call: Any) -> BaseException:
    """``call()`` (a coroutine is run to its end) raises a typed error; the error."""
    caught: BaseException | None = None
    try:
        out = call()
        if asyncio.iscoroutine(out):
            out = asyncio.run(out)
    except BaseException as exc:  # classified below
        caught = exc
    if caught is None:
        raise AssertionError(f"accepted, gave {out!r}")
    assert isinstance(caught, TYPED) and not isinstance(caught, RAW), f"raw {type(caught).__name__}: {caught}"
    return caught


# --- Run.restore with a bad RunState ------------------------------------------------------------
_STARTED = {"n", "log"}  # what a run of _count() has written after its first step


@pytest.mark.parametrize("state", [None, "tick", {"state": "tick"}, 3], ids=["None", "str", "dict", "int"])
def test_restore_refuses_what_is_not_a_run_state_with_a_type_error(state: Any) -> None:
    """Run.restore(workflow, context, state) with something other than a RunState: a TypeError
    saying to give a RunState (``run.snapshot()``), raised by restore. Main: AttributeError
    ('NoneType' object has no attribute 'actions_run')."""
    compiled = _count()
    exc = _expect_typed(lambda: Run.restore(compiled, Count(), state))
    assert "RunState" in str(exc)


@pytest.mark.parametrize(("bad", "field"), [
    (RunState("nope", written=frozenset(_STARTED)), "state"),
    (RunState("done", written=frozenset(_STARTED)), "state"),
    (RunState("tick", traversals=None, written=frozenset(_STARTED)), "traversals"),  # type: ignore[arg-type]
    (RunState("tick", visits=[1], written=frozenset(_STARTED)), "visits"),  # type: ignore[arg-type]
    (RunState("tick", actions_run="2", written=frozenset(_STARTED)), "actions_run"),  # type: ignore[arg-type]
    (RunState("tick", actions_run=-1, written=frozenset(_STARTED)), "actions_run"),
    (RunState("tick", restarts="1", written=frozenset(_STARTED)), "restarts"),  # type: ignore[arg-type]
    (RunState("tick", spent_tokens="9", written=frozenset(_STARTED)), "spent_tokens"),  # type: ignore[arg-type]
], ids=["unknown-state", "terminal-state-without-result", "traversals-None", "visits-list", "actions_run-str",
        "actions_run-negative", "restarts-str", "spent_tokens-str"])
def test_restore_checks_the_run_state_up_front_naming_the_bad_field(bad: RunState, field: str) -> None:
    """A RunState that does not fit the workflow or holds garbage counters is refused by
    Run.restore itself, with a typed error naming the field. Main: restore accepts it and the run
    breaks later with KeyError 'nope' (unknown state), transitions' MachineError "Can't trigger
    event @fail from state done" (a terminal state), AttributeError (traversals=None), or a raw
    "'>=' not supported between 'str' and 'int'" from inside the step (string counters); a
    negative actions_run silently gives the run extra steps."""
    compiled = _count()

    async def restore_and_run() -> Any:
        run = Run.restore(compiled, Count(n=1, log=[1]), bad, token_budget=5)
        return await run.run_to_end()

    with pytest.raises(TYPED) as info:
        Run.restore(compiled, Count(n=1, log=[1]), bad, token_budget=5)
    assert not isinstance(info.value, RAW)
    assert field in str(info.value)
    # And never a raw error later either.
    with pytest.raises(TYPED):
        asyncio.run(restore_and_run())


def test_restore_refuses_a_journal_that_is_not_one() -> None:
    """journal= must implement statemachine_agent.protocols.Journal: a TypeError at restore.
    Main: restore takes object(); the run then raises AttributeError ('object' object has no
    attribute 'unmarked') from its first step."""
    compiled = _count()
    state = RunState("tick", 1, {"tick": 1}, {"tick_to_tick": 1}, frozenset(_STARTED))

    async def go() -> Any:
        return await Run.restore(compiled, Count(n=1, log=[1]), state, journal=object()).run_to_end()  # type: ignore[arg-type]

    exc = _expect_typed(go)
    assert "journal" in str(exc)


def test_restore_with_a_store_mid_run_writes_nothing_it_cannot_continue(tmp_path: Path) -> None:
    """Run.restore(..., store=store) from a stored run's snapshot taken mid-run, without its
    journal (the durable operations pass one): the copy either goes on in the store as the
    original would, or it is refused with a typed error before anything is written. Main: it
    creates run 'r2' in the store with no step rows for the steps its path holds, then its
    first commit raises RunFenced ("another worker owns the run now", which no other worker
    does), leaving an orphan 'r2' stored as running."""
    compiled = _count()

    async def main() -> tuple[Any, list[str]]:
        with SQLiteStore(tmp_path / "runs.db") as store:
            original: Run[Count] = compiled.start(Count(), store=store, run_id="r1")
            await original.step()
            await original.step()
            outcome: Any
            try:  # refused by restore itself, or by the run: either way before anything is written
                copy = Run.restore(compiled, original.context.model_copy(deep=True), original.snapshot(),
                                   path=original.path, store=store, run_id="r2")
                outcome = await copy.run_to_end()
            except BaseException as exc:
                outcome = exc
            ids = sorted(r.run_id for r in compiled.runs(store))
            if not isinstance(outcome, BaseException):
                stored = store.load("r2").result()
                assert [s.number for s in stored.steps] == list(range(len(outcome.path)))
            return outcome, ids

    outcome, ids = asyncio.run(main())
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, TYPED) and type(outcome).__name__ != "RunFenced", \
            f"{type(outcome).__name__}: {outcome}"
        assert ids == ["r1"], f"refused, yet the store now holds {ids}"
    else:
        assert (outcome.terminal, outcome.context.log) == ("done", [1, 2, 3, 4])


def test_restore_never_changes_the_context_the_caller_holds() -> None:
    """Run(...) and workflow.run(...) never change the caller's input (the run copies a mutable
    value before writing it). Run.restore, with its default owned=True, appends to the caller's own
    list, and the result shares it: restoring a run from a context you hold, as
    tests/test_house.py does with a deep copy, must not need that copy."""
    compiled = _count()

    async def main() -> tuple[Count, Any]:
        run: Run[Count] = compiled.start(Count())
        await run.step()
        mine = Count(n=1, log=[1])
        result = await Run.restore(compiled, mine, run.snapshot(), path=run.path).run_to_end()
        return mine, result

    mine, result = asyncio.run(main())
    assert result.context.log == [1, 2, 3, 4]
    assert mine.log == [1], "Run.restore wrote into the caller's list"
    assert result.context.log is not mine.log


@pytest.mark.parametrize("value", ["no", 1.0, "false"])
def test_restore_refuses_a_max_steps_given_that_is_not_a_bool(value: Any) -> None:
    """Run.restore(max_steps_given=...) is a bool (or None for "when max_steps is given"). Main
    puts any value into the run's RunConfig (max_steps_given="no", which a store then writes as
    true, keeping the budget across versions as the caller's)."""
    compiled = _count()
    with pytest.raises(TypeError, match="max_steps_given"):
        Run.restore(compiled, Count(), RunState("tick"), max_steps_given=value)


# --- RunConfig.of -------------------------------------------------------------------------------
@pytest.mark.parametrize("workflow", [None, "count", "uncompiled"])
def test_run_config_of_refuses_what_is_not_a_compiled_workflow(workflow: Any) -> None:
    """RunConfig.of(workflow) with no compiled workflow: a TypeError saying to compile it.
    Main: AttributeError ('NoneType'/'Workflow' object has no attribute 'hooks')."""
    if workflow == "uncompiled":
        workflow = Workflow("w", Count)
    exc = _expect_typed(lambda: RunConfig.of(workflow))
    assert "compile" in str(exc) or "workflow" in str(exc)


@pytest.mark.parametrize("option", ["max_policy_attempts", "max_step_restarts"])
def test_run_config_refuses_a_float_equal_to_the_default(option: str) -> None:
    """A whole number is asked for: 2.0 is refused, and so must 3.0 be (it slips past the
    ``!= 3`` shortcut on main, so RunConfig holds a float)."""
    compiled = _count()
    options: dict[str, Any] = {option: 2.0}
    with pytest.raises(ValueError, match=option):
        RunConfig.of(compiled, **options)
    options[option] = 3.0
    with pytest.raises(ValueError, match=option):
        RunConfig.of(compiled, **options)


def test_a_decision_run_with_max_policy_attempts_3_0_is_refused_not_broken() -> None:
    """What the above costs: Run(..., max_policy_attempts=3.0) is accepted, then every decision
    raises the raw "'float' object cannot be interpreted as an integer" from range(), and the run
    is recorded as failed. Expected: refused at Run() with a ValueError naming the option."""
    compiled = _decision()
    with pytest.raises(ValueError, match="max_policy_attempts"):
        asyncio.run(Run(compiled, Pick(), max_policy_attempts=3.0).run_to_end())  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["no", 0.0, None, []])
def test_run_config_refuses_a_raise_errors_that_is_not_a_bool(value: Any) -> None:
    """raise_errors is a bool: "no" would silently mean True. Main accepts any value."""
    compiled = _count()
    with pytest.raises(TypeError, match="raise_errors"):
        RunConfig.of(compiled, raise_errors=value)


# --- Workflow.state options -----------------------------------------------------------------------
@pytest.mark.parametrize("value", [5, ["a"], b"bytes"])
def test_a_state_description_that_is_not_a_string_is_refused(value: Any) -> None:
    """description= is for people and policies: a str. Every other bad option value is a
    DefinitionError naming the state (bad-option); main compiles description=5 and hands the 5
    to policies as the state's description."""
    wf = Workflow("w", Pick)
    wf.state(initial=True, description=value)(lambda c: None)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("<lambda>", "done")
    with pytest.raises(TYPED, match="description"):
        wf.compile()


@pytest.mark.parametrize(("option", "value"), [("initial", "no"), ("initial", 1), ("decision", "no"),
                                             ("decision", None), ("decision", 0.0)])
def test_a_state_flag_that_is_not_a_bool_is_refused(option: str, value: Any) -> None:
    """initial= and decision= are bools. Main takes any value by its truth: initial="no" makes the
    state the initial one and decision="no" makes it a decision state, silently (a tool's
    options, and a state's max_visits/tool_deadline/on_no_exit, are all checked: bad-option)."""
    wf = Workflow("w", Pick)
    flags: dict[str, Any] = {"initial": True, option: value}
    wf.add_state("a", lambda c: None, **flags)
    wf.add_state("b", lambda c: None)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("a", "b", description="on")
    wf.transition("b", "done")
    with pytest.raises(TYPED, match=option):
        wf.compile()


# --- what is fine (kept so a regression shows) ------------------------------------------------------
def test_a_restored_copy_of_a_waiting_in_memory_run_takes_the_event_once() -> None:
    """A run snapshotted while waiting, restored, and delivered to: it takes the event once."""

    class Ok(BaseModel):
        ok: bool

    class W(Context):
        n: int = 0
        approval: Ok | None = None

    wf = Workflow("w", W)

    @wf.state(initial=True, optional_reads=["n"], writes=["n"])
    def a(ctx: W) -> None:
        ctx.n += 1

    wf.wait("approve", event="approval", payload=Ok, writes=["approval"])

    @wf.state(reads=["approval", "n"], writes=["n"])
    def b(ctx: W) -> None:
        ctx.n += 10

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("a", "approve")
    wf.transition("approve", "b")
    wf.transition("b", "done")
    compiled = wf.compile()

    async def main() -> Any:
        run: Run[W] = compiled.start(W(), clock=FakeClock())
        first = await run.run_to_end()
        assert first.waiting == "approval"
        copy = Run.restore(compiled, run.context.model_copy(deep=True), run.snapshot(), path=run.path,
                           clock=FakeClock())
        copy.deliver("approval", {"ok": True})
        return await copy.run_to_end()

    result = asyncio.run(main())
    assert (result.terminal, result.context.n, [s.state for s in result.path]) == ("done", 11, ["a", "approve", "b"])
    assert dataclasses.is_dataclass(RunState)


# --- real processes resuming, delivering and waking the same runs at once ------------------------------
HERE = Path(__file__).parent


@pytest.mark.parametrize("modes", [("deliver", "resume", "wake"), ("resume", "resume", "deliver")],
                         ids=["deliver+resume+wake", "resume+resume+deliver"])
def test_processes_resuming_delivering_and_waking_one_run_at_once_pay_once(tmp_path: Path,
                                                                            modes: tuple[str, ...]) -> None:
    """Three real processes act on the same 12 waiting runs at the same moment, one delivering the
    approval, the others resuming or waking them (each in its own order). Every run ends (none is
    left stored as running with no worker), each of its steps is committed once (contiguous
    numbers), its approval is consumed once, and its at_most_once charge runs at most once: once
    for a run that ended in ``done``."""
    import random
    import subprocess
    import sys

    sys.path.insert(0, str(HERE))
    import race_worker

    from statemachine_agent.stores import RunStatus

    db, log, go = tmp_path / "runs.db", tmp_path / "effects.log", tmp_path / "go"
    runs = [f"run-{i}" for i in range(12)]
    compiled = race_worker.make(str(log))
    with SQLiteStore(db) as store:
        for r in runs:
            assert compiled.run_sync(race_worker.Order(order=r), store=store, run_id=r).waiting == "approval"
    rng = random.Random(len(modes))
    procs = []
    for mode in modes:
        order = runs[:]
        rng.shuffle(order)
        procs.append(subprocess.Popen([sys.executable, str(HERE / "attack_worker.py"), mode, str(db), str(log),
                                       str(go), *order], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    effects = log.read_text().split() if log.exists() else []
    with SQLiteStore(db) as store:
        records = {r.run_id: r for r in compiled.runs(store)}
        for r in runs:
            stored = store.load(r).result()
            assert records[r].status is RunStatus.DONE, (r, records[r].status, outs)
            assert [s.number for s in stored.steps] == list(range(len(stored.steps)))
            assert sum(e.consumed_step is not None for e in stored.inbox) == 1
            assert effects.count(r) <= 1, f"{r} was charged {effects.count(r)} times"
            if records[r].terminal == "done":
                assert effects.count(r) == 1 and stored.context["receipt"]
            else:
                assert records[r].terminal == "unknown", records[r].terminal


# --- cancellation at every await of resume and fork -------------------------------------------------------
class Pay(Context):
    seen: int = 0
    receipt: str = ""


def _pay_flow(effects: list[str]) -> Any:
    """work -> pay (an at_most_once charge) -> done | unknown."""
    from statemachine_agent.errors import EffectOutcomeUnknown

    wf = Workflow("attack_pay", Pay)

    def charge(run: str) -> str:
        effects.append(run)
        return f"receipt {run}"

    wf.tool(effect="at_most_once")(charge)

    @wf.state(initial=True, optional_reads=["seen"], writes=["seen"])
    async def work(ctx: Pay) -> None:
        await asyncio.sleep(0)
        ctx.seen += 1

    @wf.state(reads=["seen"], writes=["receipt"], tools=["charge"])
    async def pay(ctx: Pay, tools: Any) -> None:
        await asyncio.sleep(0)
        ctx.receipt = await tools.call("charge", run="r")

    wf.terminal("done")
    wf.terminal("unknown", outcome="failure")
    wf.transition("work", "pay")
    wf.transition("pay", "done")
    wf.on_error("pay", EffectOutcomeUnknown, "unknown")
    return wf.compile()


async def _cancelled_after(coro: Any, yields: int) -> Any:
    task = asyncio.ensure_future(coro)
    for _ in range(yields):
        if task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["resume", "resume-twice", "fork"]), yields=st.integers(0, 30))
def test_a_cancelled_resume_or_fork_then_resumed_again_pays_once_and_commits_each_step_once(
        tmp_path: Path, where: str, yields: int) -> None:
    """A stored run left running before its paying step (its worker gone); ``task.cancel()`` lands at
    any await of ``compiled.resume`` (twice in a row for resume-twice) or of ``compiled.fork`` from
    step 1; then the run (the fork, if it was stored) is resumed to its end. It ends in ``done``
    with one charge, or, only when a cancel left an intent without an outcome, in ``unknown`` with
    at most one (a cancel while the sync charge runs abandons its thread, which may still charge);
    its steps are numbered 0.. once each; the source of a fork is left as it was."""
    effects: list[str] = []
    compiled = _pay_flow(effects)
    db = tmp_path / f"{where}-{yields}.db"
    db.unlink(missing_ok=True)

    async def scenario() -> tuple[Any, Any, Any]:
        with SQLiteStore(db) as store:
            run: Run[Pay] = compiled.start(Pay(), store=store, run_id="r")
            await run.step()  # work committed; the worker is gone before pay
            target = "r"
            if where == "fork":
                done = await compiled.resume("r", store=store)
                assert done.terminal == "done"
                effects.clear()
                before = await asyncio.wrap_future(store.load("r"))
                await _cancelled_after(compiled.fork("r", at_step=1, store=store, new_run_id="f"), yields)
                ids = {r.run_id for r in compiled.runs(store)}
                if "f" not in ids:
                    await compiled.fork("r", at_step=1, store=store, new_run_id="f")
                target = "f"
                after = await asyncio.wrap_future(store.load("r"))
                assert (after.run, after.steps, after.calls) == (before.run, before.steps, before.calls)
            else:
                for _ in range(2 if where == "resume-twice" else 1):
                    await _cancelled_after(compiled.resume("r", store=store), yields)
            result = await compiled.resume(target, store=store)
            stored = await asyncio.wrap_future(store.load(target))
            return result, stored, target

    result, stored, _ = asyncio.run(scenario())
    assert [s.number for s in stored.steps] == list(range(len(stored.steps)))
    assert [s.state for s in stored.steps] == ["work", "pay"]
    assert len(effects) <= 1
    if result.terminal != "unknown":
        assert (result.terminal, effects, result.context.receipt) == ("done", ["r"], "receipt r")


# --- max_steps given vs default across fork, resume, delivery and wake-up under another version -----------
class Approval(BaseModel):
    ok: bool


class Gate(Context):
    n: int = 0
    approval: Approval | None = None


def _gate(extra: bool) -> Any:
    """a -> approve (wait) -> b -> done; ``extra``: b -> c -> done (the bound grows from 3 to 4)."""
    wf = Workflow("gate", Gate)

    @wf.state(initial=True, optional_reads=["n"], writes=["n"])
    def a(ctx: Gate) -> None:
        ctx.n += 1

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"])

    @wf.state(reads=["approval", "n"], writes=["n"])
    def b(ctx: Gate) -> None:
        ctx.n += 10

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("a", "approve")
    wf.transition("approve", "b")
    if extra:
        @wf.state(reads=["n"], writes=["n"])
        def c(ctx: Gate) -> None:
            ctx.n += 100

        wf.transition("b", "c")
        wf.transition("c", "done")
    else:
        wf.transition("b", "done")
    return wf.compile()


@pytest.mark.parametrize("given", [None, 3, 100])
@pytest.mark.parametrize("how", ["deliver", "wake", "resume", "fork-deliver", "fork-wake"])
def test_a_callers_max_steps_is_kept_and_the_default_follows_the_new_bound(tmp_path: Path, how: str,
                                                                          given: int | None) -> None:
    """A run started (and paused) under v1 (bound 3), continued under v2 (bound 4) by a delivery, a
    wake-up, a resume or a fork then either: with the caller's max_steps=3 it fails before v2's
    extra state; with 100 or the default it ends in done; the store keeps max_steps_given exactly
    when the caller gave it; a replay of the continued run matches its record."""
    v1, v2 = _gate(False), _gate(True)

    async def main() -> tuple[Any, Any, Any]:
        with SQLiteStore(tmp_path / "runs.db") as store:
            options = {} if given is None else {"max_steps": given}
            paused = await v1.run(Gate(), store=store, run_id="x", **options)
            assert paused.waiting == "approval"
            target = "x"
            if how.startswith("fork"):
                await v1.deliver("x", "approval", {"ok": True}, store=store)
                forked = await v2.fork("x", at_step=1, store=store, new_run_id="f")
                assert forked.waiting == "approval"
                target = "f"
            if how.endswith("deliver"):
                result = await v2.deliver(target, "approval", {"ok": True}, store=store)
            else:
                await asyncio.wrap_future(store.deliver(target, "approval", {"ok": True}))
                if how.endswith("wake"):
                    [result] = await v2.wake_due(store)
                else:
                    result = await v2.resume(target, store=store)
            row = (await asyncio.wrap_future(store.load(target))).run
            report = await v2.replay(target, store=store)
            return result, row, report

    result, row, report = asyncio.run(main())
    if given == 3:
        assert (result.terminal, result.context.n) == ("failed", 11)
        assert "max_steps of 3" in (result.reason or "")
    else:
        assert (result.terminal, result.context.n) == ("done", 111)
    assert bool(row.max_steps_given) is (given is not None)
    assert row.max_steps == (given if given is not None else 4)
    assert report.ok, report


# --- protocol implementations that misbehave --------------------------------------------------------------
def _timed_gate() -> Any:
    wf = Workflow("timed", Gate)

    @wf.state(initial=True, optional_reads=["n"], writes=["n"])
    def a(ctx: Gate) -> None:
        ctx.n += 1

    wf.wait("approve", event="approval", payload=Approval, writes=["approval"], timeout=60, on_timeout="expired")
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("expired", outcome="failure")
    wf.transition("a", "approve")
    wf.transition("approve", "done")
    return wf.compile()


@pytest.mark.parametrize("wall", [float("nan"), "soon", None], ids=["nan", "str", "None"])
def test_a_clock_whose_wall_time_is_not_a_finite_number_is_named_and_the_run_goes_on(tmp_path: Path,
                                                                                   wall: Any) -> None:
    """A user Clock (statemachine_agent.protocols.Clock) whose wall() gives NaN, a string or None,
    on a stored run entering a wait with a timeout: a typed error that names the clock's wall()
    (main: "Out of range float values are not JSON compliant" from the JSON encoder, or "can only
    concatenate str (not "int") to str"), and the run is not lost: resumed with a good clock it
    pauses at its wait."""
    compiled = _timed_gate()

    class BadWall(FakeClock):
        def wall(self) -> float:
            return wall  # type: ignore[no-any-return]

    async def main() -> tuple[BaseException | None, Any]:
        with SQLiteStore(tmp_path / "runs.db") as store:
            error: BaseException | None = None
            try:
                await compiled.run(Gate(), store=store, run_id="x", clock=BadWall())
            except Exception as exc:  # classified below
                error = exc
            again = await compiled.resume("x", store=store, clock=FakeClock())
            return error, again

    error, again = asyncio.run(main())
    assert isinstance(error, TYPED), f"accepted: {error!r}"
    assert "wall" in str(error), f"{type(error).__name__}: {error}"
    assert (again.waiting, again.context.n) == ("approval", 1)


# --- run.snapshot() while a step is in progress ----------------------------------------------------------------
def _ticks(stop: int) -> Any:
    wf = Workflow("ticks", Count)

    @wf.state(initial=True, reads=["n", "log"], writes=["n", "log"], max_visits=stop)
    async def tick(ctx: Count) -> None:
        await asyncio.sleep(0)  # another task looks at the run here
        ctx.n += 1
        ctx.log.append(ctx.n)

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("tick", "tick", guard=lambda c: c.n < stop, max_traversals=stop - 1)
    wf.transition("tick", "done")
    return wf.compile()


@pytest.mark.parametrize("stop", [2, 3, 5])
def test_a_snapshot_taken_during_a_step_restores_a_run_that_goes_on_as_the_original(stop: int) -> None:
    """run.snapshot() while the run's step is awaiting inside its action (another task, a hook or
    a tool looking at it): either a RunError saying a step is in progress, or the state before that
    step, so that a run restored from it ends as the original does. Main: the snapshot already
    counts the unfinished step's visit and action while the context has none of its writes; the
    restored run fails "visits of 'tick' reached N" one step short of where the original ends done."""
    compiled = _ticks(stop)

    async def main() -> tuple[Any, Any]:
        run: Run[Count] = compiled.start(Count())
        task = asyncio.ensure_future(run.step())
        await asyncio.sleep(0)  # the step is inside its action now
        assert not task.done()
        taken: Any
        try:
            taken = (run.snapshot(), run.context.model_copy(deep=True), list(run.path))
        except Exception as exc:  # a refusal is fine if it is typed
            taken = exc
        await task
        original = await run.run_to_end()
        if isinstance(taken, BaseException):
            assert isinstance(taken, TYPED), f"{type(taken).__name__}: {taken}"
            return original, original
        state, context, path = taken
        return original, await Run.restore(compiled, context, state, path=path).run_to_end()

    original, copy = asyncio.run(main())
    assert (original.terminal, original.context.log) == ("done", list(range(1, stop + 1)))
    assert (copy.terminal, copy.context.log) == (original.terminal, original.context.log), copy.reason


_AT_WAIT = {"state": "approve", "actions_run": 1, "visits": {"a": 1}, "traversals": {"a_to_approve": 1},
            "written": frozenset({"n"})}


@pytest.mark.parametrize(("extra", "field"), [
    ({"inbox": [1, 2]}, "inbox"),
    ({"inbox": [(1, "approval")]}, "inbox"),
    ({"wait_deadline": "soon"}, "wait_deadline"),
], ids=["inbox-ints", "inbox-pairs", "wait_deadline-str"])
def test_restore_checks_a_waiting_run_state_up_front_naming_the_bad_field(extra: dict[str, Any], field: str) -> None:
    """A RunState at a wait whose inbox is not (seq, event, payload) triples, or whose wait
    deadline is not a number: refused by Run.restore naming the field. Main: accepted, then the
    run raises "cannot unpack non-iterable int object", "not enough values to unpack (expected 3,
    got 2)" or "'>=' not supported between instances of 'float' and 'str'" from inside its wait."""
    compiled = _timed_gate()
    bad = RunState(**{**_AT_WAIT, **extra})
    with pytest.raises(TYPED, match=field):
        Run.restore(compiled, Gate(n=1), bad, clock=FakeClock(1000.0))


@pytest.mark.parametrize("max_steps", [2**53 + 1, 2**63, 10**30])
def test_a_max_steps_the_store_cannot_keep_is_refused_before_anything_is_written(tmp_path: Path,
                                                                                 max_steps: int) -> None:
    """max_steps is checked by RunConfig.of (a whole number >= 1) but not against what a store
    keeps (a counter up to 2**53). Main: workflow.run(..., store=store, max_steps=2**63) runs and
    commits a run record that the store then calls corrupted: compiled.runs(store) raises
    StoreCorrupted for the whole store, and load('x') too. Expected: a ValueError naming max_steps
    before anything is written (or the run kept and readable)."""
    compiled = _count()

    async def main() -> tuple[BaseException | None, list[str]]:
        with SQLiteStore(tmp_path / "runs.db") as store:
            error: BaseException | None = None
            try:
                await compiled.run(Count(), store=store, run_id="x", max_steps=max_steps)
            except Exception as exc:  # classified below
                error = exc
            await compiled.run(Count(), store=store, run_id="y")
            return error, sorted(r.run_id for r in compiled.runs(store))  # StoreCorrupted on main

    error, ids = asyncio.run(main())
    if error is not None:
        assert isinstance(error, ValueError) and "max_steps" in str(error), f"{type(error).__name__}: {error}"
        assert ids == ["y"]
    else:
        assert ids == ["x", "y"]


@pytest.mark.parametrize("new_run_id", [5, "", b"f", "x" * 201], ids=["int", "empty", "bytes", "too-long"])
def test_fork_refuses_a_new_run_id_a_run_could_not_have_and_writes_nothing(tmp_path: Path, new_run_id: Any) -> None:
    """compiled.fork(new_run_id=...) takes what run_id= takes (a non-empty str of at most 200
    characters): anything else is a TypeError/ValueError naming new_run_id, and nothing is stored.
    Main: 5 gives pydantic's "1 validation error for ResumePoint / run_id" (an internal model);
    "" silently forks under a generated id; a 201-character id is refused only after the fork is
    stored (as running), and no resume can ever take that run (its id is refused too)."""
    compiled = _count()

    async def main() -> tuple[BaseException | None, list[str]]:
        with SQLiteStore(tmp_path / "runs.db") as store:
            await compiled.run(Count(), store=store, run_id="x")
            error: BaseException | None = None
            try:
                await compiled.fork("x", at_step=1, store=store, new_run_id=new_run_id)
            except Exception as exc:  # classified below
                error = exc
            return error, sorted(r.run_id for r in compiled.runs(store))

    error, ids = asyncio.run(main())
    assert isinstance(error, (TypeError, ValueError)), f"accepted ({ids})" if error is None else repr(error)
    assert ids == ["x"], f"refused ({type(error).__name__}), yet the store now holds {[i[:12] for i in ids]}"
    assert "new_run_id" in str(error), f"{type(error).__name__}: {error}"
