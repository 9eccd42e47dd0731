"""What the runner's fast paths keep: a run costs what it changed (a field it never wrote is not
copied, one it wrote is its own), events are typed frozen records delivered complete and in order to
every kind of hook, and a run is one coroutine."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from statemachine_agent import CompiledWorkflow, Context, RunError, Workflow, guard
from statemachine_agent.events import (
    ErrorRouted,
    Event,
    RunFinished,
    RunStarted,
    StepStarted,
    TransitionTaken,
)
from statemachine_agent.result import StepKind


class Counted:
    """A value that counts its deep copies."""

    copies = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> Counted:
        Counted.copies += 1
        return Counted()


class Chat(Context):
    history: list[str] = Field(default_factory=list)
    big: list[int] = Field(default_factory=list)
    notes: dict[str, list[int]] = Field(default_factory=dict)
    box: Any = None
    turn: int = 0
    answer: str | None = None


class Flaky(Exception):
    """What ``talk`` raises on its second turn when asked to (routed back to ``talk``)."""


def chat(turns: int = 3, flaky: bool = False) -> CompiledWorkflow[Chat]:
    """talk (appends to history in place, turn += 1) loops while turn < turns, then answer."""
    wf = Workflow("chat", Chat)
    failed_once: list[bool] = []

    @wf.state(initial=True, reads=["history", "turn"], writes=["history", "turn"])
    def talk(ctx: Chat) -> None:
        ctx.history.append(f"turn {ctx.turn}")
        ctx.turn += 1
        if flaky and ctx.turn == 2 and not failed_once:
            failed_once.append(True)
            raise Flaky("once")

    @wf.state(reads=["history"], writes=["answer"])
    def answer(ctx: Chat) -> None:
        ctx.answer = ctx.history[-1]

    done = wf.terminal("done")
    failed = wf.terminal("failed", outcome="failure")
    more = guard(lambda c: c.turn < turns, name="more turns", reads=["turn"])
    wf.transition(talk, talk, guard=more, max_traversals=turns)
    wf.transition(talk, answer, default=True)
    wf.transition(answer, done)
    wf.on_error(talk, Flaky, talk, max_traversals=1)
    wf.on_error(answer, ValueError, failed)
    return wf.compile()


# --- a run costs what it changed ----------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(big=st.lists(st.integers(), max_size=50), notes=st.dictionaries(st.text(max_size=3),
                                                                         st.lists(st.integers(), max_size=3),
                                                                         max_size=3),
       history=st.lists(st.text(max_size=5), max_size=4))
def test_a_never_written_field_is_the_callers_object_and_a_written_one_the_runs(
        big: list[int], notes: dict[str, list[int]], history: list[str]) -> None:
    """``big`` and ``notes`` are never written: the result holds the caller's very objects, not
    copies. ``history`` is appended to in place: the result's is the run's own, the caller's is as it was."""
    inp = Chat(big=big, notes=notes, history=history)
    before = list(history)
    result = chat().run_sync(inp)
    assert result.ok
    assert result.context.big is inp.big
    assert result.context.notes is inp.notes
    assert result.context.history is not inp.history
    assert inp.history == before
    assert result.context.history == [*before, "turn 0", "turn 1", "turn 2"]
    result.context.history.append("more")
    assert inp.history == before


def test_a_whole_run_never_copies_a_field_it_does_not_write() -> None:
    """Neither the run, nor its result, nor a no-op hook copies a value no step writes."""
    Counted.copies = 0
    result = chat().run_sync(Chat(box=Counted()), hooks=[lambda event: None])
    assert result.ok
    assert Counted.copies == 0


def test_run_started_copies_the_start_when_a_hook_reads_it() -> None:
    """RunStarted.context is a deep copy of the start, made when read: later steps' writes are not in
    it, and a hook changing it changes nothing of the run."""
    Counted.copies = 0
    seen: list[Event] = []

    def hook(event: Event) -> None:
        seen.append(event)
        if isinstance(event, RunStarted):
            event.context.history.append("from the hook")  # the hook's own copy

    inp = Chat(history=["hi"], box=Counted())
    result = chat().run_sync(inp, hooks=[hook])
    started = seen[0]
    assert isinstance(started, RunStarted)
    assert Counted.copies == 1  # copied once, when the hook read it
    assert started.context.history == ["hi", "from the hook"]
    assert started.context is started.context  # one copy, kept
    assert result.context.history == ["hi", "turn 0", "turn 1", "turn 2"]
    assert inp.history == ["hi"]


# --- events ---------------------------------------------------------------------------------------
def expected_events(result: Any) -> list[tuple[str, int | None]]:
    """Every event a run should report, in order, from its path."""
    out: list[tuple[str, int | None]] = [("RunStarted", None)]
    for s in result.path:
        out.append(("StepStarted", s.number))
        if s.kind is StepKind.ERROR:
            out.append(("ErrorRouted", s.number))
        out.append(("TransitionTaken", s.number))
    return [*out, ("RunFinished", None)]


def describe(event: Event) -> tuple[str, int | None]:
    return type(event).__name__, getattr(event, "step", None)


HOOK_KINDS = {
    "sync": "sync",
    "async": "async",
    "sync, async, sync": "sync,async,sync",
    "raising, sync": "raising,sync",
    "sync, async raising": "sync,async-raising",
    "raising alone": "raising",
}


@pytest.mark.parametrize("kinds", list(HOOK_KINDS.values()), ids=list(HOOK_KINDS))
@pytest.mark.parametrize("flaky", [False, True], ids=["plain", "routed error"])
def test_every_hook_gets_every_event_in_order(kinds: str, flaky: bool, caplog: pytest.LogCaptureFixture) -> None:
    """Sync, async and raising hooks, alone or mixed: each recording hook sees the run's events
    complete and in order, each event reaches the hooks in their order, and a raising hook is
    logged without stopping the run."""
    log: list[tuple[int, tuple[str, int | None]]] = []

    def make(i: int, kind: str) -> Any:
        if kind == "sync":
            return lambda event: log.append((i, describe(event)))
        if kind == "async":
            async def hook(event: Event) -> None:
                await asyncio.sleep(0)
                log.append((i, describe(event)))
            return hook
        if kind == "async-raising":
            async def bad(event: Event) -> None:
                await asyncio.sleep(0)
                raise RuntimeError("hook down")
            return bad

        def raising(event: Event) -> None:
            raise RuntimeError("hook down")
        return raising

    hooks = [make(i, k) for i, k in enumerate(kinds.split(","))]
    with caplog.at_level(logging.ERROR, logger="statemachine_agent"):
        result = asyncio.run(chat(flaky=flaky).run(Chat(), hooks=hooks))
    assert result.ok
    expected = expected_events(result)
    recording = [i for i, k in enumerate(kinds.split(",")) if k in ("sync", "async")]
    for i in recording:
        assert [e for j, e in log if j == i] == expected
    # Hooks are called in their order for each event: the log is each event, hook by hook.
    assert log == [(i, e) for e in expected for i in recording]
    raising = sum(1 for k in kinds.split(",") if "raising" in k)
    failures = [r for r in caplog.records if "failed on" in r.getMessage()]
    assert len(failures) == raising * len(expected)


def test_a_hook_raising_timeout_error_is_logged_as_cut() -> None:
    """A hook's TimeoutError is logged as a hook the deadline cut (a warning), not as a failure."""
    def hook(event: Event) -> None:
        raise TimeoutError

    logger = logging.getLogger("statemachine_agent")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        result = chat().run_sync(Chat(), hooks=[hook])
    finally:
        logger.removeHandler(handler)
    assert result.ok
    cut = [r for r in records if "was cut by the run's deadline" in r.getMessage()]
    assert len(cut) == len(expected_events(result))


def test_a_hook_added_mid_run_hears_the_next_run_whole() -> None:
    """A run's hooks are fixed when it starts: one appended to compiled.hooks mid-run gets every
    event of the next run, none of this one's."""
    compiled = chat()
    late: list[tuple[str, int | None]] = []

    def adder(event: Event) -> None:
        if isinstance(event, StepStarted) and event.step == 1:
            compiled.hooks.append(lambda e: late.append(describe(e)))

    first = compiled.run_sync(Chat(), hooks=[adder])
    assert late == []
    second = compiled.run_sync(Chat())
    assert late == expected_events(second)
    assert first.ok


def test_events_are_typed_frozen_records() -> None:
    """Fields by name and in order, equal by type and value, frozen, copied and pickled whole."""
    e = TransitionTaken("r1", "chat", 0, "talk", "answer", "talk_to_answer", StepKind.TRANSITION, 0.5)
    assert TransitionTaken.fields == ("run_id", "workflow", "step", "source", "target", "transition", "kind",
                                      "duration")
    assert e.to_dict() == {"run_id": "r1", "workflow": "chat", "step": 0, "source": "talk", "target": "answer",
                           "transition": "talk_to_answer", "kind": StepKind.TRANSITION, "duration": 0.5}
    assert e == TransitionTaken(**e.to_dict())
    assert hash(e) == hash(TransitionTaken(**e.to_dict()))
    assert isinstance(e, Event)
    assert e != StepStarted("r1", "chat", 0, "talk", 1)
    assert copy.deepcopy(e) == e
    assert pickle.loads(pickle.dumps(e)) == e
    assert repr(e).startswith("TransitionTaken(run_id='r1', workflow='chat', step=0,")
    with pytest.raises(AttributeError, match="frozen"):
        e.step = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="missing field 'visit'"):
        StepStarted("r1", "chat", 0, "talk")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown or repeated fields"):
        StepStarted("r1", "chat", 0, "talk", 1, colour="red")  # type: ignore[call-arg]
    match e:
        case TransitionTaken(source="talk", target=target):
            assert target == "answer"
        case _:
            pytest.fail("pattern matching by field")
    routed = ErrorRouted("r1", "chat", 1, "talk", Flaky("x"), "talk")
    assert routed.error.args == ("x",)
    finished = RunFinished("r1", "chat", None)  # type: ignore[arg-type]
    assert finished.result is None


# --- one coroutine per run ----------------------------------------------------------------------------
def test_run_to_end_is_one_coroutine_that_refuses_a_second_driver() -> None:
    """``run_to_end()`` is the run's coroutine; while it runs, another run_to_end or step is refused
    and changes nothing; once ended, it returns the same result."""
    gate = asyncio.Event()
    wf = Workflow("gated", Chat)

    @wf.state(initial=True, reads=["turn"], writes=["turn"])
    async def wait(ctx: Chat) -> None:
        await gate.wait()
        ctx.turn += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("wait", "done")
    wf.on_error("wait", ValueError, "failed")
    compiled = wf.compile()

    async def main() -> None:
        run = compiled.start(Chat())
        first = asyncio.ensure_future(run.run_to_end())
        await asyncio.sleep(0)
        with pytest.raises(RunError, match="already running a step"):
            await run.run_to_end()
        with pytest.raises(RunError, match="already running a step"):
            await run.step()
        gate.set()
        result = await first
        assert result.ok
        assert result.context.turn == 1
        assert await run.run_to_end() is result
        assert run.visits == {"wait": 1}

    asyncio.run(main())


def test_a_model_with_its_own_setattr_still_gets_every_write() -> None:
    """The view's fast path to pydantic's setattr handler is skipped for a model that defines its
    own ``__setattr__``: every write of a step goes through it."""
    calls: list[str] = []

    class Audited(Context):
        turn: int = 0

        def __setattr__(self, name: str, value: Any) -> None:
            calls.append(name)
            super().__setattr__(name, value)

    wf = Workflow("audited", Audited)

    @wf.state(initial=True, reads=["turn"], writes=["turn"])
    def bump(ctx: Audited) -> None:
        ctx.turn += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(bump, bump, guard=guard(lambda c: c.turn < 3, name="below 3", reads=["turn"]),
                  max_traversals=3)
    wf.transition(bump, "done", default=True)
    wf.on_error(bump, ValueError, "failed")
    result = wf.compile().run_sync(Audited())
    assert result.context.turn == 3
    assert calls == ["turn", "turn", "turn"]


# --- the first write's copy, and the start's NaN check by type --------------------------------------------
_plain_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5) | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=4),
    max_leaves=30)


def _shape(value: Any) -> Any:
    """The value with every object's exact type, and NaN as a marker (NaN != NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if isinstance(value, dict):
        return (type(value), [(_shape(k), _shape(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [_shape(v) for v in value])
    return (type(value), value)


def _containers(value: Any) -> list[Any]:
    out: list[Any] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, dict)):
            out.append(v)
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return out


class _Odd(int):
    pass


@settings(max_examples=150, deadline=None)
@given(data=_plain_data, odd=st.booleans())
def test_the_first_writes_copy_equals_deepcopy_and_shares_nothing_mutable(data: Any, odd: bool) -> None:
    from statemachine_agent._views import deep_copy

    shared = [1, [2]]
    value = [data, shared, shared, _Odd(3)] if odd else [data, shared, shared]
    got = deep_copy(value)
    assert _shape(got) == _shape(copy.deepcopy(value))
    mine = {id(c) for c in _containers(value)}
    assert not any(id(c) in mine for c in _containers(got))
    assert got[1] is got[2]  # aliasing kept, as deepcopy keeps it


class Typed(Context):
    text: str = ""
    rows: list[dict[str, str]] = Field(default_factory=list)
    number: float = 0.0
    anything: Any = None
    nested: dict[str, list[float]] = Field(default_factory=dict)


def _typed() -> CompiledWorkflow[Typed]:
    wf = Workflow("typed_nan", Typed)

    @wf.state(initial=True, optional_reads=["text"], writes=["text"])
    def go(ctx: Typed) -> None:
        ctx.text = "x"

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("go", "done")
    return wf.compile()


@pytest.mark.parametrize("field", ["number", "anything", "nested", "text", "rows"])
@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_a_non_finite_start_is_refused_in_every_field_that_can_hold_it(field: str, number: float) -> None:
    """The start's NaN check walks only the fields whose type may hold a float; a field typed to hold
    none that holds one anyway (``model_construct``) is refused by its serializer instead."""
    from statemachine_agent.stores import MemoryStore

    values: dict[str, Any] = {"number": number, "anything": {"a": [1, number]}, "nested": {"k": [number]},
                              "text": number, "rows": [{"a": number}]}
    context = Typed.model_construct(**{field: values[field]})
    with MemoryStore() as store:
        with pytest.raises((ValueError, TypeError), match=f"{field}"):
            _typed().run_sync(context, store=store, run_id="bad")
        assert store.list_runs().result() == []


@settings(max_examples=150, deadline=None)
@given(data=_plain_data)
def test_all_finite_answers_as_first_non_finite_does(data: Any) -> None:
    from statemachine_agent.context import all_finite, first_non_finite

    assert all_finite(data) is (first_non_finite(data) is None)
