"""Tools: typed, validated, time-bounded, retried (with tenacity) and callable in parallel."""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import itertools
import textwrap
import time
import typing
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_base,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .clock import Clock, SystemClock
from .errors import (
    GatherFailed,
    ToolArgumentError,
    ToolFailed,
    ToolResultError,
    ToolTimeout,
    UndeclaredTool,
    UnknownTool,
)
from .events import ToolAttemptFailed, ToolCallFailed, ToolCallFinished, ToolCallStarted

if TYPE_CHECKING:
    from .runner import Run

__all__ = ["Retry", "Tool", "ToolRegistry", "Tools"]

_MISSING: Any = object()
_call_ids = itertools.count(1)


def _never_retried(exc: BaseException) -> bool:
    # Cancellation and interruption must propagate (tenacity's retry_if_not_exception_type would
    # retry CancelledError: its issue #529); a bad argument or the state's deadline cannot get better.
    return (not isinstance(exc, Exception)
            or isinstance(exc, (ToolArgumentError, UnknownTool, UndeclaredTool))
            or (isinstance(exc, ToolTimeout) and exc.scope == "state"))


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
# tenacity 9 renamed wait_exponential_jitter's first wait from `initial` to `multiplier`.
_FIRST_WAIT = ("multiplier" if "multiplier" in inspect.signature(wait_exponential_jitter.__init__).parameters
               else "initial")


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry policy, built on tenacity's strategies.

    The simple knobs make ``stop_after_attempt(attempts)`` with ``wait_exponential_jitter``;
    pass tenacity strategies as ``stop=``, ``wait=``, ``retry=`` to use your own (they compose:
    ``stop=stop_after_attempt(5) | stop_after_delay(10)``). Whatever you pass, cancellation,
    interruption, bad arguments and the state's deadline are never retried.
    """

    attempts: int = 3
    """Attempts in all, the first included."""
    backoff: float = 0.1
    """First wait, in seconds; it doubles each time."""
    max_delay: float = 5.0
    """Cap on one wait, in seconds."""
    jitter: float = 0.1
    """Random extra wait, up to this many seconds."""
    on: tuple[type[BaseException], ...] = (Exception,)
    """Exception types that are retried."""
    never: tuple[type[BaseException], ...] = ()
    """Exception types that are never retried, even when listed in ``on``."""
    stop: Any = None
    """A tenacity stop strategy, replacing ``attempts``."""
    wait: Any = None
    """A tenacity wait strategy, replacing ``backoff``/``max_delay``/``jitter``."""
    retry: Any = None
    """A tenacity retry strategy, replacing ``on``/``never``."""

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"Retry(attempts={self.attempts!r}): give a whole number of at least 1")
        for name in ("backoff", "max_delay", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Retry({name}={value!r}): give a number of seconds >= 0")

    def build(self) -> AsyncRetrying:
        """The tenacity ``AsyncRetrying`` this policy stands for."""
        retry = self.retry
        if retry is None:
            retry = retry_if_exception_type(self.on)
            if self.never:
                never = self.never
                retry = retry & retry_if_exception(lambda e: not isinstance(e, never))
        return AsyncRetrying(
            stop=self.stop or stop_after_attempt(self.attempts),
            wait=self.wait or wait_exponential_jitter(**{_FIRST_WAIT: self.backoff}, max=self.max_delay,
                                                      jitter=self.jitter),
            retry=retry,
            reraise=True,
        )


RetrySpec = Retry | AsyncRetrying | int | None


def _as_retrying(value: RetrySpec, where: str) -> AsyncRetrying | None:
    if value is None:
        return None
    if isinstance(value, AsyncRetrying):
        return value  # the user's own: passed through, with our never-retry rule added per call
    if isinstance(value, Retry):
        return value.build()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return Retry(attempts=value).build()
    raise TypeError(f"{where}: retry={value!r}; give Retry(...), a tenacity AsyncRetrying, a number of "
                    "attempts, or None")


def _positive(value: object, what: str) -> None:
    """Refuse anything but a positive number (NaN fails ``> 0`` too); ``None`` means no limit."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what}={value!r}: give a positive number")


class Tool:
    """A sync or async callable with typed parameters and a typed result, ready to be called safely."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str = "",
        timeout: float | None = None,
        retry: RetrySpec = None,
        concurrency: int | None = None,
        rate_limit: float | None = None,
        fallback: str | None = None,
        fallback_value: Any = _MISSING,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"a tool must be a callable, got {fn!r}")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        """The tool's name, used by ``tools.call(name, ...)``."""
        if not self.name or not isinstance(self.name, str):
            raise TypeError(f"cannot name a tool after {fn!r}: pass name='...'")
        self.description: str = description or inspect.getdoc(fn) or ""
        _positive(timeout, f"tool {self.name!r}: timeout")
        _positive(rate_limit, f"tool {self.name!r}: rate_limit")
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise ValueError(f"tool {self.name!r}: concurrency={concurrency!r}: give a whole number >= 1")
        if fallback is not None and not isinstance(fallback, str):
            raise TypeError(f"tool {self.name!r}: fallback={fallback!r}; give the name of another tool "
                            "(or fallback_value=... for a fixed answer)")
        if fallback is not None and fallback_value is not _MISSING:
            raise TypeError(f"tool {self.name!r}: give fallback (a tool) or fallback_value, not both")
        self.timeout = timeout
        """Seconds one attempt may take; ``None`` for no limit."""
        self.retrying = _as_retrying(retry, f"tool {self.name!r}")
        """The tenacity policy; ``None`` means one attempt."""
        self.own_retrying = isinstance(retry, AsyncRetrying)
        """A user's own AsyncRetrying is used as it is (every attempt through it, results included);
        ours retry on exceptions only, so a first attempt that succeeds can skip tenacity."""
        self.concurrency = concurrency
        """At most this many calls of this tool run at once (per event loop)."""
        self.rate_limit = rate_limit
        """At most this many calls start per second (per event loop)."""
        self.fallback = fallback
        """Another tool answering (with the same arguments) when this one fails for good."""
        self.fallback_value = fallback_value
        self.is_async = inspect.iscoroutinefunction(fn)
        self._signature = inspect.signature(fn)
        self.args_model = _args_model(fn, self.name, self._signature)
        """The pydantic model of the arguments."""
        hints = typing.get_type_hints(fn, include_extras=True)
        ret = hints.get("return", _MISSING)
        self._result: TypeAdapter[Any] | None = None if ret is _MISSING or ret is Any else TypeAdapter(ret)
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Limits] = \
            weakref.WeakKeyDictionary()

    @property
    def has_fallback(self) -> bool:
        """Whether a fallback answers when the tool fails for good."""
        return self.fallback is not None or self.fallback_value is not _MISSING

    def schema(self) -> dict[str, Any]:
        """The tool as an LLM function-calling entry: name, description, JSON schema of the arguments."""
        params = self.args_model.model_json_schema()
        params.pop("title", None)
        return {"name": self.name, "description": self.description, "parameters": params}

    def validate_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The validated keyword arguments, or :class:`ToolArgumentError` naming tool and fields."""
        if args:
            try:
                kwargs = self._signature.bind_partial(*args, **kwargs).arguments
            except TypeError as exc:
                raise ToolArgumentError(self.name, (), f"tool {self.name!r}: {exc}") from None
        try:
            model = self.args_model.model_validate(kwargs)
        except ValidationError as exc:
            fields = tuple(str(e["loc"][0]) if e["loc"] else "" for e in exc.errors())
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(arguments)'}: {e['msg']}"
                               for e in exc.errors())
            raise ToolArgumentError(self.name, fields,
                                    f"tool {self.name!r} got bad arguments: {detail}") from None
        return dict(model.__dict__)

    def validate_result(self, value: Any) -> Any:
        """The validated result, or :class:`ToolResultError`."""
        if self._result is None:
            return value
        try:
            return self._result.validate_python(value)
        except ValidationError as exc:
            raise ToolResultError(self.name, f"tool {self.name!r} returned {type(value).__name__} "
                                  f"{value!r:.80}, which does not fit its result type: "
                                  f"{exc.errors()[0]['msg']}") from None

    def limits(self, loop: asyncio.AbstractEventLoop) -> _Limits:
        """This tool's semaphore and rate slot on ``loop`` (asyncio primitives belong to one loop)."""
        lim = self._limits.get(loop)
        if lim is None:
            lim = self._limits[loop] = _Limits(
                asyncio.Semaphore(self.concurrency) if self.concurrency else None)
        return lim

    def __repr__(self) -> str:
        return f"<Tool {self.name!r}>"


class _Limits:
    __slots__ = ("next_slot", "semaphore")

    def __init__(self, semaphore: asyncio.Semaphore | None) -> None:
        self.semaphore = semaphore
        self.next_slot = 0.0


def _args_model(fn: Callable[..., Any], name: str, sig: inspect.Signature) -> type[BaseModel]:
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *{p.name} parameters cannot be validated; name each "
                            "parameter and give it a type")
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"tool {name!r}: parameter {p.name!r} is positional-only, but tools are called "
                            "with keyword arguments: drop the '/' from its signature")
        fields[p.name] = (hints.get(p.name, Any), ... if p.default is p.empty else p.default)
    model: type[BaseModel] = create_model(
        f"{name}_arguments",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )
    return model


class ToolRegistry:
    """The tools of one workflow, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> Tool:
        """Register ``tool``; a second tool of the same name is an error."""
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered: rename one of them")
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, if any."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> typing.Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._tools)


class Tools:
    """The handle an action gets for calling tools: only the tools its state declared.

    ``await tools.call("search", query="...")`` for one call; ``await tools.gather(tools.call(...),
    tools.call(...))`` for several at once, results in call order.
    """

    __slots__ = ("_allowed", "_clock", "_deadline", "_registry", "_retry", "_run", "_state", "_step",
                 "_timeout")

    def __init__(self, registry: ToolRegistry, allowed: frozenset[str], *, clock: Clock | None = None,
                 deadline: float | None = None, run: Run[Any] | None = None, state: str = "",
                 step: int = 0, timeout: float | None = _MISSING, retry: Any = _MISSING) -> None:
        self._registry = registry
        self._allowed = allowed
        self._clock = clock or _SYSTEM_CLOCK
        self._deadline = deadline
        self._run = run
        self._state = state
        self._step = step
        self._timeout = timeout
        self._retry = retry

    def options(self, *, timeout: float | None = _MISSING, retry: RetrySpec = _MISSING) -> Tools:
        """A handle whose calls override the tools' timeout and retry policy."""
        if timeout is not _MISSING:
            _positive(timeout, "timeout")
        retrying = _MISSING if retry is _MISSING else _as_retrying(retry, "tools.options")
        return Tools(self._registry, self._allowed, clock=self._clock, deadline=self._deadline, run=self._run,
                     state=self._state, step=self._step,
                     timeout=self._timeout if timeout is _MISSING else timeout,
                     retry=self._retry if retrying is _MISSING else retrying)

    @property
    def names(self) -> list[str]:
        """The tools this handle may call."""
        return [n for n in self._registry.names() if n in self._allowed]

    def schemas(self) -> list[dict[str, Any]]:
        """JSON schemas of the callable tools, for LLM function calling."""
        return [t.schema() for t in self._registry if t.name in self._allowed]

    def _tool(self, name: str) -> Tool:
        tool = self._registry.get(name)
        if tool is None:
            known = ", ".join(repr(n) for n in self._registry.names()) or "none"
            raise UnknownTool(name, f"no tool named {name!r} is registered; registered: {known}")
        if name not in self._allowed:
            raise UndeclaredTool(name, f"state {self._state!r} called tool {name!r}, which it does not "
                                       f"declare: add {name!r} to tools=[...] of state {self._state!r}")
        return tool

    async def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call a tool: validate the arguments, run it (bounded, retried), validate the result."""
        tool = self._tool(name)
        arguments = tool.validate_args(args, kwargs)
        deadline = self._deadline
        if deadline is None:
            return await self._call(tool, arguments)
        # The state's deadline bounds the whole call: attempts, backoff waits and rate-limit waits.
        cm = asyncio.timeout_at(deadline)
        try:
            async with cm:
                return await self._call(tool, arguments)
        except TimeoutError:
            if cm.expired():
                raise ToolTimeout(tool.name, 0.0, "state") from None
            raise

    async def _call(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        name = tool.name
        run = self._run
        hooks = run is not None and run.hooks
        call_id = next(_call_ids)
        t0 = time.perf_counter()
        if hooks:
            await self._emit(ToolCallStarted, name, call_id)
        if tool.own_retrying and self._retry is _MISSING:
            # The user's own policy sees every attempt, the first included (and may retry on results).
            result, attempts, fallback = await self._recover(tool, arguments, None, call_id, t0)
        else:
            try:
                result = await self._attempt(tool, arguments)
                attempts, fallback = 1, False
            except BaseException as first:
                if _never_retried(first):
                    if hooks and isinstance(first, Exception):
                        await self._emit(ToolCallFailed, name, call_id, (first,), time.perf_counter() - t0)
                    raise
                result, attempts, fallback = await self._recover(tool, arguments, first, call_id, t0)
        if hooks:
            await self._emit(ToolCallFinished, name, call_id, attempts, time.perf_counter() - t0, fallback)
        return result

    async def _attempt(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        limit = tool.timeout if self._timeout is _MISSING else self._timeout
        deadline = self._deadline
        scope = "call"
        if deadline is not None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise ToolTimeout(tool.name, 0.0, "state")
            if limit is None or remaining < limit:
                limit, scope = remaining, "state"
        lim = tool.limits(asyncio.get_running_loop()) if tool.concurrency or tool.rate_limit else None
        if lim is not None and tool.rate_limit:
            now = self._clock.now()
            slot = max(now, lim.next_slot)
            lim.next_slot = slot + 1.0 / tool.rate_limit
            if slot > now:
                await self._clock.sleep(slot - now)
        semaphore = lim.semaphore if lim is not None else None
        if semaphore is not None:
            await semaphore.acquire()  # waiting for a slot does not use up the attempt's timeout
        handoff = [False]
        try:
            if limit is None:
                return tool.validate_result(await self._invoke(tool, arguments, semaphore, handoff))
            try:
                async with asyncio.timeout(limit):
                    try:
                        value = await self._invoke(tool, arguments, semaphore, handoff)
                    except TimeoutError as own:  # the tool's own, not ours: see the runner
                        raise _OwnTimeout from own
            except TimeoutError:
                raise ToolTimeout(tool.name, limit if scope == "call" else max(limit, 0.0), scope) from None
            except _OwnTimeout as wrapped:
                raise typing.cast(BaseException, wrapped.__cause__) from None
            return tool.validate_result(value)
        finally:
            # A sync tool's thread releases its slot when it really ends (see _invoke).
            if semaphore is not None and not handoff[0]:
                semaphore.release()

    @staticmethod
    async def _invoke(tool: Tool, arguments: dict[str, Any], semaphore: asyncio.Semaphore | None,
                      handoff: list[bool]) -> Any:
        if tool.is_async:
            return await tool.fn(**arguments)
        # A sync tool runs in a worker thread; on a timeout the thread is abandoned, not killed, so
        # its concurrency slot is released only when the thread really ends.
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, functools.partial(tool.fn, **arguments))
        if semaphore is not None:
            future.add_done_callback(lambda _: semaphore.release())
            handoff[0] = True
        return await asyncio.shield(future)

    async def _recover(self, tool: Tool, arguments: dict[str, Any], first: BaseException | None,
                       call_id: int, t0: float) -> tuple[Any, int, bool]:
        errors: list[BaseException] = [first] if first is not None else []
        base = tool.retrying if self._retry is _MISSING else self._retry
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
                return (await Tools(self._registry, frozenset({fallback.name}), clock=self._clock,
                                    deadline=self._deadline, run=self._run, state=self._state,
                                    step=self._step).call(fallback.name, **arguments)), len(errors) + 1, True
            except ToolFailed as failed:
                errors.extend(failed.errors)
        elif tool.fallback_value is not _MISSING:
            return tool.fallback_value, len(errors) + 1, True
        error = ToolFailed(tool.name, tuple(errors))
        if self._run is not None and self._run.hooks:
            await self._emit(ToolCallFailed, tool.name, call_id, tuple(errors), time.perf_counter() - t0)
        raise error from (errors[-1] if errors else None)

    async def _emit(self, kind: type[Any], *fields: Any) -> None:
        run = self._run
        assert run is not None
        await run._emit(kind(run.run_id, run.workflow.name, self._step, self._state, *fields))

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


class _OwnTimeout(Exception):
    """Internal: a TimeoutError the tool raised itself, kept apart from our timeout."""


_SYSTEM_CLOCK = SystemClock()


def declared_tool_calls(action: Callable[..., Any]) -> set[str] | None:
    """Tool names an action calls as ``<handle>.call("name", ...)``, read from its source.

    ``None`` when the source is not available (a builtin, a lambda in a REPL). Used by the checker
    to catch a state that calls a tool it did not declare before the first run.
    """
    try:
        source = textwrap.dedent(inspect.getsource(action))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    fn = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if fn is None or len(fn.args.args) < 2:
        return None
    handle = fn.args.args[1].arg
    found: set[str] = set()
    for node in ast.walk(fn):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "call" and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            base = node.func.value
            while isinstance(base, ast.Call) and isinstance(base.func, ast.Attribute):
                base = base.func.value  # tools.options(...).call("x")
            if isinstance(base, ast.Name) and base.id == handle:
                found.add(node.args[0].value)
    return found
