"""A story: every decision of one run, printable and replayable; running one story with every invariant."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import inspect
import json
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import Phase
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from .._tooldef import KEY_PARAMETER, NOT_GIVEN, Effect
from ..clock import FakeClock
from ..compile import CompiledWorkflow, compile_spec
from ..context import is_unset
from ..errors import ContextAccessError, EffectOutcomeUnknown, RunError, ToolTimeout
from ..events import BudgetExhausted, Event, Hook
from ..guards import Guard
from ..policies import Decision, resolve
from ..result import RunResult, StepKind
from ..tools import Tool
from ..workflow import Workflow
from ._coverage import Coverage
from ._llm import ModelReply
from ._strategies import Fault, _error_type, _with_unknown, contexts

_PHASES = tuple(p for p in Phase if p is not Phase.explain)
"""Hypothesis' phases but its explain phase: that phase reruns the shrunk failure hundreds of times to
say which draws mattered, which the kit's story already shows (it was most of the time a found bug
took, 17 of 18 s on an LLM agent); a failure is reported without it."""

Invariant = Callable[[Any], object]
PathInvariant = Callable[[RunResult[Any]], object]


class Allowed(enum.StrEnum):
    """What a run may do without failing the kit: ``check_workflow(..., allow=frozenset({...}))``.

    By default each of these fails the run with its story: the kit is never quieter than ``run_sync``.
    """

    UNROUTED_ERRORS = "unrouted_errors"
    """An exception no error transition routes may end a run in the failure terminal."""
    GUARD_ERRORS = "guard_errors"
    """A guard may raise (an ``AttributeError``, a ``TypeError`` for a non-bool, ...), routed or not."""
    SPENT_BUDGETS = "spent_budgets"
    """A budget may run out (``max_visits``, ``max_steps``, a transition's traversals, the deadline,
    tokens or cost): the run ends in the failure terminal."""
    UNFINISHED = "unfinished"
    """A run may end paused in a wait state (only with ``events=False``: by default the kit delivers)."""
    UNDECLARED_READS = "undeclared_reads"
    """A guard may read a context field its ``reads=[...]`` does not declare (the checker then cannot
    prove the field is written before the guard runs)."""


def invariant(fn: Invariant) -> Invariant:
    """Mark a predicate on the context, checked after every step (it must return a truthy value)."""
    fn.__sm_kind__ = "context"  # type: ignore[attr-defined]
    return fn


def path_invariant(fn: PathInvariant) -> PathInvariant:
    """Mark a predicate on a whole run (its ``RunResult``), checked at the end."""
    fn.__sm_kind__ = "path"  # type: ignore[attr-defined]
    return fn


def _checked_invariants(invariants: Sequence[Invariant], path_invariants: Sequence[PathInvariant]
                        ) -> tuple[tuple[Invariant, ...], tuple[PathInvariant, ...]]:
    """The invariants, each in the list its marker says it belongs to (a clear TypeError if not)."""
    for where, given, wrong, wanted in (("invariants", invariants, "path", "path_invariants"),
                                        ("path_invariants", path_invariants, "context", "invariants")):
        if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
            raise TypeError(f"{where}= takes a list of predicates, got {type(given).__name__}")
        for inv in given:
            if not callable(inv):
                raise TypeError(f"{where}= takes predicates (functions), got {inv!r}")
            if getattr(inv, "__sm_kind__", None) == wrong:
                marker = "@path_invariant" if wrong == "path" else "@invariant"
                what = "the whole RunResult, once at the end" if wrong == "path" else "the context, after every step"
                raise TypeError(f"{_name(inv)!r} is marked {marker} (a predicate on {what}), but was given in "
                                f"{where}=[...]: pass it in {wanted}=[...]")
    return tuple(invariants), tuple(path_invariants)


def _name(fn: object) -> str:
    return str(getattr(fn, "__name__", fn))


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


class _Injected(Exception):
    """Marks an exception the kit raised on purpose (follow() and the stateful rules)."""


# --- a story: every decision of one run, printable and replayable ---------------------------------

@dataclass
class Story:
    """The decisions that drove one run: enough to print it and to replay it exactly."""

    workflow: str
    context: dict[str, Any]
    choices: list[Any] = field(default_factory=list)
    """Each policy answer, in order (transition names, or the repr of garbage)."""
    faults: list[dict[str, str]] = field(default_factory=list)
    """Each tool call's fault, in order."""
    guards: list[bool] = field(default_factory=list)
    """Forced guard outcomes, when guards were explored."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """What the kit did at each wait: ``{"at", "event", "kind", "payload"}`` (kind: valid, invalid, timeout)."""
    replies: list[dict[str, Any]] = field(default_factory=list)
    """What the scripted model server answered to each policy call (with ``model=``)."""
    policy_checked: bool = False
    """The answers came from the user's own policy: an answer that is not enabled is a failure."""
    lines: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The fixture: load it with :func:`replay`."""
        data = {"workflow": self.workflow, "context": self.context, "choices": self.choices,
                "faults": self.faults, "guards": self.guards, "events": self.events, "replies": self.replies,
                "policy_checked": self.policy_checked}
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

    def exhausted(self) -> bool:
        """Nothing recorded is left and nothing may be drawn (a path followed to its end)."""
        return not self._queue and self._draw is None

    def next(self, strategy: st.SearchStrategy[Any], label: str, default: Any, *,
             saved: Callable[[Any], Any] | None = None, loaded: Callable[[Any], Any] | None = None) -> Any:
        """The next decision: recorded (then ``loaded`` turns it back into a value), drawn (and
        logged as ``saved`` makes it) or ``default``."""
        if self._queue:
            value = self._queue.popleft()
            self._log.append(value)
            return loaded(value) if loaded is not None else value
        if self._draw is not None:
            try:
                value = self._draw(strategy, label)
            except BaseException as exc:  # Hypothesis' own signals must not become action errors
                raise _Carried(exc) from None
        else:
            value = default
        self._log.append(saved(value) if saved is not None else value)
        return value


@dataclass
class _Session:
    """What drives one run: the story being written and the scripts its decisions come from. The
    instrumented workflow (compiled once) reads the current session."""

    story: Story
    policy: _Script
    faults: _Script | None
    guards: _Script | None
    events: _Script
    replies: _Script
    fault_strategy: st.SearchStrategy[Fault]
    fault_types: dict[str, type[Exception]]
    coverage: Coverage | None
    inject: deque[tuple[str, type[BaseException] | None]] = field(default_factory=deque)
    """follow()'s plan: per step, the state and the error its action raises instead of running."""
    guard_errors: list[BaseException] = field(default_factory=list)
    undeclared_reads: list[tuple[str, str, list[str]]] = field(default_factory=list)
    """Guards that read fields they do not declare: (guard, transition, fields)."""
    real_tool_errors: list[tuple[str, BaseException]] = field(default_factory=list)
    budgets: list[BudgetExhausted] = field(default_factory=list)


@dataclass
class _ToolLog:
    """What the real tools did over a whole exploration (to tell a flaky tool by name)."""

    raised: Counter[str] = field(default_factory=Counter)
    returned: Counter[str] = field(default_factory=Counter)

    def flaky(self) -> list[str]:
        return sorted(n for n in self.raised if self.returned[n])


class _Reads:
    """The context as a guard sees it, noting which attributes the guard reads (the kit compares them
    with the guard's declared ``reads``)."""

    __slots__ = ("_context", "names")

    def __init__(self, context: Any) -> None:
        object.__setattr__(self, "_context", context)
        object.__setattr__(self, "names", set())

    def __getattr__(self, name: str) -> Any:
        self.names.add(name)
        return getattr(self._context, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._context, name, value)  # refused by the read-only view, with its message

    def __repr__(self) -> str:
        return repr(self._context)


class _Instrumented:
    """A copy of the workflow, compiled once, whose tools obey the current session's fault script
    (keeping their effect and reconcile), whose guards may be forced and are counted, and whose
    actions may be made to raise (to follow an error edge)."""

    def __init__(self, compiled: CompiledWorkflow[Any]) -> None:
        self.original = compiled
        self.fields = frozenset(compiled.context_type.model_fields)
        self.session: _Session | None = None
        self.tool_log = _ToolLog()
        self._with_unknown: dict[int, tuple[st.SearchStrategy[Fault], st.SearchStrategy[Fault]]] = {}
        spec = compiled.spec
        tools = tuple(self._tool(t) for t in spec.tools)
        transitions = tuple(dataclasses.replace(t, guard=self._guard(t.guard, t.name)) if t.guard is not None
                            else t for t in spec.transitions)
        states = tuple(dataclasses.replace(s, action=self._action(s.action, s.name))
                       if s.action is not None and s.wait is None else s for s in spec.states)
        self.compiled: CompiledWorkflow[Any] = compile_spec(
            dataclasses.replace(spec, tools=tools, transitions=transitions, states=states))

    def _now(self) -> _Session:
        assert self.session is not None, "the kit's workflow copy ran outside a story"
        return self.session

    def _fates(self, strategy: st.SearchStrategy[Fault]) -> st.SearchStrategy[Fault]:
        """An at_most_once tool's fates: also an outcome left unknown (EffectOutcomeUnknown, or its
        reconcile= looks the outcome up)."""
        found = self._with_unknown.get(id(strategy))
        if found is None or found[0] is not strategy:
            found = self._with_unknown[id(strategy)] = (strategy, _with_unknown(strategy))
        return found[1]

    def _tool(self, tool: Tool) -> Tool:
        original = tool.fn
        owner = self
        once = tool.effect is Effect.AT_MOST_ONCE

        @functools.wraps(original)
        async def call(*args: Any, **kwargs: Any) -> Any:
            session = owner._now()
            shown = _short(kwargs)
            if session.faults is not None:
                types = session.fault_types
                strategy = owner._fates(session.fault_strategy) if once else session.fault_strategy
                fault = session.faults.next(strategy, f"fault for {tool.name}", Fault("ok"),
                                            saved=Fault.to_json, loaded=lambda raw: _fault(raw, types))
            else:
                fault = Fault("ok")
            if fault.kind != "ok":
                session.story.lines.append(f"    tool {tool.name}({shown}) -> {fault.kind}"
                                           + (f" {_bare(fault.error)}" if fault.error else ""))
            if fault.kind == "raise":
                assert fault.error_type is not None
                raise fault.error_type(f"injected {_bare(fault.error)}")
            if fault.kind == "hang":
                # As if the call ran past its timeout: the fake time has passed, nothing really waits.
                raise ToolTimeout(tool.name, tool.timeout or 0.0, "call")
            if fault.kind == "invalid":
                return _Invalid()
            if fault.kind == "unknown":  # as after a crash between its intent and its outcome
                key = f"{tool.name}/kit"
                if tool.reconcile is None:
                    raise EffectOutcomeUnknown(tool.name, key)
                out = tool.reconcile({k: v for k, v in kwargs.items() if k != KEY_PARAMETER}, key)
                if inspect.isawaitable(out):
                    out = await out
                session.story.lines.append(f"    reconcile {tool.name} -> {_short(out)}")
                return out
            try:
                if tool.is_async:
                    result = await original(*args, **kwargs)
                else:  # in a thread, as in a real run
                    result = await asyncio.to_thread(functools.partial(original, *args, **kwargs))
            except Exception as exc:
                owner.tool_log.raised[tool.name] += 1
                session.real_tool_errors.append((tool.name, exc))
                session.story.lines.append(f"    tool {tool.name}({shown}) -> really raised "
                                           f"{type(exc).__name__}: {exc}")
                raise
            owner.tool_log.returned[tool.name] += 1
            if session.faults is not None:
                session.story.lines.append(f"    tool {tool.name}({shown}) -> ok")
            return result

        retry: Any = tool.retrying
        extra: dict[str, Any] = {}
        if tool.fallback_value is not NOT_GIVEN:
            extra["fallback_value"] = tool.fallback_value
        return Tool(call, name=tool.name, description=tool.description, timeout=tool.timeout, retry=retry,
                    concurrency=tool.concurrency, rate_limit=tool.rate_limit, fallback=tool.fallback,
                    effect=tool.effect, reconcile=tool.reconcile, **extra)

    def _guard(self, g: Guard[Any], transition: str) -> Guard[Any]:
        owner = self

        def outcome(ctx: Any) -> bool:
            session = owner._now()
            if session.guards is not None:
                value = bool(session.guards.next(st.booleans(), f"guard {g.name}", False))
                session.story.lines.append(f"    guard [{g.name}] forced {value}")
            else:
                seen = _Reads(ctx)
                try:
                    value = g(seen)
                except Exception as exc:
                    session.guard_errors.append(exc)
                    session.story.lines.append(f"    guard [{g.name}] raised {type(exc).__name__}: {exc}")
                    raise
                finally:
                    undeclared = sorted((seen.names & owner.fields) - g.reads)
                    if undeclared:
                        session.undeclared_reads.append((g.name, transition, undeclared))
            if session.coverage is not None:
                session.coverage.guards[(transition, value)] += 1
            return value

        return Guard(outcome, name=g.name, reads=g.reads)

    def _action(self, action: Callable[..., Any], state: str) -> Callable[..., Any]:
        owner = self

        def injected() -> None:
            session = owner._now()
            if session.inject and session.inject[0][0] == state:
                _, error = session.inject.popleft()
                if error is not None:
                    session.story.lines.append(f"    {state} raises {error.__name__} (injected)")
                    raise _instance(error)

        if inspect.iscoroutinefunction(action):
            @functools.wraps(action)
            async def act_async(*args: Any, **kwargs: Any) -> Any:
                injected()
                return await action(*args, **kwargs)

            return act_async

        @functools.wraps(action)
        def act(*args: Any, **kwargs: Any) -> Any:
            injected()
            return action(*args, **kwargs)

        return act


def _instance(error: type[BaseException]) -> BaseException:
    """An instance of ``error`` to raise on purpose (its constructor may want arguments: the
    library's own errors are made as the library makes them)."""
    cause = RuntimeError("injected by the testing kit")
    for args in (("injected by the testing kit",), ("(injected)", (cause,)), ((cause,),),
                 ("(injected)", "injected by the testing kit")):
        try:
            exc = error(*args)
            str(exc)
        except Exception:
            continue
        return exc
    exc = error.__new__(error)
    exc.args = ("injected by the testing kit",)
    return exc


def _fault(raw: dict[str, str], types: dict[str, type[Exception]]) -> Fault:
    error = raw.get("error", "")
    kind = raw["kind"]
    return Fault(kind, error, _error_type(error, types) if kind == "raise" else None)


def _bare(name: str) -> str:
    return name.rsplit(".", 1)[-1]


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


async def _holds(predicate: Callable[[Any], object], value: Any) -> bool:
    out = predicate(value)
    if inspect.isawaitable(out):
        out = await out
    return bool(out)


_GARBAGE: st.SearchStrategy[Any] = (st.none() | st.integers() | st.text(max_size=4)
                                    | st.dictionaries(st.text(max_size=3), st.integers() | st.none(), max_size=2))
"""Payloads a payload model should refuse (most of the time: one it accepts is delivered)."""


@functools.cache
def _payloads(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    return contexts(model)


@dataclass
class _Options:
    """How stories run: what is allowed, whether waits get events, the user's policy and hooks."""

    allow: frozenset[Allowed] = frozenset()
    events: bool = True
    user_policy: Callable[[Decision[Any]], Any] | None = None
    model: Any = None
    """A ScriptedModel: its replies are drawn (or replayed) per policy call."""
    hooks: tuple[Hook, ...] = ()
    invariants: tuple[Invariant, ...] = ()
    path_invariants: tuple[PathInvariant, ...] = ()


def _allowed(value: object) -> frozenset[Allowed]:
    if isinstance(value, Allowed):
        return frozenset({value})
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"allow= takes Allowed members, e.g. allow=frozenset({{Allowed.SPENT_BUDGETS}}), "
                        f"got {value!r}")
    items = list(value)
    for a in items:
        if not isinstance(a, Allowed):
            raise TypeError(f"allow= takes Allowed members (statemachine_agent.testing.Allowed), got {a!r}; "
                            f"they are: {', '.join(m.name for m in Allowed)}")
    return frozenset(items)


async def _run_story(kit: _Instrumented, session: _Session, context: Any, options: _Options) -> RunResult[Any]:
    """Run one story on the instrumented workflow and check every invariant: AssertionError (with the
    reason only: the caller adds the story) when one breaks."""
    kit.session = session
    wf = kit.compiled
    spec = wf.spec
    story = session.story
    names = {t.name: t for t in spec.transitions}
    error_names = {e.name: e for e in spec.error_transitions}
    bound = wf.max_steps
    user_policy = options.user_policy
    model = options.model
    replay_policy = user_policy is not None and session.policy.has_recorded()

    async def checked(decision: Decision[Any]) -> Any:
        # The user's own policy must only ever answer an enabled transition.
        assert user_policy is not None
        story.policy_checked = True
        option_names = [o.name for o in decision.options]
        valid_reply = True
        if model is not None:
            strategy = model.replies(option_names) if decision.attempt == 1 else model.replies_again(option_names)
            reply = session.replies.next(strategy, f"model reply in {decision.state}",
                                         None, saved=_reply_json, loaded=_reply_value)
            if reply is not None:
                model.push(reply)
                valid_reply = reply.kind == "valid"
                story.lines.append(f"    model replied {reply}")
        if replay_policy and model is None:  # a replay: the answers the user's policy gave then
            answer = session.policy.next(st.nothing(), "recorded answer", None)
        else:
            answer = user_policy(decision)
            if inspect.isawaitable(answer):
                answer = await answer
            if model is None:
                story.choices.append(answer if isinstance(answer, (str, int, type(None))) else repr(answer))
        option, why = resolve(answer, decision.options)
        story.lines.append(f"    policy in {decision.state} answered {answer!r}")
        if option is None and valid_reply:  # a BaseException: the runner must not route it as the action's error
            raise _Violation(f"the policy answered {answer!r} in state {decision.state!r}: {why}")
        return answer if option is None else option

    def generated(decision: Decision[Any]) -> Any:
        names_ = [o.name for o in decision.options]
        garbage = st.sampled_from(["nowhere", "", "42"]) | st.none() | st.integers()
        answer = session.policy.next(st.sampled_from(names_) | garbage, f"policy in {decision.state}", names_[0])
        story.lines.append(f"    policy in {decision.state} answered {answer!r}")
        return answer

    def budget_hook(event: Event) -> None:
        if isinstance(event, BudgetExhausted):
            session.budgets.append(event)

    clock = FakeClock()
    run = wf.start(context, policy=checked if user_policy is not None else generated, clock=clock,
                   raise_errors=False, hooks=(*options.hooks, budget_hook))
    waits = {s.name: s.wait for s in spec.states if s.wait is not None}
    previous = _dump(context)

    async def go() -> RunResult[Any]:
        nonlocal previous
        if waits and options.events:
            await _early(run, session, waits)
        while True:
            if run.result is None:
                try:
                    step = await run.step()
                except RunError:
                    if run.result is not None and run.result.waiting is not None:
                        continue  # an initial wait state with nothing delivered yet: paused
                    raise
                after = _dump(run.context)
                diff = {k: after[k] for k in after if after[k] != previous.get(k)}
                story.lines.append(f"  {step.number}: {step.state} --{step.transition}--> {step.target}"
                                   + (f"  [{type(step.error).__name__}: {step.error}]" if step.error else "")
                                   + (f"  writes {_short(diff)}" if diff else ""))
                previous = after
                _check_step(wf, step, run, names=names, error_names=error_names, bound=bound)
                for inv in options.invariants:
                    if not await _holds(inv, run.context):
                        raise AssertionError(f"invariant {_name(inv)!r} failed after step {step.number}")
                continue
            if run.result.waiting is None or not options.events or session.events.exhausted():
                break
            await _at_wait(run, session, waits, clock)
        assert run.result is not None, "the run stopped without a result"
        if run.result.waiting is None:
            try:  # a terminal state absorbs: no step may follow it
                await run.step()
            except RunError:
                pass
            else:
                raise AssertionError(f"the run took a step after its terminal state {run.result.terminal!r}")
        return run.result

    try:
        result = await go()
    except _Violation as violation:
        raise AssertionError(str(violation)) from None
    except _Carried as carried:
        raise carried.original from None
    if result.waiting is not None:
        story.lines.append(f"  paused: waiting in {result.terminal!r} for event {result.waiting!r}")
        if Allowed.UNFINISHED not in options.allow:
            raise AssertionError(f"the run ended paused in {result.terminal!r} (waiting for {result.waiting!r}), "
                                 "not in a terminal (allow it: allow=frozenset({Allowed.UNFINISHED}))")
    else:
        assert spec.state(result.terminal).terminal, f"the run ended in {result.terminal!r}, not a terminal"
        story.lines.append(f"  end: {result.terminal} ({result.outcome.value})"
                           + (f": {result.reason}" if result.reason else ""))
    _loud(result, session, options.allow)
    coverage = session.coverage
    if coverage is not None:
        coverage.runs += 1
        coverage.terminals[result.terminal] += 1
        for step in result.path:
            if step.ran:
                coverage.states[step.state] += 1
            if step.kind != "fail":
                coverage.transitions[step.transition] += 1
    for inv in options.path_invariants:
        if not await _holds(inv, result):
            raise AssertionError(f"path invariant {_name(inv)!r} failed at the end of the run")
    return result


def _loud(result: RunResult[Any], session: _Session, allow: frozenset[Allowed]) -> None:
    """What run_sync would raise, and what the user did not allow, fails the run."""
    if session.undeclared_reads and Allowed.UNDECLARED_READS not in allow:
        name, transition, fields = session.undeclared_reads[0]
        raise AssertionError(f"guard {name!r} on transition {transition!r} read {', '.join(map(repr, fields))}, "
                             "which its reads=[...] does not declare: declare it (wf.guard(fn, reads=[...])), so "
                             "the checker proves it is written before the guard runs, or allow it: "
                             "allow=frozenset({Allowed.UNDECLARED_READS})")
    guard_errors = {id(e) for e in session.guard_errors}
    for step in result.path:
        if step.error is not None and id(step.error) in guard_errors and Allowed.GUARD_ERRORS not in allow:
            raise AssertionError(f"a guard raised {type(step.error).__name__} in state {step.state!r}: "
                                 f"{step.error} (a guard must return True or False; allow it: "
                                 "allow=frozenset({Allowed.GUARD_ERRORS}))")
    last = result.path[-1] if result.path else None
    if last is None or last.kind is not StepKind.FAIL:
        return
    if session.budgets and Allowed.SPENT_BUDGETS not in allow:
        spent = session.budgets[-1]
        raise AssertionError(f"a budget ran out: {spent.reason} (budget {spent.budget.value}; if the "
                             "workflow may end so, allow it: allow=frozenset({Allowed.SPENT_BUDGETS}))")
    if session.budgets:
        return
    if last.error is not None and not isinstance(last.error, ContextAccessError) \
            and Allowed.UNROUTED_ERRORS not in allow:
        raise AssertionError(f"state {last.state!r} raised {type(last.error).__name__}: {last.error}; no error "
                             "transition routes it (run_sync would raise it; route it with on_error(...), or "
                             "allow it: allow=frozenset({Allowed.UNROUTED_ERRORS}))")


async def _early(run: Any, session: _Session, waits: dict[str, Any]) -> None:
    """Events delivered before the run reaches their wait (at most one per event)."""
    events = sorted({w.event: w for w in waits.values()}.items())
    count = session.events.next(st.integers(0, len(events)), "early deliveries", 0,
                                saved=lambda n: {"at": "start", "count": n}, loaded=lambda r: r["count"])
    for event, wait in events[:count]:
        payload = session.events.next(_payloads(wait.payload), f"early payload of {event}", None,
                                      saved=_payload_json, loaded=lambda r: r)
        run.deliver(event, payload)
        session.story.lines.append(f"    deliver {event} early: {_short(_payload_json(payload))}")
        _count(session, "early")


async def _at_wait(run: Any, session: _Session, waits: dict[str, Any], clock: FakeClock) -> None:
    """The run paused in a wait: deliver a generated payload (refused if invalid, and then nothing is
    lost), or let the wait's timeout pass on the fake clock."""
    story = session.story
    state = run.result.terminal
    wait = waits[state]
    kinds = ["valid", "invalid"] + (["timeout"] if wait.timeout is not None else [])
    refused = 0
    while True:
        kind = "valid" if refused >= 3 else session.events.next(st.sampled_from(kinds), f"at wait {state}", "valid",
                                                                saved=lambda k: k, loaded=lambda k: k)
        if kind == "timeout":
            clock.advance(wait.timeout)
            story.lines.append(f"    wait {state}: {wait.timeout} s pass on the fake clock, no {wait.event!r}")
            woke = run.wake()  # the in-memory run takes its timeout on the next step
            assert woke, f"the wait in {state!r} did not time out after {wait.timeout} s on the fake clock"
            _count(session, "timeout")
            return
        strategy = _payloads(wait.payload) if kind == "valid" else _GARBAGE
        payload = session.events.next(strategy, f"{kind} payload at {state}", None, saved=_payload_json,
                                      loaded=lambda r: r)
        before = (_dump(run.context), run.state, run.result)
        try:
            run.deliver(wait.event, payload)
        except (ValidationError, ValueError, TypeError) as exc:
            if kind == "valid":
                raise AssertionError(f"a valid payload of {wait.payload.__name__} was refused at {state!r}: "
                                     f"{type(exc).__name__}") from None
            story.lines.append(f"    deliver {wait.event} {_short(_payload_json(payload))}: refused "
                               f"({type(exc).__name__})")
            after = (_dump(run.context), run.state, run.result)
            if after != before:
                raise AssertionError(f"a refused payload changed the run at {state!r}") from None
            refused += 1
            _count(session, "invalid")
            continue
        story.lines.append(f"    deliver {wait.event} {_short(_payload_json(payload))}")
        _count(session, "valid")
        return


def _count(session: _Session, kind: str) -> None:
    if session.coverage is not None:
        session.coverage.deliveries[kind] += 1


def _payload_json(payload: Any) -> Any:
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    try:
        json.dumps(payload)
    except (TypeError, ValueError):
        return repr(payload)
    return payload


def _reply_json(reply: Any) -> Any:
    return None if reply is None else reply.to_json()


def _reply_value(raw: Any) -> Any:
    return None if raw is None else ModelReply.from_json(raw)


def _dump(context: Any) -> dict[str, Any]:
    data: dict[str, Any] = context.model_dump()
    return data


def _check_step(wf: CompiledWorkflow[Any], step: Any, run: Any, *, names: dict[str, Any],
                error_names: dict[str, Any], bound: int, invariants: Sequence[Invariant] = ()) -> None:
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
        raise AssertionError(f"after step {step.number} the context no longer validates: {exc}") from None
    assert run.actions_run <= bound, f"{run.actions_run} steps exceed the static bound of {bound}"
    for inv in invariants:
        assert inv(ctx), f"invariant {_name(inv)!r} failed after step {step.number}"


def _compiled(workflow: Workflow[Any] | CompiledWorkflow[Any]) -> CompiledWorkflow[Any]:
    if isinstance(workflow, Workflow):
        return workflow.compile()
    if isinstance(workflow, CompiledWorkflow):
        return workflow
    raise TypeError(f"the testing kit takes a Workflow or CompiledWorkflow, got {type(workflow).__name__}")
