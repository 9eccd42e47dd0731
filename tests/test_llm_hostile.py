"""The model client against a hostile server on 127.0.0.1 (issue 16, group 5): huge bodies, gzip and
deflate bombs, trickled bytes, a 10,000-call tool round, and the API key echoed across the cut and
encoded. The server is the real HTTP one of ``llm.testing``; bodies too big to hold are made piece
by piece as they are sent (``FakeResponse(chunks=...)``). Time is a FakeClock for retry waits; the
only real waits are the trickle cases' one-second deadlines."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import time
import tracemalloc
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine_agent import Context, Workflow
from statemachine_agent.clock import FakeClock
from statemachine_agent.errors import ModelAnswerInvalid, ModelError, ModelRefused, ModelUnavailable
from statemachine_agent.llm import ChatModel, LLMPolicy, ModelReplyTooLarge, llm_step
from statemachine_agent.llm.testing import FakeOpenAIServer, FakeRequest, FakeResponse, chat_reply
from statemachine_agent.stores import MemoryStore, SQLiteStore

CAP = 1024 * 1024
MiB = 1024 * 1024


async def ask(chat: ChatModel) -> Any:
    try:
        return await chat.tool_round([{"role": "user", "content": "hi"}], [], attempt=1, site=None)
    finally:
        await chat.aclose()


def content_chunks(total: int) -> Iterator[bytes]:
    """A well-formed reply whose content is ``total`` bytes of ``x``, made as it is sent."""
    yield b'{"choices":[{"index":0,"message":{"role":"assistant","content":"'
    piece = b"x" * 65536
    for _ in range(total // len(piece)):
        yield piece
    yield b'"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}'


def peak_of(coro_fn: Any) -> tuple[Any, int]:
    """What ``coro_fn()`` returned or raised, and the peak of memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        try:
            outcome: Any = asyncio.run(coro_fn())
        except Exception as exc:
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- 1. the body-size cap ------------------------------------------------------------------------

def test_a_100_mb_reply_is_cut_at_the_cap_and_memory_stays_bounded() -> None:
    """100 MB streamed without Content-Length: ModelReplyTooLarge (not retried) once the cap is
    passed; the peak of allocated memory stays well under 4x the cap."""
    with FakeOpenAIServer([FakeResponse(chunks=lambda: content_chunks(100 * MiB))]) as server:
        chat = ChatModel(base_url=server.url, model="fake", max_reply_bytes=CAP)
        outcome, peak = peak_of(lambda: ask(chat))
        requests = len(server.requests)
    assert isinstance(outcome, ModelReplyTooLarge), outcome
    assert isinstance(outcome, ModelError) and outcome.limit == CAP
    assert f"max_reply_bytes={CAP}" in str(outcome) and "raise max_reply_bytes" in str(outcome)
    assert requests == 1  # the same request would get the same answer: not retried
    assert peak < 4 * CAP, f"peak {peak / MiB:.1f} MiB for a cap of {CAP / MiB:.0f} MiB"


def test_a_declared_content_length_past_the_cap_is_refused_before_reading() -> None:
    with FakeOpenAIServer([FakeResponse(raw=b"x" * (CAP + 1))]) as server:
        chat = ChatModel(base_url=server.url, model="fake", max_reply_bytes=CAP)
        with pytest.raises(ModelReplyTooLarge, match=f"says {CAP + 1} bytes"):
            asyncio.run(ask(chat))


def test_a_reply_just_under_the_cap_is_read_whole_and_its_content_kept_to_256_kib() -> None:
    """The usage comes last in the body: it is read, so the body was read whole."""
    reply = chat_reply("y" * (CAP - 400), prompt_tokens=77)
    with FakeOpenAIServer([reply]) as server:
        chat = ChatModel(base_url=server.url, model="fake", max_reply_bytes=CAP)
        exchange = asyncio.run(ask(chat))
    assert exchange.reply.problem is None and exchange.reply.input_tokens == 77
    assert exchange.reply.content == "y" * (256 * 1024)


def _deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODINGS = {"gzip": gzip.compress, "deflate": zlib.compress, "raw-deflate": _deflate_raw}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_compression_bomb_is_not_inflated_past_the_cap(encoding: str) -> None:
    """10 MB of zeros, compressed to a few KB: cut at the cap after decompression, in bounded memory."""
    bomb = ENCODINGS[encoding](b"\0" * (10 * MiB))
    assert len(bomb) < 64 * 1024
    header = "deflate" if encoding == "raw-deflate" else encoding
    with FakeOpenAIServer([FakeResponse(raw=bomb, headers={"Content-Encoding": header})]) as server:
        chat = ChatModel(base_url=server.url, model="fake", max_reply_bytes=CAP)
        outcome, peak = peak_of(lambda: ask(chat))
    assert isinstance(outcome, ModelReplyTooLarge), outcome
    assert "counted after decompression" in str(outcome)
    assert peak < 4 * CAP, f"peak {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_compressed_reply_under_the_cap_is_read(encoding: str) -> None:
    body = json.dumps(chat_reply("fine " * 1000).body).encode()
    header = "deflate" if encoding == "raw-deflate" else encoding
    with FakeOpenAIServer([FakeResponse(raw=ENCODINGS[encoding](body), headers={"Content-Encoding": header})]) \
            as server:
        exchange = asyncio.run(ask(ChatModel(base_url=server.url, model="fake")))
    assert exchange.reply.content == "fine " * 1000


def test_damaged_compressed_data_and_an_unasked_encoding_are_model_unavailable() -> None:
    script = [FakeResponse(raw=b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"}),
              FakeResponse(raw=b"{}", headers={"Content-Encoding": "br"})]
    for response in script:
        with FakeOpenAIServer([response]) as server:
            chat = ChatModel(base_url=server.url, model="fake", retries=2, backoff=0)
            with pytest.raises(ModelUnavailable, match=r"damaged|not asked for"):
                asyncio.run(ask(chat))
            assert len(server.requests) == 2  # retried: another answer may be whole


@pytest.mark.parametrize("bad", [0, 1023, -5, True, 1.5, "8MiB", None])
def test_max_reply_bytes_must_be_a_whole_number_of_at_least_1024(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_reply_bytes="):
        ChatModel(base_url="http://127.0.0.1:1/v1", model="fake", max_reply_bytes=bad)


# --- 2. one deadline per request -----------------------------------------------------------------

def drip() -> Iterator[bytes]:
    for _ in range(10_000):
        yield b" "


def test_a_trickling_server_is_cut_at_the_deadline_each_retry_too() -> None:
    """One byte every 0.2 s: each attempt is cut after timeout=1 s, whole (not per read); two
    attempts end within 3 s, with ModelUnavailable saying why."""
    with FakeOpenAIServer([FakeResponse(chunks=drip, pause=0.2)]) as server:
        chat = ChatModel(base_url=server.url, model="fake", timeout=1, retries=2)
        wf = Workflow("slow", Doc)
        wf.add_state("work", llm_step(chat, write="summary", output=str, prompt="go", max_attempts=1),
                     initial=True, writes=["summary"])
        wf.terminal("done")
        wf.terminal("down", outcome="failure")
        wf.transition("work", "done")
        wf.on_error("work", ModelError, "down")
        clock = FakeClock()
        t0 = time.monotonic()

        async def go() -> Any:
            return await asyncio.wait_for(wf.compile().run(Doc(), clock=clock, raise_errors=False), 20)

        result = asyncio.run(go())
        took = time.monotonic() - t0
        requests = len(server.requests)
    assert result.terminal == "down" and isinstance(result.path[0].error, ModelUnavailable)
    assert "no answer within 1.0 s" in str(result.path[0].error)
    assert requests == 2 and len(clock.sleeps) == 1  # the retry waited on the run's clock
    assert 1.9 < took < 3.0, took


# --- 3. the journal keeps the parsed reply ---------------------------------------------------------

class Doc(Context):
    text: str = "a text"
    summary: str | None = None


def doc_workflow(chat: ChatModel) -> Any:
    wf = Workflow("doc", Doc)
    wf.add_state("work", llm_step(chat, write="summary", output=str, prompt="go", max_attempts=1),
                 initial=True, writes=["summary"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("work", "done")
    wf.on_error("work", ModelAnswerInvalid, "failed")
    return wf.compile()


def test_the_journal_keeps_the_parsed_reply_not_the_body_and_replay_answers_from_it(tmp_path: Path) -> None:
    """A 3 MB body (a valid answer beside 3 MB of junk the server added) adds a small row to the
    store, not the body; the replay answers from that row and asks nothing."""
    reply = chat_reply('{"value": "short"}')
    body = {**reply.body, "junk": "j" * (3 * MiB)}
    with FakeOpenAIServer([FakeResponse(200, body)]) as server:
        store = SQLiteStore(tmp_path / "runs.db")
        compiled = doc_workflow(ChatModel(base_url=server.url, model="fake"))
        result = compiled.run_sync(Doc(), store=store, run_id="r1", clock=FakeClock())
        assert result.terminal == "done" and result.context.summary == "short"
        (row,) = [c for c in store.load("r1").result().calls if c.tool == "model:fake"]
        assert row.result["reply"]["content"] == '{"value": "short"}'
        assert len(json.dumps(row.result)) < 1000
        report = compiled.replay_sync("r1", store=store)
        assert report.reason == "" and len(server.requests) == 1
        store.close()
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk < 1 * MiB, on_disk


def test_long_texts_are_cut_before_they_are_journaled() -> None:
    """A 2 MB content (under the 8 MiB body cap): the journal keeps its first 256 KiB."""
    with FakeOpenAIServer([chat_reply("z" * (2 * MiB))]) as server:
        store = MemoryStore()
        compiled = doc_workflow(ChatModel(base_url=server.url, model="fake"))
        result = compiled.run_sync(Doc(), store=store, run_id="r1", clock=FakeClock(), raise_errors=False)
        (row,) = [c for c in store.load("r1").result().calls if c.tool == "model:fake"]
    assert result.terminal == "failed"  # "zzz..." is not JSON: the answer is invalid
    assert row.result["reply"]["content"] == "z" * (256 * 1024)


# --- 4 and 6. tool calls per round -----------------------------------------------------------------

class ToolCtx(Context):
    a: str | None = None


def tool_workflow(chat: ChatModel, ran: list[str], **options: Any) -> Workflow[ToolCtx]:
    wf = Workflow("tooling", ToolCtx)

    @wf.tool
    def lookup(q: str) -> str:
        """Look something up."""
        ran.append(q)
        return f"found {q}"

    wf.add_state("work", llm_step(chat, write="a", output=str, prompt="go", tools=["lookup"], **options),
                 initial=True, writes=["a"], tools=["lookup"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("work", "done")
    wf.on_error("work", ModelAnswerInvalid, "failed")
    return wf


def many_calls(n: int) -> FakeResponse:
    return chat_reply(None, tool_calls=[("lookup", {"q": str(i)}) for i in range(n)])


def test_a_round_of_10000_calls_runs_only_the_cap_quickly_and_the_model_is_told() -> None:
    ran: list[str] = []
    with FakeOpenAIServer([many_calls(10_000), chat_reply('{"value": "ok"}')]) as server:
        wf = tool_workflow(ChatModel(base_url=server.url, model="fake"), ran, max_rounds=1)
        t0 = time.perf_counter()
        result = wf.compile().run_sync(ToolCtx(), clock=FakeClock())
        took = time.perf_counter() - t0
        requests = list(server.requests)
    assert result.terminal == "done" and result.context.a == "ok"
    assert ran == [str(i) for i in range(16)]  # the default cap, the first ones
    assert took < 5.0, took
    messages = requests[1].body["messages"]
    assert len(messages[2]["tool_calls"]) == 16 and [m["role"] for m in messages].count("tool") == 16
    assert "You asked for 10000 tool calls in one round; only the first 16 were run" in messages[-1]["content"]
    assert len(json.dumps(requests[1].body)) < 20_000


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=3), st.integers(1, 8), st.integers(1, 3))
def test_tool_calls_never_exceed_the_cap_per_round_nor_the_checkers_bound(rounds: list[int], cap: int,
                                                                          max_rounds: int) -> None:
    ran: list[str] = []
    script = [many_calls(n) for n in rounds] + [chat_reply('{"value": "ok"}')]
    with FakeOpenAIServer(script) as server:
        wf = tool_workflow(ChatModel(base_url=server.url, model="fake"), ran, max_rounds=max_rounds,
                           max_tool_calls=cap, max_attempts=1)
        bound = wf.analyze().worst_case_model_tool_calls
        wf.compile().run_sync(ToolCtx(), clock=FakeClock(), raise_errors=False)
    assert bound == max_rounds * cap
    expected: list[str] = []
    for n in rounds[:max_rounds]:
        if n == 0:
            break  # a round with no call ends the tool rounds
        expected += [str(i) for i in range(min(n, cap))]
    assert ran == expected and len(ran) <= bound


def test_the_checker_counts_tool_calls_of_every_llm_step_times_its_visits() -> None:
    chat = ChatModel(base_url="http://127.0.0.1:1/v1", model="fake")
    wf = tool_workflow(chat, [], max_rounds=2, max_tool_calls=5)
    assert wf.analyze().worst_case_model_tool_calls == 10
    plain = Workflow("plain", ToolCtx)
    plain.add_state("work", llm_step(chat, write="a", output=str, prompt="go"), initial=True, writes=["a"])
    plain.terminal("done")
    plain.transition("work", "done")
    assert plain.analyze().worst_case_model_tool_calls == 0  # no tools: no tool calls


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, 1025])
def test_max_tool_calls_must_be_a_whole_number_from_1_to_1024(bad: Any) -> None:
    chat = ChatModel(base_url="http://127.0.0.1:1/v1", model="fake")
    with pytest.raises(ValueError, match="max_tool_calls="):
        llm_step(chat, write="a", output=str, prompt="go", tools=["lookup"], max_tool_calls=bad)


# --- 5. the key never shows --------------------------------------------------------------------------

KEY = "sk-CANARY-12345678abcdefgh+/=~xyz"


def encodings(key: str) -> dict[str, str]:
    """The key as a hostile server may echo it; the base64 forms are the characters that depend on
    the key alone, whatever comes before it (three alignments) or after."""
    forms = {"plain": key, "url": urllib.parse.quote(key, safe=""), "url+": urllib.parse.quote_plus(key),
             "url-lower": urllib.parse.quote(key, safe="").replace("%2B", "%2b").replace("%3D", "%3d")}
    for prefix in ("", "u:", "us:", "Bearer "):
        for name, enc in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            whole = enc((prefix + key + "!!").encode()).decode()
            forms[f"{name}({prefix!r}+key)"] = whole
    return forms


def cores(key: str) -> list[str]:
    """What must never appear: the key, its URL forms, and the key-only middle of each base64 form."""
    out = [key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)]
    for prefix in ("", "u:", "us:"):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            out.append(enc((prefix + key + "!!").encode()).decode()[4:-4])
    return out


def echo_all(key: str) -> str:
    return " | ".join(f"{name}: {text}" for name, text in encodings(key).items())


def hostile(request: FakeRequest, index: int) -> FakeResponse:
    """Echo the key at each turn, in every encoding and across the old 300-character cut."""
    key = request.headers["authorization"].removeprefix("Bearer ")
    across = "e" * 290 + f"Bearer {key}"  # the key straddles character 300
    tools_round = request.body.get("tool_choice") == "auto"
    if index == 0:  # a tool round: a 500 echoing the key (retried)
        return FakeResponse(500, {"error": {"message": across + echo_all(key)}})
    if index == 1:  # a tool call whose arguments, id and name carry the key
        reply = chat_reply(None, tool_calls=[("lookup", {"q": across + echo_all(key)})])
        reply.body["choices"][0]["message"]["tool_calls"][0]["id"] = f"id-{key}"
        return reply
    if tools_round:  # done with tools: prose that carries it
        return chat_reply(across + echo_all(key))
    if index == 3:  # the answer: not JSON, the key after the 2000-character cut of such bodies
        return FakeResponse(200, raw=("n" * 1990 + key + echo_all(key)).encode())
    if index == 4:  # a valid answer carrying the key, JSON-escaped too
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        raw = json.dumps(chat_reply(json.dumps({"value": across + echo_all(key) + " ESCAPED"})).body)
        return FakeResponse(200, raw=raw.replace("ESCAPED", escaped).encode())
    return FakeResponse(401, {"error": {"message": f"bad key {across} {echo_all(key)}"}})  # the decision


def canary_workflow(chat: ChatModel, ran: list[str]) -> Any:
    wf = Workflow("canary", ToolCtx)

    @wf.tool
    def lookup(q: str) -> str:
        """Look something up."""
        ran.append(q)
        return f"found {q}"

    wf.add_state("work", llm_step(chat, write="a", output=str, prompt="go", tools=["lookup"], max_rounds=3,
                                  max_attempts=2),
                 initial=True, writes=["a"], tools=["lookup"])
    wf.add_state("decide", lambda ctx: None, decision=True, reads=["a"])
    wf.terminal("done")
    wf.terminal("refused", outcome="failure")
    wf.transition("work", "decide")
    wf.transition("decide", "done", name="finish", description="all is well")
    wf.transition("decide", "refused", name="give_up", description="it is not")
    wf.on_error("decide", ModelRefused, "refused")
    return wf.compile()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_key_never_shows_in_any_output_in_any_encoding(kind: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A server echoing the key everywhere (errors across the old 300-character cut, tool calls,
    prose, a non-JSON body past its 2000-character cut, a JSON-escaped answer, a 401), plain,
    URL-encoded and base64-encoded at every alignment: the key is in no exception text, journal
    row (store file bytes), event, log record, result, context field or tool argument."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "runs.db"
    store = MemoryStore() if kind == "memory" else SQLiteStore(path)
    ran: list[str] = []
    seen: list[str] = []
    with FakeOpenAIServer(hostile) as server:
        chat = ChatModel(base_url=server.url, model="fake", retries=2, backoff=0)
        result = canary_workflow(chat, ran).run_sync(
            ToolCtx(), policy=LLMPolicy(chat=chat), store=store, run_id="canary", clock=FakeClock(),
            raise_errors=False, hooks=[lambda e: seen.append(repr(e))])
        requests = list(server.requests)
    assert len(requests) == 6 and all(r.headers["authorization"] == f"Bearer {KEY}" for r in requests)
    assert result.terminal == "refused" and isinstance(result.path[-1].error, ModelRefused)
    assert len(ran) == 1 and "<the API key>" in ran[0]
    assert result.context.a is not None and "<the API key>" in result.context.a
    stored = store.load("canary").result().model_dump_json()
    texts = {"result": json.dumps(result.to_dict()), "stored": stored, "events": "\n".join(seen),
             "logs": caplog.text, "tool arguments": "\n".join(ran), "context": result.context.a,
             "errors": "\n".join(str(s.error) + repr(s.error) for s in result.path if s.error is not None),
             "rejected": "\n".join(why for s in result.path for why in s.rejected)}
    store.close()
    if kind == "sqlite":
        texts["file bytes"] = "".join(p.read_bytes().decode("latin-1") for p in tmp_path.iterdir())
    assert "HTTP 401" in texts["errors"] and "<the API key>" in texts["stored"]
    for where, text in texts.items():
        for form in cores(KEY):
            assert form not in text, f"the key ({form!r}) shows in {where}"


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=8, max_size=40),
       st.text(max_size=5), st.integers(0, 400))
def test_the_scrubber_finds_the_key_in_every_encoding_at_every_place(key: str, prefix: str, pad: int) -> None:
    from statemachine_agent.llm._secrets import Scrubber

    scrub = Scrubber(key).text
    for form in encodings(key).values():
        text = "p" * pad + form + "q"
        assert key not in scrub(text)
    assert key not in scrub(prefix + key + prefix)
    wrapped = base64.b64encode((prefix + key).encode()).decode()
    start = -(-8 * len(prefix.encode()) // 6)
    end = 8 * len((prefix + key).encode()) // 6
    assert wrapped[start:end] not in scrub(wrapped)


# --- what else stays as it was -------------------------------------------------------------------

class OldJournal(MemoryStore):
    """A store whose model rows are in the form journaled before replies were kept parsed: the
    server's body under ``response``."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        self.body = body

    def commit(self, commit: dict[str, Any]) -> Any:
        for call in commit.get("calls", ()):
            if call["tool"].startswith("model:") and isinstance(call.get("result"), dict):
                result = dict(call["result"])
                del result["reply"]
                call["result"] = {**result, "response": self.body}
        return super().commit(commit)


def test_a_run_journaled_with_raw_bodies_still_replays_from_its_record() -> None:
    reply = chat_reply('{"value": "from the old record"}')
    store = OldJournal(reply.body)
    with FakeOpenAIServer([reply]) as server:
        compiled = doc_workflow(ChatModel(base_url=server.url, model="fake"))
        compiled.run_sync(Doc(), store=store, run_id="r1", clock=FakeClock())
        (row,) = [c for c in store.load("r1").result().calls if c.tool == "model:fake"]
        assert "response" in row.result and "reply" not in row.result
        report = compiled.replay_sync("r1", store=store)
        assert report.reason == "" and len(server.requests) == 1


def test_cancelling_a_run_while_the_body_trickles_in_leaks_no_task() -> None:
    """Cancelled mid-body: the connection is let go, no task is left, and the run can go on."""
    def script(_: FakeRequest, i: int) -> FakeResponse:
        return FakeResponse(chunks=drip, pause=0.05) if i == 0 else chat_reply('{"value": "later"}')

    with FakeOpenAIServer(script) as server:
        chat = ChatModel(base_url=server.url, model="fake", timeout=30.0)
        compiled = doc_workflow(chat)

        async def go() -> Any:
            run = compiled.start(Doc(), clock=FakeClock())
            task = asyncio.create_task(run.run_to_end())
            for _ in range(2000):  # until the body has begun (we wait for it, no timing assumption)
                if server.requests:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)  # a few trickled bytes in
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
            assert run.path == [] and not run.done
            result = await run.run_to_end()
            await chat.aclose()
            return result

        result = asyncio.run(go())
        assert len(server.requests) == 2
    assert result.terminal == "done" and result.context.summary == "later"


def test_an_llm_policy_made_from_a_url_takes_max_reply_bytes() -> None:
    wf = Workflow("pick", Doc)
    wf.add_state("decide", lambda ctx: None, decision=True, initial=True)
    wf.terminal("a")
    wf.terminal("b")
    wf.terminal("failed", outcome="failure")
    wf.transition("decide", "a", name="go_a", description="take a")
    wf.transition("decide", "b", name="go_b", description="take b")
    with FakeOpenAIServer([chat_reply("go_a" + " " * 8000)]) as server:
        policy = LLMPolicy(base_url=server.url, model="fake", max_reply_bytes=4096)
        result = wf.compile().run_sync(Doc(), policy=policy, clock=FakeClock(), raise_errors=False)
    assert result.terminal == "failed" and isinstance(result.error, ModelReplyTooLarge)


def test_a_401_with_a_damaged_compressed_body_is_still_refused_without_retries() -> None:
    bad = FakeResponse(401, raw=b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"})
    with FakeOpenAIServer([bad]) as server:
        with pytest.raises(ModelRefused, match="HTTP 401: the reply's gzip data is damaged"):
            asyncio.run(ask(ChatModel(base_url=server.url, model="fake", retries=3, backoff=0)))
        assert len(server.requests) == 1
