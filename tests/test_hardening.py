"""Regression tests for the defects adversarial use found in the core (issue: the core, hardened)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from statemachine_agent import (
    UNSET,
    Context,
    ContextAccessError,
    Decision,
    DefinitionError,
    Option,
    RunError,
    Workflow,
    result_of,
)
from statemachine_agent.clock import FakeClock
from statemachine_agent.events import Event, RunFinished
from statemachine_agent.runner import MissingWrite
from statemachine_agent.tools import Tools


class Items(Context):
    items: list[int] = Field(default_factory=list)
    notes: dict[str, list[int]] = Field(default_factory=dict)
    answer: str | None = None


def one_state(action: Any, **state: Any) -> Workflow[Items]:
    """A workflow with one state ``act`` (initial) that goes to ``done``, errors to ``failed``."""
    wf: Workflow[Items] = Workflow("one", Items)
    wf.add_state("act", action, initial=True, **state)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("act", "done")
    return wf


# --- 1. the result shares nothing with the caller's input ------------------------------------
def test_result_shares_nothing_with_the_input_where_the_run_wrote() -> None:
    """What the run wrote is the result's own; a value it never wrote is the caller's, not copied
    (a run costs what it changed: tests/test_runner_fast_paths.py)."""
    def act(ctx: Items) -> None:
        ctx.items.append(3)
        ctx.answer = "a"

    wf = one_state(act, writes=["items", "answer"]).compile()
    inp = Items(items=[1, 2], notes={"k": [1]})
    first = wf.run_sync(inp)
    second = wf.run_sync(inp)
    first.context.items.append(4)
    assert inp.items == [1, 2] and second.context.items == [1, 2, 3]
    assert first.context.notes is inp.notes is second.context.notes  # never written: shared, not copied


def test_a_write_in_place_never_reaches_the_input() -> None:
    """A state appending to a list it writes changes the run's copy, not the caller's list."""
    def act(ctx: Items) -> None:
        ctx.items.append(3)

    wf = one_state(act, writes=["items"]).compile()
    inp = Items(items=[1, 2])
    result = wf.run_sync(inp)
    assert result.context.items == [1, 2, 3]
    assert inp.items == [1, 2]
    assert result.path[0].writes == ("items",)


# --- 2. one step at a time ---------------------------------------------------------------------
def test_a_second_concurrent_step_is_refused_and_changes_nothing() -> None:
    """While a step awaits, another step() on the same run raises RunError; visits count once."""
    gate = asyncio.Event()

    async def act(ctx: Items) -> None:
        await gate.wait()
        ctx.answer = "once"

    wf = one_state(act, writes=["answer"]).compile()

    async def main() -> None:
        run = wf.start(Items())
        first = asyncio.ensure_future(run.step())
        await asyncio.sleep(0)
        with pytest.raises(RunError, match="already running a step"):
            await run.step()
        gate.set()
        step = await first
        assert step.target == "done"
        assert run.visits == {"act": 1}
        assert run.context.answer == "once"
        assert run.result is not None and run.result.steps == 1

    asyncio.run(main())


# --- 3. hostile policy answers -------------------------------------------------------------------
class Hostile:
    """An answer every one of whose dunders raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("class")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"getattr {name}")


class HostileStr(str):
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __repr__(self) -> str:
        raise RuntimeError("repr")


class Pick(Context):
    choice: str | None = None


def decider() -> Workflow[Pick]:
    """decide -> a | b, with a catch-all error route that must never be taken for a bad answer."""
    wf: Workflow[Pick] = Workflow("pick", Pick)
    wf.add_state("decide", lambda ctx: None, initial=True, decision=True)
    wf.add_state("a", lambda ctx: None)
    wf.add_state("b", lambda ctx: None)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("errored", outcome="failure")
    wf.transition("decide", "a", description="go a")
    wf.transition("decide", "b", description="go b")
    wf.transition("a", "done").transition("b", "done")
    wf.on_error("decide", Exception, "errored")
    return wf


hostile_answers = st.one_of(
    st.builds(Hostile), st.builds(HostileStr, st.sampled_from(["decide_to_a", "nowhere", "a"])),
    st.integers(), st.none(), st.binary(), st.text(max_size=30), st.lists(st.integers(), max_size=3),
    st.just(Option("decide_to_zzz", "zzz", "")), st.just("x" * 100_000),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(hostile_answers, min_size=1, max_size=4))
def test_any_bad_answer_is_rejected_never_routed(answers: list[Any]) -> None:
    """Whatever the policy answers, a non-option is rejected with a reason and the policy asked
    again; the run never takes the error route, and every reason is on the failing step."""
    script = iter(answers)

    def policy(decision: Decision[Pick]) -> Any:
        return next(script, None)

    result = decider().compile().run_sync(Pick(), policy=policy, max_policy_attempts=len(answers))
    assert result.terminal in ("failed", "done")
    assert result.terminal != "errored"
    step = result.path[0]
    if result.terminal == "failed":
        assert len(step.rejected) == len(answers)
        assert all(isinstance(r, str) and len(r) < 1000 for r in step.rejected)


def test_a_hostile_str_subclass_naming_an_option_is_taken_as_plain_text() -> None:
    """A str subclass is compared as plain text: its raising __eq__/__hash__ are never called."""
    result = decider().compile().run_sync(Pick(), policy=lambda d: HostileStr("decide_to_b"))
    assert result.states == ["decide", "b", "done"]


def test_an_exception_from_the_policy_itself_is_the_policys_error() -> None:
    """Only an exception the policy call raises is routed (here to 'errored')."""
    def policy(decision: Decision[Pick]) -> Any:
        raise LookupError("model down")

    result = decider().compile().run_sync(Pick(), policy=policy)
    assert result.terminal == "errored"
    assert isinstance(result.path[0].error, LookupError)


# --- 4. rejection reasons survive a later failure ---------------------------------------------
def test_rejections_are_kept_when_a_later_attempt_raises() -> None:
    """A garbage answer, then an exception: the error step still lists the first rejection."""
    answers: list[Any] = ["garbage"]

    def policy(decision: Decision[Pick]) -> Any:
        if answers:
            return answers.pop()
        raise LookupError("then it broke")

    result = decider().compile().run_sync(Pick(), policy=policy)
    assert result.terminal == "errored"
    assert len(result.path[0].rejected) == 1
    assert "'garbage' is not an enabled transition" in result.path[0].rejected[0]


def test_rejections_are_kept_when_the_deadline_strikes() -> None:
    """A garbage answer, then a policy that outlives the run's deadline: the reason stays."""
    clock = FakeClock()
    answers: list[Any] = ["garbage"]

    async def policy(decision: Decision[Pick]) -> Any:
        if answers:
            return answers.pop()
        await clock.sleep(60)
        return "decide_to_a"

    result = decider().compile().run_sync(Pick(), policy=policy, timeout=5, clock=clock)
    assert result.terminal == "failed"
    assert "deadline of 5 s passed in state 'decide'" in (result.reason or "")
    assert len(result.path[0].rejected) == 1


# --- 5. hooks run inside the run's deadline -------------------------------------------------------
def test_a_slow_async_hook_is_cut_by_the_deadline() -> None:
    """A hook slower than the run's deadline is cancelled (never finishes); the run ends on time
    in the failure terminal, and a hook that does not wait still sees the run finish."""
    clock = FakeClock()
    finished: list[str] = []
    seen: list[str] = []

    async def slow(event: Event) -> None:
        await clock.sleep(0.2)
        finished.append(type(event).__name__)

    def quick(event: Event) -> None:
        seen.append(type(event).__name__)

    ran: list[bool] = []
    wf = one_state(lambda ctx: ran.append(True)).compile()
    result = wf.run_sync(Items(), hooks=[slow, quick], timeout=0.1, clock=clock)
    assert result.terminal == "failed"
    assert "deadline of 0.1 s passed" in (result.reason or "")
    assert finished == []
    assert ran == []
    assert seen[-1] == RunFinished.__name__


# --- 6. run_sync and abandoned tool threads ---------------------------------------------------------
def test_run_sync_does_not_wait_for_an_abandoned_tool_thread() -> None:
    """A sync tool that outlives its timeout is abandoned: run_sync returns while it still runs."""
    release = threading.Event()
    wf: Workflow[Items] = Workflow("slowtool", Items)

    @wf.tool(timeout=0.05)
    def block() -> int:
        release.wait(30)
        return 1

    async def act(ctx: Items, tools: Tools) -> None:
        await tools.call("block")

    wf.add_state("act", act, initial=True, tools=["block"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("act", "done")
    wf.on_error("act", TimeoutError, "failed")
    try:
        result = wf.compile().run_sync(Items())
        assert not release.is_set()  # returned while the tool's thread was still blocked
        assert result.terminal == "failed"
    finally:
        release.set()


def test_run_sync_never_formats_the_result() -> None:
    """run_sync does not call repr() on what it returns (asyncio.run does, twice, on 3.11)."""
    calls: list[int] = []

    class Loud(Context):
        answer: str | None = None

        def __repr__(self) -> str:
            calls.append(1)
            return "Loud()"

    wf: Workflow[Loud] = Workflow("loud", Loud)
    wf.add_state("act", lambda ctx: None, initial=True)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("act", "done")
    wf.compile().run_sync(Loud())
    assert calls == []


def test_run_sync_leaves_no_task_behind() -> None:
    """A task an action forgot is cancelled before run_sync returns, not carried into the next call."""
    leftovers: list[asyncio.Task[None]] = []

    async def act(ctx: Items) -> None:
        leftovers.append(asyncio.ensure_future(asyncio.sleep(3600)))

    wf = one_state(act).compile()
    wf.run_sync(Items())
    assert leftovers[0].cancelled()
    wf.run_sync(Items())


# --- 7. the tools handle only when wanted ------------------------------------------------------------
def test_an_optional_second_parameter_keeps_its_default_without_tools() -> None:
    """def answer(ctx, shout=False) in a state without tools is not handed the tools handle."""
    def answer(ctx: Items, shout: bool = False) -> None:
        ctx.answer = "LOUD" if shout else "quiet"

    result = one_state(answer, writes=["answer"]).compile().run_sync(Items())
    assert result.context.answer == "quiet"


# --- 8. declared writes are checked ---------------------------------------------------------------------
def test_a_step_that_skips_a_declared_write_fails_loudly() -> None:
    """writes=['answer'] written only sometimes: the step fails, naming the state and the field."""
    def act(ctx: Items) -> None:
        if ctx.items:
            ctx.answer = "yes"

    wf = one_state(act, reads=["items"], writes=["answer"]).compile()
    assert wf.run_sync(Items(items=[1])).context.answer == "yes"
    with pytest.raises(MissingWrite) as info:
        wf.run_sync(Items())
    assert str(info.value).startswith("state 'act' ended without writing 'answer', which it declares in "
                                      "writes=[...]")
    found = result_of(info.value)
    assert found is not None and found.terminal == "failed"


def test_an_optional_write_may_be_skipped() -> None:
    """optional_writes=['answer'] written only sometimes is fine."""
    def act(ctx: Items) -> None:
        if ctx.items:
            ctx.answer = "yes"

    wf = one_state(act, reads=["items"], optional_writes=["answer"]).compile()
    assert wf.run_sync(Items()).terminal == "done"


# --- 9. optional reads ----------------------------------------------------------------------------------
def test_optional_reads_see_the_default() -> None:
    """optional_reads=['answer'] reads a None default no step wrote, without a checker complaint."""
    seen: list[Any] = []

    def act(ctx: Items) -> None:
        seen.append(ctx.answer)

    assert one_state(act, optional_reads=["answer"]).compile().run_sync(Items()).terminal == "done"
    assert seen == [None]


class Later(Context):
    question: str
    draft: str = UNSET


def test_unset_fields_are_typed_without_none_and_left_out_of_dumps() -> None:
    """A field defaulting to UNSET is absent from model_dump until a state writes it."""
    wf: Workflow[Later] = Workflow("later", Later)

    @wf.state(initial=True, reads=["question"], writes=["draft"])
    def write(ctx: Later) -> None:
        ctx.draft = ctx.question.upper()

    @wf.state(reads=["draft"])
    def read(ctx: Later) -> None:
        assert ctx.draft.startswith("Q")

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(write, read).transition(read, "done")
    assert Later(question="q").model_dump() == {"question": "q"}
    result = wf.compile().run_sync(Later(question="q"))
    assert result.context.model_dump() == {"question": "q", "draft": "Q"}


# --- 10. unrouted errors are loud ------------------------------------------------------------------------
def test_a_bug_in_an_action_is_raised_with_the_run_attached() -> None:
    """A NameError no route handles reaches the caller; the run is recorded as failed on it."""
    def act(ctx: Items) -> None:
        undefined_name  # type: ignore[name-defined]  # noqa: B018, F821

    wf = one_state(act).compile()
    with pytest.raises(NameError) as info:
        wf.run_sync(Items())
    found = result_of(info.value)
    assert found is not None
    assert (found.terminal, found.outcome.value) == ("failed", "failure")
    assert found.error is info.value
    assert any("ended in 'failed'" in note for note in info.value.__notes__)
    quiet = wf.run_sync(Items(), raise_errors=False)
    assert quiet.terminal == "failed" and isinstance(quiet.error, NameError)


def test_a_routed_error_is_not_raised() -> None:
    """An error an error transition routes ends in its terminal, quietly."""
    def act(ctx: Items) -> None:
        raise KeyError("k")

    wf = one_state(act)
    wf.on_error("act", KeyError, "failed")
    result = wf.compile().run_sync(Items())
    assert result.terminal == "failed" and isinstance(result.path[0].error, KeyError)
    assert result.error is None  # only an unrouted exception is the run's error


def test_a_context_access_error_is_loud() -> None:
    """Writing an undeclared field is a bug: raised, with the run recorded."""
    def act(ctx: Items) -> None:
        ctx.answer = "x"

    with pytest.raises(ContextAccessError, match="add 'answer' to writes"):
        one_state(act).compile().run_sync(Items())


# --- 11. definition errors: one DefinitionError ------------------------------------------------------
def test_definition_slips_are_reported_together() -> None:
    """guard=42, a foreign state and a string for reads are problems of the one DefinitionError."""
    other: Workflow[Items] = Workflow("other", Items)
    foreign = other.add_state("x", lambda ctx: None, initial=True)
    wf: Workflow[Items] = Workflow("slips", Items)
    wf.add_state("act", lambda ctx: None, initial=True, reads="items")  # type: ignore[arg-type]
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("act", "done", guard=42)  # type: ignore[arg-type]
    wf.transition("act", foreign, default=True)
    with pytest.raises(DefinitionError) as info:
        wf.compile()
    codes = {p.code for p in info.value.problems}
    assert {"bad-guard", "foreign-state", "bad-field"} <= codes
    text = str(info.value)
    assert "act_to_done" in text or "act->done" in text


# --- the views: O(1) proxies that keep both promises ------------------------------------------------
list_ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers()),
    st.tuples(st.just("extend"), st.lists(st.integers(), max_size=3)),
    st.tuples(st.just("insert"), st.integers(-5, 5), st.integers()),
    st.tuples(st.just("pop"), st.integers(-5, 5)),
    st.tuples(st.just("setitem"), st.integers(-5, 5), st.integers()),
    st.tuples(st.just("delitem"), st.integers(-5, 5)),
    st.tuples(st.just("slice"), st.integers(0, 4), st.integers(0, 4), st.lists(st.integers(), max_size=3)),
    st.tuples(st.just("remove"), st.integers(0, 3)),
    st.tuples(st.just("sort"),), st.tuples(st.just("reverse"),), st.tuples(st.just("clear"),),
    st.tuples(st.just("iadd"), st.lists(st.integers(), max_size=3)),
    st.tuples(st.just("dict_set"), st.text(max_size=2), st.integers()),
    st.tuples(st.just("dict_del"), st.text(max_size=2)),
    st.tuples(st.just("nested_append"), st.text(max_size=2), st.integers()),
), max_size=12)


def apply(items: Any, notes: Any, op: tuple[Any, ...]) -> None:
    """One operation, on a plain list/dict or on the view's proxies alike; errors as Python raises."""
    kind, *args = op
    if kind == "append":
        items.append(args[0])
    elif kind == "extend":
        items.extend(args[0])
    elif kind == "insert":
        items.insert(args[0], args[1])
    elif kind == "pop":
        items.pop(args[0])
    elif kind == "setitem":
        items[args[0]] = args[1]
    elif kind == "delitem":
        del items[args[0]]
    elif kind == "slice":
        items[args[0]:args[1]] = args[2]
    elif kind == "remove":
        items.remove(args[0])
    elif kind == "sort":
        items.sort()
    elif kind == "reverse":
        items.reverse()
    elif kind == "clear":
        items.clear()
    elif kind == "iadd":
        items += args[0]
    elif kind == "dict_set":
        notes[args[0]] = [args[1]]
    elif kind == "dict_del":
        del notes[args[0]]
    elif kind == "nested_append":
        notes.setdefault(args[0], []).append(args[1])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(), max_size=6), list_ops, st.booleans())
def test_tracked_changes_match_plain_python_and_roll_back_exactly(
        start: list[int], ops: list[tuple[Any, ...]], fail: bool) -> None:
    """Any sequence of list and dict changes through the view gives what plain Python gives; if the
    step then fails, the context is exactly as before (the undo log is exact)."""
    expected_items, expected_notes = list(start), {"k": [0]}
    for op in ops:
        with contextlib.suppress(IndexError, ValueError, KeyError):
            apply(expected_items, expected_notes, op)

    def act(ctx: Items) -> None:
        items, notes = ctx.items, ctx.notes
        for op in ops:
            with contextlib.suppress(IndexError, ValueError, KeyError):
                apply(items, notes, op)
        ctx.answer = "done"
        if fail:
            raise OSError("fail after the changes")

    wf = one_state(act, writes=["answer"], optional_writes=["items", "notes"])
    wf.on_error("act", OSError, "failed")
    inp = Items(items=list(start), notes={"k": [0]})
    result = wf.compile().run_sync(inp)
    if fail:
        assert result.context.items == start and result.context.notes == {"k": [0]}
        assert result.context.answer is None
    else:
        assert result.context.items == expected_items and result.context.notes == expected_notes
    assert inp.items == start and inp.notes == {"k": [0]}


@settings(max_examples=100, deadline=None)
@given(list_ops.filter(bool))
def test_a_read_only_field_refuses_every_change(ops: list[tuple[Any, ...]]) -> None:
    """Every change of a read-only list or dict (nested values included) raises ContextAccessError
    naming the state and the field, and changes nothing."""
    op = ops[0]

    def act(ctx: Items) -> None:
        apply(ctx.items, ctx.notes, op)

    wf = one_state(act, reads=["items", "notes"]).compile()
    inp = Items(items=[3, 1, 2], notes={"": [1], "k": [0]})
    message = ""
    try:
        result = wf.run_sync(inp)
    except ContextAccessError as exc:
        message, found = str(exc), result_of(exc)
        assert found is not None
        result = found
    if message:
        assert "only reads it" in message and "state 'act'" in message
    else:  # only ops that are no-ops on these values get here (e.g. removing a missing item)
        assert result.terminal in ("done", "failed")
    assert result.context.items == [3, 1, 2] and result.context.notes == {"": [1], "k": [0]}


def test_frozen_views_read_like_the_real_thing() -> None:
    """A read-only list reads like a list: len, index, slices (plain copies), iteration, equality,
    membership, concatenation; nested dicts too."""
    seen: dict[str, Any] = {}

    def act(ctx: Items) -> None:
        items = ctx.items
        seen["len"] = len(items)
        seen["first"] = items[0]
        seen["slice"] = items[1:]
        seen["sum"] = sum(items)
        seen["eq"] = items == [1, 2, 3]
        seen["in"] = 2 in items
        seen["plus"] = items + [4]  # noqa: RUF005  # the operator itself is under test
        seen["nested"] = ctx.notes["k"][0]
        seen["keys"] = sorted(ctx.notes)

    one_state(act, reads=["items", "notes"]).compile().run_sync(Items(items=[1, 2, 3], notes={"k": [7]}))
    assert seen == {"len": 3, "first": 1, "slice": [2, 3], "sum": 6, "eq": True, "in": True,
                    "plus": [1, 2, 3, 4], "nested": 7, "keys": ["k"]}
    assert type(seen["slice"]) is list and type(seen["plus"]) is list


class Msg(BaseModel):
    role: str
    content: str


class Chat(Context):
    history: list[Msg] = Field(default_factory=list)


def test_nested_models_in_a_writable_list_roll_back() -> None:
    """Assigning a field of a model inside a written list is undone when the step fails."""
    def act(ctx: Chat) -> None:
        ctx.history[0].content = "changed"
        ctx.history.append(Msg(role="assistant", content="hi"))
        raise OSError("then fail")

    wf: Workflow[Chat] = Workflow("chat", Chat)
    wf.add_state("act", act, initial=True, writes=["history"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("act", "done")
    wf.on_error("act", OSError, "failed")
    result = wf.compile().run_sync(Chat(history=[Msg(role="user", content="q")]))
    assert [m.content for m in result.context.history] == ["q"]


# --- cancellation at every await ----------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12))
def test_cancelling_a_step_at_any_await_leaves_the_run_whole(cancel_after: int) -> None:
    """Cancel a step after any number of loop turns: its writes (assigned or in place) are undone,
    its visit is not counted, nothing is left running, and the run then completes normally."""
    async def act(ctx: Items) -> None:
        for i in range(4):
            ctx.items.append(i)
            await asyncio.sleep(0)
            ctx.notes[str(i)] = [i]
            await asyncio.sleep(0)
        ctx.answer = "done"

    wf = one_state(act, writes=["answer"], optional_writes=["items", "notes"]).compile()

    async def main() -> None:
        run = wf.start(Items(items=[9]))
        task = asyncio.ensure_future(run.step())
        for _ in range(cancel_after):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            assert run.context.items == [9] and run.context.notes == {} and run.context.answer is None
            assert run.visits.get("act", 0) == 0 and run.actions_run == 0 and run.path == []
        else:  # the step finished before the cancellation arrived
            assert run.result is not None
        if run.result is None:
            result = await run.run_to_end()
            assert result.context.items == [9, 0, 1, 2, 3] and result.context.answer == "done"
            assert result.steps == 1

    asyncio.run(main())


class Anything(Context):
    value: Any = None
    answer: str | None = None


class Uncopyable:
    """A value whose copy and repr raise."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise RuntimeError("no copies")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_values_that_cannot_be_copied_or_shown_do_not_break_a_run() -> None:
    """A context value whose deepcopy and repr raise, or nested 30,000 deep, still gives a result
    (the value is then shared with the input), and hooks still see the run start."""
    deep: list[Any] = []
    for _ in range(30_000):
        deep = [deep]
    seen: list[str] = []
    for value in (Uncopyable(), deep):
        wf: Workflow[Anything] = Workflow("odd", Anything)
        wf.add_state("act", lambda ctx: setattr(ctx, "answer", "ok"), initial=True, writes=["answer"])
        wf.terminal("done")
        wf.terminal("failed", outcome="failure")
        wf.transition("act", "done")
        result = wf.compile().run_sync(Anything(value=value), hooks=[lambda e: seen.append(type(e).__name__)])
        assert result.terminal == "done" and result.context.value is value
    assert seen.count("RunStarted") == 2
