"""Tools: typed, validated, time-bounded, retried (with tenacity) and callable in parallel."""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import time
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from tenacity import RetryCallState, retry_base

from ._journal import Journal
from ._tooldef import (
    KEY_PARAMETER,
    NOT_GIVEN,
    Effect,
    Retry,
    RetrySpec,
    Tool,
    ToolRegistry,
    as_retrying,
    declared_tool_calls,
    positive,
)
from .clock import Clock, SystemClock
from .errors import (
    GatherFailed,
    TimeoutScope,
    ToolArgumentError,
    ToolFailed,
    ToolTimeout,
    UndeclaredTool,
    UnknownTool,
)
from .events import Event, ToolAttemptFailed, ToolCallFailed, ToolCallFinished, ToolCallStarted


class StepHost(Protocol):
    """What a tools handle needs of the run whose step it serves (a ``Run`` is one): the runner
    sits above this module, so it is named by what it does, not imported. Public methods only."""

    @property
    def hooks(self) -> tuple[Any, ...]: ...

    @property
    def run_id(self) -> str: ...

    @property
    def workflow_name(self) -> str: ...

    @property
    def journal(self) -> Journal | None:
        """The run's link to its store (``None``: the run is not stored)."""
        ...

    async def emit(self, event: Event) -> None:
        """Give ``event`` to the run's hooks."""
        ...

    def check_budget(self) -> None:
        """Raise BudgetExceeded when no model call fits in the run's budgets any more."""
        ...

    async def record_model_call(self, call: Any, step: int, state: str) -> None:
        """Count a model call of the step toward the run's budgets (BudgetExceeded past one)."""
        ...


Emitter = StepHost
"""The old name of :class:`StepHost`."""

__all__ = ["Effect", "Retry", "RetrySpec", "Tool", "ToolRegistry", "Tools", "declared_tool_calls"]

_call_ids = itertools.count(1)


def _never_retried(exc: BaseException) -> bool:
    # Cancellation and interruption must propagate (tenacity's retry_if_not_exception_type would
    # retry CancelledError: its issue #529); a bad argument or the state's deadline cannot get better.
    return (not isinstance(exc, Exception)
            or isinstance(exc, (ToolArgumentError, UnknownTool, UndeclaredTool))
            or (isinstance(exc, ToolTimeout) and exc.scope is TimeoutScope.STATE))


class _NotNeverRetried(retry_base):
    """True unless the attempt failed with an exception that is never retried: composed with ``&``
    it leaves result-based retries (``retry_if_result``) to the user's policy."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            exc = outcome.exception()
            return exc is None or not _never_retried(exc)
        return True


_RETRYABLE = _NotNeverRetried()


class Tools:
    """The handle an action gets for calling tools: only the tools its state declared.

    ``await tools.call("search", query="...")`` for one call; ``await tools.gather(tools.call(...),
    tools.call(...))`` for several at once, results in call order.

    Every wait and limit goes through ``clock`` (default: the real one): each attempt's timeout
    (``clock.timeout_at``), the state's deadline, retry backoff and rate-limit waits
    (``clock.sleep``). ``deadline`` is an instant on that clock's scale, ``clock.now() +
    tool_deadline``, by which every call made through this handle must end (``None``: none). A
    sync tool runs in a worker thread; when its time runs out the thread is abandoned, not
    killed (Python cannot stop a thread), and keeps its concurrency slot until it really ends.
    """

    __slots__ = ("_allowed", "_calls", "_clock", "_deadline", "_registry", "_retry", "_run", "_state", "_step",
                 "_timeout")

    def __init__(self, registry: ToolRegistry, allowed: frozenset[str], *, clock: Clock | None = None,
                 deadline: float | None = None, run: StepHost | None = None, state: str = "",
                 step: int = 0, timeout: float | None = NOT_GIVEN, retry: Any = NOT_GIVEN,
                 _calls: list[int] | None = None) -> None:
        self._registry = registry
        self._calls = _calls if _calls is not None else [0]
        """How many calls the step made through this handle and those derived from it: the next
        call's index, part of its stable key."""
        self._allowed = allowed
        self._clock = clock or _SYSTEM_CLOCK
        self._deadline = deadline
        self._run = run
        self._state = state
        self._step = step
        self._timeout = timeout
        self._retry = retry

    def options(self, *, timeout: float | None = NOT_GIVEN, retry: RetrySpec = NOT_GIVEN) -> Tools:
        """A handle whose calls override the tools' timeout and retry policy."""
        if timeout is not NOT_GIVEN:
            positive(timeout, "timeout")
        retrying = NOT_GIVEN if retry is NOT_GIVEN else as_retrying(retry, "tools.options")
        return Tools(self._registry, self._allowed, clock=self._clock, deadline=self._deadline, run=self._run,
                     state=self._state, step=self._step,
                     timeout=self._timeout if timeout is NOT_GIVEN else timeout,
                     retry=self._retry if retrying is NOT_GIVEN else retrying, _calls=self._calls)

    @property
    def names(self) -> list[str]:
        """The tools this handle may call."""
        return [n for n in self._registry.names() if n in self._allowed]

    def schemas(self) -> list[dict[str, Any]]:
        """JSON schemas of the callable tools, for LLM function calling."""
        return [t.schema() for t in self._registry.unique() if t.name in self._allowed]

    def _tool(self, name: str) -> Tool:
        tool = self._registry.get(name)
        if tool is None:
            known = ", ".join(repr(n) for n in self._registry.names()) or "none"
            raise UnknownTool(name, f"no tool named {name!r} is registered; registered: {known}")
        if name not in self._allowed:
            raise UndeclaredTool(name, f"state {self._state!r} called tool {name!r}, which it does not "
                                       f"declare: add {name!r} to tools=[...] of state {self._state!r}")
        tool.refuse_if_broken()
        return tool

    async def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call a tool: validate the arguments, run it (bounded, retried), validate the result."""
        tool = self._tool(name)
        arguments = tool.validate_args(args, kwargs)
        # The call's index is taken before any await, so calls started together (gather) are
        # numbered in the order they were made, the same on every run of the same code.
        index = self._calls[0]
        self._calls[0] = index + 1
        run = self._run
        journal = run.journal if run is not None else None
        if journal is None and not tool.takes_key:
            return await self._run_call(tool, arguments)
        run_id = run.run_id if run is not None else "-"
        key = f"{run_id}/{self._step}/{index}"
        if tool.takes_key:
            arguments[KEY_PARAMETER] = key
        if journal is None:
            return await self._run_call(tool, arguments, key)
        return await journal.call(self, tool, step=self._step, index=index, key=key, arguments=arguments,
                                  run_id=run_id)

    async def _run_call(self, tool: Tool, arguments: dict[str, Any], key: str | None = None,
                        failures: list[BaseException] | None = None) -> Any:
        """The call itself, within the state's deadline (the journal decides whether to make it);
        ``key``: the call's stable key, for the hooks; ``failures``, when given, gets what each failed
        attempt of a call that then succeeded raised (the journal keeps them)."""
        deadline = self._deadline
        if deadline is None:
            return await self._call(tool, arguments, key, failures)
        # The state's deadline bounds the whole call: attempts, backoff waits and rate-limit waits.
        cm = self._clock.timeout_at(deadline)
        try:
            async with cm:
                return await self._call(tool, arguments, key, failures)
        except TimeoutError:
            if cm.expired():
                raise ToolTimeout(tool.name, 0.0, TimeoutScope.STATE) from None
            raise

    async def _call(self, tool: Tool, arguments: dict[str, Any], key: str | None = None,
                    failures: list[BaseException] | None = None) -> Any:
        name = tool.name
        run = self._run
        hooks = run is not None and run.hooks
        call_id = next(_call_ids)
        t0 = time.perf_counter()
        if hooks:
            await self._emit(ToolCallStarted, name, call_id, str(tool.effect), key)
        if tool.own_retrying and self._retry is NOT_GIVEN:
            # The user's own policy sees every attempt, the first included (and may retry on results).
            result, attempts, fallback = await self._recover(tool, arguments, None, call_id, t0, failures=failures)
        else:
            try:
                result = await self._attempt(tool, arguments)
                attempts, fallback = 1, False
            except BaseException as first:
                if _never_retried(first):
                    if hooks and isinstance(first, Exception):
                        await self._emit(ToolCallFailed, name, call_id, (first,), time.perf_counter() - t0)
                    raise
                result, attempts, fallback = await self._recover(tool, arguments, first, call_id, t0, failures=failures)
        if hooks:
            await self._emit(ToolCallFinished, name, call_id, attempts, time.perf_counter() - t0, fallback)
        return result

    async def _attempt(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        clock = self._clock
        lim = tool.limits(asyncio.get_running_loop()) if tool.concurrency or tool.rate_limit else None
        semaphore = lim.semaphore if lim is not None else None
        if semaphore is not None:
            await semaphore.acquire()  # waiting for a slot does not use up the attempt's timeout
        handoff = [False]
        try:
            if lim is not None and tool.rate_limit:
                await lim.start(clock)  # nor does waiting for the rate limit (the deadline still holds)
            limit = tool.timeout if self._timeout is NOT_GIVEN else self._timeout
            deadline = self._deadline
            if limit is None and deadline is None:
                return tool.validate_result(await self._invoke(tool, arguments, semaphore, handoff))
            if deadline is None and limit is not None and type(clock) is SystemClock:
                # The real clock is the loop's: a relative timeout is the same, and cheaper.
                return await self._bounded(tool, arguments, semaphore=semaphore, handoff=handoff,
                                           cm=asyncio.timeout(limit), seconds=limit, scope=TimeoutScope.CALL)
            now = clock.now()
            scope = TimeoutScope.CALL
            when, seconds = (None, 0.0) if limit is None else (now + limit, limit)
            if deadline is not None:
                if deadline <= now:
                    raise ToolTimeout(tool.name, 0.0, TimeoutScope.STATE)
                if when is None or deadline < when:
                    when, scope, seconds = deadline, TimeoutScope.STATE, deadline - now
            return await self._bounded(tool, arguments, semaphore=semaphore, handoff=handoff,
                                       cm=clock.timeout_at(when), seconds=seconds, scope=scope)
        finally:
            # A sync tool's thread releases its slot when it really ends (see _invoke).
            if semaphore is not None and not handoff[0]:
                semaphore.release()

    async def _bounded(self, tool: Tool, arguments: dict[str, Any], *, semaphore: asyncio.Semaphore | None,
                       handoff: list[bool], cm: asyncio.Timeout, seconds: float, scope: TimeoutScope) -> Any:
        try:
            async with cm:
                try:
                    value = await self._invoke(tool, arguments, semaphore, handoff)
                except TimeoutError as own:  # the tool's own, not ours: see the runner
                    raise _OwnTimeout from own
        except TimeoutError:
            raise ToolTimeout(tool.name, seconds, scope) from None
        except _OwnTimeout as wrapped:
            raise typing.cast(BaseException, wrapped.__cause__) from None
        return tool.validate_result(value)

    @staticmethod
    async def _invoke(tool: Tool, arguments: dict[str, Any], semaphore: asyncio.Semaphore | None,
                      handoff: list[bool]) -> Any:
        if tool.is_async:
            return await tool.fn(**arguments)
        # A sync tool runs in a worker thread; on a timeout the thread is abandoned, not killed, so
        # its concurrency slot is released only when the thread really ends.
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, functools.partial(tool.fn, **arguments))
        future.add_done_callback(_consume)  # an abandoned thread's late error is nobody's to report
        if semaphore is not None:
            future.add_done_callback(lambda _: semaphore.release())
            handoff[0] = True
        return await asyncio.shield(future)

    async def _recover(self, tool: Tool, arguments: dict[str, Any], first: BaseException | None,
                       call_id: int, t0: float, *, failures: list[BaseException] | None = None
                       ) -> tuple[Any, int, bool]:
        errors: list[BaseException] = failures if failures is not None else []
        if first is not None:
            errors.append(first)
        base = tool.retrying if self._retry is NOT_GIVEN else self._retry
        if base is not None:
            replayed = first is None

            async def attempt() -> Any:
                # tenacity runs the loop from here on; a first attempt already made outside
                # tenacity (so that a call that succeeds pays nothing for retries) is replayed.
                nonlocal replayed
                if not replayed:
                    replayed = True
                    assert first is not None
                    raise first
                try:
                    return await self._attempt(tool, arguments)
                except Exception as exc:
                    errors.append(exc)
                    raise

            user_before_sleep = base.before_sleep

            async def before_sleep(state: RetryCallState) -> None:
                if self._run is not None and self._run.hooks and state.outcome is not None:
                    wait = state.next_action.sleep if state.next_action is not None else 0.0
                    await self._emit(ToolAttemptFailed, tool.name, call_id, state.attempt_number,
                                     state.outcome.exception(), wait)
                if user_before_sleep is not None:
                    out = user_before_sleep(state)
                    if inspect.isawaitable(out):
                        await out

            retrying = base.copy(sleep=self._clock.sleep, retry=base.retry & _RETRYABLE,
                                 before_sleep=before_sleep, reraise=True)
            try:
                return await retrying(attempt), len(errors) + 1, False
            except BaseException as exc:
                if _never_retried(exc):
                    if self._run is not None and self._run.hooks and isinstance(exc, Exception):
                        await self._emit(ToolCallFailed, tool.name, call_id, tuple(errors),
                                         time.perf_counter() - t0)
                    raise
        if tool.fallback is not None:
            fallback = self._registry.get(tool.fallback)
            assert fallback is not None, "the checker proves fallbacks exist"
            try:
                # Part of this call (journaled with it), not a call of its own: no index of its own.
                handle = Tools(self._registry, frozenset({fallback.name}), clock=self._clock,
                               deadline=self._deadline, run=self._run, state=self._state, step=self._step)
                fb = handle._tool(fallback.name)
                fb_args = fb.validate_args((), {k: v for k, v in arguments.items() if k != KEY_PARAMETER})
                if fb.takes_key and KEY_PARAMETER in arguments:
                    fb_args[KEY_PARAMETER] = arguments[KEY_PARAMETER]
                return await handle._run_call(fb, fb_args, arguments.get(KEY_PARAMETER)), len(errors) + 1, True
            except ToolFailed as failed:
                errors.extend(failed.errors)
        elif tool.fallback_value is not NOT_GIVEN:
            return tool.fallback_value, len(errors) + 1, True
        error = ToolFailed(tool.name, tuple(errors))
        if self._run is not None and self._run.hooks:
            await self._emit(ToolCallFailed, tool.name, call_id, tuple(errors), time.perf_counter() - t0)
        raise error from (errors[-1] if errors else None)

    # --- what the LLM adapter (and any code that talks to a model) needs of the step -------------------
    @property
    def clock(self) -> Clock:
        """The run's clock: where waits (retry backoff) and timeouts of calls made here read the time."""
        return self._clock

    @property
    def state(self) -> str:
        """The state whose step this handle belongs to."""
        return self._state

    @property
    def step(self) -> int:
        """The step's number in the run."""
        return self._step

    async def journaled(self, name: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """``await compute()``, once: in a durable run its JSON result is journaled like a read
        tool's (committed with the step), so a replay answers it from the record instead.

        For calls that are not tools but read the world, a model's answer above all: ``name`` says
        what was called (``model:smollm2``), and a replay refuses an answer recorded under another.
        The result must be JSON (dicts, lists, strings, numbers, booleans, ``None``).
        """
        index = self._calls[0]
        self._calls[0] = index + 1
        run = self._run
        journal = run.journal if run is not None else None
        if journal is None:
            return await compute()
        assert run is not None
        return await journal.memo(name, compute, step=self._step, index=index,
                                  key=f"{run.run_id}/{self._step}/{index}")

    def budget_room(self) -> None:
        """Raise :class:`~.errors.BudgetExceeded` when the run's token or cost budget is already
        spent, before a model call is made."""
        if self._run is not None:
            self._run.check_budget()

    async def record_model_call(self, call: Any) -> None:
        """Record a :class:`~statemachine_agent.usage.ModelCall` on the step (its usage counts
        toward the run's budgets, and hooks get a ``ModelCalled`` event); raises
        :class:`~.errors.BudgetExceeded` when it took the run past a budget."""
        if self._run is not None:
            await self._run.record_model_call(call, self._step, self._state)

    async def _emit(self, kind: type[Any], *fields: Any) -> None:
        run = self._run
        assert run is not None
        await run.emit(kind(run.run_id, run.workflow_name, self._step, self._state, *fields))

    async def gather(self, *calls: Awaitable[Any],
                     failures: Literal["fail_fast", "collect"] = "fail_fast") -> list[Any]:
        """Run the calls concurrently; results come back in call order.

        ``failures="fail_fast"`` cancels the others at the first failure and raises
        :class:`~.errors.GatherFailed` carrying every failure; ``"collect"`` returns each result
        or the exception that call raised. Cancelling the caller cancels every call.
        """
        if failures not in ("fail_fast", "collect"):
            for c in calls:
                if inspect.iscoroutine(c):
                    c.close()
            raise ValueError(f"failures={failures!r}: use 'fail_fast' or 'collect'")
        if failures == "collect":
            results: list[Any] = await asyncio.gather(*calls, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, Exception):
                    raise r  # a KeyboardInterrupt inside a call is not a result
            return results
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(_await(c)) for c in calls]
        except BaseExceptionGroup as eg:
            plain = [e for e in eg.exceptions if isinstance(e, Exception)]
            if len(plain) != len(eg.exceptions):
                raise next(e for e in eg.exceptions if not isinstance(e, Exception)) from eg
            raise GatherFailed(tuple(plain)) from eg
        return [t.result() for t in tasks]


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a worker thread's outcome as seen, so asyncio does not log "exception was never
    retrieved" for a thread abandoned after its call timed out."""
    if not future.cancelled():
        future.exception()


class _OwnTimeout(Exception):
    """Internal: a TimeoutError the tool raised itself, kept apart from our timeout."""


_SYSTEM_CLOCK = SystemClock()
