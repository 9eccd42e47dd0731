"""Declaring tools: :class:`Tool`, its :class:`Retry` policy and the :class:`ToolRegistry`.

A bad option does not raise when the tool is declared: it is recorded, and the checker lists it
with every other problem of the workflow in one :class:`~.errors.DefinitionError`
(:meth:`Tool.definition_problems`). Calling such a tool outside a checked workflow raises a
``ValueError`` listing the problems. Calling tools is :mod:`statemachine_agent.tools`'s job.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import enum
import inspect
import math
import textwrap
import typing
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticSerializationError, to_jsonable_python
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .clock import Clock
from .errors import Problem, ProblemCode, ToolArgumentError, ToolResultError

__all__ = ["Effect", "Retry", "RetrySpec", "Tool", "ToolRegistry", "declared_tool_calls"]


class Effect(enum.StrEnum):
    """What calling a tool does to the world, which decides what a durable run may do after a crash.

    A completed call is journaled and never run again for its run, whatever its effect; the
    effect says what happens to a call a crash interrupted.
    """

    READ = "read"
    """No effect (a search, a lookup): an interrupted call is simply run again."""
    IDEMPOTENT = "idempotent"
    """An effect the remote side deduplicates: the tool takes ``idempotency_key: str`` (stable for
    the call: ``run/step/call``) and an interrupted call is run again with the same key."""
    AT_MOST_ONCE = "at_most_once"
    """An effect that must not happen twice: an intent is committed before the call, and an
    interrupted call is never run again: it raises :class:`~.errors.EffectOutcomeUnknown` (which a
    state must route), or ``reconcile=`` looks its outcome up."""


KEY_PARAMETER = "idempotency_key"
"""A tool parameter of this name receives the call's stable key; callers never pass it."""

NOT_GIVEN: Any = object()

# tenacity 9 renamed wait_exponential_jitter's first wait from `initial` to `multiplier`.
_FIRST_WAIT = ("multiplier" if "multiplier" in inspect.signature(wait_exponential_jitter.__init__).parameters
               else "initial")


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _is_exception_types(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(t, type) and issubclass(t, BaseException)
                                            for t in value)


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry policy, built on tenacity's strategies.

    The simple knobs make ``stop_after_attempt(attempts)`` with ``wait_exponential_jitter``;
    pass tenacity strategies as ``stop=``, ``wait=``, ``retry=`` to use your own (they compose:
    ``stop=stop_after_attempt(5) | stop_after_delay(10)``). Whatever you pass, cancellation,
    interruption, bad arguments and the state's deadline are never retried.

    Bad values do not raise here: :meth:`definition_problems` lists them and the checker reports
    them with the workflow's other problems; :meth:`build` refuses a policy that has any.
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

    def definition_problems(self, where: str = "") -> list[Problem]:
        """What is wrong with this policy (``bad-option`` problems), empty when it is usable.

        ``where`` prefixes each message (a tool passes ``"tool 'search': "``).
        """
        prefix = where or "Retry: "
        out: list[Problem] = []

        def bad(option: str, value: object, fix: str) -> None:
            out.append(Problem(ProblemCode.BAD_OPTION, f"{prefix}retry {option}={value!r} {fix}"))

        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            bad("attempts", self.attempts, "must be a whole number of at least 1 (1: no retries)")
        for option in ("backoff", "max_delay", "jitter"):
            value = getattr(self, option)
            if not _is_number(value) or not 0 <= value < math.inf:
                bad(option, value, "must be a finite number of seconds >= 0")
        for option in ("on", "never"):
            value = getattr(self, option)
            if not _is_exception_types(value):
                bad(option, value, "must be a tuple of exception classes, e.g. (ConnectionError,)")
        for option in ("stop", "wait", "retry"):
            value = getattr(self, option)
            if value is not None and not callable(value):
                bad(option, value, f"must be a tenacity {option} strategy (e.g. tenacity.{option}_...) "
                    "or None")
        return out

    def build(self) -> AsyncRetrying:
        """The tenacity ``AsyncRetrying`` this policy stands for (``ValueError`` if it has problems)."""
        problems = self.definition_problems()
        if problems:
            raise ValueError("; ".join(p.message for p in problems))
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


def _retry_problems(value: object, where: str) -> list[Problem]:
    """Problems of a ``retry=`` option (``where`` names its owner, ending in ``": "``)."""
    if value is None or isinstance(value, AsyncRetrying):
        return []
    if isinstance(value, Retry):
        return value.definition_problems(where)
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 1:
            return []
        return [Problem(ProblemCode.BAD_OPTION, f"{where}retry={value!r} must be a number of attempts of at least 1 "
                        "(1: no retries)")]
    return [Problem(ProblemCode.BAD_OPTION, f"{where}retry={value!r} must be Retry(...), a tenacity AsyncRetrying, a "
                    "number of attempts, or None")]


def as_retrying(value: RetrySpec, where: str) -> AsyncRetrying | None:
    """The tenacity object for a ``retry=`` option; ``TypeError``/``ValueError`` when it is bad."""
    problems = _retry_problems(value, f"{where}: ")
    if problems:
        message = "; ".join(p.message for p in problems)
        raise (ValueError if isinstance(value, (Retry, int)) else TypeError)(message)
    if value is None:
        return None
    if isinstance(value, AsyncRetrying):
        return value  # the user's own: passed through, with our never-retry rule added per call
    if isinstance(value, Retry):
        return value.build()
    return Retry(attempts=value).build()


def positive(value: object, what: str) -> None:
    """Refuse anything but a positive number (NaN fails ``> 0`` too); ``None`` means no limit."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what}={value!r}: give a positive number")


class ToolOptions(TypedDict, total=False):
    """The options of a tool: keyword arguments of ``Workflow.tool``, the same as :class:`Tool`'s
    (a test keeps the two equal)."""

    name: str | None
    description: str
    timeout: float | None
    retry: RetrySpec
    concurrency: int | None
    rate_limit: float | None
    fallback: str | None
    fallback_value: Any
    effect: Effect | str
    reconcile: Callable[..., Any] | None


class Tool:
    """A sync or async callable with typed parameters and a typed result, ready to be called safely.

    Only a tool that cannot even be named raises here (``TypeError``: pass ``name=``). Any other
    mistake (a bad option, a signature that cannot be validated, something not callable) is
    recorded: :meth:`definition_problems` lists it, the checker reports it, and calling the tool
    raises ``ValueError``.
    """

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
        fallback_value: Any = NOT_GIVEN,
        effect: Effect | str = Effect.READ,
        reconcile: Callable[..., Any] | None = None,
    ) -> None:
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        """The tool's name, used by ``tools.call(name, ...)``."""
        if not self.name or not isinstance(self.name, str):
            raise TypeError(f"cannot name a tool after {fn!r}: pass name='...'")
        problems: list[Problem] = []
        who = f"tool {self.name!r}: "

        def bad(option: str, value: object, fix: str) -> None:
            problems.append(Problem(ProblemCode.BAD_OPTION, f"{who}{option}={value!r} {fix}", self.name))

        if timeout is not None and (not _is_number(timeout) or not timeout > 0):
            bad("timeout", timeout, "must be a positive number of seconds (or None for no limit)")
        if rate_limit is not None and (not _is_number(rate_limit) or not 0 < rate_limit < math.inf):
            bad("rate_limit", rate_limit, "must be a positive number of calls per second (or None)")
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            bad("concurrency", concurrency, "must be a whole number of calls at once, at least 1 (or None)")
        if fallback is not None and not isinstance(fallback, str):
            bad("fallback", fallback, "must be the name of another tool (or use fallback_value=... for a "
                "fixed answer)")
        if fallback is not None and fallback_value is not NOT_GIVEN:
            problems.append(Problem(ProblemCode.BAD_OPTION, f"{who}give fallback= (a tool) or fallback_value= (an "
                                    "answer), not both", self.name))
        try:
            self.effect: Effect = Effect(effect)
            """What a call does to the world (see :class:`Effect`)."""
        except ValueError:
            bad("effect", effect, "must be 'read', 'idempotent' or 'at_most_once' (statemachine_agent.Effect)")
            self.effect = Effect.READ
        if reconcile is not None and not callable(reconcile):
            bad("reconcile", reconcile, "must be a function (arguments: dict, key: str) returning the call's "
                "result, or raising")
        elif reconcile is not None and self.effect is not Effect.AT_MOST_ONCE:
            bad("reconcile", reconcile, "is only for effect='at_most_once' tools (others are run again)")
        self.reconcile = reconcile
        """Looks up the outcome of an interrupted at_most_once call: ``(arguments, key) -> result``."""
        retry_problems = _retry_problems(retry, who)
        problems += [Problem(p.code, p.message, self.name) for p in retry_problems]
        if not isinstance(description, str):
            bad("description", description, "must be a string")
            description = ""
        self.description: str = description or (inspect.getdoc(fn) or "" if callable(fn) else "")
        self.timeout = timeout
        """Seconds one attempt may take; ``None`` for no limit."""
        self.retrying = None if retry_problems else as_retrying(retry, f"tool {self.name!r}")
        """The tenacity policy; ``None`` means one attempt."""
        self.own_retrying = isinstance(retry, AsyncRetrying)
        """A user's own AsyncRetrying is used as it is (every attempt through it, results included);
        ours retry on exceptions only, so a first attempt that succeeds can skip tenacity."""
        self.concurrency = concurrency
        """At most this many calls of this tool run at once (per event loop)."""
        self.rate_limit = rate_limit
        """At most this many calls start in any window of one second (per event loop): see
        :meth:`limits`."""
        self.fallback = fallback
        """Another tool answering (with the same arguments) when this one fails for good."""
        self.fallback_value = fallback_value
        self.is_async = inspect.iscoroutinefunction(fn)
        self._result: TypeAdapter[Any] | None = None
        self.args_model: type[BaseModel] = create_model(f"{self.name}_arguments")
        """The pydantic model of the arguments."""
        self._signature = inspect.Signature()
        self.takes_key = False
        """The tool has an ``idempotency_key`` parameter, filled with the call's stable key."""
        if not callable(fn):
            problems.append(Problem(ProblemCode.BAD_TOOL, f"{who}{fn!r} is not callable: give a function (sync or "
                                    "async) with typed parameters", self.name))
        else:
            self._read_signature(fn, who, problems)
        if self.effect is Effect.IDEMPOTENT and callable(fn) and not self.takes_key:
            problems.append(Problem(ProblemCode.BAD_TOOL, f"{who}effect='idempotent' but it takes no {KEY_PARAMETER} "
                                    f"parameter: add `{KEY_PARAMETER}: str` and pass it to the remote API, so "
                                    "a call run again after a crash is recognised", self.name))
        self._problems = tuple(problems)
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Limits] = \
            weakref.WeakKeyDictionary()

    def _read_signature(self, fn: Callable[..., Any], who: str, problems: list[Problem]) -> None:
        try:
            self._signature = inspect.signature(fn)
            hints = typing.get_type_hints(fn, include_extras=True)
        except (TypeError, ValueError) as exc:
            problems.append(Problem(ProblemCode.BAD_TOOL, f"{who}its signature cannot be read ({exc}): wrap it in a "
                                    "def with typed parameters", self.name))
            return
        except NameError as exc:
            problems.append(Problem(ProblemCode.BAD_TOOL, f"{who}a type hint does not resolve ({exc}): import or "
                                    "define that name at module level", self.name))
            return
        self.takes_key = KEY_PARAMETER in self._signature.parameters
        try:
            self.args_model = _args_model(self.name, self._signature, hints)
        except TypeError as exc:
            problems.append(Problem(ProblemCode.BAD_TOOL, str(exc), self.name))
        ret = hints.get("return", NOT_GIVEN)
        if ret is not NOT_GIVEN and ret is not Any:
            try:
                self._result = TypeAdapter(ret)
            except Exception as exc:  # pydantic cannot validate that type
                problems.append(Problem(ProblemCode.BAD_TOOL, f"{who}its result type {ret!r} cannot be validated "
                                        f"({type(exc).__name__}): annotate -> Any or a pydantic-compatible "
                                        "type", self.name))

    def definition_problems(self) -> list[Problem]:
        """What is wrong with this tool's declaration, its retry policy included; empty when none.

        ``bad-tool`` for a tool that cannot be called as declared (not callable, ``*args``,
        positional-only parameters, unresolvable hints); ``bad-option`` for a bad option value.
        """
        return list(self._problems)

    def refuse_if_broken(self) -> None:
        """Raise ``ValueError`` listing the definition problems, if any (calling such a tool)."""
        if self._problems:
            listed = "\n".join(f"  - {p}" for p in self._problems)
            raise ValueError(f"tool {self.name!r} cannot be called: its declaration has problems (the "
                             f"checker reports them for a workflow):\n{listed}")

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

    def dump_result(self, value: Any) -> Any:
        """The result as JSON data, for the journal (``TypeError`` when it has no JSON form)."""
        try:
            if self._result is not None:
                return self._result.dump_python(value, mode="json")
            return to_jsonable_python(value)
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            raise TypeError(f"tool {self.name!r} returned {type(value).__name__}, which cannot be journaled as "
                            f"JSON ({exc}): annotate its result with a pydantic-serializable type") from None

    def load_result(self, data: Any) -> Any:
        """A journaled result back as the tool's result type."""
        if self._result is None:
            return data
        return self._result.validate_python(data)

    def dump_arguments(self, arguments: dict[str, Any]) -> Any:
        """The arguments as JSON data, for the journal (their ``repr`` when they have no JSON form)."""
        try:
            return to_jsonable_python(arguments)
        except (PydanticSerializationError, ValueError, TypeError):
            return {k: repr(v)[:200] for k, v in arguments.items()}

    def limits(self, loop: asyncio.AbstractEventLoop) -> _Limits:
        """This tool's semaphore and rate window on ``loop`` (asyncio primitives belong to one loop).

        The rate limit is a sliding window over actual starts: a call starts only when fewer than
        ``floor(rate_limit)`` calls started in the closed second before it, so no window of one
        second, however placed, holds more than ``rate_limit`` starts (a spaced schedule of
        1/rate would fit rate+1 starts into [0 s, 1 s]). Bursts up to the rate start at once.
        A rate below 1 means one start per ``1/rate_limit`` seconds.
        """
        lim = self._limits.get(loop)
        if lim is None:
            lim = self._limits[loop] = _Limits(
                asyncio.Semaphore(self.concurrency) if self.concurrency else None, self.rate_limit)
        return lim

    def __repr__(self) -> str:
        return f"<Tool {self.name!r}>"


class _Limits:
    """One tool's concurrency semaphore and rate window on one event loop."""

    __slots__ = ("capacity", "clock", "semaphore", "starts", "window")

    def __init__(self, semaphore: asyncio.Semaphore | None, rate: float | None) -> None:
        self.semaphore = semaphore
        self.capacity = 0
        self.window = 1.0
        if rate:
            # At most `capacity` starts in any closed window of `window` seconds.
            self.capacity = max(1, math.floor(rate))
            self.window = 1.0 if rate >= 1 else 1.0 / rate
        self.starts: collections.deque[float] = collections.deque(maxlen=self.capacity or None)
        self.clock: Clock | None = None

    async def start(self, clock: Clock) -> None:
        """Wait (on ``clock``) until one more start keeps every window within the rate; record it."""
        if clock is not self.clock:
            self.clock, self.starts = clock, collections.deque(maxlen=self.capacity)
        starts = self.starts
        while True:
            now = clock.now()
            if len(starts) < self.capacity:
                break
            free = starts[0] + self.window  # a start now must come strictly after this instant
            if now > free:
                break
            await clock.sleep(math.nextafter(free, math.inf) - now)
        starts.append(now)  # the deque drops the oldest: only the last `capacity` starts matter


def _args_model(name: str, sig: inspect.Signature, hints: dict[str, Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.name == KEY_PARAMETER:
            continue  # filled by the runner with the call's key, never by a caller
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
    """The tools of one workflow, by name.

    Adding a second tool of a name already taken does not raise: the checker reports it
    (``duplicate-tool``). Iterating gives every tool added, duplicates included, in order (what
    the checker sees); :meth:`get`, :meth:`names` and ``in`` know the first tool of each name.
    """

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._added: list[Tool] = []
        for t in tools:
            self.add(t)

    def add(self, tool: Tool) -> Tool:
        """Register ``tool`` (a duplicate name is kept for the checker; the first tool answers)."""
        self._added.append(tool)
        self._tools.setdefault(tool.name, tool)
        return tool

    def get(self, name: str) -> Tool | None:
        """The (first) tool called ``name``, if any."""
        return self._tools.get(name)

    def unique(self) -> list[Tool]:
        """The first tool of each name, in registration order."""
        return list(self._tools.values())

    def duplicates(self) -> list[Tool]:
        """Tools added under a name another tool already had, in order."""
        return [t for t in self._added if self._tools[t.name] is not t]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> typing.Iterator[Tool]:
        return iter(self._added)

    def __len__(self) -> int:
        return len(self._added)

    def names(self) -> list[str]:
        """Every registered name, once each, in registration order."""
        return list(self._tools)


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
