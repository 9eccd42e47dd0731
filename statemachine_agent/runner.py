"""The runner: every run ends in a declared terminal state, within its budgets, via declared moves only."""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeGuard, TypeVar

from pydantic import BaseModel

from ._journal import Delta, Journal, RunState
from ._plan import ErrorExit, Exit, Plan, Token
from ._program import Program
from ._tooldef import positive
from ._views import ContextView, ReadOnlyContext
from .clock import Clock, SystemClock, wall_time
from .context import is_unset
from .errors import BudgetExceeded, ContextAccessError, GatherFailed, RunError, ToolFailed, WaitTimedOut
from .events import (
    Budget,
    BudgetExhausted,
    DecisionOffered,
    ErrorRouted,
    Event,
    Hook,
    ModelCalled,
    PolicyChoiceRejected,
    RunFinished,
    RunStarted,
    RunWaiting,
    StartCopy,
    StepStarted,
    TransitionTaken,
)
from .policies import Decision, Option, Policy, first_enabled, resolve, safe_repr
from .result import RESULT_ATTR, RunResult, Step, StepKind, Steps
from .spec import Outcome
from .tools import Tools
from .usage import ModelCall

__all__ = ["MissingWrite", "ResumeOptions", "Run", "RunConfig"]

log = logging.getLogger("statemachine_agent")

C = TypeVar("C", bound=BaseModel)
T = TypeVar("T")


class ResumeOptions(TypedDict, Generic[C], total=False):
    """The options of a run that ``resume`` takes too (all but the run's id and store)."""

    policy: Policy[C] | None
    """Picks among the enabled transitions in decision states (default: the first enabled)."""
    hooks: Sequence[Hook]
    """Called with every event of this run, after the workflow's own hooks."""
    max_steps: int | None
    """A step budget (default: the checker's worst-case bound)."""
    timeout: float | None
    """Seconds the whole run may take, hooks included, on the run's clock."""
    max_policy_attempts: int
    """How many answers a policy may give per decision before the run fails (default 3)."""
    raise_errors: bool
    """Re-raise an exception no error transition routes, after recording the run (default True)."""
    clock: Clock | None
    """Where timeouts, retries and rate limits read the time (default: the system clock)."""
    max_step_restarts: int
    """With a store: how many times a step may be resumed after crashes before the run fails (3)."""
    token_budget: int | None
    """Tokens (input and output) the run's model calls may use; past it the run fails (``Budget.TOKENS``)."""
    cost_budget: float | None
    """What the run's priced model calls may cost; past it the run fails (``Budget.COST``)."""


_NO_DELTA: Delta = ({}, [], {})
"""A step's delta before it is computed: nothing written."""


def _frozen(path: list[Step] | Steps) -> tuple[Step, ...] | Steps:
    """A run's path as its result keeps it."""
    return path.frozen() if isinstance(path, Steps) else tuple(path)


class MissingWrite(ContextAccessError):
    """A step ended without writing a field its state declares in ``writes=[...]``."""


class _Failed(Exception):
    """Internal: the step ends in the failure terminal for ``reason``."""

    def __init__(self, reason: str, budget: Budget | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.budget = budget


class _ActionTimeout(Exception):
    """Internal: marks a TimeoutError raised by the action itself, to route it like any error."""


@dataclass(frozen=True, slots=True)
class RunConfig(Generic[C]):
    """A run's options, validated once (:meth:`of`), for the run's whole life: the keyword
    arguments of ``Run``, ``run`` and ``start`` (see :class:`RunOptions`) with their defaults
    filled in."""

    policy: Policy[C]
    hooks: tuple[Hook, ...]
    """The workflow's hooks, then the run's own."""
    max_steps: int
    timeout: float | None
    max_policy_attempts: int
    raise_errors: bool
    run_id: str
    clock: Clock
    store: object | None
    max_step_restarts: int
    token_budget: int | None
    cost_budget: float | None
    max_steps_given: bool = False
    """``max_steps`` came from the caller (not the workflow's bound)."""

    @classmethod
    def of(cls, workflow: Program[C], *, policy: Policy[C] | None = None, hooks: Sequence[Hook] = (),
           max_steps: int | None = None, timeout: float | None = None, max_policy_attempts: int = 3,
           raise_errors: bool = True, run_id: str | None = None, clock: Clock | None = None,
           store: object | None = None, max_step_restarts: int = 3, token_budget: int | None = None,
           cost_budget: float | None = None) -> RunConfig[C]:
        """The options checked: ``TypeError``/``ValueError`` naming the bad one and what to give."""
        return cls(*cls.checked(workflow, policy=policy, hooks=hooks, max_steps=max_steps, timeout=timeout,
                                max_policy_attempts=max_policy_attempts, raise_errors=raise_errors, run_id=run_id,
                                clock=clock, store=store, max_step_restarts=max_step_restarts,
                                token_budget=token_budget, cost_budget=cost_budget))

    @staticmethod
    def checked(workflow: Program[C], *, policy: Policy[C] | None = None, hooks: Sequence[Hook] = (),
                max_steps: int | None = None, timeout: float | None = None, max_policy_attempts: int = 3,
                raise_errors: bool = True, run_id: str | None = None, clock: Clock | None = None,
                store: object | None = None, max_step_restarts: int = 3, token_budget: int | None = None,
                cost_budget: float | None = None) -> tuple[Any, ...]:
        """What :meth:`of` checks, as the values of its fields in order (a run keeps them in its own
        slots, and builds its RunConfig only when asked: one object less per run in flight)."""
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                      or not 1 <= max_steps <= _MAX_COUNT):
            raise ValueError(f"max_steps={max_steps!r}: give a whole number from 1 to {_MAX_COUNT} (what a store "
                             "keeps)")
        if timeout is not None:
            positive(timeout, "timeout")
        if type(max_policy_attempts) is not int or max_policy_attempts < 1:
            raise ValueError(f"max_policy_attempts={max_policy_attempts!r}: give a whole number >= 1")
        if policy is not None and not callable(policy):
            raise TypeError(f"policy={safe_repr(policy)} is not callable: give a function of a Decision")
        own_hooks: tuple[Hook, ...] = ()
        if type(hooks) is not tuple or hooks:  # not the default (): check what was given
            if isinstance(hooks, (str, bytes)) or not isinstance(hooks, collections.abc.Iterable):
                raise TypeError(f"hooks={safe_repr(hooks)}: give a list of callables taking an Event")
            own_hooks = tuple(hooks)
            for h in own_hooks:
                if not callable(h):
                    raise TypeError(f"hooks=[..., {safe_repr(h)}, ...]: each hook must be a callable "
                                    "taking an Event")
        checked_clock(clock)
        if run_id is not None and (type(run_id) is not str or not run_id or len(run_id) > 200):
            raise TypeError(f"run_id={safe_repr(run_id)}: give a non-empty string of at most 200 characters")
        if store is not None:
            workflow.check_store(store)  # TypeError saying what to give
        if type(max_step_restarts) is not int or max_step_restarts < 0:
            raise ValueError(f"max_step_restarts={max_step_restarts!r}: give a whole number >= 0")
        if token_budget is not None and (isinstance(token_budget, bool) or not isinstance(token_budget, int)
                                         or token_budget < 1):
            raise ValueError(f"token_budget={token_budget!r}: give a whole number of tokens >= 1, or None")
        if cost_budget is not None:
            positive(cost_budget, "cost_budget")
        if type(raise_errors) is not bool:
            raise TypeError(f"raise_errors={safe_repr(raise_errors)}: give True or False")
        try:
            wf_hooks = workflow.hooks
            default_steps = workflow.max_steps
        except AttributeError:
            raise TypeError(f"{safe_repr(workflow)} is not a compiled workflow: give Workflow(...).compile()"
                            ) from None
        return (policy or first_enabled, (*wf_hooks, *own_hooks) if wf_hooks else own_hooks,
                max_steps if max_steps is not None else default_steps, timeout, max_policy_attempts,
                raise_errors, run_id or os.urandom(16).hex(), clock or _SYSTEM_CLOCK, store,
                max_step_restarts, token_budget, cost_budget, max_steps is not None)


class Run(Generic[C]):
    """One run of a compiled workflow. Drive it with ``await run.run_to_end()`` or ``async for``.

    One step at a time: a second ``step()`` while one is in progress is refused with
    :class:`~.errors.RunError` and changes nothing.
    """

    # Slots: thousands of runs may be in flight at once; no per-run __dict__ to allocate and scan.
    __slots__ = (
        "__weakref__",
        "_broken",
        "_budget_refused",
        "_busy",
        "_clock0",
        "_config",
        "_consume",
        "_deadline",
        "_delta",
        "_doomed",
        "_fields",
        "_inbox",
        "_journal",
        "_machine",
        "_max_steps_given",
        "_model_calls",
        "_owned",
        "_plans",
        "_rejected",
        "_skipped",
        "_spent",
        "_started",
        "_step_calls",
        "_store",
        "_token",
        "_trace",
        "_wait_deadline",
        "_wf_name",
        "_written",
        "actions_run",
        "clock",
        "context",
        "cost_budget",
        "hooks",
        "max_policy_attempts",
        "max_step_restarts",
        "max_steps",
        "path",
        "policy",
        "raise_errors",
        "result",
        "run_id",
        "timeout",
        "token_budget",
        "traversals",
        "visits",
        "workflow",
    )

    policy: Policy[C]
    hooks: tuple[Hook, ...]
    """The workflow's hooks, then the run's own."""
    max_steps: int
    timeout: float | None
    max_policy_attempts: int
    raise_errors: bool
    run_id: str
    clock: Clock
    """Where the run's deadline, tool timeouts, retries and rate limits read the time."""
    max_step_restarts: int
    token_budget: int | None
    """Tokens the run's model calls may use (``None``: no limit)."""
    cost_budget: float | None
    """What the run's priced model calls may cost (``None``: no limit)."""
    _store: object | None
    _max_steps_given: bool

    def __init__(self, workflow: Program[C], context: C | dict[str, Any],
                 *, policy: Policy[C] | None = None, hooks: Sequence[Hook] = (),
                 max_steps: int | None = None, timeout: float | None = None,
                 max_policy_attempts: int = 3, raise_errors: bool = True, run_id: str | None = None,
                 clock: Clock | None = None, store: object | None = None, max_step_restarts: int = 3,
                 token_budget: int | None = None, cost_budget: float | None = None) -> None:
        try:
            model = workflow.context_type
        except AttributeError:
            raise TypeError(f"{safe_repr(workflow)} is not a compiled workflow: give Workflow(...).compile()"
                            ) from None
        if type(context) is not model:  # the common case skips every check below
            if isinstance(context, dict):
                context = model.model_validate(context)
            elif not isinstance(context, model):
                raise TypeError(
                    f"workflow {workflow.name!r} runs on {model.__name__}, got {type(context).__name__}: "
                    f"pass {model.__name__}(...) or a dict of its fields"
                )
        (self.policy, self.hooks, self.max_steps, self.timeout, self.max_policy_attempts, self.raise_errors,
         self.run_id, self.clock, self._store, self.max_step_restarts, self.token_budget, self.cost_budget,
         self._max_steps_given) = RunConfig.checked(
            workflow, policy=policy, hooks=hooks, max_steps=max_steps, timeout=timeout,
            max_policy_attempts=max_policy_attempts, raise_errors=raise_errors, run_id=run_id, clock=clock,
            store=store, max_step_restarts=max_step_restarts, token_budget=token_budget, cost_budget=cost_budget)
        self._config: RunConfig[C] | None = None
        self.workflow = workflow
        self._wf_name: str = workflow.name
        # A shallow copy: the run works on its own model object. Mutable values stay shared with
        # the caller's input until the run writes them (a write in place copies the field first,
        # once per run), so nothing the caller holds is ever changed. The result keeps sharing the
        # values the run never wrote: copying them would cost their size, however little the run did.
        base = context.__copy__()  # pydantic's shallow copy, without model_copy's update handling
        self.context: C = base
        """The run's context; a failed step leaves it as the step found it."""
        self.path: list[Step] | Steps = []
        self.actions_run = 0
        self.visits: dict[str, int] = {}
        self.traversals: list[int] = [0] * len(workflow.edge_names)
        self.result: RunResult[C] | None = None
        """Set when the run has entered a terminal state."""
        self._plans = workflow.plans
        d = base.__dict__
        # Dicts of names, not sets: a dict of strings is not tracked by the garbage collector, and
        # thousands of runs may be in flight.
        written = self._written = dict.fromkeys(workflow.fields_at_start)
        """The fields some step (or the start) wrote."""
        for f in base.model_fields_set:
            v = d.get(f)
            if v is not None and not is_unset(v):
                written[f] = None
        self._owned: dict[str, None] = {}
        """Fields whose mutable value the run made or copied itself (not the caller's object)."""
        self._fields = workflow.field_names
        self._token = Token(workflow.initial, ReadOnlyContext(base), self.traversals)
        self._machine = workflow.machine
        self._deadline: float | None = None
        self._started = False
        self._busy = False
        self._rejected: list[str] = []
        self._clock0 = time.time() - time.perf_counter()
        """The wall-clock time of perf_counter's zero: a step started at ``t0`` began at ``_clock0 + t0``."""
        self._journal: Journal | None = None
        """The run's link to its store, once it is in it."""
        self._delta = _NO_DELTA
        self._doomed: str | None = None
        self._broken: str | None = None
        self._inbox: list[tuple[int, str, Any]] = _NO_INBOX
        self._skipped: frozenset[int] = _NO_SKIPS
        """Inbox events a migration dropped: never taken by this run object, though the store has them."""
        """Events delivered and not yet consumed: (seq, event, payload)."""
        self._consume: int | None = None
        """The inbox event the current step consumed (committed with it)."""
        self._wait_deadline: float | None = None
        """When the current wait state's timeout passes (wall clock, on the run's clock)."""
        self._spent: list[float] = _NO_SPENDING
        """Tokens and cost the run's model calls used so far (earlier steps included after a resume)."""
        self._budget_refused: BudgetExceeded | None = None
        """A model call the budgets refused in this step: the step fails even if its action caught it."""
        self._model_calls: list[ModelCall] = _NO_CALLS
        """The current step's model calls."""
        self._step_calls = _NO_STEP_CALLS
        """The current step's call counter, shared by its action's tools handle and its policy's."""
        self._trace: dict[str, str] | None = None
        """The run's trace context (``RunStarted.trace``), made when a hook first gets it."""

    @classmethod
    def restore(cls, workflow: Program[C], context: C, state: RunState, *, journal: Journal | None = None,
                path: Sequence[Step] = (), result: RunResult[C] | None = None, owned: bool = False,
                max_steps_given: bool | None = None, **options: Any) -> Run[C]:
        """A run rebuilt from its resumable ``state`` (what the durable operations and replay do):
        ``path`` holds the steps it took, ``journal`` links it to its store, ``result`` is set for
        a run that ended or cannot go on yet. ``owned``: ``context`` was built for this run (from
        JSON), so no caller holds its values. ``max_steps_given``: whether ``max_steps`` (in
        ``options``) is the caller's own rather than a workflow's bound (default: it is when given).
        ``options`` are those of :class:`Run`."""
        _check_restore(workflow, state, journal, result, max_steps_given)
        if journal is None and result is None and options.get("store") is not None and (path or state.actions_run):
            raise ValueError("a run that took steps cannot be restored into a store without its journal: continue "
                             "a stored run with compiled.resume(run_id, store=store)")
        run = cls(workflow, context, **options)
        if max_steps_given is not None and max_steps_given != run.config.max_steps_given:
            run.config = dataclasses.replace(run.config, max_steps_given=max_steps_given)
        run.path = path.frozen() if isinstance(path, Steps) else list(path)
        if result is not None:
            run.result = result
            return run
        run.actions_run = state.actions_run
        run.visits = dict(state.visits)
        traversals = state.traversals
        for i, name in enumerate(workflow.edge_names):
            run.traversals[i] = traversals.get(name, 0)  # in place: the run's token holds this list
        run._written = dict.fromkeys(state.written)
        if owned:
            run._owned = dict.fromkeys(workflow.field_names)
        run._token.state = state.state
        # A list given as the inbox is kept as it is (replay's inbox hands out recorded events).
        run._inbox = state.inbox if isinstance(state.inbox, list) else list(state.inbox)
        run._wait_deadline = state.wait_deadline
        run._skipped = state.skipped
        run._spent = [state.spent_tokens, state.spent_cost]
        if state.trace:
            run.trace.update(state.trace)
        run._journal = journal
        if state.restarts > run.max_step_restarts:
            run._doomed = (f"step {len(run.path)} (state {state.state!r}) was resumed after crashes "
                           f"{state.restarts} times, over max_step_restarts={run.max_step_restarts}")
        return run

    def snapshot(self) -> RunState:
        """The run's resumable state now (a value: later steps do not change it). Between steps
        only: during one, the step's visit is counted and its writes are not (``RunError``)."""
        if self._busy:
            raise RunError(f"run {self.run_id} is inside a step: take its snapshot between steps")
        names = self.workflow.edge_names
        return RunState(self._token.state, self.actions_run, dict(self.visits),
                        {names[i]: n for i, n in enumerate(self.traversals) if n}, frozenset(self._written),
                        tuple(self._inbox), self._wait_deadline, int(self._spent[0]), float(self._spent[1]),
                        skipped=self._skipped, trace=dict(self._trace or {}))

    @property
    def config(self) -> RunConfig[C]:
        """The run's options, validated (built when first asked for, from the run's own values)."""
        config = self._config
        if config is None:
            config = self._config = RunConfig(self.policy, self.hooks, self.max_steps, self.timeout,
                                              self.max_policy_attempts, self.raise_errors, self.run_id, self.clock,
                                              self._store, self.max_step_restarts, self.token_budget,
                                              self.cost_budget, self._max_steps_given)
        return config

    @config.setter
    def config(self, config: RunConfig[C]) -> None:
        self._config = config
        self._max_steps_given = config.max_steps_given

    @property
    def trace(self) -> dict[str, str]:
        """The run's trace context, carried across its attempts: what a tracing hook put in
        ``RunStarted.trace`` (a store keeps it with the run's record). Empty when none did."""
        found = self._trace
        if found is None:
            found = self._trace = {}
        return found

    @property
    def written(self) -> frozenset[str]:
        """The fields some step (or the start) wrote."""
        return frozenset(self._written)

    @property
    def workflow_name(self) -> str:
        """The name of the workflow this run belongs to."""
        return self.workflow.name

    @property
    def state(self) -> str:
        """The current state, as the workflow's ``transitions`` machine holds it for this run."""
        return self._token.state

    # --- driving ---------------------------------------------------------------------------------
    def run_to_end(self) -> Coroutine[Any, Any, RunResult[C]]:
        """Run until a terminal state and return the result: ``await run.run_to_end()`` (one coroutine
        for the whole run; a run that waits for an event returns its waiting result)."""
        coro: Coroutine[Any, Any, RunResult[C]] = self._step(many=True)
        return coro

    async def __aiter__(self) -> AsyncIterator[Step]:
        while self.result is None:
            yield await self.step()

    @property
    def done(self) -> bool:
        """The run has ended."""
        return self.result is not None

    async def step(self) -> Step:
        """Run one step: the current state's action, then one declared transition."""
        if self._busy:
            raise RunError(f"run {self.run_id} is already running a step: await it before asking for "
                           "the next one (one step at a time per run)")
        if self.result is not None:
            if self.result.waiting is not None:
                raise RunError(f"run {self.run_id} is waiting in {self.result.terminal!r} for event "
                               f"{self.result.waiting!r}: deliver it (run.deliver(...), or compiled.deliver(..., "
                               "store=store) for a stored run)")
            raise RunError(f"run {self.run_id} has already ended in {self.result.terminal!r}")
        self._busy = True
        try:
            if self._started and self._plans[self._token.state].wait is not None and await self._settle_wait():
                waiting = self.result.waiting if self.result is not None else None
                raise RunError(f"run {self.run_id} is waiting for event {waiting!r}: deliver it")
            step: Step = await self._step()
            return step
        finally:
            self._busy = False

    async def _settle_wait(self) -> bool:
        """Pause again in the current wait state if it has nothing to take: what was interrupted
        (a cancel while the run was being stored as waiting, or in a hook after that commit) left
        the run in the state without its pause. Without this the next step would time the wait out
        at once. Whether the run now waits."""
        plan = self._plans[self._token.state]
        if plan.wait is None or plan.terminal or self._ready(plan):
            return False
        await self._suspend(plan)
        return self.result is not None

    async def _step(self, many: bool = False) -> Any:
        """One step: its Step. With ``many``, what ``run_to_end`` does: steps until the run ends or
        waits, and returns its result; the common steps run in this one coroutine (the only one a run
        in flight holds: thousands may be)."""
        if many:
            if self._busy:
                raise RunError(f"run {self.run_id} is already running a step: await it before asking for "
                               "the next one (one step at a time per run)")
            self._busy = True
        try:
            if many:
                if not self._started and self.result is None:
                    if self._broken is not None:
                        raise RunError(self._broken)
                    await self._start()
                    if self._doomed is not None and self.result is None:
                        await self._fail_doomed()
                elif self.result is None and self._plans[self._token.state].wait is not None:
                    await self._settle_wait()
                if self.result is not None:
                    return self.result
            # Fixed for the run: read once here, not twice a step (the events of a hooked step).
            run_id, wf_name, hooks = self.run_id, self._wf_name, self.hooks
            hook = hooks[0] if len(hooks) == 1 else None
            while True:
                if not self._started:
                    if self._broken is not None:
                        raise RunError(self._broken)
                    await self._start()
                    if self.result is not None:  # an initial wait state with nothing delivered yet
                        raise RunError(f"run {self.run_id} is waiting for event {self.result.waiting!r}: deliver it")
                    if self._doomed is not None:
                        return self._ended(many, await self._fail_doomed())
                plan = self._plans[self._token.state]
                index = len(self.path)
                t0 = time.perf_counter()
                name = plan.name
                self._rejected = _NO_REJECTIONS
                self._model_calls = _NO_CALLS
                self._budget_refused = None
                visits = self.visits.get(name, 0)
                # The specific budget first: when the default max_steps (the static bound) runs out, a
                # visit budget is usually the real cause, and naming it says which loop to look at.
                if plan.max_visits is not None and visits >= plan.max_visits:
                    return self._ended(many, await self._fail(
                        plan, index, t0, f"visits of {name!r} reached {plan.max_visits}", budget=Budget.MAX_VISITS,
                        ran=False))
                if self.actions_run >= self.max_steps:
                    return self._ended(many, await self._fail(
                        plan, index, t0, f"max_steps of {self.max_steps} reached before state {name!r}",
                        budget=Budget.MAX_STEPS, ran=False))
                deadline = self._deadline
                if deadline is not None and self.clock.now() >= deadline:
                    return self._ended(many, await self._fail(
                        plan, index, t0, f"deadline of {self.timeout} s passed before state {name!r}",
                        budget=Budget.DEADLINE, ran=False))
                if (self.token_budget is not None or self.cost_budget is not None) and (over := self._over_budget()):
                    return self._ended(many, await self._fail(
                        plan, index, t0, f"{over[1]} before state {name!r}", budget=over[0], ran=False))
                self.visits[name] = visits + 1
                self.actions_run += 1
                view = _new_view(ContextView)
                _set_view_dict(view, "__dict__", {"_sa_model": self.context, "_sa_plan": plan,
                                                  "_sa_written": self._written, "_sa_fields": self._fields,
                                                  "_sa_owned": self._owned})
                if self._journal is not None:
                    view._sa_record_ops()  # a durable step stores what it changed in place as ops
                chosen: Exit | None
                try:
                    if deadline is not None:
                        scope = self.clock.timeout_at(deadline)
                        try:
                            async with scope:
                                try:
                                    chosen = await self._act_and_choose(plan, view, index)
                                except TimeoutError as own:
                                    # Raised inside the block, so it is the action's own, not our
                                    # deadline's (which surfaces only when the block exits).
                                    raise _ActionTimeout from own
                        except TimeoutError:
                            if not scope.expired():
                                raise
                            raise _Failed(f"deadline of {self.timeout} s passed in state {name!r}",
                                          budget=Budget.DEADLINE) from None
                    elif plan.slow:
                        chosen = await self._act_and_choose(plan, view, index)
                    else:  # the common case, inline: no extra coroutine, no extra call
                        if hooks:
                            event: Event = _tnew(StepStarted, (run_id, wf_name, index, name, visits + 1))
                            if hook is not None:  # _notify(event), inlined for the common single hook
                                try:
                                    out = hook(event)
                                except Exception as exc:  # observability must never break the agent
                                    self._hook_failed(hook, event, exc)
                                    out = None
                                if out is not None and _awaitable(out):
                                    await self._emit_from(event, 0, out)
                            elif (pending := self._notify(event)) is not None:
                                await pending
                        out = plan.action(view)  # type: ignore[misc]
                        if out is not None and (type(out) is _COROUTINE or _awaitable(out)):
                            await out
                        if plan.writes and not plan.writes <= (view._sa_dirty or _EMPTY):
                            self._missing_write(plan, view)
                        # The exits' conditions (Exit.__call__), inlined: the first whose guard holds.
                        readonly = self._token.context
                        for chosen in plan.exits:
                            g = chosen.guard
                            if g is None or g(readonly):
                                break
                        else:
                            chosen = plan.default
                except BaseException as exc:
                    view._sa_rollback()
                    view._sa_close()
                    if not isinstance(exc, Exception):
                        # Cancellation and interruption are never routed. The step did not happen: its
                        # writes are undone above and its visit is not counted, so the run can go on.
                        self.visits[name] = visits
                        self.actions_run -= 1
                        raise
                    if isinstance(exc, _Failed):
                        return self._ended(many, await self._fail(plan, index, t0, exc.reason, budget=exc.budget))
                    if isinstance(exc, BudgetExceeded):
                        return self._ended(many, await self._fail(
                            plan, index, t0, f"state {name!r}: {exc}", budget=Budget(exc.budget)))
                    if isinstance(exc, ContextAccessError):
                        return self._ended(many, await self._fail(plan, index, t0, str(exc), error=exc, loud=True))
                    if isinstance(exc, _ActionTimeout) and isinstance(exc.__cause__, Exception):
                        exc = exc.__cause__
                    step = await self._route(plan, index, t0, exc)
                    if many and self.result is None:
                        continue  # routed to a state that goes on
                    return self._ended(many, step)
                view.__dict__["_sa_plan"] = None  # view._sa_close(): the view and its proxies refuse any further use
                if chosen is None:
                    view._sa_rollback()  # the step cannot move: it failed, and leaves nothing behind
                    return self._ended(many, await self._fail(
                        plan, index, t0, f"no exit of state {name!r} was enabled"))
                bound = chosen.bound
                if bound is not None and self.traversals[chosen.key] >= bound:
                    view._sa_rollback()
                    return self._ended(many, await self._fail(
                        plan, index, t0, f"traversals of {chosen.name!r} reached {bound}",
                        budget=Budget.MAX_TRAVERSALS))
                # The step succeeded: its writes stand; now move.
                dirty: set[str] | None = view.__dict__.get("_sa_dirty")
                journal = self._journal
                if journal is not None:
                    try:
                        self._delta = journal.delta(self.context, dirty or (), view._sa_ops)
                    except TypeError as exc:
                        view._sa_rollback()
                        return self._ended(many, await self._fail(plan, index, t0, f"state {name!r}: {exc}"))
                if dirty:
                    written, owned = self._written, self._owned
                    for f in dirty:
                        written[f] = owned[f] = None
                chosen.fire(self._token)
                self.traversals[chosen.key] += 1
                rejected, calls = self._rejected, self._model_calls
                t1 = time.perf_counter()
                # Step(...) without its Python __new__: every field given, in order.
                step = _tnew(Step, (index, name, chosen.target, chosen.name, _TRANSITION,
                                          self._clock0 + t0, t1 - t0, None,
                                          tuple(rejected) if rejected else (), True,
                                          (tuple(sorted(dirty)) if len(dirty) > 1 else tuple(dirty)) if dirty else (),
                                          tuple(calls) if calls else ()))
                self.path.append(step)
                dirty = None  # with many, this frame lives on to the next step: it keeps nothing of this one
                if chosen.stops or journal is not None or log.isEnabledFor(logging.DEBUG):
                    await self._after(step)
                elif hooks:  # what _after does for such a step: report it
                    event = _tnew(TransitionTaken, (run_id, wf_name, index, name, chosen.target, chosen.name,
                                                    _TRANSITION, t1 - t0))
                    if hook is not None:  # _notify(event), inlined for the common single hook
                        try:
                            out = hook(event)
                        except Exception as exc:  # observability must never break the agent
                            self._hook_failed(hook, event, exc)
                            out = None
                        if out is not None and _awaitable(out):
                            await self._emit_from(event, 0, out)
                    elif (pending := self._notify(event)) is not None:
                        await pending
                if not many or self.result is not None:
                    return self._ended(many, step)
        finally:
            if many:
                self._busy = False

    def _ended(self, many: bool, step: Step) -> Any:
        """What _step returns after ``step``: the step, or with ``many`` the run's result."""
        return self.result if many else step

    # --- pieces of a step ------------------------------------------------------------------------
    async def _start(self) -> None:
        if self._store is not None and self._journal is None:
            self._journal = await self.workflow.open_journal(self, self._store)  # RunExists: nothing started
        self._started = True
        if self.timeout is not None:
            self._deadline = self.clock.now() + self.timeout
        first = self._plans[self._token.state]
        waits = first.wait is not None and not self._ready(first)
        journal = self._journal
        if journal is not None and journal.unmarked and not waits and self.result is None:
            await journal.mark_started()  # the claimer starts the step: a crash from here on is a restart
        if self.hooks:
            wf = self.workflow
            # The start, copied deeply when a hook reads it. A run that owns values (restored from
            # a store) changes them in place: their copy is made now.
            start = StartCopy(self.context.__copy__())
            if self._owned:
                start.get()
            await self._emit(_tnew(RunStarted, (self.run_id, wf.name, wf.initial, start, self.max_steps, self.trace)))
        if waits:
            # After RunStarted: the hooks see the run start before it waits, and what a tracing hook
            # put in its trace context is stored with the wait (a later attempt links to it).
            await self._suspend(first)
            if journal is not None and journal.unmarked and self.result is None:
                await journal.mark_started()  # the event was there already: the run goes on

    def _wall(self, t: float) -> float:
        return self._clock0 + t

    def _missing_write(self, plan: Plan, view: ContextView) -> None:
        dirty = view._sa_dirty or _EMPTY
        missing = sorted(plan.writes - dirty)
        field = missing[0]
        raise MissingWrite(
            plan.name, field,
            f"state {plan.name!r} ended without writing {_q(missing)}, which it declares in "
            f"writes=[...]: write {'it' if len(missing) == 1 else 'them'} on every successful visit, "
            f"or declare {'it' if len(missing) == 1 else 'them'} in optional_writes=[...] (then no "
            "later state may rely on it)",
        )

    async def _act_and_choose(self, plan: Plan, view: ContextView, index: int) -> Exit | None:
        if self.hooks:
            pending = self._notify(_tnew(StepStarted, (self.run_id, self.workflow.name, index, plan.name,
                                                       self.visits[plan.name])))
            if pending is not None:
                await pending
        action = plan.action
        assert action is not None
        if plan.wait is not None:
            self._receive(plan, view)
            action = _NOTHING
        calls = self._step_calls = [0]
        if plan.takes_tools:
            deadline = None if plan.tool_deadline is None else self.clock.now() + plan.tool_deadline
            out = action(view, Tools(self.workflow.tools, plan.tools, clock=self.clock, deadline=deadline,
                                     run=self, state=plan.name, step=index, _calls=calls))
        else:
            out = action(view)
        if out is not None and _awaitable(out):
            await out
        if self._budget_refused is not None:  # refused for the budget; the action caught it
            raise self._budget_refused
        if self._model_calls and (over := self._over_budget()):  # the action may have caught it
            raise BudgetExceeded(over[0], over[1])
        if plan.writes and not plan.writes <= (view._sa_dirty or _EMPTY):
            self._missing_write(plan, view)
        token = self._token
        if not plan.decision:
            for x in plan.exits:
                if x(token):
                    return x
            return plan.default
        # An exit whose traversal budget is spent is not enabled: the policy never sees it.
        enabled = [x for x in plan.exits if x.enabled(token)]
        if not enabled:
            return plan.default
        if len(enabled) == 1:
            return enabled[0]
        return await self._ask_policy(plan, enabled, index)

    async def _ask_policy(self, plan: Plan, enabled: list[Exit], index: int) -> Exit:
        options = tuple(Option(x.name, x.target, x.spec.description) for x in enabled)
        rejected = self._rejected = []
        readonly: Any = self._token.context
        site = Tools(self.workflow.tools, _EMPTY, clock=self.clock, run=self, state=plan.name, step=index,
                     _calls=self._step_calls)
        reads = tuple(sorted(plan.reads | plan.optional_reads))
        if self.hooks:
            await self._emit(DecisionOffered(self.run_id, self.workflow.name, index, plan.name,
                                             tuple(o.name for o in options)))
        for attempt in range(1, self.max_policy_attempts + 1):
            decision: Decision[C] = Decision(self.workflow.name, plan.name, readonly, options, attempt,
                                             tuple(rejected), index, self.run_id, reads, plan.spec.description, site)
            answer: Any = self.policy(decision)  # an exception here is the policy's own error
            if _awaitable(answer):
                answer = await answer
            if self._budget_refused is not None:
                raise self._budget_refused
            if self._model_calls and (over := self._over_budget()):
                raise BudgetExceeded(over[0], over[1])
            option, why = resolve(answer, options)
            if option is not None:
                return enabled[options.index(option)]
            rejected.append(why)
            log.warning("policy answer rejected in %r: %s", plan.name, why,
                        extra={"workflow": self.workflow.name, "run_id": self.run_id,
                               "state": plan.name, "attempt": attempt})
            if self.hooks:
                await self._emit(PolicyChoiceRejected(self.run_id, self.workflow.name, index, plan.name,
                                                      answer, why, attempt))
        raise _Failed(f"the policy gave no valid choice in state {plan.name!r} after "
                      f"{self.max_policy_attempts} attempts; last: {rejected[-1]}")

    async def _route(self, plan: Plan, index: int, t0: float, exc: Exception) -> Step:
        route = _most_specific(plan.errors, exc)
        if route is None:
            return await self._fail(
                plan, index, t0,
                f"state {plan.name!r} raised {type(exc).__name__}: {safe_repr(exc, str)}; no error "
                "transition routes it",
                error=exc, loud=True,
            )
        bound = route.bound
        if bound is not None and self.traversals[route.key] >= bound:
            return await self._fail(plan, index, t0, f"traversals of {route.spec.name!r} reached {bound}",
                                    budget=Budget.MAX_TRAVERSALS, error=exc)
        target = route.spec.target
        self._machine.events[route.spec.name].trigger(self._token)
        self.traversals[route.key] += 1
        if self.hooks:
            await self._emit(ErrorRouted(self.run_id, self.workflow.name, index, plan.name, exc, target))
        step = Step(index, plan.name, target, route.spec.name, StepKind.ERROR, self._wall(t0),
                    time.perf_counter() - t0, exc, tuple(self._rejected), True, (), tuple(self._model_calls))
        self.path.append(step)
        await self._after(step)
        return step

    async def _fail(self, plan: Plan, index: int, t0: float, reason: str, *, budget: Budget | None = None,
                    error: Exception | None = None, ran: bool = True, loud: bool = False) -> Step:
        wf = self.workflow
        target = wf.failure_terminal
        log.warning("%s: run %s fails in state %r: %s", wf.name, self.run_id, plan.name, reason,
                    extra={"workflow": wf.name, "run_id": self.run_id, "state": plan.name,
                           "step": index, "budget": budget, "reason": reason})
        if budget is not None and self.hooks:
            await self._emit(BudgetExhausted(self.run_id, wf.name, index, plan.name, budget, reason))
        self._machine.events[_FAIL].trigger(self._token)
        step = Step(index, plan.name, target, "fail", StepKind.FAIL, self._wall(t0),
                    time.perf_counter() - t0, error, tuple(self._rejected), ran, (), tuple(self._model_calls))
        self.path.append(step)
        await self._after(step, reason=reason, error=error)
        if loud and error is not None and self.raise_errors:
            _attach(error, self.result, reason)
            raise error
        return step

    async def _after(self, step: Step, *, reason: str | None = None,
                     error: BaseException | None = None) -> None:
        """Commit (with a store), log and report a recorded step; end the run when it entered a
        terminal state."""
        wf = self.workflow
        plan = self._plans[step.target]
        outcome = plan.outcome or Outcome.FAILURE
        if plan.terminal and outcome is Outcome.FAILURE and reason is None:
            reason = (f"state {step.state!r} raised {type(step.error).__name__}: "
                      f"{safe_repr(step.error, str)}; routed to {step.target!r}" if step.error is not None
                      else f"reached failure terminal {step.target!r} from {step.state!r}")
        # A step into a wait state with nothing to take yet stores the run as waiting in its own
        # commit, where the store also re-reads the inbox: an event delivered while the step ran
        # is taken now, never left behind a run that sleeps.
        waits = not plan.terminal and plan.wait is not None and not self._ready(plan)
        if self._journal is not None:
            found = await self._commit(step, reason, plan if waits else None)
            if found:
                self._take(found)
                waits = not self._ready(plan)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: step %d %s -> %s", wf.name, step.number, step.state, step.target,
                      extra={"workflow": wf.name, "run_id": self.run_id, "step": step.number,
                             "state": step.state, "target": step.target, "transition": step.transition,
                             "kind": step.kind, "duration": step.duration})
        if hooks := self.hooks:
            event: Event = _tnew(TransitionTaken, (self.run_id, wf.name, step.number, step.state, step.target,
                                                   step.transition, step.kind, step.duration))
            if len(hooks) == 1:  # _notify(event), inlined for the common single hook
                try:
                    out = hooks[0](event)
                except Exception as exc:  # observability must never break the agent
                    self._hook_failed(hooks[0], event, exc)
                    out = None
                if out is not None and _awaitable(out):
                    await self._emit_from(event, 0, out)
            elif (pending := self._notify(event)) is not None:
                await pending
        if not plan.terminal:
            if waits:
                await self._waiting(plan)
            return
        self.result = RunResult(wf.name, self.run_id, step.target, outcome, self.context,
                                _frozen(self.path), reason, error, wf)
        if outcome is Outcome.FAILURE and step.kind is not StepKind.FAIL:
            log.warning("%s: run %s ended in failure terminal %r: %s", wf.name, self.run_id,
                        step.target, reason,
                        extra={"workflow": wf.name, "run_id": self.run_id, "terminal": step.target})
        if self.hooks:
            await self._emit(_tnew(RunFinished, (self.run_id, wf.name, self.result)))

    async def _fail_doomed(self) -> Step:
        reason = self._doomed
        assert reason is not None
        self._doomed = None
        plan = self._plans[self._token.state]
        return await self._fail(plan, len(self.path), time.perf_counter(), reason, budget=Budget.MAX_STEP_RESTARTS,
                                ran=False)

    # --- model calls -----------------------------------------------------------------------------------
    async def _model_call(self, call: ModelCall, step: int, state: str) -> None:
        """Record a model call of the current step (see ``Tools.record_model_call``); raise
        :class:`BudgetExceeded` when it took the run past a budget."""
        calls = self._model_calls
        if calls is _NO_CALLS:
            calls = self._model_calls = []
        # What was said goes to the hooks only: the step (and so the result and the store) keeps the record.
        calls.append(call if call.content is None else dataclasses.replace(call, content=None))
        spent = self._spent
        if spent is _NO_SPENDING:
            spent = self._spent = [0, 0.0]
        spent[0] += call.input_tokens + call.output_tokens
        if call.cost is not None:
            spent[1] += call.cost
        if self.hooks:
            await self._emit(ModelCalled(self.run_id, self.workflow.name, step, state, call))
        over = self._over_budget()
        if over is not None:
            raise BudgetExceeded(over[0], over[1])

    def _budget_room(self) -> None:
        """Raise :class:`BudgetExceeded` when no model call fits in the run's budgets any more."""
        tokens, cost = self._spent
        refused = None
        if self.token_budget is not None and tokens >= self.token_budget:
            refused = BudgetExceeded(Budget.TOKENS, f"the token budget of {self.token_budget} is spent "
                                     f"({tokens} used): no further model call is made")
        elif self.cost_budget is not None and cost >= self.cost_budget:
            refused = BudgetExceeded(Budget.COST, f"the cost budget of {self.cost_budget} is spent "
                                     f"({cost:.6g} used): no further model call is made")
        if refused is not None:
            self._budget_refused = refused
            raise refused

    def _over_budget(self) -> tuple[Budget, str] | None:
        tokens, cost = self._spent
        if self.token_budget is not None and tokens > self.token_budget:
            return Budget.TOKENS, f"model calls used {tokens} tokens, over the token budget of {self.token_budget}"
        if self.cost_budget is not None and cost > self.cost_budget:
            return Budget.COST, f"model calls cost {cost:.6g}, over the cost budget of {self.cost_budget}"
        return None

    # --- waits ---------------------------------------------------------------------------------------
    def _wall_now(self) -> float:
        return wall_time(self.clock)

    def _ready(self, plan: Plan) -> bool:
        """Whether a wait state can run now: its event is in the inbox, or its timeout passed."""
        wait = plan.wait
        assert wait is not None
        if any(event == wait.event for _, event, _ in self._inbox):
            return True
        if wait.timeout is None:
            return False
        if self._wait_deadline is None:  # the run just entered the state: its timeout starts now
            self._wait_deadline = self._wall_now() + wait.timeout
        return self._wall_now() >= self._wait_deadline

    async def _suspend(self, plan: Plan) -> None:
        """Pause in the wait state ``plan`` (committed as waiting, with a store), unless the store
        finds its event delivered meanwhile."""
        wait = plan.wait
        assert wait is not None
        if self._journal is not None:
            found = await self._journal.suspend(self, plan.name, wait.event, self._wait_deadline)
            if found:
                self._take(found)
                if self._ready(plan):
                    return
        await self._waiting(plan)

    def _take(self, events: list[tuple[int, str, Any]]) -> None:
        """Add events the store found in the inbox (by sequence number, each once)."""
        known = {seq for seq, _, _ in self._inbox} | self._skipped
        if self._inbox is _NO_INBOX:
            self._inbox = []
        self._inbox.extend(e for e in events if e[0] not in known)

    async def _waiting(self, plan: Plan) -> None:
        wait = plan.wait
        assert wait is not None
        self.result = RunResult(self.workflow.name, self.run_id, plan.name, Outcome.WAITING, self.context,
                                _frozen(self.path), f"waiting in {plan.name!r} for event {wait.event!r}", None,
                                self.workflow, wait.event)
        if self.hooks:
            await self._emit(RunWaiting(self.run_id, self.workflow.name, plan.name, wait.event,
                                        self._wait_deadline))

    def _receive(self, plan: Plan, view: ContextView) -> None:
        """A wait state's action: write the first delivered payload of its event, or time out."""
        wait = plan.wait
        assert wait is not None
        assert plan.wait_field is not None
        for i, (seq, event, payload) in enumerate(self._inbox):
            if event == wait.event:
                value = wait.payload.model_validate(payload)
                setattr(view, plan.wait_field, value)
                del self._inbox[i]
                self._consume = seq
                self._wait_deadline = None
                return
        self._wait_deadline = None
        raise WaitTimedOut(plan.name, wait.event)

    def wake(self) -> bool:
        """Un-pause this in-memory run if its wait's timeout has passed on its clock, so that its next
        step takes the wait's timeout transition; whether it did. ``False``: the run is not paused at a
        wait, or its deadline has not passed yet (advance the clock first, e.g. ``FakeClock.advance``).
        A stored run is woken by ``compiled.wake_due(store)``, which commits what it does."""
        if self._journal is not None:
            raise RunError(f"run {self.run_id!r} is stored: wake it with compiled.wake_due(store), so the "
                           "timeout is committed")
        result = self.result
        if result is None or result.waiting is None:
            return False
        plan = self._plans[self._token.state]
        if plan.wait is None or not self._ready(plan):
            return False
        self.result = None
        return True

    def deliver(self, event: str, payload: Any) -> None:
        """Deliver ``event`` to this run (in memory; for a stored run use ``compiled.deliver``).

        It waits in the run's inbox until the run's wait state for it consumes it, exactly once; a
        run paused for it continues on the next ``run_to_end()``.
        """
        if self._journal is not None:
            raise RunError(f"run {self.run_id!r} is stored: deliver with compiled.deliver({self.run_id!r}, "
                           f"{event!r}, payload, store=store), so the event is committed")
        waits = {p.wait.event: p.wait for p in self._plans.values() if p.wait is not None}
        wait = waits.get(event) if isinstance(event, str) else None
        if wait is None:
            known = ", ".join(repr(e) for e in sorted(waits)) or "none"
            raise ValueError(f"workflow {self.workflow.name!r} waits for no event {event!r}; its events: {known}")
        value = wait.payload.model_validate(payload)
        if self._inbox is _NO_INBOX:
            self._inbox = []
        self._inbox.append((next(_local_seq), event, value))
        result = self.result
        if result is not None and result.waiting == event:
            self.result = None

    async def _commit(self, step: Step, reason: str | None, wait: Plan | None = None) -> list[tuple[int, str, Any]]:
        journal = self._journal
        assert journal is not None
        delta, self._delta = self._delta, _NO_DELTA
        consume, self._consume = self._consume, None
        waits = None if wait is None or wait.wait is None else (wait.name, wait.wait.event, self._wait_deadline)
        try:
            return await journal.commit(self, step, reason, waits, delta=delta, consume=consume)
        except BaseException as exc:
            # The step was taken in memory but may not be in the store: this object can no longer
            # say where the run is. Whatever the store holds is the truth: resume from it.
            self._broken = (f"run {self.run_id!r} stopped while committing step {step.number} "
                            f"({type(exc).__name__}); continue it from the store: "
                            f"await compiled.resume({self.run_id!r}, store=store)")
            self._started = False  # the next step() raises the above
            raise

    def _notify(self, event: Event) -> Coroutine[Any, Any, None] | None:
        """Call the hooks with ``event``, in order: ``None`` when every one returned, else a
        coroutine that awaits the first awaitable a hook returned and calls the hooks after it (no
        coroutine is made while the hooks are plain functions: the common, cheap case)."""
        hooks = self.hooks
        for i in range(len(hooks)):
            hook = hooks[i]
            try:
                out = hook(event)
            except Exception as exc:  # observability must never break the agent
                self._hook_failed(hook, event, exc)
                continue
            if out is not None and _awaitable(out):
                return self._emit_from(event, i, out)
        return None

    async def _emit_from(self, event: Event, i: int, out: Awaitable[Any]) -> None:
        """Await hook ``i``'s ``out``, then call the hooks after it, awaiting each in turn."""
        hooks = self.hooks
        deadline = self._deadline
        while True:
            try:
                if deadline is None:
                    await out
                else:
                    # Hooks run inside the run's deadline: one still busy when it passes is
                    # cancelled (an async hook that finishes without waiting always runs).
                    async with self.clock.timeout_at(deadline):
                        await out
            except Exception as exc:  # observability must never break the agent
                self._hook_failed(hooks[i], event, exc)
            while True:
                i += 1
                if i >= len(hooks):
                    return
                try:
                    found = hooks[i](event)
                except Exception as exc:
                    self._hook_failed(hooks[i], event, exc)
                    continue
                if found is not None and _awaitable(found):
                    out = found
                    break

    def _hook_failed(self, hook: Hook, event: Event, exc: Exception) -> None:
        if isinstance(exc, TimeoutError):
            log.warning("hook %s was cut by the run's deadline on %s", safe_repr(hook), type(event).__name__,
                        extra={"workflow": self.workflow.name, "run_id": self.run_id})
        else:
            log.exception("hook %s failed on %s", safe_repr(hook), type(event).__name__,
                          extra={"workflow": self.workflow.name, "run_id": self.run_id}, exc_info=exc)

    async def _emit(self, event: Event) -> None:
        pending = self._notify(event)
        if pending is not None:
            await pending

    # --- what a tools handle uses (tools.StepHost): public names for the methods above -----------
    @property
    def journal(self) -> Journal | None:
        """The run's link to its store (``None``: the run is not stored)."""
        return self._journal

    emit = _emit
    check_budget = _budget_room
    record_model_call = _model_call


_EMPTY: frozenset[str] = frozenset()
_TRANSITION = StepKind.TRANSITION
_new_view = object.__new__
_tnew = tuple.__new__  # an event built in one call (events.py)
_COROUTINE = types.CoroutineType
_set_view_dict = object.__setattr__
_MAX_COUNT = 2**53
"""The largest step budget (and counter) a store keeps: a JSON number exact as a float."""
_NO_SKIPS: frozenset[int] = frozenset()
_local_seq = itertools.count(1)  # in-memory inbox events (a store numbers its own)


def _NOTHING(*_: Any) -> None:
    return None


_NO_REJECTIONS: list[str] = []  # shared and never appended to: _ask_policy makes its own list
_NO_CALLS: list[ModelCall] = []  # likewise: _model_call makes the step's own list
_NO_INBOX: list[tuple[int, str, Any]] = []  # likewise: deliver and _take make the run's own list
_NO_SPENDING: list[float] = [0, 0.0]  # likewise: _model_call makes the run's own [tokens, cost]
_NO_STEP_CALLS: list[int] = [0]  # likewise: _act_and_choose makes each step's own counter
_FAIL = "@fail"
_SYSTEM_CLOCK = SystemClock()


def checked_clock(clock: object) -> Clock | None:
    """``clock`` if it is a :class:`~.clock.Clock` (or ``None``); ``TypeError`` saying what one has."""
    if clock is not None and not isinstance(clock, Clock):
        raise TypeError(f"clock={safe_repr(clock)} has no now(), wall(), async sleep() and timeout_at(): "
                        "give a statemachine_agent.clock.Clock such as FakeClock()")
    return clock


def _check_restore(workflow: Program[Any], state: object, journal: object, result: object,
                   max_steps_given: object) -> None:
    """What Run.restore is given, checked up front: ``TypeError``/``ValueError`` naming the field."""
    if not isinstance(state, RunState):
        raise TypeError(f"state={safe_repr(state)}: give a RunState (run.snapshot(), or RunState(state_name, ...))")
    if max_steps_given is not None and type(max_steps_given) is not bool:
        raise TypeError(f"max_steps_given={safe_repr(max_steps_given)}: give True, False or None")
    if journal is not None and not isinstance(journal, Journal):
        raise TypeError(f"journal={safe_repr(journal)} is not a journal (statemachine_agent.protocols.Journal)")
    plans = workflow.plans
    plan = plans.get(state.state) if isinstance(state.state, str) else None
    if plan is None or (plan.terminal and result is None):
        raise ValueError(f"RunState.state={safe_repr(state.state)}: give a state of workflow {workflow.name!r} that "
                         "is not terminal (a run that ended is restored with result=)")

    def count(name: str, value: object) -> None:
        if type(value) is not int or not 0 <= value <= _MAX_COUNT:
            raise ValueError(f"RunState.{name}={safe_repr(value)}: give a whole number from 0")

    for name in ("actions_run", "restarts", "spent_tokens"):
        count(name, getattr(state, name))
    for name in ("visits", "traversals"):
        value = getattr(state, name)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"RunState.{name}={safe_repr(value)}: give a dict of names to counts")
        for k, n in value.items():
            count(f"{name}[{k!r}]", n)
    cost = state.spent_cost
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < math.inf:
        raise ValueError(f"RunState.spent_cost={safe_repr(cost)}: give a finite cost from 0")
    if not isinstance(state.written, (set, frozenset)) or not all(isinstance(f, str) for f in state.written):
        raise ValueError(f"RunState.written={safe_repr(state.written)}: give a frozenset of field names")
    deadline = state.wait_deadline
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                 or not math.isfinite(deadline)):
        raise ValueError(f"RunState.wait_deadline={safe_repr(deadline)}: give a wall-clock time, or None")
    inbox = state.inbox
    plain = type(inbox) in (list, tuple)  # a list of its own (replay's) hands out events as it is read
    if not isinstance(inbox, (list, tuple)) or (plain and not all(
            isinstance(e, tuple) and len(e) == 3 and type(e[0]) is int and isinstance(e[1], str) for e in inbox)):
        raise ValueError(f"RunState.inbox={safe_repr(inbox)}: give (seq, event, payload) triples")


def _q(names: Sequence[str]) -> str:
    items = [repr(n) for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _awaitable(value: object) -> TypeGuard[Awaitable[Any]]:
    """Whether to await ``value``; decided from its type only, so a hostile ``__class__`` or
    ``__getattr__`` on the value cannot raise here."""
    kind = type(value)
    return kind is types.CoroutineType or (kind is not str and issubclass(kind, collections.abc.Awaitable))


def _attach(error: BaseException, result: RunResult[Any] | None, reason: str) -> None:
    """Let the caller find the recorded run on the re-raised exception (``result_of(error)``)."""
    with contextlib.suppress(Exception):  # an exception with __slots__ cannot carry it; the note can
        setattr(error, RESULT_ATTR, result)
    if result is not None:
        with contextlib.suppress(Exception):
            error.add_note(f"statemachine-agent: run {result.run_id} of workflow {result.workflow!r} "
                           f"ended in {result.terminal!r} ({reason})")


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


# --- running from synchronous code -------------------------------------------------------------
class _LoopHolder(threading.local):
    """One event loop per thread, kept between ``run_sync`` calls (a new loop per call costs more
    than a short run); closed when its thread ends."""

    loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self.loop
        if loop is None or loop.is_closed():
            loop = self.loop = asyncio.new_event_loop()
        return loop

    def __del__(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.close()


_loops = _LoopHolder()


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code; refuse clearly inside a running loop.

    Unlike ``asyncio.run``, it neither joins threads that timed-out sync tools left running (they
    are abandoned, as the tools' timeout promises) nor builds a loop per call; like it, it cancels
    whatever the run left behind before returning, so nothing leaks into the next call.
    """
    if asyncio.events._get_running_loop() is not None:  # get_running_loop() without its exception
        coro.close()
        raise RunError(
            "run_sync() was called while an event loop is running in this thread (async code, Jupyter): "
            "use `await workflow.run(context)` there instead"
        )
    loop = _loops.get()
    try:
        return loop.run_until_complete(coro)
    finally:
        _cleanup(loop)


def _cleanup(loop: asyncio.AbstractEventLoop) -> None:
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if left:
        for t in left:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    executor = getattr(loop, "_default_executor", None)
    if executor is not None:
        # Threads still running belong to abandoned sync tools: let them finish on their own, and
        # give the next call a fresh pool, so that they never starve it.
        loop._default_executor = None  # type: ignore[attr-defined]
        executor.shutdown(wait=False)
