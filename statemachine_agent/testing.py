"""Property-test your agent with Hypothesis: one call explores inputs, policy choices and tool faults.

Needs the ``hypothesis`` extra (``pip install statemachine-agent[hypothesis]``)::

    from statemachine_agent.testing import check_workflow

    def test_my_agent():
        check_workflow(my_workflow)

Every run is checked after each step (a declared state; a declared, enabled transition; no undeclared
or unset field touched; the context still validates; within the static step bound) and at the end
(a terminal state that absorbs), plus your own invariants. A failure shrinks to a minimal story that
prints as a readable path and saves as a JSON fixture :func:`replay` runs again exactly.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import json
import typing
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from hypothesis import HealthCheck, given, note, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
    from hypothesis.stateful import invariant as stateful_invariant
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError("statemachine_agent.testing needs Hypothesis: pip install "
                      "'statemachine-agent[hypothesis]'") from exc

from pydantic import BaseModel, ValidationError

from .clock import FakeClock
from .compile import CompiledWorkflow, compile_spec
from .context import is_unset
from .diagrams import RunOverlay, to_dot
from .errors import ContextAccessError, RunError, ToolTimeout
from .guards import Guard
from .policies import Decision, resolve
from .result import RunResult
from .tools import Tool
from .workflow import Workflow

__all__ = [
    "Coverage",
    "Fault",
    "KitReport",
    "Story",
    "check_workflow",
    "contexts",
    "faults",
    "invariant",
    "path_invariant",
    "replay",
    "shortest_paths",
    "workflow_state_machine",
]

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


# --- strategies ------------------------------------------------------------------------------------

def contexts(model: type[BaseModel], **overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid instances of a pydantic context model, honouring field types and constraints.

    Optional fields are sometimes left to their defaults; ``overrides`` replace a field's strategy.
    """
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    hints = typing.get_type_hints(model, include_extras=True)
    for name, info in model.model_fields.items():
        key = info.alias or name  # validation goes by alias when there is one
        if name in overrides:
            strat = overrides[name]
        else:
            annotation: Any = hints.get(name, info.annotation)
            pattern = next((m.pattern for m in info.metadata if getattr(m, "pattern", None)), None)
            if pattern is not None:
                strat = st.from_regex(pattern, fullmatch=True)
            else:
                if info.metadata:
                    annotation = typing.Annotated[(annotation, *info.metadata)]
                strat = st.from_type(annotation)
        (required if info.is_required() else optional)[key] = strat
    raw = st.fixed_dictionaries(required, optional=optional)

    def build(data: dict[str, Any]) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError:
            return None  # model-level validators may refuse: filtered below

    return raw.map(build).filter(lambda m: m is not None)


@dataclass(frozen=True, slots=True)
class Fault:
    """What one tool call does in a fault plan."""

    kind: str
    """``ok``, ``raise``, ``hang`` (past its timeout: a ToolTimeout) or ``invalid`` (a bad result)."""
    error: str = ""
    """For ``raise``: the exception type's name."""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "error": self.error}


def faults(errors: Sequence[type[BaseException]] = (ConnectionError, TimeoutError),
           *, hang: bool = True, invalid: bool = True) -> st.SearchStrategy[Fault]:
    """One tool call's fate: succeed (most often), raise one of ``errors``, hang, or return garbage."""
    options: list[st.SearchStrategy[Fault]] = [st.just(Fault("ok"))]
    for e in errors:
        if not (isinstance(e, type) and issubclass(e, Exception)):
            raise TypeError(f"faults(errors=...) takes exception classes, got {e!r}")
        _ERRORS.setdefault(e.__name__, e)  # so stories and replays raise the same type
    options += [st.just(Fault("raise", e.__name__)) for e in errors]
    if hang:
        options.append(st.just(Fault("hang")))
    if invalid:
        options.append(st.just(Fault("invalid")))
    return st.one_of(st.just(Fault("ok")), st.one_of(options))


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


_ERRORS: dict[str, type[Exception]] = {}
"""Exception types named in fault plans, by name."""


def _error_type(name: str) -> type[Exception]:
    found = _ERRORS.get(name) or getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    raise ValueError(f"the fault plan raises {name!r}, which is not a builtin exception nor one given to "
                     "faults(errors=...): pass the same faults(...) to replay(..., tool_faults=...)")


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


# --- running one story with every invariant --------------------------------------------------------

@dataclass
class Coverage:
    """What the explored runs exercised."""

    states: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    terminals: Counter[str] = field(default_factory=Counter)
    guards: Counter[tuple[str, bool]] = field(default_factory=Counter)
    """How often each guarded transition's guard came out True and False."""
    runs: int = 0

    def guard_gaps(self, compiled: CompiledWorkflow[Any]) -> list[str]:
        """Guard outcomes never seen, as ``transition=True|False``."""
        out = []
        for t in compiled.spec.transitions:
            if t.guard is not None:
                out += [f"{t.name}={v}" for v in (True, False) if (t.name, v) not in self.guards]
        return out

    def overlay(self, compiled: CompiledWorkflow[Any]) -> Any:
        """The coverage as a diagram overlay: ``to_dot(compiled, coverage.overlay(compiled))``."""
        visits = dict(self.states) | dict(self.terminals)
        return RunOverlay(f"{self.runs} runs", "coverage", "coverage", sum(self.states.values()), None,
                          visits, dict(self.transitions), {})

    def missing(self, compiled: CompiledWorkflow[Any]) -> tuple[list[str], list[str]]:
        """States and transitions no run reached."""
        spec = compiled.spec
        states = [s.name for s in spec.states if s.name not in self.states and s.name not in self.terminals]
        names = [t.name for t in spec.transitions] + [e.name for e in spec.error_transitions]
        return states, [n for n in names if n not in self.transitions]

    def summary(self, compiled: CompiledWorkflow[Any]) -> str:
        spec = compiled.spec
        n_states = len(spec.states)
        n_edges = len(spec.transitions) + len(spec.error_transitions)
        states, edges = self.missing(compiled)
        lines = [f"{self.runs} runs of {spec.name!r}: states {n_states - len(states)}/{n_states}, "
                 f"transitions {n_edges - len(edges)}/{n_edges}",
                 f"  terminals: {dict(self.terminals)}"]
        if states:
            lines.append(f"  states never reached: {', '.join(states)}")
        if edges:
            lines.append(f"  transitions never taken: {', '.join(edges)}")
        gaps = self.guard_gaps(compiled)
        n_guards = 2 * sum(1 for t in spec.transitions if t.guard is not None)
        lines.append(f"  guard outcomes seen: {n_guards - len(gaps)}/{n_guards}"
                     + (f" (never: {', '.join(gaps)})" if gaps else ""))
        return "\n".join(lines)


@dataclass
class KitReport:
    """What :func:`check_workflow` explored."""

    coverage: Coverage
    compiled: CompiledWorkflow[Any]

    def __str__(self) -> str:
        return self.coverage.summary(self.compiled)

    def diagram(self) -> Any:
        """The workflow's diagram with the coverage drawn on it (visit and traversal counts)."""
        return to_dot(self.compiled, self.coverage.overlay(self.compiled))


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


def check_workflow(
    workflow: Workflow[Any] | CompiledWorkflow[Any],
    *,
    contexts_from: st.SearchStrategy[Any] | None = None,
    invariants: Sequence[Invariant] = (),
    path_invariants: Sequence[PathInvariant] = (),
    tool_faults: st.SearchStrategy[Fault] | None = None,
    explore_guards: bool = False,
    policy: Callable[[Decision[Any]], Any] | None = None,
    max_examples: int = 100,
    save_failure: str | Path | None = None,
    print_coverage: bool = True,
    derandomize: bool = False,
) -> KitReport:
    """Explore the workflow with Hypothesis and check every built-in and user invariant.

    ``contexts_from`` defaults to :func:`contexts` of the workflow's model; ``tool_faults`` to
    :func:`faults`. With ``explore_guards=True`` guard outcomes are generated too (so paths the real
    guards would not take are explored: use it for the built-in invariants). ``policy`` checks your
    own (synchronous) policy instead of generated answers: any answer it gives that is not an enabled
    transition is a failure. A failure raises
    ``AssertionError`` with the shrunk story, also written as JSON to ``save_failure`` when given.
    ``derandomize=True`` draws the same examples on every run (Hypothesis' setting of that name):
    for a CI that must not depend on luck, at the price of exploring less over time.
    """
    compiled = _compiled(workflow)
    strategy = contexts_from if contexts_from is not None else contexts(compiled.context_type)
    fault_strategy = tool_faults if tool_faults is not None else _default_faults(compiled)
    coverage = Coverage()
    last_story: list[Story] = []

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(context=strategy, data=st.data())
    def explore(context: Any, data: st.DataObject) -> None:
        story = Story(compiled.name, _as_json(context))
        last_story[:] = [story]
        draw = data.draw
        try:
            _run_story(compiled, story, context,
                       policy_script=_Script((), draw, story.choices),
                       fault_script=_Script((), lambda s, label: draw(s, label=label), story.faults)
                       if len(compiled.tools) else None,
                       guard_script=_Script((), lambda s, label: draw(s, label=label), story.guards)
                       if explore_guards else None,
                       fault_strategy=fault_strategy, invariants=invariants,
                       path_invariants=path_invariants, coverage=coverage, user_policy=policy)
        except AssertionError as exc:
            note(str(story))
            raise AssertionError(f"{exc}\n{story}") from None
        except Exception as exc:  # an invariant (or a strategy) that raised instead of returning False
            note(str(story))
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{story}") from exc

    try:
        explore()
    except AssertionError as exc:
        if save_failure is not None and last_story:
            Path(save_failure).write_text(last_story[0].to_json(), encoding="utf-8")
        raise AssertionError(f"{exc}\n(replay it: statemachine_agent.testing.replay(workflow, "
                             f"{str(save_failure)!r}))" if save_failure else str(exc)) from None
    report = KitReport(coverage, compiled)
    if print_coverage:
        print(report)
    return report


def _default_faults(compiled: CompiledWorkflow[Any]) -> st.SearchStrategy[Fault]:
    """Connection errors, timeouts, and every exception type the workflow routes itself."""
    routed = [e.error for e in compiled.spec.error_transitions
              if issubclass(e.error, Exception) and not issubclass(e.error, RunError)]
    errors: list[type[BaseException]] = list(dict.fromkeys([ConnectionError, TimeoutError, *routed]))
    return faults(errors=errors)


def replay(workflow: Workflow[Any] | CompiledWorkflow[Any], fixture: str | Path | dict[str, Any], *,
           invariants: Sequence[Invariant] = (), path_invariants: Sequence[PathInvariant] = (),
           tool_faults: st.SearchStrategy[Fault] | None = None) -> RunResult[Any]:
    """Run a saved story again exactly (same input, policy answers, tool faults and guard outcomes).

    Pass the same ``tool_faults`` as to :func:`check_workflow` when it named exception types of
    your own (the defaults are known).
    """
    compiled = _compiled(workflow)
    if tool_faults is None:
        tool_faults = _default_faults(compiled)  # also registers the error types by name
    data = fixture if isinstance(fixture, dict) else json.loads(Path(fixture).read_text(encoding="utf-8"))
    try:
        context = compiled.context_type.model_validate(data["context"])
        story = Story(compiled.name, data["context"])
        guards = data.get("guards", [])
        recorded = data.get("choices", [])
        checked = bool(data.get("policy_checked"))
        return _run_story(compiled, story, context,
                          policy_script=_Script(recorded, None, [] if checked else story.choices),
                          user_policy=(lambda d: None) if checked else None,
                          fault_script=_Script(data.get("faults", []), None, story.faults),
                          guard_script=_Script(guards, None, story.guards) if guards else None,
                          fault_strategy=tool_faults, invariants=invariants,
                          path_invariants=path_invariants, coverage=None)
    except KeyError as exc:
        raise ValueError(f"not a story fixture (as saved by check_workflow): missing {exc}") from None


# --- shortest paths: a deterministic case per state and per transition ----------------------------

@dataclass(frozen=True, slots=True)
class PathCase:
    """A shortest path from the initial state that reaches ``goal`` (a state or a transition)."""

    goal: str
    transitions: tuple[str, ...]
    """Transition names, in order."""
    states: tuple[str, ...]

    def __str__(self) -> str:
        return self.goal


def shortest_paths(workflow: Workflow[Any] | CompiledWorkflow[Any]) -> list[PathCase]:
    """One shortest path to each state and through each transition (error transitions included):
    ``@pytest.mark.parametrize("case", shortest_paths(wf), ids=str)``."""
    compiled = _compiled(workflow)
    spec = compiled.spec
    edges = [(t.source, t.target, t.name) for t in spec.transitions] + \
            [(e.source, e.target, e.name) for e in spec.error_transitions]
    parent: dict[str, tuple[str, str] | None] = {compiled.initial: None}
    todo = deque([compiled.initial])
    while todo:
        v = todo.popleft()
        for src, dst, name in edges:
            if src == v and dst not in parent:
                parent[dst] = (src, name)
                todo.append(dst)

    def route(state: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        names: list[str] = []
        states = [state]
        p = parent[state]
        while p is not None:
            names.append(p[1])
            states.append(p[0])
            p = parent[p[0]]
        return tuple(reversed(names)), tuple(reversed(states))

    cases = []
    for s in spec.states:
        if s.name in parent:
            names, states = route(s.name)
            cases.append(PathCase(f"state {s.name}", names, states))
    for src, dst, name in edges:
        if src in parent:
            names, states = route(src)
            cases.append(PathCase(f"transition {name}", (*names, name), (*states, dst)))
    return cases


def follow(workflow: Workflow[Any] | CompiledWorkflow[Any], case: PathCase, context: Any) -> RunResult[Any]:
    """Drive a run along ``case`` by forcing guards and policy answers (actions run for real)."""
    compiled = _compiled(workflow)
    plan = list(case.transitions)
    spec = compiled.spec
    by_name = {t.name: t for t in spec.transitions}
    forced: list[bool] = []
    choices: list[str] = []
    for name in plan:
        t = by_name.get(name)
        if t is None:
            raise ValueError(f"{name!r} is an error transition: make the action raise to follow it")
        exits = [x for x in spec.exits(t.source) if not x.default]
        if spec.state(t.source).decision:
            # Every guard is evaluated to find the enabled exits. For the default exit, disable
            # them all (and leave no unguarded exit, or it cannot be reached); else enable all and choose.
            if t.default:
                forced += [False for x in exits if x.guard is not None]
                continue
            forced += [True for x in exits if x.guard is not None]
            if len(exits) > 1:
                choices.append(name)
            continue
        for other in exits:  # tried in order; the default only when none is enabled
            if other.guard is not None:
                forced.append(other.name == name)
            if other.name == name:
                break
    story = Story(compiled.name, _as_json(context))
    result = _run_story(compiled, story, context, policy_script=_Script(choices, None, story.choices),
                        fault_script=None,
                        guard_script=_Script(forced, None, story.guards) if forced else None,
                        fault_strategy=faults(), invariants=(), path_invariants=(), coverage=None)
    taken = [step.transition for step in result.path]
    for i, planned in enumerate(plan):
        if i >= len(taken) or taken[i] != planned:
            got = taken[i] if i < len(taken) else "the end of the run"
            raise AssertionError(f"follow() left the path at step {i}: planned {planned!r}, took {got!r} "
                                 f"(an action failed, or a default exit sits behind an unguarded one)\n"
                                 f"{story}")
    return result


# --- Hypothesis' stateful testing -------------------------------------------------------------------

def workflow_state_machine(workflow: Workflow[Any] | CompiledWorkflow[Any],
                           contexts_from: st.SearchStrategy[Any] | None = None) -> type[Any]:
    """A ``RuleBasedStateMachine`` with one rule per transition, gated by the current state.

    Each rule runs one step of a real run (its action through an event loop of the test case's
    own) and the built-in invariants; use it as ``TestMyAgent = workflow_state_machine(wf).TestCase``.
    """
    compiled = _compiled(workflow)
    strategy = contexts_from if contexts_from is not None else contexts(compiled.context_type)
    spec = compiled.spec
    names = {t.name: t for t in spec.transitions}
    error_names = {e.name: e for e in spec.error_transitions}

    class WorkflowMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.run: Any = None

        @initialize(context=strategy)
        def start(self, context: Any) -> None:
            self.run = compiled.start(context, clock=FakeClock(), raise_errors=False)

        def teardown(self) -> None:
            self.loop.close()

        def _step(self, expected: str) -> None:
            step = self.loop.run_until_complete(self.run.step())
            _check_step(compiled, step, self.run, names=names, error_names=error_names,
                        bound=compiled.max_steps, invariants=())

        @precondition(lambda self: self.run is not None and self.run.result is not None)
        @rule()
        def terminal_absorbs(self) -> None:
            assert self.run.result is not None
            assert spec.state(self.run.state).terminal
            try:
                self.loop.run_until_complete(self.run.step())
            except RunError:
                return
            raise AssertionError("a step was taken after the terminal state")

        @stateful_invariant()
        def in_a_declared_state(self) -> None:
            if self.run is not None:
                assert spec.has_state(self.run.state)

    def make(t_name: str, source: str) -> Callable[[Any], None]:
        def step(self: Any) -> None:
            self._step(t_name)

        step.__name__ = "step_from_" + "".join(c if c.isalnum() else "_" for c in t_name)
        return precondition(lambda self: self.run is not None and self.run.result is None
                            and self.run.state == source)(rule()(step))

    for t in spec.transitions:
        fn = make(t.name, t.source)
        setattr(WorkflowMachine, fn.__name__, fn)

    WorkflowMachine.__name__ = f"{compiled.name.title().replace('-', '')}Machine"
    return WorkflowMachine
