"""The runner: each rule of a step, on both the async and the sync entry points."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from broken_specs import Ctx, base, noop

from statemachine_agent import (
    CompiledWorkflow,
    ContextAccessError,
    Decision,
    Outcome,
    RunError,
    RunResult,
    Workflow,
    guard,
    scripted,
    seeded_random,
)
from statemachine_agent.events import (
    BudgetExhausted,
    ErrorRouted,
    Event,
    PolicyChoiceRejected,
    RunFinished,
    RunStarted,
    StepStarted,
    TransitionTaken,
)

Runner = Callable[..., RunResult[Any]]


@pytest.fixture(params=["async", "sync"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a compiled workflow through ``await run()`` or through ``run_sync()``."""

    def via_async(wf: CompiledWorkflow[Any], ctx: Any, **kw: Any) -> RunResult[Any]:
        return asyncio.run(wf.run(ctx, **kw))

    def via_sync(wf: CompiledWorkflow[Any], ctx: Any, **kw: Any) -> RunResult[Any]:
        return wf.run_sync(ctx, **kw)

    return via_async if request.param == "async" else via_sync


def research(max_visits: int = 2) -> Workflow[Ctx]:
    """search -> (hits) summarize -> done, else refine (bounded) -> search."""
    wf = base("research")

    @wf.state(initial=True, reads=["question", "attempts"], writes=["hits", "attempts"])
    async def search(ctx: Ctx) -> None:
        await asyncio.sleep(0)
        ctx.attempts += 1
        ctx.hits = ["a hit"] if ctx.question == "good" else []

    @wf.state(reads=["attempts"], writes=["question"], max_visits=max_visits)
    def refine(ctx: Ctx) -> None:
        ctx.question = "good" if ctx.attempts >= 2 else "meh"

    @wf.state(reads=["hits"], writes=["answer"])
    def summarize(ctx: Ctx) -> None:
        assert ctx.hits
        ctx.answer = ctx.hits[0].upper()

    wf.transition(search, summarize, guard=guard(lambda c: bool(c.hits), name="has hits", reads=["hits"]))
    wf.transition(search, refine, default=True)
    wf.transition(refine, search)
    wf.transition(summarize, "done")
    return wf


def test_happy_path_result(run: Runner) -> None:
    """A run ends in a success terminal with its path, final context and no reason."""
    wf = research().compile()
    ctx = Ctx(question="good")
    result = run(wf, ctx)
    assert ctx.attempts == 0
    assert (result.terminal, result.outcome, result.reason) == ("done", Outcome.SUCCESS, None)
    assert result.states == ["search", "summarize", "done"]
    assert [s.transition for s in result.path] == ["search_to_summarize", "summarize_to_done"]
    assert result.context.answer == "A HIT"
    assert all(s.duration >= 0 and s.started_at > 0 for s in result.path)
    assert ctx.answer is None  # the caller's object is never mutated
    assert ctx.attempts == 0


def test_guards_first_enabled_wins_then_default(run: Runner) -> None:
    """Exits are tried in declared order; the default fires only when none is enabled."""
    wf = research(max_visits=3).compile()
    result = run(wf, Ctx(question="meh"))
    assert result.states == ["search", "refine", "search", "refine", "search", "summarize", "done"]
    assert result.context.attempts == 3


def test_visit_budget_ends_in_failure_terminal(run: Runner) -> None:
    """Exhausting max_visits ends the run in the failure terminal with the budget named."""
    wf = base("loop")

    @wf.state(initial=True, reads=["attempts"], writes=["attempts"])
    def search(ctx: Ctx) -> None:
        ctx.attempts += 1

    @wf.state(max_visits=2)
    def refine(ctx: Ctx) -> None:
        pass

    wf.transition(search, "done", guard=guard(lambda c: c.attempts > 99, name="never"))
    wf.transition(search, refine, default=True)
    wf.transition(refine, search)
    compiled = wf.compile()
    result = run(compiled, Ctx(question="q"))
    assert (result.terminal, result.outcome) == ("failed", Outcome.FAILURE)
    assert result.reason == "visits of 'refine' reached 2"
    assert result.path[-1].kind == "fail" and not result.path[-1].ran
    assert result.steps <= compiled.max_steps


def test_traversal_budget(run: Runner) -> None:
    """Exhausting max_traversals on an edge fails the run, naming the edge."""
    wf = base("poll")

    @wf.state(initial=True)
    def poll(ctx: Ctx) -> None:
        pass

    wf.transition(poll, "done", guard=guard(lambda c: False, name="ready"))
    wf.transition(poll, poll, default=True, max_traversals=3)
    result = run(wf.compile(), Ctx(question="q"))
    assert result.reason == "traversals of 'poll_to_poll' reached 3"
    assert result.steps == 4


def test_max_steps_override(run: Runner) -> None:
    """An explicit max_steps below the bound stops the run there."""
    result = run(research(max_visits=3).compile(), Ctx(question="meh"), max_steps=2)
    assert result.reason == "max_steps of 2 reached before state 'search'"
    assert result.steps == 2


def test_deadline_interrupts_a_hanging_action(run: Runner) -> None:
    """A wall-clock deadline ends a run whose action hangs, in the failure terminal."""
    wf = base("hang")

    @wf.state(initial=True, writes=["answer"])
    async def wait(ctx: Ctx) -> None:
        ctx.answer = "partial"
        await asyncio.sleep(3600)

    wf.transition(wait, "done")
    result = run(wf.compile(), Ctx(question="q"), timeout=0.05)
    assert result.terminal == "failed"
    assert result.reason == "deadline of 0.05 s passed in state 'wait'"
    assert result.context.answer is None  # the interrupted action's writes are discarded


def test_actions_own_timeout_is_routed_not_mistaken_for_the_deadline(run: Runner) -> None:
    """A TimeoutError raised by the action itself is an ordinary, routable error."""
    wf = base("own-timeout")

    @wf.state(initial=True)
    async def call(ctx: Ctx) -> None:
        raise TimeoutError("upstream timed out")

    wf.transition(call, "done")
    wf.on_error(call, TimeoutError, "failed")
    result = run(wf.compile(), Ctx(question="q"), timeout=10)
    assert result.path[0].kind == "error"
    assert isinstance(result.path[0].error, TimeoutError)


def erroring(exc: Exception) -> Workflow[Ctx]:
    """A workflow whose first action writes, then raises ``exc``."""
    wf = base("erroring")
    wf.terminal("retry_later", outcome="failure")
    wf.terminal("os_problem", outcome="failure")

    @wf.state(initial=True, writes=["answer", "attempts"])
    def act(ctx: Ctx) -> None:
        ctx.answer = "half"
        ctx.attempts = 7
        raise exc

    wf.transition(act, "done")
    wf.on_error(act, OSError, "os_problem")
    wf.on_error(act, ConnectionError, "retry_later")
    return wf


def test_error_routing_most_specific_first(run: Runner) -> None:
    """A ConnectionError goes to its own route, not to the OSError one declared first."""
    result = run(erroring(ConnectionResetError("reset")).compile(), Ctx(question="q"))
    assert result.terminal == "retry_later"
    assert result.reason == "state 'act' raised ConnectionResetError: reset; routed to 'retry_later'"
    assert isinstance(result.path[0].error, ConnectionResetError)


def test_failed_action_leaves_no_writes(run: Runner) -> None:
    """An action that raises has none of its writes applied."""
    result = run(erroring(PermissionError("no")).compile(), Ctx(question="q"))
    assert result.terminal == "os_problem"
    assert (result.context.answer, result.context.attempts) == (None, 0)


def test_unrouted_error_ends_in_failure_terminal_with_error(run: Runner) -> None:
    """An exception no route matches ends the run in the failure terminal, recorded."""
    result = run(erroring(KeyError("k")).compile(), Ctx(question="q"), raise_errors=False)
    assert result.terminal == "failed"
    assert isinstance(result.error, KeyError)
    assert "no error transition routes it" in (result.reason or "")


def test_raise_errors_reraises_unrouted(run: Runner) -> None:
    """raise_errors=True re-raises an unrouted exception instead of failing the run."""
    with pytest.raises(KeyError):
        run(erroring(KeyError("k")).compile(), Ctx(question="q"), raise_errors=True)


def test_undeclared_write_is_rejected(run: Runner) -> None:
    """Writing a field the state does not declare fails the run with state and field named."""
    wf = base("sneaky")

    @wf.state(initial=True, writes=["answer"])
    def act(ctx: Ctx) -> None:
        ctx.answer = "fine"
        ctx.query = "not declared"

    wf.transition(act, "done")
    wf.on_error(act, Exception, "done")  # even a catch-all route does not swallow it
    result = run(wf.compile(), Ctx(question="q"), raise_errors=False)
    assert result.terminal == "failed"
    assert isinstance(result.error, ContextAccessError)
    assert (result.error.state, result.error.field) == ("act", "query")
    assert result.reason == ("state 'act' wrote 'query', which it does not declare: add 'query' to "
                             "writes=[...] of state 'act'")
    assert result.context.answer is None


def test_undeclared_read_is_rejected(run: Runner) -> None:
    """Reading a field the state does not declare is an error naming state and field."""
    wf = base("peek")

    @wf.state(initial=True)
    def act(ctx: Ctx) -> None:
        print(ctx.question)

    wf.transition(act, "done")
    with pytest.raises(ContextAccessError, match="add 'question' to reads"):
        run(wf.compile(), Ctx(question="q"), raise_errors=True)


def test_write_is_validated_in_the_action(run: Runner) -> None:
    """A wrongly typed write raises pydantic's ValidationError, routable like any error."""
    from pydantic import ValidationError

    wf = base("typed")

    @wf.state(initial=True, writes=["attempts"])
    def act(ctx: Ctx) -> None:
        ctx.attempts = "many"  # type: ignore[assignment]

    wf.transition(act, "done")
    wf.on_error(act, ValidationError, "failed")
    result = run(wf.compile(), Ctx(question="q"))
    assert result.path[0].kind == "error"
    assert isinstance(result.path[0].error, ValidationError)


def test_in_place_mutation_of_a_failed_step_does_not_leak(run: Runner) -> None:
    """Appending to a list field and then failing leaves the committed list unchanged."""
    wf = base("mutate")

    @wf.state(initial=True, writes=["hits"])
    def act(ctx: Ctx) -> None:
        assert ctx.hits is not None
        ctx.hits.append("leaked?")
        raise RuntimeError("boom")

    wf.transition(act, "done")
    wf.on_error(act, RuntimeError, "failed")
    ctx = Ctx(question="q", hits=["kept"])
    result = run(wf.compile(), ctx)
    assert result.context.hits == ["kept"]
    assert ctx.hits == ["kept"]


def decide() -> Workflow[Ctx]:
    """A decision state with three described exits."""
    wf = base("decide")
    wf.terminal("escalated")

    @wf.state(initial=True, decision=True)
    def route(ctx: Ctx) -> None:
        pass

    wf.transition(route, "done", description="answer now")
    wf.transition(route, "escalated", description="ask a person")
    wf.transition(route, "failed", guard=guard(lambda c: c.attempts > 5, name="hopeless"),
                  description="give up")
    return wf


def test_policy_picks_among_enabled_only(run: Runner) -> None:
    """A scripted policy's valid choice is taken; a disabled one is rejected, then asked again."""
    events: list[Event] = []
    result = run(decide().compile(), Ctx(question="q"), policy=scripted(["failed", "escalated"]),
                 hooks=[events.append])
    assert result.terminal == "escalated"
    assert result.path[0].rejected == ("'failed' is not an enabled transition; enabled: "
                                       "'route_to_done', 'route_to_escalated'",)
    rejected = [e for e in events if isinstance(e, PolicyChoiceRejected)]
    assert [(e.choice, e.attempt) for e in rejected] == [("failed", 1)]


def test_policy_garbage_then_failure_terminal(run: Runner) -> None:
    """A policy that never answers a valid choice sends the run to the failure terminal."""

    def llm(decision: Decision) -> Any:
        return [42, None, {"go": "done"}][decision.attempt - 1]

    result = run(decide().compile(), Ctx(question="q"), policy=llm)
    assert result.terminal == "failed"
    assert result.reason is not None
    assert result.reason.startswith("the policy gave no valid choice in state 'route' after 3 attempts")


def test_async_policy_and_decision_contents(run: Runner) -> None:
    """An async policy sees the state, a read-only context and the described options."""
    seen: list[Decision] = []

    async def policy(decision: Decision) -> str:
        seen.append(decision)
        with pytest.raises(AttributeError):
            decision.context.answer = "no"
        return decision.options[1].name

    result = run(decide().compile(), Ctx(question="q"), policy=policy)
    assert result.terminal == "escalated"
    [d] = seen
    assert d.state == "route" and d.context.question == "q"
    assert [(o.target, o.description) for o in d.options] == [("done", "answer now"),
                                                              ("escalated", "ask a person")]


def test_seeded_random_policy_is_reproducible(run: Runner) -> None:
    """The same seed gives the same choices."""
    wf = decide().compile()
    first = [run(wf, Ctx(question="q"), policy=seeded_random(s)).terminal for s in range(8)]
    again = [run(wf, Ctx(question="q"), policy=seeded_random(s)).terminal for s in range(8)]
    assert first == again
    assert set(first) == {"done", "escalated"}


def test_events_in_order_and_async_hooks(run: Runner) -> None:
    """Hooks get typed events in order; async hooks are awaited; a failing hook is not fatal."""
    seen: list[str] = []

    async def ahook(event: Event) -> None:
        seen.append(type(event).__name__)

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    result = run(research().compile(), Ctx(question="good"), hooks=[ahook, broken])
    assert result.ok
    assert seen == ["RunStarted", "StepStarted", "TransitionTaken", "StepStarted", "TransitionTaken",
                    "RunFinished"]


def test_budget_and_error_events(run: Runner) -> None:
    """Routed errors and exhausted budgets each emit their own event."""
    events: list[Event] = []
    run(erroring(OSError("disk")).compile(), Ctx(question="q"), hooks=[events.append])
    assert [type(e) for e in events if isinstance(e, ErrorRouted)] == [ErrorRouted]
    events.clear()
    run(research(max_visits=1).compile(), Ctx(question="meh"), max_steps=2, hooks=[events.append])
    [b] = [e for e in events if isinstance(e, BudgetExhausted)]
    assert b.budget == "max_steps"
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert any(isinstance(e, StepStarted) for e in events) and any(isinstance(e, TransitionTaken)
                                                                  for e in events)


def test_logging_debug_steps_and_warning_failures(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    """Steps log at DEBUG with structured extras; failures at WARNING; transitions stays quiet."""
    caplog.set_level(logging.DEBUG, logger="statemachine_agent")
    run(erroring(KeyError("k")).compile(), Ctx(question="q"), raise_errors=False)
    ours = [r for r in caplog.records if r.name == "statemachine_agent"]
    assert any(r.levelno == logging.WARNING and getattr(r, "state", None) == "act" for r in ours)
    caplog.clear()
    run(research().compile(), Ctx(question="good"), raise_errors=False)
    steps = [r for r in caplog.records if r.name == "statemachine_agent" and r.levelno == logging.DEBUG]
    assert [getattr(r, "transition", None) for r in steps] == ["search_to_summarize", "summarize_to_done"]
    assert not [r for r in caplog.records if r.name.startswith("transitions")]


def test_dict_context_and_wrong_type(run: Runner) -> None:
    """A dict is validated into the context model; another type is a clear TypeError."""
    wf = research().compile()
    assert run(wf, {"question": "good"}).ok
    with pytest.raises(TypeError, match="runs on Ctx, got str"):
        run(wf, "question?")


@pytest.mark.parametrize("bad", [{"max_steps": 0}, {"timeout": -1}, {"max_policy_attempts": 0},
                                 {"policy": "first"}])
def test_bad_run_options(run: Runner, bad: dict[str, Any]) -> None:
    """Bad budgets or a non-callable policy are rejected before the run starts."""
    with pytest.raises((ValueError, TypeError)):
        run(research().compile(), Ctx(question="q"), **bad)


def test_run_sync_inside_a_loop_says_what_to_do() -> None:
    """run_sync() from async code refuses and points to ``await run()``."""
    wf = research().compile()

    async def inside() -> None:
        with pytest.raises(RunError, match=r"use `await workflow.run\(context\)`"):
            wf.run_sync(Ctx(question="q"))

    asyncio.run(inside())


def test_iter_yields_each_step_and_start_keeps_the_result() -> None:
    """``async for`` gives control between steps; start() exposes the result at the end."""
    wf = research().compile()

    async def main() -> tuple[list[str], list[str], str]:
        via_iter = [s.state async for s in wf.iter(Ctx(question="good"))]
        run = wf.start(Ctx(question="good"))
        via_start = [s.target async for s in run]
        assert run.result is not None
        with pytest.raises(RunError, match="already ended"):
            await run.step()
        return via_iter, via_start, run.result.terminal

    assert asyncio.run(main()) == (["search", "summarize"], ["summarize", "done"], "done")


def test_cancelling_the_task_cancels_the_run() -> None:
    """CancelledError is never routed: cancelling the task cancels the run, state consistent."""
    wf = base("cancel")
    started = asyncio.Event()

    @wf.state(initial=True, writes=["answer"])
    async def wait(ctx: Ctx) -> None:
        ctx.answer = "partial"
        started.set()
        await asyncio.sleep(3600)

    wf.transition(wait, "done")
    wf.on_error(wait, Exception, "failed")
    compiled = wf.compile()

    async def main() -> None:
        run = compiled.start(Ctx(question="q"))
        task = asyncio.create_task(run.run_to_end())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert run.result is None
        assert run.context.answer is None  # type: ignore[attr-defined]
        assert run.state == "wait"

    asyncio.run(main())


def test_keyboard_interrupt_propagates(run: Runner) -> None:
    """KeyboardInterrupt in an action is never swallowed or routed."""
    wf = base("interrupt")

    @wf.state(initial=True)
    def act(ctx: Ctx) -> None:
        raise KeyboardInterrupt

    wf.transition(act, "done")
    wf.on_error(act, Exception, "failed")
    with pytest.raises(KeyboardInterrupt):
        run(wf.compile(), Ctx(question="q"))


def test_guard_returning_non_bool_is_an_error(run: Runner) -> None:
    """A guard must return a bool; anything else is an error routed like an action error."""
    wf = base("sloppy")
    wf.add_state("act", noop, initial=True)
    wf.transition("act", "done", guard=lambda c: "yes")
    wf.transition("act", "failed", default=True)
    result = run(wf.compile(), Ctx(question="q"), raise_errors=False)
    assert result.terminal == "failed"
    assert "must return True or False" in (result.reason or "")


def test_no_exit_enabled_with_on_no_exit_fail(run: Runner) -> None:
    """on_no_exit='fail' sends the run to the failure terminal when no exit is enabled."""
    wf = base("strict")
    wf.add_state("act", noop, initial=True, on_no_exit="fail")
    wf.transition("act", "done", guard=guard(lambda c: c.attempts > 0, name="tried"))
    result = run(wf.compile(), Ctx(question="q"))
    assert (result.terminal, result.reason) == ("failed", "no exit of state 'act' was enabled")


def test_result_to_dict_is_json_ready(run: Runner) -> None:
    """A result serialises to plain JSON, errors as text."""
    import json

    result = run(erroring(OSError("disk")).compile(), Ctx(question="q"))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["terminal"] == "os_problem"
    assert data["path"][0]["error"] == "OSError: disk"


def test_concurrent_runs_share_one_compiled_workflow() -> None:
    """Many runs of one compiled workflow interleave in one loop without interference."""
    wf = research(max_visits=3).compile()

    async def main() -> list[RunResult[Ctx]]:
        return await asyncio.gather(*(wf.run(Ctx(question="good" if i % 2 else "meh"))
                                      for i in range(200)))

    results = asyncio.run(main())
    assert all(r.ok for r in results)
    assert {len(r.path) for r in results[1::2]} == {2}
    assert {len(r.path) for r in results[0::2]} == {6}


# --- regressions found in review --------------------------------------------------------------

def test_own_timeout_error_is_routed_without_a_deadline(run: Runner) -> None:
    """With no timeout= set, an action's TimeoutError is routed, not mistaken for a deadline."""
    wf = base("own-timeout-no-deadline")
    wf.terminal("slow", outcome="failure")

    @wf.state(initial=True, writes=["answer"])
    def act(ctx: Ctx) -> None:
        ctx.answer = "half"
        raise TimeoutError("mine")

    wf.transition(act, "done")
    wf.on_error(act, TimeoutError, "slow")
    events: list[Event] = []
    result = run(wf.compile(), Ctx(question="q"), hooks=[events.append])
    assert result.terminal == "slow"
    assert isinstance(result.path[0].error, TimeoutError)
    assert not [e for e in events if isinstance(e, BudgetExhausted)]


def test_read_only_field_mutated_in_place_changes_nothing(run: Runner) -> None:
    """A state that only reads a list gets a frozen view: appending to it raises, naming the state and
    the field, and reaches neither the run nor the caller."""
    from pydantic import Field

    from statemachine_agent import Context

    class Notes(Context):
        notes: list[str] = Field(default_factory=lambda: ["h"])
        answer: str | None = None

    wf: Workflow[Notes] = Workflow("sneaky-append", Notes)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")

    @wf.state(initial=True, reads=["notes"], writes=["answer"])
    def act(ctx: Notes) -> None:
        ctx.answer = "done"
        ctx.notes.append("SNEAKY")

    wf.transition(act, "done")
    ctx = Notes()
    result = run(wf.compile(), ctx, raise_errors=False)
    assert isinstance(result.error, ContextAccessError)
    assert str(result.error) == ("state 'act' tried to change 'notes' in place, but only reads it: add "
                                 "'notes' to writes=[...] of state 'act'")
    assert result.context.notes == ["h"]
    assert ctx.notes == ["h"]
    assert result.context.answer is None  # the failed step's write was rolled back


def test_guards_and_policies_cannot_change_the_context(run: Runner) -> None:
    """A guard that assigns raises (routed as an error); in-place changes through it are lost."""
    wf = base("meddling-guard")
    wf.add_state("act", noop, initial=True)

    def meddle(c: Any) -> bool:
        c.hits.append("x")  # a copy: lost
        c.answer = "x"  # refused
        return True

    wf.transition("act", "done", guard=meddle)
    wf.transition("act", "failed", default=True)
    result = run(wf.compile(), Ctx(question="q", hits=[]), raise_errors=False)
    assert result.terminal == "failed"
    assert "cannot change the context" in (result.reason or "")
    assert (result.context.hits, result.context.answer) == ([], None)


def test_view_is_closed_after_its_step(run: Runner) -> None:
    """Keeping the view past its step and using it later raises, and changes nothing."""
    kept: list[Any] = []
    wf = base("leaky")

    @wf.state(initial=True, optional_writes=["answer"])
    def first(ctx: Ctx) -> None:
        kept.append(ctx)

    @wf.state(writes=["attempts"])
    def second(ctx: Ctx) -> None:
        kept[0].answer = "late"

    wf.transition(first, second).transition(second, "done")
    result = run(wf.compile(), Ctx(question="q"), raise_errors=False)
    assert result.terminal == "failed"
    assert isinstance(result.error, ContextAccessError)
    assert "used after its step ended" in str(result.error)
    with pytest.raises(ContextAccessError):
        kept[0].answer = "after the run"
    assert result.context.answer is None


def test_non_field_names_are_refused(run: Runner) -> None:
    """model_dump() and typos are not a way around the declared fields."""
    for body in ("ctx.model_dump()", "ctx.qestion"):
        wf = base("escape")
        code = f"def act(ctx):\n    {body}\n"
        namespace: dict[str, Any] = {}
        exec(code, namespace)
        wf.add_state("act", namespace["act"], initial=True, reads=["question"])
        wf.transition("act", "done")
        wf.on_error("act", Exception, "done")
        result = run(wf.compile(), Ctx(question="q"), raise_errors=False)
        assert result.terminal == "failed", body
        assert isinstance(result.error, ContextAccessError)
    assert "did you mean 'question'?" in str(result.error)


def test_rejected_answers_are_recorded_on_the_failing_step(run: Runner) -> None:
    """When the policy never answers well, every rejection is on the last step."""
    result = run(decide().compile(), Ctx(question="q"), policy=lambda d: "nowhere")
    assert result.terminal == "failed"
    assert len(result.path[-1].rejected) == 3


def test_writes_of_a_step_that_cannot_move_are_rolled_back(run: Runner) -> None:
    """A step whose move hits a spent traversal budget leaves no writes behind."""
    wf = base("spent")

    @wf.state(initial=True, reads=["attempts"], writes=["attempts"])
    def count(ctx: Ctx) -> None:
        ctx.attempts += 1

    wf.transition(count, count, guard=guard(lambda c: c.attempts < 99, name="more"), max_traversals=2)
    wf.transition(count, "done", default=True)
    result = run(wf.compile(), Ctx(question="q"))
    assert result.reason == "traversals of 'count_to_count' reached 2"
    assert result.context.attempts == 2  # the third increment was rolled back


def test_spent_exits_are_not_offered_to_the_policy(run: Runner) -> None:
    """In a decision state an exit whose budget is spent is not among the options."""
    wf = base("choose-again")
    wf.terminal("escalated")
    wf.add_state("route", noop, initial=True, decision=True, max_visits=3)
    wf.transition("route", "route", description="think again", max_traversals=1)
    wf.transition("route", "escalated", description="ask a person")
    wf.transition("route", "done", description="answer now", guard=guard(lambda c: False, name="never"))
    seen: list[list[str]] = []

    def policy(d: Decision) -> str:
        seen.append([o.target for o in d.options])
        return "route" if "route" in seen[-1] else d.options[0].name

    result = run(wf.compile(), Ctx(question="q"), policy=policy)
    assert result.terminal == "escalated"
    assert seen == [["route", "escalated"]]  # second visit: one option left, taken without asking
