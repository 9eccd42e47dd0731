"""The runner: every run ends in a declared terminal state, within its budgets, via declared moves only."""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from .errors import ContextAccessError, RunError
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

if TYPE_CHECKING:
    from .compile import CompiledWorkflow, ErrorExit, Exit, Plan

__all__ = ["ContextView", "ReadOnlyContext", "Run", "run_blocking"]

log = logging.getLogger("statemachine_agent")

C = TypeVar("C")
T = TypeVar("T")

# Values that cannot be changed in place need no defensive copy.
_IMMUTABLE = (str, int, float, bool, bytes, type(None), tuple, frozenset)


class _Token:
    """The machine's model for one run: identity-equal, with nothing for transitions to decorate."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


class ContextView:
    """What an action receives: the context, limited to the state's declared reads and writes.

    Writes go to a copy made on the first write, so an action that fails leaves no trace; the
    runner commits the copy only when the step succeeds.
    """

    __slots__ = ("_sa_base", "_sa_copied", "_sa_dirty", "_sa_fields", "_sa_plan", "_sa_work", "_sa_written")

    def __init__(self, base: BaseModel, plan: Plan, written: set[str], fields: frozenset[str]) -> None:
        object.__setattr__(self, "_sa_base", base)
        object.__setattr__(self, "_sa_plan", plan)
        object.__setattr__(self, "_sa_written", written)
        object.__setattr__(self, "_sa_fields", fields)
        object.__setattr__(self, "_sa_work", None)
        object.__setattr__(self, "_sa_dirty", set())
        object.__setattr__(self, "_sa_copied", set())

    def _sa_copy(self) -> BaseModel:
        work: BaseModel | None = self._sa_work
        if work is None:
            work = self._sa_base.model_copy()
            object.__setattr__(self, "_sa_work", work)
        return work

    def __getattr__(self, name: str) -> Any:
        plan = self._sa_plan
        if name in plan.allowed:
            if name not in self._sa_written and name not in self._sa_dirty:
                raise ContextAccessError(
                    plan.name, name,
                    f"state {plan.name!r} read {name!r} before any step set it: declare it in "
                    f"reads=[...] so the checker proves it is written first, or write it before reading",
                )
            if name in plan.writes:
                work = self._sa_copy()
                value = getattr(work, name)
                if name not in self._sa_copied and not isinstance(value, _IMMUTABLE):
                    # A writable field may be changed in place: give the action its own copy.
                    value = copy.deepcopy(value)
                    work.__dict__[name] = value
                self._sa_copied.add(name)
                return value
            return getattr(self._sa_work or self._sa_base, name)
        if name in self._sa_fields:
            raise ContextAccessError(
                plan.name, name,
                f"state {plan.name!r} read {name!r}, which it does not declare: add {name!r} to "
                f"reads=[...] of state {plan.name!r}",
            )
        return getattr(self._sa_work or self._sa_base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        plan = self._sa_plan
        if name in plan.writes:
            setattr(self._sa_copy(), name, value)  # pydantic validates here, in the action
            self._sa_dirty.add(name)
            self._sa_copied.add(name)
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
            f"{type(self._sa_base).__name__}: declare the field on the context model",
        )

    def __delattr__(self, name: str) -> None:
        raise ContextAccessError(self._sa_plan.name, name, f"state {self._sa_plan.name!r} deleted {name!r}: "
                                 "context fields cannot be deleted; assign None instead")

    def __repr__(self) -> str:
        return f"<context view of {self._sa_work or self._sa_base!r} for state {self._sa_plan.name!r}>"


class ReadOnlyContext:
    """The context as policies see it: every field readable, nothing writable."""

    __slots__ = ("_sa_model",)

    def __init__(self, model: BaseModel) -> None:
        object.__setattr__(self, "_sa_model", model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sa_model, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a policy cannot change the context (tried to set {name!r})")

    def __repr__(self) -> str:
        return f"<read-only {self._sa_model!r}>"


def _positive(value: object, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or (
        isinstance(value, float) and math.isnan(value)
    ):
        raise ValueError(f"{what}={value!r}: give a positive number")


class _Failed(Exception):
    """Internal: the step ends in the failure terminal for ``reason``."""

    def __init__(self, reason: str, budget: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.budget = budget


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
        self.context: C = context  # type: ignore[assignment]
        """The committed context: replaced (never mutated) after each successful step."""
        self.policy: Policy = policy or first_enabled
        self.hooks: tuple[Hook, ...] = (*workflow.hooks, *hooks)
        self.max_steps: int = max_steps if max_steps is not None else workflow.max_steps
        self.timeout = timeout
        self.max_policy_attempts = max_policy_attempts
        self.raise_errors = raise_errors
        self.run_id: str = run_id or uuid.uuid4().hex
        self.state: str = workflow.initial
        """The current state."""
        self.path: list[Step] = []
        self.actions_run = 0
        self.visits: dict[str, int] = {}
        self.traversals: list[int] = [0] * len(workflow.edge_names)
        self.result: RunResult[C] | None = None
        """Set when the run has entered a terminal state."""
        base: BaseModel = context  # type: ignore[assignment]
        self._fields = frozenset(type(base).model_fields)
        self._written: set[str] = set(workflow.fields_at_start) | {
            f for f in base.model_fields_set if getattr(base, f) is not None
        }
        self._token = _Token(workflow.initial)
        self._deadline: float | None = None
        self._started = False

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
        wf = self.workflow
        if not self._started:
            self._started = True
            if self.timeout is not None:
                self._deadline = asyncio.get_running_loop().time() + self.timeout
            if self.hooks:
                await self._emit(RunStarted(self.run_id, wf.name, wf.initial, self.context, self.max_steps))
        plan = wf.plans[self.state]
        index = len(self.path)
        started_at = time.time()
        t0 = time.perf_counter()
        try:
            self._check_budgets(plan)
        except _Failed as failed:
            return await self._fail(plan, index, started_at, t0, failed.reason, budget=failed.budget,
                                    ran=False)
        visit = self.visits.get(plan.name, 0) + 1
        self.visits[plan.name] = visit
        self.actions_run += 1
        if self.hooks:
            await self._emit(StepStarted(self.run_id, wf.name, index, plan.name, visit))
        view = ContextView(self.context, plan, self._written, self._fields)  # type: ignore[arg-type]
        rejected: tuple[str, ...] = ()
        deadline = self._deadline
        try:
            if deadline is None:
                chosen, rejected = await self._act_and_choose(plan, view, index)
            else:
                async with asyncio.timeout_at(deadline):
                    try:
                        chosen, rejected = await self._act_and_choose(plan, view, index)
                    except TimeoutError as own:
                        # Raised inside the block, so it is the action's own, not our deadline's
                        # (which surfaces only when the block exits).
                        raise _ActionTimeout from own
        except _Failed as failed:
            return await self._fail(plan, index, started_at, t0, failed.reason, budget=failed.budget)
        except TimeoutError:
            return await self._fail(plan, index, started_at, t0,
                                    f"deadline of {self.timeout} s passed in state {plan.name!r}",
                                    budget="deadline")
        except ContextAccessError as exc:
            if self.raise_errors:
                raise
            return await self._fail(plan, index, started_at, t0, str(exc), error=exc)
        except Exception as exc:  # routed by the spec, or the run fails; never BaseException
            if isinstance(exc, _ActionTimeout) and isinstance(exc.__cause__, Exception):
                exc = exc.__cause__
            return await self._route(plan, index, started_at, t0, exc)
        # The step succeeded: commit its writes, then move.
        if chosen is None:
            return await self._fail(plan, index, started_at, t0,
                                    f"no exit of state {plan.name!r} was enabled")
        bound = chosen.bound
        if bound is not None and self.traversals[chosen.key] >= bound:
            self._commit(view)
            return await self._fail(plan, index, started_at, t0,
                                    f"traversals of {chosen.spec.name!r} reached {bound}",
                                    budget="max_traversals")
        self._fire(chosen.trigger, chosen.spec.target)
        self._commit(view)
        self.traversals[chosen.key] += 1
        step = Step(index, plan.name, chosen.spec.target, chosen.spec.name, "transition", started_at,
                    time.perf_counter() - t0, None, rejected)
        return await self._advance(step)

    # --- pieces of a step ------------------------------------------------------------------------
    def _check_budgets(self, plan: Plan) -> None:
        # The specific budget first: when the default max_steps (the static bound) runs out, a
        # visit budget is usually the real cause, and naming it says which loop to look at.
        if plan.max_visits is not None and self.visits.get(plan.name, 0) >= plan.max_visits:
            raise _Failed(f"visits of {plan.name!r} reached {plan.max_visits}", "max_visits")
        if self.actions_run >= self.max_steps:
            raise _Failed(f"max_steps of {self.max_steps} reached before state {plan.name!r}", "max_steps")
        if self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline:
            raise _Failed(f"deadline of {self.timeout} s passed before state {plan.name!r}", "deadline")

    async def _act_and_choose(self, plan: Plan, view: ContextView,
                              index: int) -> tuple[Exit | None, tuple[str, ...]]:
        action = plan.action
        assert action is not None
        if plan.is_async:
            await action(view)
        else:
            out = action(view)
            if inspect.isawaitable(out):
                await out
        model = view._sa_work or self.context
        if not plan.decision:
            for x in plan.exits:
                if x.guard is None or x.guard(model):
                    return x, ()
            return plan.default, ()
        enabled = [x for x in plan.exits if x.guard is None or x.guard(model)]
        if not enabled:
            return plan.default, ()
        if len(enabled) == 1:
            return enabled[0], ()
        return await self._ask_policy(plan, model, enabled, index)

    async def _ask_policy(self, plan: Plan, model: Any, enabled: list[Exit],
                          index: int) -> tuple[Exit, tuple[str, ...]]:
        options = tuple(Option(x.spec.name, x.spec.target, x.spec.description) for x in enabled)
        rejected: list[str] = []
        readonly = ReadOnlyContext(model)
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
                      f"{self.max_policy_attempts} attempts; last: {rejected[-1]}")

    def _commit(self, view: ContextView) -> None:
        work = view._sa_work
        if work is not None:
            self.context = work
            self._written |= view._sa_dirty

    def _fire(self, trigger: Any, target: str) -> None:
        # The machine checks that the move is declared from the current state, and records it.
        ok = trigger.trigger(self._token)
        if not ok or self._token.state != target:
            raise RunError(f"internal error: the machine refused {trigger.name} from {self.state!r}")
        self.state = target

    async def _route(self, plan: Plan, index: int, started_at: float, t0: float,
                     exc: Exception) -> Step:
        route = _most_specific(plan.errors, exc)
        if route is None:
            if self.raise_errors:
                raise exc
            return await self._fail(
                plan, index, started_at, t0,
                f"state {plan.name!r} raised {type(exc).__name__}: {exc}; no error transition routes it",
                error=exc,
            )
        bound = route.bound
        if bound is not None and self.traversals[route.key] >= bound:
            return await self._fail(plan, index, started_at, t0,
                                    f"traversals of {route.spec.name!r} reached {bound}",
                                    budget="max_traversals", error=exc)
        target = route.spec.target
        self._fire(route.trigger, target)
        self.traversals[route.key] += 1
        if self.hooks:
            await self._emit(ErrorRouted(self.run_id, self.workflow.name, index, plan.name, exc, target))
        step = Step(index, plan.name, target, route.spec.name, "error", started_at,
                    time.perf_counter() - t0, exc)
        return await self._advance(step)

    async def _fail(self, plan: Plan, index: int, started_at: float, t0: float, reason: str, *,
                    budget: str | None = None, error: BaseException | None = None,
                    ran: bool = True) -> Step:
        wf = self.workflow
        target = wf.failure_terminal
        log.warning("%s: run %s fails in state %r: %s", wf.name, self.run_id, plan.name, reason,
                    extra={"workflow": wf.name, "run_id": self.run_id, "state": plan.name,
                           "step": index, "budget": budget, "reason": reason})
        if budget is not None and self.hooks:
            await self._emit(BudgetExhausted(self.run_id, wf.name, index, plan.name, budget, reason))
        self._fire(wf.fail_trigger, target)
        step = Step(index, plan.name, target, "fail", "fail", started_at, time.perf_counter() - t0, error,
                    ran=ran)
        return await self._advance(step, reason=reason, error=error)

    async def _advance(self, step: Step, *, reason: str | None = None,
                       error: BaseException | None = None) -> Step:
        self.path.append(step)
        wf = self.workflow
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: step %d %s -> %s", wf.name, step.index, step.state, step.target,
                      extra={"workflow": wf.name, "run_id": self.run_id, "step": step.index,
                             "state": step.state, "target": step.target, "transition": step.transition,
                             "kind": step.kind, "duration": step.duration})
        if self.hooks:
            await self._emit(TransitionTaken(self.run_id, wf.name, step.index, step.state, step.target,
                                             step.transition, step.kind, step.duration))
        plan = wf.plans[step.target]
        if plan.terminal:
            outcome = plan.outcome or Outcome.FAILURE
            if outcome is Outcome.FAILURE and reason is None:
                reason = (f"state {step.state!r} raised {type(step.error).__name__}: {step.error}; routed "
                          f"to {step.target!r}" if step.error is not None
                          else f"reached failure terminal {step.target!r} from {step.state!r}")
            self.result = RunResult(wf.name, self.run_id, step.target, outcome, self.context,
                                    tuple(self.path), reason, error)
            if outcome is Outcome.FAILURE and step.kind != "fail":
                log.warning("%s: run %s ended in failure terminal %r: %s", wf.name, self.run_id,
                            step.target, reason,
                            extra={"workflow": wf.name, "run_id": self.run_id, "terminal": step.target})
            if self.hooks:
                await self._emit(RunFinished(self.run_id, wf.name, self.result))
        return step

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
