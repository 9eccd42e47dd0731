"""The runner: every run ends in a declared terminal state, within its budgets, via declared moves only."""

from __future__ import annotations

import asyncio
import copy
import difflib
import enum
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from .clock import Clock, SystemClock
from .errors import ContextAccessError, GatherFailed, RunError, ToolFailed
from .events import (
    BudgetExhausted,
    ErrorRouted,
    Event,
    Hook,
    PolicyChoiceRejected,
    RunFinished,
    RunStarted,
    StepStarted,
    TransitionTaken,
)
from .policies import Decision, Option, Policy, first_enabled, resolve
from .result import RunResult, Step
from .spec import Outcome
from .tools import Tools, _positive

if TYPE_CHECKING:
    from .compile import CompiledWorkflow, ErrorExit, Exit, Plan

__all__ = ["ContextView", "ReadOnlyContext", "Run", "run_blocking"]

log = logging.getLogger("statemachine_agent")

C = TypeVar("C")
T = TypeVar("T")

# Values that cannot be changed in place need no defensive copy (a tuple may hold a list: copied).
_IMMUTABLE = (str, int, float, bool, bytes, type(None), enum.Enum)


_FLAT = frozenset({str, int, float, bool, bytes, type(None)})


def _copy_of(value: Any) -> Any:
    """A copy that shares nothing mutable with ``value`` (cheap for flat lists, dicts and sets)."""
    if isinstance(value, _IMMUTABLE):
        return value
    kind = type(value)
    if kind is list or kind is set or kind is tuple or kind is frozenset:
        if all(type(x) in _FLAT for x in value):
            return value if kind is tuple or kind is frozenset else value.copy()
    elif kind is dict and all(type(x) in _FLAT for x in value.values()):
        return value.copy()
    return copy.deepcopy(value)


class _Token:
    """The machine's model for one run: identity-equal, with nothing for transitions to decorate."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


class ContextView:
    """What an action receives: the context, limited to the state's declared reads and writes.

    Writes are validated by pydantic as they happen. Before the first change in a step the view
    snapshots the context, so a step that fails is rolled back and leaves no trace. Values of
    fields the state only reads are copies: changing them in place changes nothing. A view serves
    one step; using it afterwards (say, from a task the action left behind) raises.
    """

    # No __slots__: one instance-dict assignment builds a view, and the per-step state starts
    # from these class defaults (a view is made for every step, so this is on the hot path).
    _sa_model: BaseModel
    _sa_plan: Plan | None
    _sa_written: set[str]
    _sa_fields: frozenset[str]
    _sa_snapshot: tuple[dict[str, Any], set[str]] | None = None
    _sa_dirty: list[str] | None = None
    _sa_copied: set[str] | None = None
    _sa_reads: dict[str, Any] | None = None
    """Copies of read-only values handed out this step: one per field, so reads agree."""

    def __init__(self, model: BaseModel, plan: Plan, written: set[str], fields: frozenset[str]) -> None:
        object.__setattr__(self, "__dict__", {"_sa_model": model, "_sa_plan": plan, "_sa_written": written,
                                              "_sa_fields": fields})

    def _sa_close(self) -> None:
        """End the step: the view refuses any further use."""
        object.__setattr__(self, "_sa_plan", None)

    def _sa_live(self, name: str) -> Plan:
        plan = self._sa_plan
        if plan is None:
            raise ContextAccessError("", name, f"the context view was used after its step ended (touching "
                                     f"{name!r}): a task an action starts must finish within the action")
        return plan

    def _sa_snap(self) -> BaseModel:
        model = self._sa_model
        if self._sa_snapshot is None:
            object.__setattr__(self, "_sa_snapshot",
                               (dict(model.__dict__), set(model.__pydantic_fields_set__)))
        return model

    def _sa_rollback(self) -> None:
        """Undo every change of the current step."""
        snap = self._sa_snapshot
        if snap is not None:
            model = self._sa_model
            object.__setattr__(model, "__dict__", snap[0])
            object.__setattr__(model, "__pydantic_fields_set__", snap[1])
            object.__setattr__(self, "_sa_snapshot", None)
        object.__setattr__(self, "_sa_dirty", None)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # Python's own protocols (copy, pickle) probe for these
        plan = self._sa_live(name)
        if name in plan.allowed:
            if name not in self._sa_written and (self._sa_dirty is None or name not in self._sa_dirty):
                raise ContextAccessError(
                    plan.name, name,
                    f"state {plan.name!r} read {name!r} before any step set it: declare it in "
                    f"reads=[...] so the checker proves it is written first, or write it before reading",
                )
            value = getattr(self._sa_model, name)
            if isinstance(value, _IMMUTABLE):
                return value
            if name not in plan.writes:
                # Read-only: in-place changes must not reach the context.
                cache = self._sa_reads
                if cache is None:
                    cache = self.__dict__["_sa_reads"] = {}
                elif name in cache:
                    return cache[name]
                value = cache[name] = _copy_of(value)
                return value
            copied = self._sa_copied
            if copied is None:
                copied = set()
                object.__setattr__(self, "_sa_copied", copied)
            if name not in copied:
                # A writable field may be changed in place: work on a copy, keep the original
                # in the snapshot for a rollback.
                model = self._sa_snap()
                value = _copy_of(value)
                model.__dict__[name] = value
                copied.add(name)
            return value
        if name in self._sa_fields:
            raise ContextAccessError(
                plan.name, name,
                f"state {plan.name!r} read {name!r}, which it does not declare: add {name!r} to "
                f"reads=[...] of state {plan.name!r}",
            )
        close = difflib.get_close_matches(name, sorted(self._sa_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ContextAccessError(
            plan.name, name,
            f"state {plan.name!r} used {name!r}, which is not a field of {type(self._sa_model).__name__}"
            f"{hint}: an action sees only the fields its state declares",
        )

    def __setattr__(self, name: str, value: Any) -> None:
        plan = self._sa_live(name)
        if name in plan.writes:
            model = self._sa_model
            if self._sa_snapshot is None:
                object.__setattr__(self, "_sa_snapshot",
                                   (dict(model.__dict__), set(model.__pydantic_fields_set__)))
            setattr(model, name, value)  # pydantic validates here, in the action
            dirty = self._sa_dirty
            if dirty is None:
                object.__setattr__(self, "_sa_dirty", [name])
            else:
                dirty.append(name)
            if not isinstance(value, _IMMUTABLE):
                # The action holds this object already: no defensive copy on a later read.
                copied = self._sa_copied
                if copied is None:
                    object.__setattr__(self, "_sa_copied", {name})
                else:
                    copied.add(name)
            return
        if name in self._sa_fields:
            raise ContextAccessError(
                plan.name, name,
                f"state {plan.name!r} wrote {name!r}, which it does not declare: add {name!r} to "
                f"writes=[...] of state {plan.name!r}",
            )
        raise ContextAccessError(
            plan.name, name,
            f"state {plan.name!r} set {name!r}, which is not a field of "
            f"{type(self._sa_model).__name__}: declare the field on the context model",
        )

    def __delattr__(self, name: str) -> None:
        plan = self._sa_live(name)
        raise ContextAccessError(plan.name, name, f"state {plan.name!r} deleted {name!r}: "
                                 "context fields cannot be deleted; assign None instead")

    def __repr__(self) -> str:
        plan = self._sa_plan
        return f"<context view of {self._sa_model!r} for state {plan.name if plan else '(closed)'!r}>"


class ReadOnlyContext:
    """The context as guards and policies see it: every field readable (as a copy), nothing writable."""

    __slots__ = ("_sa_model",)

    def __init__(self, model: BaseModel) -> None:
        object.__setattr__(self, "_sa_model", model)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self._sa_model, name)
        return value if isinstance(value, _IMMUTABLE) or callable(value) else _copy_of(value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"guards and policies cannot change the context (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"guards and policies cannot change the context (tried to delete {name!r})")

    def __repr__(self) -> str:
        return f"<read-only {self._sa_model!r}>"


class _Failed(Exception):
    """Internal: the step ends in the failure terminal for ``reason``."""

    def __init__(self, reason: str, budget: str | None = None, rejected: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.budget = budget
        self.rejected = rejected


class _DeadlinePassed(Exception):
    """Internal: the run's own deadline (``timeout=``) cut the step."""


class Run(Generic[C]):
    """One run of a compiled workflow. Drive it with ``await run.run_to_end()`` or ``async for``."""

    def __init__(
        self,
        workflow: CompiledWorkflow[C],
        context: C | dict[str, Any],
        *,
        policy: Policy | None = None,
        hooks: Sequence[Hook] = (),
        max_steps: int | None = None,
        timeout: float | None = None,
        max_policy_attempts: int = 3,
        raise_errors: bool = False,
        run_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        model = workflow.context_type
        if isinstance(context, dict):
            context = model.model_validate(context)
        elif not isinstance(context, model):
            raise TypeError(
                f"workflow {workflow.name!r} runs on {model.__name__}, got {type(context).__name__}: "
                f"pass {model.__name__}(...) or a dict of its fields"
            )
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                      or max_steps < 1):
            raise ValueError(f"max_steps={max_steps!r}: give a whole number of at least 1")
        _positive(timeout, "timeout")
        if isinstance(max_policy_attempts, bool) or not isinstance(max_policy_attempts, int) \
                or max_policy_attempts < 1:
            raise ValueError(f"max_policy_attempts={max_policy_attempts!r}: give a whole number >= 1")
        if policy is not None and not callable(policy):
            raise TypeError(f"policy {policy!r} is not callable: give a function of a Decision")
        self.workflow = workflow
        # One private copy per run: the caller's object is never mutated, and steps change this
        # one in place (rolled back when a step fails).
        # A shallow copy is enough: every way in (views, guards, policies) hands out copies of
        # mutable values, so nothing the caller holds is ever changed in place.
        base: BaseModel = context.model_copy()  # type: ignore[union-attr]
        self.context: C = base  # type: ignore[assignment]
        """The run's context; a failed step leaves it as the step found it."""
        self.policy: Policy = policy or first_enabled
        self.hooks: tuple[Hook, ...] = (*workflow.hooks, *hooks)
        self.max_steps: int = max_steps if max_steps is not None else workflow.max_steps
        self.timeout = timeout
        self.max_policy_attempts = max_policy_attempts
        self.raise_errors = raise_errors
        self.run_id: str = run_id or uuid.uuid4().hex
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock={clock!r} has no now() and async sleep(): give a "
                            "statemachine_agent.clock.Clock such as FakeClock()")
        self.clock: Clock = clock or SystemClock()
        """Where tool retries and rate limits read the time and sleep."""
        self.state: str = workflow.initial
        """The current state."""
        self.path: list[Step] = []
        self.actions_run = 0
        self.visits: dict[str, int] = {}
        self.traversals: list[int] = [0] * len(workflow.edge_names)
        self.result: RunResult[C] | None = None
        """Set when the run has entered a terminal state."""
        self._plans = workflow.plans
        self._written: set[str] = set(workflow.fields_at_start) | {
            f for f in base.model_fields_set if getattr(base, f) is not None
        }
        self._fields = workflow.field_names
        self._readonly = ReadOnlyContext(base)  # what guards and policies see
        self._token = _Token(workflow.initial)
        self._deadline: float | None = None
        self._started = False
        self._clock0 = (time.time(), time.perf_counter())

    # --- driving ---------------------------------------------------------------------------------
    async def run_to_end(self) -> RunResult[C]:
        """Run until a terminal state and return the result."""
        while self.result is None:
            await self.step()
        return self.result

    async def __aiter__(self) -> AsyncIterator[Step]:
        while self.result is None:
            yield await self.step()

    @property
    def done(self) -> bool:
        """The run has ended."""
        return self.result is not None

    async def step(self) -> Step:
        """Run one step: the current state's action, then one declared transition."""
        if self.result is not None:
            raise RunError(f"run {self.run_id} has already ended in {self.result.terminal!r}")
        if not self._started:
            await self._start()
        plan = self._plans[self.state]
        index = len(self.path)
        t0 = time.perf_counter()
        name = plan.name
        visits = self.visits.get(name, 0)
        # The specific budget first: when the default max_steps (the static bound) runs out, a
        # visit budget is usually the real cause, and naming it says which loop to look at.
        if plan.max_visits is not None and visits >= plan.max_visits:
            return await self._fail(plan, index, t0, f"visits of {name!r} reached {plan.max_visits}",
                                    budget="max_visits", ran=False)
        if self.actions_run >= self.max_steps:
            return await self._fail(plan, index, t0,
                                    f"max_steps of {self.max_steps} reached before state {name!r}",
                                    budget="max_steps", ran=False)
        deadline = self._deadline
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            return await self._fail(plan, index, t0, f"deadline of {self.timeout} s passed before state "
                                    f"{name!r}", budget="deadline", ran=False)
        self.visits[name] = visits + 1
        self.actions_run += 1
        if self.hooks:
            await self._emit(StepStarted(self.run_id, self.workflow.name, index, name, visits + 1))
        view = ContextView(self.context, plan, self._written, self._fields)  # type: ignore[arg-type]
        rejected: tuple[str, ...] = ()
        try:
            if deadline is not None:
                try:
                    async with asyncio.timeout_at(deadline):
                        try:
                            chosen, rejected = await self._act_and_choose(plan, view, index)
                        except TimeoutError as own:
                            # Raised inside the block, so it is the action's own, not our
                            # deadline's (which surfaces only when the block exits).
                            raise _ActionTimeout from own
                except TimeoutError:
                    raise _DeadlinePassed from None
            elif plan.is_async or plan.decision or plan.takes_tools:
                chosen, rejected = await self._act_and_choose(plan, view, index)
            else:  # the common case, inline: no extra coroutine, no extra call
                out = plan.action(view)  # type: ignore[misc]
                if out is not None and inspect.isawaitable(out):
                    await out
                model = self._readonly
                for chosen in plan.exits:
                    if chosen.guard is None or chosen.guard(model):
                        break
                else:
                    chosen = plan.default
        except BaseException as exc:
            view._sa_rollback()
            view._sa_close()
            if not isinstance(exc, Exception):
                raise  # cancellation and interruption are never routed
            if isinstance(exc, _Failed):
                return await self._fail(plan, index, t0, exc.reason, budget=exc.budget, rejected=exc.rejected)
            if isinstance(exc, _DeadlinePassed):
                return await self._fail(plan, index, t0, f"deadline of {self.timeout} s passed in state "
                                        f"{name!r}", budget="deadline")
            if isinstance(exc, ContextAccessError):
                if self.raise_errors:
                    raise
                return await self._fail(plan, index, t0, str(exc), error=exc)
            if isinstance(exc, _ActionTimeout) and isinstance(exc.__cause__, Exception):
                exc = exc.__cause__
            return await self._route(plan, index, t0, exc)
        view._sa_close()
        if chosen is None:
            view._sa_rollback()  # the step cannot move: it failed, and leaves nothing behind
            return await self._fail(plan, index, t0, f"no exit of state {name!r} was enabled",
                                    rejected=rejected)
        bound = chosen.bound
        if bound is not None and self.traversals[chosen.key] >= bound:
            view._sa_rollback()
            return await self._fail(plan, index, t0, f"traversals of {chosen.spec.name!r} reached {bound}",
                                    budget="max_traversals", rejected=rejected)
        # The step succeeded: its writes stand; now move.
        if view._sa_dirty:
            self._written.update(view._sa_dirty)
        target = chosen.spec.target
        # The machine checks that the move is declared from the current state, and records it.
        if not chosen.trigger.trigger(self._token) or self._token.state != target:
            raise RunError(f"internal error: the machine refused {chosen.spec.name} from {name!r}")
        self.state = target
        self.traversals[chosen.key] += 1
        t1 = time.perf_counter()
        step = Step(index, name, target, chosen.spec.name, "transition", self._wall(t0), t1 - t0, None,
                    rejected)
        self.path.append(step)
        if self.hooks or log.isEnabledFor(logging.DEBUG) or self._plans[target].terminal:
            await self._after(step)
        return step

    # --- pieces of a step ------------------------------------------------------------------------
    async def _start(self) -> None:
        self._started = True
        if self.timeout is not None:
            self._deadline = asyncio.get_running_loop().time() + self.timeout
        if self.hooks:
            wf = self.workflow
            await self._emit(RunStarted(self.run_id, wf.name, wf.initial,
                                        self.context.model_copy(deep=True),  # type: ignore[attr-defined]
                                        self.max_steps))

    def _wall(self, t: float) -> float:
        wall0, perf0 = self._clock0
        return wall0 + (t - perf0)

    def _first_enabled(self, plan: Plan) -> Exit | None:
        model = self._readonly
        for x in plan.exits:
            if x.guard is None or x.guard(model):
                return x
        return plan.default

    async def _act_and_choose(self, plan: Plan, view: ContextView,
                              index: int) -> tuple[Exit | None, tuple[str, ...]]:
        action = plan.action
        assert action is not None
        if plan.takes_tools:
            deadline = None if plan.tool_deadline is None else \
                asyncio.get_running_loop().time() + plan.tool_deadline
            out = action(view, Tools(self.workflow.tools, plan.tools, clock=self.clock, deadline=deadline,
                                     run=self, state=plan.name, step=index))
        else:
            out = action(view)
        if out is not None and inspect.isawaitable(out):
            await out
        model = self._readonly
        if not plan.decision:
            return self._first_enabled(plan), ()
        # An exit whose traversal budget is spent is not enabled: the policy never sees it.
        enabled = [x for x in plan.exits if (x.guard is None or x.guard(model))
                   and (x.bound is None or self.traversals[x.key] < x.bound)]
        if not enabled:
            return plan.default, ()
        if len(enabled) == 1:
            return enabled[0], ()
        return await self._ask_policy(plan, model, enabled, index)

    async def _ask_policy(self, plan: Plan, model: Any, enabled: list[Exit],
                          index: int) -> tuple[Exit, tuple[str, ...]]:
        options = tuple(Option(x.spec.name, x.spec.target, x.spec.description) for x in enabled)
        rejected: list[str] = []
        readonly = model
        for attempt in range(1, self.max_policy_attempts + 1):
            decision = Decision(self.workflow.name, plan.name, readonly, options, attempt, tuple(rejected))
            answer: Any = self.policy(decision)
            if inspect.isawaitable(answer):
                answer = await answer
            option, why = resolve(answer, options)
            if option is not None:
                return enabled[options.index(option)], tuple(rejected)
            rejected.append(why)
            log.warning("policy answer rejected in %r: %s", plan.name, why,
                        extra={"workflow": self.workflow.name, "run_id": self.run_id,
                               "state": plan.name, "attempt": attempt})
            if self.hooks:
                await self._emit(PolicyChoiceRejected(self.run_id, self.workflow.name, index, plan.name,
                                                      answer, why, attempt))
        raise _Failed(f"the policy gave no valid choice in state {plan.name!r} after "
                      f"{self.max_policy_attempts} attempts; last: {rejected[-1]}", rejected=tuple(rejected))

    def _fire(self, trigger: Any, target: str) -> None:
        # The machine checks that the move is declared from the current state, and records it.
        ok = trigger.trigger(self._token)
        if not ok or self._token.state != target:
            raise RunError(f"internal error: the machine refused {trigger.name} from {self.state!r}")
        self.state = target

    async def _route(self, plan: Plan, index: int, t0: float, exc: Exception) -> Step:
        route = _most_specific(plan.errors, exc)
        if route is None:
            if self.raise_errors:
                raise exc
            return await self._fail(
                plan, index, t0,
                f"state {plan.name!r} raised {type(exc).__name__}: {exc}; no error transition routes it",
                error=exc,
            )
        bound = route.bound
        if bound is not None and self.traversals[route.key] >= bound:
            return await self._fail(plan, index, t0, f"traversals of {route.spec.name!r} reached {bound}",
                                    budget="max_traversals", error=exc)
        target = route.spec.target
        self._fire(route.trigger, target)
        self.traversals[route.key] += 1
        if self.hooks:
            await self._emit(ErrorRouted(self.run_id, self.workflow.name, index, plan.name, exc, target))
        step = Step(index, plan.name, target, route.spec.name, "error", self._wall(t0),
                    time.perf_counter() - t0, exc)
        self.path.append(step)
        await self._after(step)
        return step

    async def _fail(self, plan: Plan, index: int, t0: float, reason: str, *, budget: str | None = None,
                    error: BaseException | None = None, ran: bool = True,
                    rejected: tuple[str, ...] = ()) -> Step:
        wf = self.workflow
        target = wf.failure_terminal
        log.warning("%s: run %s fails in state %r: %s", wf.name, self.run_id, plan.name, reason,
                    extra={"workflow": wf.name, "run_id": self.run_id, "state": plan.name,
                           "step": index, "budget": budget, "reason": reason})
        if budget is not None and self.hooks:
            await self._emit(BudgetExhausted(self.run_id, wf.name, index, plan.name, budget, reason))
        self._fire(wf.fail_trigger, target)
        step = Step(index, plan.name, target, "fail", "fail", self._wall(t0), time.perf_counter() - t0,
                    error, rejected, ran)
        self.path.append(step)
        await self._after(step, reason=reason, error=error)
        return step

    async def _after(self, step: Step, *, reason: str | None = None,
                     error: BaseException | None = None) -> None:
        """Log and report a recorded step; end the run when it entered a terminal state."""
        wf = self.workflow
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: step %d %s -> %s", wf.name, step.number, step.state, step.target,
                      extra={"workflow": wf.name, "run_id": self.run_id, "step": step.number,
                             "state": step.state, "target": step.target, "transition": step.transition,
                             "kind": step.kind, "duration": step.duration})
        if self.hooks:
            await self._emit(TransitionTaken(self.run_id, wf.name, step.number, step.state, step.target,
                                             step.transition, step.kind, step.duration))
        plan = self._plans[step.target]
        if not plan.terminal:
            return
        outcome = plan.outcome or Outcome.FAILURE
        if outcome is Outcome.FAILURE and reason is None:
            reason = (f"state {step.state!r} raised {type(step.error).__name__}: {step.error}; routed "
                      f"to {step.target!r}" if step.error is not None
                      else f"reached failure terminal {step.target!r} from {step.state!r}")
        self.result = RunResult(wf.name, self.run_id, step.target, outcome, self.context,
                                tuple(self.path), reason, error, wf)
        if outcome is Outcome.FAILURE and step.kind != "fail":
            log.warning("%s: run %s ended in failure terminal %r: %s", wf.name, self.run_id,
                        step.target, reason,
                        extra={"workflow": wf.name, "run_id": self.run_id, "terminal": step.target})
        if self.hooks:
            await self._emit(RunFinished(self.run_id, wf.name, self.result))

    async def _emit(self, event: Event) -> None:
        for hook in self.hooks:
            try:
                out = hook(event)
                if inspect.isawaitable(out):
                    await out
            except Exception:  # observability must never break the agent
                log.exception("hook %r failed on %s", hook, type(event).__name__,
                              extra={"workflow": self.workflow.name, "run_id": self.run_id})


class _ActionTimeout(Exception):
    """Internal: marks a TimeoutError raised by the action itself, to route it like any error."""


def _most_specific(routes: tuple[ErrorExit, ...], exc: BaseException) -> ErrorExit | None:
    if isinstance(exc, GatherFailed):
        # A failed gather routes by the first of its failures that a specific route handles.
        for member in exc.errors:
            cause = member.last if isinstance(member, ToolFailed) and member.last is not None else member
            route = _most_specific_for(routes, cause)
            if route is not None and route.spec.error not in (Exception, BaseException):
                return route
        return _most_specific_for(routes, exc)
    if isinstance(exc, ToolFailed) and exc.last is not None:
        # A tool that failed for good routes by its cause first (on_error(s, ToolTimeout, ...) or
        # on_error(s, SearchDown, ...)), unless only a catch-all matches the cause: then the more
        # telling ToolFailed route, if any, wins.
        by_cause = _most_specific_for(routes, exc.last)
        if by_cause is not None and by_cause.spec.error not in (Exception, BaseException):
            return by_cause
        return _most_specific_for(routes, exc) or by_cause
    return _most_specific_for(routes, exc)


def _most_specific_for(routes: tuple[ErrorExit, ...], exc: BaseException) -> ErrorExit | None:
    mro = type(exc).__mro__
    best: ErrorExit | None = None
    rank = len(mro) + 1
    for r in routes:
        err = r.spec.error
        if isinstance(exc, err):
            k = mro.index(err) if err in mro else len(mro)  # virtual subclasses rank last
            if k < rank:
                best, rank = r, k
    return best


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code; refuse clearly inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RunError(
        "run_sync() was called while an event loop is running in this thread (async code, Jupyter): "
        "use `await workflow.run(context)` there instead"
    )
