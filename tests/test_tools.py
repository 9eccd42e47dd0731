"""Tools: validation, the per-state handle, gather, timeouts, tenacity retries, fallbacks, routing."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_agent import Context, DefinitionError, Workflow
from statemachine_agent.clock import FakeClock
from statemachine_agent.errors import (
    GatherFailed,
    ToolArgumentError,
    ToolFailed,
    ToolResultError,
    ToolTimeout,
    UndeclaredTool,
    UnknownTool,
)
from statemachine_agent.events import (
    Event,
    ToolAttemptFailed,
    ToolCallFailed,
    ToolCallFinished,
    ToolCallStarted,
)
from statemachine_agent.tools import Retry, Tool, ToolRegistry, Tools


class Ctx(Context):
    """Results land here."""

    query: str = "q"
    out: Any = None


def handle(*tools: Tool, clock: FakeClock | None = None, deadline: float | None = None) -> Tools:
    """A handle allowed to call every given tool, outside any run."""
    return Tools(ToolRegistry(tools), frozenset(t.name for t in tools), clock=clock, deadline=deadline)


async def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


def test_arguments_are_validated_and_coerced() -> None:
    """Arguments go through pydantic: coerced when lossless, rejected naming the field otherwise."""
    tools = handle(Tool(add))
    assert asyncio.run(tools.call("add", a="2", b=3)) == 5
    assert asyncio.run(tools.call("add", 4)) == 5
    with pytest.raises(ToolArgumentError, match=r"tool 'add' got bad arguments: a: Input should be a valid "
                                                r"integer") as info:
        asyncio.run(tools.call("add", a="two"))
    assert info.value.fields == ("a",)
    with pytest.raises(ToolArgumentError, match="c: Extra inputs are not permitted"):
        asyncio.run(tools.call("add", a=1, c=2))
    with pytest.raises(ToolArgumentError, match="a: Field required"):
        asyncio.run(tools.call("add"))


def test_result_is_validated() -> None:
    """A result that does not fit the declared return type fails the call with ToolResultError."""

    async def count(text: str) -> int:
        return text  # type: ignore[return-value]

    with pytest.raises(ToolFailed) as info:
        asyncio.run(handle(Tool(count)).call("count", text="many"))
    assert isinstance(info.value.last, ToolResultError)
    assert "tool 'count' returned str 'many', which does not fit its result type" in str(info.value.last)


def test_schema_for_function_calling() -> None:
    """Each tool exposes the JSON schema of its arguments, with its docstring as description."""
    schema = Tool(add).schema()
    assert schema["name"] == "add"
    assert schema["description"] == "Add two numbers."
    assert schema["parameters"]["required"] == ["a"]
    assert schema["parameters"]["properties"]["b"] == {"default": 1, "title": "B", "type": "integer"}


def test_unknown_and_undeclared_tools_name_the_fix() -> None:
    """Calling an unregistered tool or one the state did not declare says what to do."""
    registry = ToolRegistry([Tool(add)])
    tools = Tools(registry, frozenset(), state="plan")
    with pytest.raises(UnknownTool, match="no tool named 'ad' is registered; registered: 'add'"):
        asyncio.run(tools.call("ad", a=1))
    with pytest.raises(UndeclaredTool, match=r"add 'add' to tools=\[...\] of state 'plan'"):
        asyncio.run(tools.call("add", a=1))


def test_sync_tools_run_in_worker_threads() -> None:
    """A sync tool runs off the event loop thread, so it never blocks other calls."""
    loop_thread = threading.get_ident()

    def where() -> int:
        return threading.get_ident()

    assert asyncio.run(handle(Tool(where)).call("where")) != loop_thread


def test_gather_runs_concurrently_in_call_order() -> None:
    """gather runs calls at once and returns results in call order."""

    async def nap(seconds: float, tag: str) -> str:
        await asyncio.sleep(seconds)
        return tag

    tools = handle(Tool(nap))

    async def main() -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        out = await tools.gather(tools.call("nap", 0.05, "a"), tools.call("nap", 0.01, "b"),
                                 tools.call("nap", 0.03, "c"))
        return out, time.perf_counter() - t0

    out, wall = asyncio.run(main())
    assert out == ["a", "b", "c"]
    assert wall < 0.09 * 3  # far below the sum: they overlapped


def test_gather_fail_fast_cancels_siblings_and_carries_failures() -> None:
    """Fail fast: the first failure cancels the rest, one GatherFailed carries every failure."""
    finished: list[str] = []

    async def slow() -> str:
        await asyncio.sleep(5)
        finished.append("slow")
        return "slow"

    async def broken() -> str:
        await asyncio.sleep(0.01)
        raise ConnectionError("down")

    tools = handle(Tool(slow), Tool(broken))

    async def main() -> None:
        t0 = time.perf_counter()
        with pytest.raises(GatherFailed) as info:
            await tools.gather(tools.call("slow"), tools.call("broken"))
        assert time.perf_counter() - t0 < 1
        [err] = info.value.errors
        assert isinstance(err, ToolFailed)
        assert isinstance(err.last, ConnectionError)
        await asyncio.sleep(0.05)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(main())
    assert finished == []


def test_gather_collect_returns_each_result_or_error() -> None:
    """Collect mode returns results and exceptions in call order."""

    async def maybe(fail: bool) -> str:
        if fail:
            raise ValueError("no")
        return "yes"

    tools = handle(Tool(maybe))
    out = asyncio.run(tools.gather(tools.call("maybe", False), tools.call("maybe", True),
                                   failures="collect"))
    assert out[0] == "yes"
    assert isinstance(out[1], ToolFailed)
    with pytest.raises(ValueError, match="use 'fail_fast' or 'collect'"):
        asyncio.run(tools.gather(tools.call("maybe", False), failures="sometimes"))  # type: ignore[arg-type]


def test_timeout_raises_tool_timeout_and_leaves_nothing_running() -> None:
    """A call past its timeout fails with a ToolTimeout attempt, and nothing keeps running."""
    stopped = asyncio.Event()
    clock = FakeClock()

    async def hang() -> None:
        try:
            await clock.sleep(3600)
        finally:
            stopped.set()

    async def main() -> None:
        with pytest.raises(ToolFailed, match=r"its timeout of 0\.02 s passed") as info:
            await handle(Tool(hang, timeout=0.02), clock=clock).call("hang")
        assert isinstance(info.value.last, ToolTimeout)
        assert info.value.last.scope == "call"
        assert stopped.is_set()

    asyncio.run(main())


def test_tool_timeouts_follow_the_handles_clock() -> None:
    """A tool's timeout and the state's deadline are measured on the handle's clock, not the
    loop's: real time passing (a busy machine) fires neither; fake time passing fires them."""
    clock = FakeClock(start=50.0)

    async def real_wait() -> str:
        await asyncio.sleep(0.05)  # real time passes, fake time does not
        return "done"

    async def fake_wait() -> str:
        await clock.sleep(0.002)
        return "late"

    tools = handle(Tool(real_wait, timeout=0.001), Tool(fake_wait, timeout=0.001), clock=clock,
                   deadline=clock.now() + 0.01)
    assert asyncio.run(tools.call("real_wait")) == "done"
    with pytest.raises(ToolFailed) as info:
        asyncio.run(tools.call("fake_wait"))
    assert isinstance(info.value.last, ToolTimeout)
    assert info.value.last.scope == "call"


def test_tools_own_timeout_error_is_not_ours() -> None:
    """A TimeoutError the tool raises itself is its failure, not a ToolTimeout."""

    async def upstream() -> None:
        raise TimeoutError("upstream said so")

    with pytest.raises(ToolFailed) as info:
        asyncio.run(handle(Tool(upstream, timeout=5)).call("upstream"))
    assert type(info.value.last) is TimeoutError


def test_retries_with_fake_clock_never_wait() -> None:
    """Retries follow the tenacity policy; the fake clock records waits instead of sleeping."""
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(time.perf_counter())
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    clock = FakeClock()
    tool = Tool(flaky, retry=Retry(attempts=3, backoff=10, max_delay=60, jitter=0))
    t0 = time.perf_counter()
    assert asyncio.run(handle(tool, clock=clock).call("flaky")) == "ok"
    assert time.perf_counter() - t0 < 1
    assert clock.sleeps == [10, 20]
    assert len(calls) == 3


def test_retries_exhausted_carry_every_attempt() -> None:
    """After the last attempt, ToolFailed holds each attempt's error in order."""
    n = 0

    async def down() -> None:
        nonlocal n
        n += 1
        raise ConnectionError(f"attempt {n}")

    with pytest.raises(ToolFailed, match="failed after 4 attempts") as info:
        asyncio.run(handle(Tool(down, retry=4), clock=FakeClock()).call("down"))
    assert [str(e) for e in info.value.errors] == ["attempt 1", "attempt 2", "attempt 3", "attempt 4"]


def test_never_retried_types_and_user_tenacity_objects() -> None:
    """`never` types fail at once; a user's own AsyncRetrying is used as given."""
    n = 0

    async def picky() -> None:
        nonlocal n
        n += 1
        raise PermissionError("no")

    with pytest.raises(ToolFailed):
        asyncio.run(handle(Tool(picky, retry=Retry(attempts=5, never=(PermissionError,))),
                           clock=FakeClock()).call("picky"))
    assert n == 1
    n = 0
    own = tenacity.AsyncRetrying(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_fixed(7))
    clock = FakeClock()
    with pytest.raises(ToolFailed):
        asyncio.run(handle(Tool(picky, retry=own), clock=clock).call("picky"))
    assert (n, clock.sleeps) == (2, [7])


def test_cancellation_is_never_retried() -> None:
    """Cancelling a call with a generous retry policy cancels it at once (tenacity issue #529)."""
    started = asyncio.Event()
    attempts = 0

    async def wait_forever() -> None:
        nonlocal attempts
        attempts += 1
        started.set()
        await asyncio.sleep(3600)

    tools = handle(Tool(wait_forever, retry=Retry(attempts=10, on=(BaseException,))), clock=FakeClock())

    async def main() -> None:
        task = asyncio.create_task(tools.call("wait_forever"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert attempts == 1


def test_state_deadline_is_never_retried() -> None:
    """A call cut by the state's tool deadline raises ToolTimeout(scope='state'), not retried."""
    attempts = 0

    clock = FakeClock(start=100.0)

    async def slow() -> None:
        nonlocal attempts
        attempts += 1
        await clock.sleep(3600)

    async def main() -> None:
        deadline = clock.now() + 0.03  # the deadline is on the clock's scale
        tools = handle(Tool(slow, retry=5, timeout=10), clock=clock, deadline=deadline)
        with pytest.raises(ToolTimeout) as info:
            await tools.call("slow")
        assert info.value.scope == "state"

    asyncio.run(main())
    assert attempts == 1


def test_fallbacks_answer_when_retries_are_exhausted() -> None:
    """A fallback tool (same arguments) or a fallback value answers a call that failed for good."""

    async def primary(q: str) -> str:
        raise ConnectionError("primary down")

    async def backup(q: str) -> str:
        return f"backup:{q}"

    async def optional(q: str) -> list[str]:
        raise ConnectionError("down too")

    registry = ToolRegistry([Tool(primary, retry=2, fallback="backup"), Tool(backup),
                             Tool(optional, fallback_value=[])])
    tools = Tools(registry, frozenset({"primary", "optional"}), clock=FakeClock())
    assert asyncio.run(tools.call("primary", q="x")) == "backup:x"
    assert asyncio.run(tools.call("optional", q="x")) == []


def test_concurrency_limit() -> None:
    """No more than `concurrency` calls of a tool run at once."""
    running = peak = 0

    async def busy() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1

    tools = handle(Tool(busy, concurrency=3))
    asyncio.run(tools.gather(*(tools.call("busy") for _ in range(12))))
    assert peak == 3


def test_rate_limit_never_fits_rate_plus_one_starts_into_a_second() -> None:
    """At rate 20, 21 calls made at once: 20 start at once, the 21st strictly after 1 s of the
    (fake) clock, so no closed 1-second window holds 21 starts (a 1/rate schedule put them at
    0, 0.05, ..., 1.0)."""
    clock = FakeClock()
    starts: list[float] = []

    async def ping() -> None:
        starts.append(clock.now())

    tools = handle(Tool(ping, rate_limit=20), clock=clock)

    async def main() -> None:
        for _ in range(21):
            await tools.call("ping")

    asyncio.run(main())
    assert starts[:20] == [0.0] * 20
    assert starts[20] > 1.0
    assert starts[20] - 1.0 < 1e-9  # and no later than needed


@settings(max_examples=60, deadline=None)
@given(outcomes=st.lists(st.sampled_from(["ok", "conn", "value"]), min_size=1, max_size=6),
       attempts=st.integers(1, 5))
def test_retry_property(outcomes: list[str], attempts: int) -> None:
    """For any sequence of failures: retried kinds are retried up to the limit, never more,
    and the call ends with the first success or the right error."""
    it = iter(outcomes)
    made = 0

    async def tool() -> str:
        nonlocal made
        made += 1
        kind = next(it, "ok")
        if kind == "conn":
            raise ConnectionError(made)
        if kind == "value":
            raise ValueError(made)
        return "ok"

    policy = Retry(attempts=attempts, on=(ConnectionError,), backoff=0, jitter=0)
    try:
        result: Any = asyncio.run(handle(Tool(tool, retry=policy), clock=FakeClock()).call("tool"))
    except ToolFailed as exc:
        result = exc
    padded = [*outcomes, "ok"]
    expected_made = 0
    for kind in padded:
        expected_made += 1
        if kind != "conn" or expected_made == attempts:
            break
    assert made == expected_made
    final = padded[expected_made - 1]
    if final == "ok":
        assert result == "ok"
    else:
        assert isinstance(result, ToolFailed)
        assert len(result.errors) == expected_made


# --- in a workflow ----------------------------------------------------------------------------

class _Flaky(BaseHTTPRequestHandler):
    """A loopback HTTP API: /flaky answers 503 twice then 200; /slow never answers."""

    hits = 0
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/slow":
            type(self).release.wait(10)  # never answers: the client gave up long before
            self.close_connection = True
            return
        if self.path == "/flaky":
            type(self).hits += 1
            if type(self).hits <= 2:
                self.send_response(503)
                self.end_headers()
                return
        body = b'{"answer": 42}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1, stopped after the test."""
    _Flaky.hits = 0
    _Flaky.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Flaky.release.set()
    server.shutdown()
    server.server_close()


def http_workflow(base: str, timeout: float = 0.5, client_timeout: float = 5) -> Workflow[Ctx]:
    """fetch calls a real HTTP tool; ToolTimeout and ToolFailed route to their own terminals."""
    wf = Workflow("http", Ctx)

    @wf.tool(timeout=timeout, retry=Retry(attempts=3, backoff=0.01, jitter=0, on=(urllib.error.HTTPError,)))
    def get(path: str) -> str:
        """GET a path of the API (sync: runs in a worker thread)."""
        with urllib.request.urlopen(base + path, timeout=client_timeout) as response:
            return str(response.read().decode())

    @wf.state(initial=True, reads=["query"], writes=["out"], tools=["get"])
    async def fetch(ctx: Ctx, tools: Tools) -> None:
        ctx.out = await tools.call("get", path=ctx.query)

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("too_slow", outcome="failure")
    wf.transition(fetch, "done")
    wf.on_error(fetch, ToolTimeout, "too_slow")
    wf.on_error(fetch, ToolFailed, "failed")
    return wf


def test_http_tool_retries_through_503s(api: str) -> None:
    """A real flaky API answers on the third attempt; events show each failed attempt."""
    events: list[Event] = []
    result = http_workflow(api).compile().run_sync(Ctx(query="/flaky"), hooks=[events.append])
    assert result.terminal == "done"
    assert result.context.out == '{"answer": 42}'
    kinds = [type(e) for e in events if type(e).__name__.startswith("Tool")]
    assert kinds == [ToolCallStarted, ToolAttemptFailed, ToolAttemptFailed, ToolCallFinished]
    [finished] = [e for e in events if isinstance(e, ToolCallFinished)]
    assert (finished.attempts, finished.fallback, finished.state) == (3, False, "fetch")


def test_http_tool_timeout_routes(api: str) -> None:
    """A slow API times out each attempt; the failure routes by the timeout's type.

    The server never answers, so the real clock's short timeouts always fire first, however busy
    the machine (a fake clock would never move while the thread waits). The abandoned threads
    give up after their own 0.3 s socket timeout (run_sync waits for them as it returns)."""
    events: list[Event] = []
    result = http_workflow(api, timeout=0.05, client_timeout=0.3).compile().run_sync(
        Ctx(query="/slow"), hooks=[events.append])
    assert result.terminal == "too_slow"  # routed by its cause, a ToolTimeout
    assert isinstance(result.path[0].error, ToolFailed)
    assert all(isinstance(e, ToolTimeout) for e in result.path[0].error.errors)
    assert any(isinstance(e, ToolCallFailed) for e in events)


def test_http_tool_refused_connection_fails_once() -> None:
    """A refused connection (URLError, not in `on`) is not retried; ToolFailed routes to 'failed'."""
    result = http_workflow("http://127.0.0.1:9").compile().run_sync(Ctx(query="/x"), clock=FakeClock())
    assert result.terminal == "failed"
    assert "tool 'get' failed after 1 attempt" in (result.reason or "")


def test_checker_knows_tools() -> None:
    """Unknown tools, undeclared calls, sync actions with tools and bad fallbacks are reported."""
    wf = Workflow("tooling", Ctx)

    @wf.tool(fallback="nowhere")
    async def search(q: str) -> str:
        return q

    @wf.state(initial=True, writes=["out"], tools=["serch"])
    async def act(ctx: Ctx, tools: Tools) -> None:
        ctx.out = await tools.call("search", q="x")

    @wf.state(writes=["out"], tools=["search"])
    def sync_act(ctx: Ctx, tools: Tools) -> None:
        pass

    @wf.state(tools=["search"])
    async def no_handle(ctx: Ctx) -> None:
        pass

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(act, sync_act).transition(sync_act, no_handle).transition(no_handle, "done")
    with pytest.raises(DefinitionError) as info:
        wf.check()
    messages = [p.message for p in info.value.problems]
    assert "tool 'search' falls back to 'nowhere', which is not a registered tool" in messages
    assert ("state 'act' declares tool 'serch', which is not registered (did you mean 'search'?): "
            "register it with @workflow.tool") in messages
    assert ("the action of state 'act' calls tool 'search' but the state does not declare it: add "
            "'search' to tools=[...]") in messages
    assert "state 'sync_act' calls tools, which are awaited: make its action async def" in messages
    assert ("state 'no_handle' declares tools but its action takes no tools handle: give it the "
            "signature async def (ctx, tools)") in messages


def test_tool_declaration_errors_are_recorded_not_raised() -> None:
    """Bad tool options are recorded as problems (for the checker's one DefinitionError), naming
    the tool and the option and saying what to give; nothing raises at declaration."""

    def varargs(*a: int) -> int:
        return 0

    def posonly(a: int, /) -> int:
        return a

    cases: list[tuple[Tool, str, str]] = [
        (Tool(add, name="search", timeout=0), "bad-option",
         "tool 'search': timeout=0 must be a positive number of seconds"),
        (Tool(add, timeout=float("nan")), "bad-option", "tool 'add': timeout=nan must be a positive"),
        (Tool(add, rate_limit=-1), "bad-option",
         "rate_limit=-1 must be a positive number of calls per second"),
        (Tool(add, concurrency=0), "bad-option", "concurrency=0 must be a whole number"),
        (Tool(add, retry="yes"), "bad-option",  # type: ignore[arg-type]
         "retry='yes' must be Retry(...), a tenacity AsyncRetrying, a number of attempts, or None"),
        (Tool(add, retry=0), "bad-option", "tool 'add': retry=0 must be a number of attempts of at least 1"),
        (Tool(add, retry=Retry(attempts=0)), "bad-option",
         "tool 'add': retry attempts=0 must be a whole number of at least 1"),
        (Tool(add, fallback="x", fallback_value=1), "bad-option", "not both"),
        (Tool(add, fallback=3), "bad-option", "fallback=3 must be the name of another tool"),  # type: ignore[arg-type]
        (Tool(varargs), "bad-tool", "*a parameters cannot be validated"),
        (Tool(posonly), "bad-tool", "positional-only"),
        (Tool(42, name="answer"), "bad-tool", "tool 'answer': 42 is not callable"),  # type: ignore[arg-type]
    ]
    for tool, code, message in cases:
        problems = tool.definition_problems()
        assert len(problems) == 1, (tool, problems)
        assert problems[0].code == code
        assert message in problems[0].message, problems[0].message
        assert problems[0].subject == tool.name
    assert Tool(add, timeout=1, retry=Retry(attempts=2), rate_limit=0.5).definition_problems() == []
    with pytest.raises(TypeError, match="pass name="):
        Tool(42)  # type: ignore[arg-type]  # nothing to call it by: cannot even be described


def test_retry_definition_problems() -> None:
    """Retry records each bad knob; build() refuses a policy that has any."""
    policy = Retry(attempts=0, backoff=-1, max_delay=float("inf"), jitter="x",  # type: ignore[arg-type]
                   on=ValueError, stop=5)  # type: ignore[arg-type]
    messages = [p.message for p in policy.definition_problems()]
    assert messages == [
        "Retry: retry attempts=0 must be a whole number of at least 1 (1: no retries)",
        "Retry: retry backoff=-1 must be a finite number of seconds >= 0",
        "Retry: retry max_delay=inf must be a finite number of seconds >= 0",
        "Retry: retry jitter='x' must be a finite number of seconds >= 0",
        "Retry: retry on=<class 'ValueError'> must be a tuple of exception classes, e.g. (ConnectionError,)",
        "Retry: retry stop=5 must be a tenacity stop strategy (e.g. tenacity.stop_...) or None",
    ]
    assert all(p.code == "bad-option" for p in policy.definition_problems())
    assert Retry().definition_problems() == []
    with pytest.raises(ValueError, match="attempts=0"):
        policy.build()


def test_calling_a_broken_tool_lists_its_problems() -> None:
    """Outside a checked workflow, calling a tool with definition problems raises ValueError."""
    tools = handle(Tool(add, timeout=0, concurrency=0))
    with pytest.raises(ValueError, match="tool 'add' cannot be called") as info:
        asyncio.run(tools.call("add", a=1))
    assert "timeout=0" in str(info.value)
    assert "concurrency=0" in str(info.value)


def test_duplicate_tool_names_are_kept_for_the_checker() -> None:
    """Registering a second tool of a name does not raise: get() answers the first, iteration
    shows both (the checker reports duplicate-tool)."""

    async def other(a: int) -> int:
        return -a

    first, second = Tool(add), Tool(other, name="add")
    registry = ToolRegistry([first, second])
    assert registry.get("add") is first
    assert list(registry) == [first, second]
    assert registry.names() == ["add"]
    assert registry.duplicates() == [second]
    assert asyncio.run(Tools(registry, frozenset({"add"})).call("add", a=1)) == 2
    assert [s["name"] for s in Tools(registry, frozenset({"add"})).schemas()] == ["add"]


# --- regressions found in review --------------------------------------------------------------

def test_state_deadline_bounds_rate_limit_and_backoff_waits() -> None:
    """The state's tool deadline cuts waits too: rate-limit slots and retry backoff."""

    async def ping() -> None:
        pass

    async def down() -> None:
        raise ConnectionError("down")

    async def main() -> None:
        clock = FakeClock()
        tools = handle(Tool(ping, rate_limit=1), clock=clock, deadline=clock.now() + 0.2)
        with pytest.raises(GatherFailed) as info:
            await tools.gather(*(tools.call("ping") for _ in range(3)))
        assert any(isinstance(e, ToolTimeout) and e.scope == "state" for e in info.value.errors)
        assert clock.now() < 2.5  # cut in the first rate-limit wait, not after both
        clock = FakeClock()
        slow_retry = handle(Tool(down, retry=Retry(attempts=5, backoff=1, jitter=0)), clock=clock,
                            deadline=clock.now() + 0.2)
        with pytest.raises(ToolTimeout) as timeout:
            await slow_retry.call("down")
        assert timeout.value.scope == "state"
        assert clock.sleeps == [1]  # the first backoff wait crossed the deadline

    asyncio.run(main())


def test_users_own_async_retrying_is_used_as_it_is() -> None:
    """Result-based retries and the user's before_sleep work with a user's AsyncRetrying."""
    answers = iter([None, None, "ok"])
    slept: list[int] = []

    async def maybe() -> str | None:
        return next(answers)

    policy = tenacity.AsyncRetrying(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_fixed(1),
                                    retry=tenacity.retry_if_result(lambda r: r is None),
                                    before_sleep=lambda state: slept.append(state.attempt_number))
    assert asyncio.run(handle(Tool(maybe, retry=policy), clock=FakeClock()).call("maybe")) == "ok"
    assert slept == [1, 2]


def test_sync_tool_keeps_its_slot_until_its_thread_ends() -> None:
    """concurrency=1 holds for sync tools even when calls time out and threads are abandoned."""
    running = peak = started = 0
    lock = threading.Lock()
    entered = threading.Semaphore(0)
    release = [threading.Event() for _ in range(3)]
    clock = FakeClock()

    def slow() -> None:
        nonlocal running, peak, started
        with lock:
            running += 1
            peak = max(peak, running)
            mine = started
            started += 1
        entered.release()
        release[mine].wait(10)
        with lock:
            running -= 1

    tools = handle(Tool(slow, concurrency=1, timeout=1), clock=clock)

    async def drive() -> None:
        for i in range(3):
            await asyncio.to_thread(entered.acquire)  # call i's thread is in the tool
            clock.advance(2)  # call i times out; its thread is abandoned, still running
            for _ in range(5):
                await asyncio.sleep(0)
            assert started == i + 1  # the next call waits for the slot the thread still holds
            release[i].set()

    async def main() -> list[Any]:
        out, _ = await asyncio.gather(tools.gather(*(tools.call("slow") for _ in range(3)),
                                                   failures="collect"), drive())
        return list(out)

    out = asyncio.run(main())
    assert all(isinstance(r, ToolFailed) and isinstance(r.last, ToolTimeout) for r in out)
    assert peak == 1


def test_failed_gather_routes_by_its_members_cause() -> None:
    """A timeout inside gather routes like a timeout of a single call."""
    wf = Workflow("gathered", Ctx)

    @wf.tool(timeout=0.01)
    async def slow() -> str:
        await asyncio.sleep(1)
        return "late"

    @wf.state(initial=True, writes=["out"], tools=["slow"])
    async def act(ctx: Ctx, tools: Tools) -> None:
        ctx.out = await tools.gather(tools.call("slow"), tools.call("slow"))

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.terminal("too_slow", outcome="failure")
    wf.transition(act, "done")
    wf.on_error(act, ToolTimeout, "too_slow")
    wf.on_error(act, ToolFailed, "failed")
    assert wf.compile().run_sync(Ctx()).terminal == "too_slow"
