"""A story: every decision of one run, printable and replayable; running one story with every invariant."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from pydantic import ValidationError

from ..clock import FakeClock
from ..compile import CompiledWorkflow, compile_spec
from ..context import is_unset
from ..errors import ContextAccessError, RunError, ToolTimeout
from ..guards import Guard
from ..policies import Decision, resolve
from ..result import RunResult
from ..tools import Tool
from ..workflow import Workflow
from ._coverage import Coverage
from ._strategies import Fault, _error_type

Invariant = Callable[[Any], object]
PathInvariant = Callable[[RunResult[Any]], object]


def invariant(fn: Invariant) -> Invariant:
    """Mark a predicate on the context, checked after every step (it must return a truthy value)."""
    fn.__sm_kind__ = "context"  # type: ignore[attr-defined]
    return fn


def path_invariant(fn: PathInvariant) -> PathInvariant:
    """Mark a predicate on a whole run (its ``RunResult``), checked at the end."""
    fn.__sm_kind__ = "path"  # type: ignore[attr-defined]
    return fn



class _Violation(BaseException):
    """A broken promise found inside a run, carried past the runner's error routing."""


class _Carried(BaseException):
    """Carries an exception raised while drawing past the runner, which routes Exceptions."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


class _Invalid:
    """A result no declared return type accepts."""

    def __repr__(self) -> str:
        return "<invalid tool result>"



# --- a story: every decision of one run, printable and replayable ---------------------------------

@dataclass
class Story:
    """The decisions that drove one run: enough to print it and to replay it exactly."""

    workflow: str
    context: dict[str, Any]
    choices: list[str] = field(default_factory=list)
    """Each policy answer, in order (transition names, or the repr of garbage)."""
    faults: list[dict[str, str]] = field(default_factory=list)
    """Each tool call's fault, in order."""
    guards: list[bool] = field(default_factory=list)
    """Forced guard outcomes, when guards were explored."""
    policy_checked: bool = False
    """The answers came from the user's own policy: an answer that is not enabled is a failure."""
    lines: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The fixture: load it with :func:`replay`."""
        data = {"workflow": self.workflow, "context": self.context, "choices": self.choices,
                "faults": self.faults, "guards": self.guards, "policy_checked": self.policy_checked}
        return json.dumps(data, indent=2, default=str)

    def __str__(self) -> str:
        return "\n".join([f"story of a run of {self.workflow!r}", f"  input: {self.context}", *self.lines])


class _Script:
    """Answers decisions from a recorded list, or draws new ones (and records them)."""

    def __init__(self, recorded: Iterable[Any], draw: Callable[[st.SearchStrategy[Any], str], Any] | None,
                 log: list[Any]) -> None:
        self._queue = deque(recorded)
        self._draw = draw
        self._log = log

    def has_recorded(self) -> bool:
        return bool(self._queue)

    def next(self, strategy: st.SearchStrategy[Any], label: str, default: Any) -> Any:
        if self._queue:
            value = self._queue.popleft()
        elif self._draw is not None:
            try:
                value = self._draw(strategy, label)
            except BaseException as exc:  # Hypothesis' own signals must not become action errors
                raise _Carried(exc) from None
        else:
            value = default
        self._log.append(value)
        return value


def _instrument(compiled: CompiledWorkflow[Any], fault_script: _Script | None,
                guard_script: _Script | None, fault_strategy: st.SearchStrategy[Fault],
                story: Story, *, coverage: Coverage | None = None) -> CompiledWorkflow[Any]:
    """A copy of the workflow whose tools obey the fault script and whose guards may be forced."""
    spec = compiled.spec
    tools = []
    for tool in spec.tools:
        tools.append(_faulty(tool, fault_script, fault_strategy, story) if fault_script else tool)
    transitions = list(spec.transitions)
    for i, t in enumerate(transitions):
        if t.guard is not None:
            g = _forced(t.guard, guard_script, story) if guard_script is not None else t.guard
            if coverage is not None:
                g = _counted(g, t.name, coverage)
            transitions[i] = dataclasses.replace(t, guard=g)
    return compile_spec(dataclasses.replace(spec, tools=tuple(tools), transitions=tuple(transitions)))


def _faulty(tool: Tool, script: _Script, strategy: st.SearchStrategy[Fault], story: Story) -> Tool:
    original = tool.fn

    @functools.wraps(original)
    async def call(**kwargs: Any) -> Any:
        raw = script.next(strategy.map(Fault.to_json), f"fault for {tool.name}", {"kind": "ok"})
        fault = Fault(raw["kind"], raw.get("error", ""))
        story.lines.append(f"    tool {tool.name}({_short(kwargs)}) -> {fault.kind}"
                           + (f" {fault.error}" if fault.error else ""))
        if fault.kind == "raise":
            raise _error_type(fault.error)(f"injected {fault.error}")
        if fault.kind == "hang":
            # As if the call ran past its timeout: the fake time has passed, nothing really waits.
            raise ToolTimeout(tool.name, tool.timeout or 0.0, "call")
        if fault.kind == "invalid":
            return _Invalid()
        if tool.is_async:
            return await original(**kwargs)
        return await asyncio.to_thread(functools.partial(original, **kwargs))  # as in a real run

    retry: Any = tool.retrying
    return Tool(call, name=tool.name, description=tool.description, timeout=tool.timeout, retry=retry,
                concurrency=tool.concurrency, rate_limit=tool.rate_limit, fallback=tool.fallback,
                fallback_value=tool.fallback_value)



def _counted(g: Guard[Any], transition: str, coverage: Coverage) -> Guard[Any]:
    def outcome(ctx: Any) -> bool:
        value = g(ctx)
        coverage.guards[(transition, value)] += 1
        return value

    return Guard(outcome, name=g.name, reads=g.reads)


def _forced(g: Guard[Any], script: _Script, story: Story) -> Guard[Any]:
    def outcome(ctx: Any) -> bool:
        value = bool(script.next(st.booleans(), f"guard {g.name}", False))
        story.lines.append(f"    guard [{g.name}] forced {value}")
        return value

    return Guard(outcome, name=g.name, reads=g.reads)


def _as_json(context: Any) -> dict[str, Any]:
    """The context as JSON data (bytes that are not text are kept as their repr)."""
    try:
        data: dict[str, Any] = context.model_dump(mode="json", by_alias=True)
    except (UnicodeDecodeError, ValueError, TypeError):
        data = json.loads(json.dumps(context.model_dump(by_alias=True), default=repr))
    return data


def _short(value: Any, width: int = 60) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in value.items()) if isinstance(value, dict) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"



def _run_story(compiled: CompiledWorkflow[Any], story: Story, context: Any, *,
               policy_script: _Script, fault_script: _Script | None, guard_script: _Script | None,
               fault_strategy: st.SearchStrategy[Fault], invariants: Sequence[Invariant],
               path_invariants: Sequence[PathInvariant], coverage: Coverage | None,
               user_policy: Callable[[Decision[Any]], Any] | None = None) -> RunResult[Any]:
    wf = _instrument(compiled, fault_script, guard_script, fault_strategy, story, coverage=coverage)
    spec = wf.spec
    names = {t.name: t for t in spec.transitions}
    error_names = {e.name: e for e in spec.error_transitions}
    bound = wf.max_steps

    def checked(decision: Decision[Any]) -> Any:
        # The user's own policy must only ever answer an enabled transition.
        assert user_policy is not None
        if policy_script.has_recorded():  # a replay: the answers the user's policy gave then
            answer = policy_script.next(st.nothing(), "recorded answer", None)
        else:
            answer = user_policy(decision)
            story.choices.append(answer)
        story.policy_checked = True
        option, why = resolve(answer, decision.options)
        story.lines.append(f"    policy in {decision.state} answered {answer!r}")
        if option is None:  # a BaseException: the runner must not route it as the action's error
            raise _Violation(f"the policy answered {answer!r} in state {decision.state!r}: {why}")
        return option

    def policy(decision: Decision[Any]) -> Any:
        names_ = [o.name for o in decision.options]
        garbage = st.sampled_from(["nowhere", "", "42"]) | st.none() | st.integers()
        answer = policy_script.next(st.sampled_from(names_) | garbage, f"policy in {decision.state}",
                                    names_[0])
        story.lines.append(f"    policy in {decision.state} answered {answer!r}")
        return answer

    async def go() -> RunResult[Any]:
        run = wf.start(context, policy=checked if user_policy is not None else policy, clock=FakeClock(),
                       raise_errors=False)
        previous = context.model_dump()
        async for step in run:
            after = run.context.model_dump()
            diff = {k: after[k] for k in after if after[k] != previous.get(k)}
            story.lines.append(f"  {step.number}: {step.state} --{step.transition}--> {step.target}"
                               + (f"  [{type(step.error).__name__}: {step.error}]" if step.error else "")
                               + (f"  writes {_short(diff)}" if diff else ""))
            previous = after
            _check_step(wf, step, run, names=names, error_names=error_names, bound=bound,
                        invariants=invariants)
        assert run.result is not None, "the run stopped without a result"
        try:  # a terminal state absorbs: no step may follow it
            await run.step()
        except RunError:
            pass
        else:
            raise AssertionError(f"the run took a step after its terminal state {run.result.terminal!r}")
        return run.result

    try:
        result = asyncio.run(go())
    except _Violation as violation:
        raise AssertionError(str(violation)) from None
    except _Carried as carried:
        raise carried.original from None
    assert spec.state(result.terminal).terminal, f"the run ended in {result.terminal!r}, not a terminal"
    story.lines.append(f"  end: {result.terminal} ({result.outcome.value})"
                       + (f": {result.reason}" if result.reason else ""))
    if coverage is not None:
        coverage.runs += 1
        coverage.terminals[result.terminal] += 1
        for step in result.path:
            if step.ran:
                coverage.states[step.state] += 1
            if step.kind != "fail":
                coverage.transitions[step.transition] += 1
    for inv in path_invariants:
        assert inv(result), f"path invariant {getattr(inv, '__name__', inv)!r} failed at the end of the run"
    return result


def _check_step(wf: CompiledWorkflow[Any], step: Any, run: Any, *, names: dict[str, Any],
                error_names: dict[str, Any], bound: int, invariants: Sequence[Invariant]) -> None:
    spec = wf.spec
    assert spec.has_state(step.state), f"step {step.number} ran undeclared state {step.state!r}"
    assert spec.has_state(step.target), f"step {step.number} went to undeclared state {step.target!r}"
    if step.kind == "transition":
        t = names.get(step.transition)
        assert t is not None, f"step {step.number} took undeclared transition {step.transition!r}"
        assert (t.source, t.target) == (step.state, step.target), f"step {step.number} misrouted"
    elif step.kind == "error":
        e = error_names.get(step.transition)
        assert e is not None, f"step {step.number} took undeclared error transition {step.transition!r}"
        assert (e.source, e.target) == (step.state, step.target), f"step {step.number} misrouted"
    else:
        assert step.target == wf.failure_terminal, f"step {step.number} failed into {step.target!r}"
    assert not isinstance(step.error, ContextAccessError), f"step {step.number}: {step.error}"
    ctx = run.context
    try:
        # Field values only: computed fields and aliases would be refused as extra input.
        # UNSET fields (no step wrote them yet) are left out, as in model_dump().
        type(ctx).model_validate({(info.alias or f): getattr(ctx, f)
                                  for f, info in type(ctx).model_fields.items()
                                  if not is_unset(getattr(ctx, f))})
    except ValidationError as exc:
        raise AssertionError(f"after step {step.number} the context no longer validates: {exc}") from exc
    assert run.actions_run <= bound, f"{run.actions_run} steps exceed the static bound of {bound}"
    for inv in invariants:
        assert inv(ctx), f"invariant {getattr(inv, '__name__', inv)!r} failed after step {step.number}"


# --- the one call ------------------------------------------------------------------------------------

def _compiled(workflow: Workflow[Any] | CompiledWorkflow[Any]) -> CompiledWorkflow[Any]:
    if isinstance(workflow, Workflow):
        return workflow.compile()
    if isinstance(workflow, CompiledWorkflow):
        return workflow
    raise TypeError(f"check_workflow() takes a Workflow or CompiledWorkflow, got {type(workflow).__name__}")
