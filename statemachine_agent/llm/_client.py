"""One model behind an OpenAI-compatible server: requests, retries, mode fallback, usage.

httpx speaks HTTP; tenacity retries 429 (after its Retry-After), 5xx and network errors, sleeping on
the run's clock, so tests never wait. A mode the server refuses (400, 404, 422, or 5xx on a mode
that never worked there) is remembered and the next mode of the profile is tried at once.

Whatever the server does, a request is bounded: each HTTP attempt, body included, ends within
``timeout`` (not per read); the body is streamed and counted after decompression, so no more than
``max_reply_bytes`` is ever held; every text the server sends is scrubbed of the API key before
it is cut, kept or shown; the journal keeps the parsed reply, its texts cut, not the raw body.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import time
import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential

from ..clock import Clock, SystemClock
from ..errors import ModelError, ModelRefused, ModelUnavailable
from ..tools import Tools
from ..usage import CallContent, ModelCall, Price
from ._protocol import (
    PROFILES,
    Mode,
    Profile,
    Reply,
    ServerKind,
    build_body,
    parse_reply,
    reply_from_record,
    reply_record,
    tools_body,
)
from ._secrets import scrubber

__all__ = ["DEFAULT_MAX_REPLY_BYTES", "ChatModel", "Exchange", "ModelReplyTooLarge"]

DEFAULT_MAX_REPLY_BYTES = 8 * 1024 * 1024
"""The default cap on a reply's body, counted after decompression: 8 MiB."""
_ERROR_BODY_BYTES = 64 * 1024
"""How much of an error reply's body is read: only its start is ever shown."""
_CHUNK = 64 * 1024
_SAID = 300
"""What is shown of a server's error text, in characters (after the key is scrubbed)."""


class ModelReplyTooLarge(ModelError):
    """The server's reply was larger than ``max_reply_bytes`` (after decompression); it was not read
    past the cap, and is not retried: the same request would get the same answer."""

    limit: int

    def __init__(self, model: str, message: str, limit: int = DEFAULT_MAX_REPLY_BYTES) -> None:
        self.limit = limit
        super().__init__(model, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.model, str(self), self.limit))


class _TooLarge(Exception):
    """A body passed its cap; ``declared`` says so when Content-Length did, before any byte."""

    def __init__(self, declared: int | None = None) -> None:
        super().__init__()
        self.declared = declared

_REFUSAL = frozenset({400, 404, 405, 415, 422, 501})
"""Statuses that say "not this request form": the next mode is tried."""
_SYSTEM_CLOCK = SystemClock()


class _Transient(Exception):
    """A failure worth retrying: 429, 5xx, a timeout or a dropped connection."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Refused(Exception):
    """The server refused this request form."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


class wait_retry_after(wait_base):  # lower case, like tenacity's own strategies
    """Wait what a 429's ``Retry-After`` asks (capped at ``cap`` seconds), else ``fallback``'s wait."""

    def __init__(self, fallback: wait_base, cap: float) -> None:
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, self.cap)
        return float(self.fallback(retry_state))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


_MAX_DEPTH = 64
"""Deeper replies are kept as text: a journal row must stay storable (stores refuse past 128 levels)."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _reply_body(text: str) -> Any:
    """A reply's parsed JSON, or its text (cut) when it is not strict JSON: malformed, NaN or
    Infinity (which a journal cannot store), or nested deeper than :data:`_MAX_DEPTH`."""
    try:
        data = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return text[:2000]
    todo: list[tuple[Any, int]] = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > _MAX_DEPTH:
            return text[:2000]
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)
    return data


@dataclass(frozen=True, slots=True)
class Exchange:
    """One answered request: the mode it used, the parsed reply and its usage record."""

    mode: Mode
    reply: Reply
    call: ModelCall


def _profile(server: object, profile: object) -> Profile:
    """The profile ``server=`` or ``profile=`` names (a :class:`Profile` as it is); generic by default."""
    if server is not None and profile is not None:
        raise TypeError(f"ChatModel(server={server!r}, profile={profile!r}): give one of the two (profile= "
                        "takes a Profile or a server kind, server= a server kind)")
    if isinstance(profile, Profile):
        return profile
    name, given = ("profile", profile) if profile is not None else ("server", server)
    if given is None:
        return PROFILES[ServerKind.GENERIC]
    if isinstance(given, str) and given in {k.value for k in ServerKind}:
        return PROFILES[ServerKind(given)]
    kinds = ", ".join(repr(k.value) for k in ServerKind)
    also = ", or a statemachine_agent.llm.Profile" if name == "profile" else ""
    raise ValueError(f"{name}={given!r}: use one of {kinds}{also}")


class ChatModel:
    """A model on an OpenAI-compatible server (``/v1/chat/completions``), shared by policies and steps.

    ``server`` picks the capability profile (:class:`ServerKind`); ``profile`` takes a server kind
    too, or a :class:`Profile` of your own for a server no kind describes (give one of the two).
    Modes the server refuses are remembered on this object, so later requests go straight to one
    that works. The API key is read from the environment variable ``api_key_env`` at each request
    (none: no header).
    """

    def __init__(self, *, base_url: str, model: str, server: ServerKind | str | None = None,
                 profile: Profile | ServerKind | str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float | None = 0.0, max_tokens: int | None = 256,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 prices: Mapping[str, Price] | Price | None = None, headers: Mapping[str, str] | None = None,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: give the server's URL, e.g. 'http://127.0.0.1:8765/v1'")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r}: give the model's name as the server knows it")
        self.profile: Profile = _profile(server, profile)
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "timeout" and value == 0):
                raise ValueError(f"{name}={value!r}: give a finite number of seconds" +
                                 (" > 0" if name == "timeout" else " >= 0"))
        if isinstance(max_reply_bytes, bool) or not isinstance(max_reply_bytes, int) or max_reply_bytes < 1024:
            raise ValueError(f"max_reply_bytes={max_reply_bytes!r}: give the most bytes a reply may have (after "
                             f"decompression), a whole number >= 1024; the default is {DEFAULT_MAX_REPLY_BYTES}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
            raise ValueError(f"retries={retries!r}: give the number of attempts per request, >= 1")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"max_tokens={max_tokens!r}: give a whole number >= 1, or None")
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or not 0 <= temperature <= 2):
            raise ValueError(f"temperature={temperature!r}: give a number from 0 to 2, or None")
        if prices is not None and not isinstance(prices, (Price, Mapping)):
            raise TypeError(f"prices={prices!r}: give a Price, or a mapping of model name to Price")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = float(timeout)
        self.max_reply_bytes = max_reply_bytes
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.price: Price | None = prices if isinstance(prices, Price) or prices is None else prices.get(model)
        self.headers = dict(headers or {})
        self.refused: set[Mode] = set()
        """Modes this server refused: never sent again by this object."""
        self.working: set[Mode] = set()
        """Modes this server answered: a later 5xx on them is taken as transient, and retried."""
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = \
            weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<ChatModel {self.model!r} at {self.base_url} ({self.profile.kind})>"

    @property
    def name(self) -> str:
        """What the journal calls this model's answers: ``model:<name>``."""
        return f"model:{self.model}"

    # --- asking --------------------------------------------------------------------------------
    async def ask(self, messages: Sequence[Mapping[str, Any]], *, schema: Mapping[str, Any], name: str,
                  description: str, purpose: str, attempt: int, site: Tools | None,
                  choices: Sequence[str] = ()) -> Exchange:
        """Ask for an answer fitting ``schema`` in the best mode the server accepts, falling back
        along the profile; journaled and recorded on ``site``'s step when there is one."""
        decision = bool(choices)
        modes = [m for m in self.profile.modes_for(decision) if m not in self.refused]
        if not modes:
            modes = [Mode.PROMPT]  # every constrained form was refused: asking plainly still works

        async def build(mode: Mode) -> dict[str, Any]:
            return build_body(model=self.model, messages=messages, mode=mode, schema=schema, name=name,
                              description=description, temperature=self.temperature, max_tokens=self.max_tokens,
                              choices=choices, strict=self.profile.strict)

        return await self._exchange(modes, build, purpose, attempt, site, messages=messages)

    async def tool_round(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], *,
                         attempt: int, site: Tools | None) -> Exchange:
        """One tool-use round: the model may call one of ``tools`` or answer in text."""

        async def build(mode: Mode) -> dict[str, Any]:
            return tools_body(model=self.model, messages=messages, tools=tools, temperature=self.temperature,
                              max_tokens=self.max_tokens)

        return await self._exchange([Mode.NAMED_TOOL], build, "tools", attempt, site, mode_name="tools",
                                    messages=messages)

    async def _exchange(self, modes: list[Mode], build: Any, purpose: str, attempt: int, site: Tools | None,
                        *, mode_name: str | None = None, messages: Sequence[Mapping[str, Any]] = ()) -> Exchange:
        if site is not None:
            site.budget_room()
        clock = site.clock if site is not None else _SYSTEM_CLOCK
        asked = False

        async def compute() -> dict[str, Any]:
            nonlocal asked
            asked = True
            t0 = time.perf_counter()
            sent = 0
            errors: list[str] = []
            for mode in modes:
                body = await build(mode)
                try:
                    # A 5xx is a refusal only where another form could be tried: a tool round (and
                    # PROMPT, the last resort) has none, so there it is transient, and retried.
                    data, n = await self._post(body, clock, known_good=mode in self.working or mode is Mode.PROMPT
                                               or mode_name is not None)
                except _Refused as refused:
                    sent += 1
                    if mode_name is None:  # a tool round has nothing to fall back to
                        self.refused.add(mode)
                    errors.append(f"{mode}: {refused}")
                    continue
                sent += n
                if mode_name is None:
                    self.working.add(mode)
                # The journal keeps the parsed reply (texts cut, the key scrubbed), never the body.
                return {"mode": str(mode), "reply": reply_record(parse_reply(data)), "http_attempts": sent,
                        "latency": time.perf_counter() - t0}
            raise ModelRefused(self.model, f"{self.base_url} refused every request form tried for model "
                               f"{self.model!r}: {'; '.join(errors)}. Check the model name and server, or set "
                               "server= to its kind so the adapter sends what it accepts")

        if site is not None:
            record = await site.journaled(self.name, compute)
        else:
            record = await compute()
        # Records journaled before replies were kept parsed hold the body under "response".
        reply = reply_from_record(record["reply"]) if "reply" in record else parse_reply(record.get("response"))
        mode = Mode(record["mode"])
        price = self.price
        call = ModelCall(provider=str(self.profile.kind), model=self.model, mode=mode_name or str(mode),
                         purpose=purpose, input_tokens=reply.input_tokens, output_tokens=reply.output_tokens,
                         latency=float(record.get("latency", 0.0)), finish_reason=reply.finish_reason,
                         attempt=attempt, http_attempts=int(record.get("http_attempts", 1)),
                         cost=None if price is None else price.cost(reply.input_tokens, reply.output_tokens),
                         journaled=not asked,
                         # For the hooks only (a tracing hook records it when asked to; the run keeps the
                         # call without it): references to what exists, and one small dict.
                         content=CallContent(tuple(messages), _reply_message(reply)))
        if site is not None:
            await site.record_model_call(call)
        return Exchange(mode, reply, call)

    # --- HTTP ----------------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.timeout, trust_env=False)
        return client

    async def aclose(self) -> None:
        """Close the connections this object holds on the running loop."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    async def _post(self, body: dict[str, Any], clock: Clock, *, known_good: bool) -> tuple[Any, int]:
        """POST ``body``; the parsed JSON (or the text, if it is not JSON), scrubbed of the key, and
        the attempts made. Each attempt, its whole body included, ends within ``timeout``."""
        headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate", **self.headers}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        scrub: Callable[[str], str] = scrubber(key).text if key else _same
        payload = json.dumps(body).encode()
        url = f"{self.base_url}/chat/completions"
        limit = self.max_reply_bytes
        attempts = 0

        def said(text: str) -> str:
            # What the server said, never with the key in it (some servers echo the key they
            # refused, and error messages end up in logs, results and stores), then cut short:
            # scrubbed first, so no cut can leave a piece of the key that no longer matches.
            return _cut(scrub(text), _SAID)

        async def attempt() -> Any:
            async with self._client().stream("POST", url, content=payload, headers=headers) as response:
                status = response.status_code
                if status >= 400:
                    try:
                        text = said(_decode(await _read_body(response, _ERROR_BODY_BYTES, strict=False), response))
                    except _BadBody as exc:  # the status says enough: the body only adds detail
                        text = str(exc)
                # Retry-After is defined for 429 and 503 (RFC 6585, RFC 9110 15.6.4); honoured on any
                # answer that is retried.
                if status in {429, 408}:
                    raise _Transient(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
                if status >= 500 and (known_good or status in (502, 503, 504)):
                    raise _Transient(f"HTTP {status}: {text}", _retry_after(response.headers.get("retry-after")))
                if status >= 500 or status in _REFUSAL:
                    raise _Refused(status, text)
                if status >= 400:  # 401, 403: no retry and no other mode helps
                    raise ModelRefused(self.model, f"{url} answered HTTP {status}: {text}; check the API key "
                                       f"(read from ${self.api_key_env}) and the model name")
                try:
                    raw = await _read_body(response, limit, strict=True)
                except _TooLarge as exc:
                    size = f"says {exc.declared} bytes" if exc.declared is not None else "is larger"
                    raise ModelReplyTooLarge(self.model, f"{url} sent a reply that {size}, past max_reply_bytes="
                                             f"{limit} (counted after decompression); it was not read further. "
                                             "Lower max_tokens, or raise max_reply_bytes if such replies are "
                                             "expected", limit) from None
                text = scrub(_decode(raw, response))
                del raw
                data = _reply_body(text)
                # A JSON string differs from its text only through escapes (a backslash): without
                # one, the text's scrub already covered every string in it.
                return scrub_value(data) if key and "\\" in text else data

        def scrub_value(data: Any) -> Any:
            assert key
            return scrubber(key).value(data)  # also what JSON escapes hid from the text's scrub

        async def once() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                async with asyncio.timeout(self.timeout):  # the whole attempt: connect, send, every byte
                    return await attempt()
            except (TimeoutError, httpx.TimeoutException):
                raise _Transient(f"no answer within {self.timeout} s (the whole reply must arrive within "
                                 "timeout)") from None
            except httpx.TransportError as exc:
                raise _Transient(said(f"{type(exc).__name__}: {exc}")) from None
            except _BadBody as exc:
                raise _Transient(said(str(exc))) from None

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries),
            wait=wait_retry_after(wait_exponential(multiplier=self.backoff, max=self.max_backoff), self.max_backoff),
            retry=retry_if_exception_type(_Transient),
            sleep=clock.sleep,
            reraise=True,
        )
        try:
            data: Any = await retrying(once)
        except _Transient as exc:
            raise ModelUnavailable(self.model, f"{url} failed {attempts} time(s) for model {self.model!r}, last: "
                                   f"{exc}; is the server up? (retries={self.retries})") from None
        return data, attempts


def _reply_message(reply: Reply) -> dict[str, Any]:
    """The reply as the assistant message of a chat (what :class:`CallContent` holds)."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in reply.tool_calls]
    return message


class _BadBody(Exception):
    """A body that cannot be decoded: an encoding not asked for, or damaged compressed data."""


def _same(text: str) -> str:
    return text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode(raw: bytes | bytearray, response: httpx.Response) -> str:
    try:
        return raw.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


def _decompressor(encoding: str) -> Any:
    """A zlib decompressor for ``Content-Encoding`` (``None``: the body is as it is)."""
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Deflate()
    raise _BadBody(f"the reply came with Content-Encoding {encoding!r}, which was not asked for (gzip, deflate)")


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped, or (against RFC 9110, but common) raw."""

    def __init__(self) -> None:
        self._d: Any = None

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._d is None:
            self._d = zlib.decompressobj()
            try:
                return self._d.decompress(data, max_length)  # type: ignore[no-any-return]
            except zlib.error:
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._d.decompress(data, max_length)  # type: ignore[no-any-return]

    @property
    def eof(self) -> bool:
        return self._d is not None and bool(self._d.eof)

    @property
    def unconsumed_tail(self) -> bytes:
        return self._d.unconsumed_tail if self._d is not None else b""


async def _read_body(response: httpx.Response, limit: int, *, strict: bool) -> bytearray:
    """The body, decompressed, read as it streams in and never held past ``limit`` bytes: past it,
    :class:`_TooLarge` when ``strict``, else the first ``limit`` bytes."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    declared = response.headers.get("content-length", "").strip()
    if strict and encoding in ("", "identity") and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(int(declared))
    inflate = _decompressor(encoding)
    out = bytearray()
    try:
        async for chunk in response.aiter_raw(_CHUNK):
            if inflate is None:
                out += chunk[: limit + 1 - len(out)]
            else:
                data = chunk
                while data and len(out) <= limit:
                    # Never more than the room left (plus one byte, to know it is over): a gzip bomb
                    # is inflated no further than the cap.
                    out += inflate.decompress(data, limit + 1 - len(out))
                    data = inflate.unconsumed_tail
            if len(out) > limit:
                if strict:
                    raise _TooLarge()
                del out[limit:]
                break
    except zlib.error as exc:
        raise _BadBody(f"the reply's {encoding} data is damaged ({exc})") from None
    if inflate is not None and not inflate.eof and len(out) <= limit:
        raise _BadBody(f"the reply's {encoding} data is damaged (it ends before its end)")
    return out
