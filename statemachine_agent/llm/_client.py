"""One model behind an OpenAI-compatible server: requests, retries, mode fallback, usage.

httpx speaks HTTP; tenacity retries 429 (after its Retry-After), 5xx and network errors, sleeping on
the run's clock, so tests never wait. A mode the server refuses (400, 404, 422, or 5xx on a mode
that never worked there) is remembered and the next mode of the profile is tried at once.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential

from ..clock import Clock, SystemClock
from ..errors import ModelRefused, ModelUnavailable
from ..tools import Tools
from ..usage import ModelCall, Price
from ._protocol import PROFILES, Mode, Profile, Reply, ServerKind, build_body, parse_reply, tools_body

__all__ = ["ChatModel", "Exchange"]

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


class ChatModel:
    """A model on an OpenAI-compatible server (``/v1/chat/completions``), shared by policies and steps.

    ``server`` picks the capability profile (:class:`ServerKind`); modes the server refuses are
    remembered on this object, so later requests go straight to one that works. The API key is
    read from the environment variable ``api_key_env`` at each request (none: no header).
    """

    def __init__(self, *, base_url: str, model: str, server: ServerKind | str = ServerKind.GENERIC,
                 api_key_env: str = "OPENAI_API_KEY", temperature: float | None = 0.0, max_tokens: int | None = 256,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 prices: Mapping[str, Price] | Price | None = None, headers: Mapping[str, str] | None = None) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: give the server's URL, e.g. 'http://127.0.0.1:8765/v1'")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model={model!r}: give the model's name as the server knows it")
        try:
            self.profile: Profile = PROFILES[ServerKind(server)]
        except ValueError:
            kinds = ", ".join(repr(k.value) for k in ServerKind)
            raise ValueError(f"server={server!r}: use one of {kinds}") from None
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "timeout" and value == 0):
                raise ValueError(f"{name}={value!r}: give a finite number of seconds" +
                                 (" > 0" if name == "timeout" else " >= 0"))
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

        return await self._exchange(modes, build, purpose, attempt, site)

    async def tool_round(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]], *,
                         attempt: int, site: Tools | None) -> Exchange:
        """One tool-use round: the model may call one of ``tools`` or answer in text."""

        async def build(mode: Mode) -> dict[str, Any]:
            return tools_body(model=self.model, messages=messages, tools=tools, temperature=self.temperature,
                              max_tokens=self.max_tokens)

        return await self._exchange([Mode.NAMED_TOOL], build, "tools", attempt, site, mode_name="tools")

    async def _exchange(self, modes: list[Mode], build: Any, purpose: str, attempt: int, site: Tools | None,
                        *, mode_name: str | None = None) -> Exchange:
        if site is not None:
            site.budget_room()
        clock = site.clock if site is not None else _SYSTEM_CLOCK

        async def compute() -> dict[str, Any]:
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
                return {"mode": str(mode), "response": data, "http_attempts": sent,
                        "latency": time.perf_counter() - t0}
            raise ModelRefused(self.model, f"{self.base_url} refused every request form tried for model "
                               f"{self.model!r}: {'; '.join(errors)}. Check the model name and server, or set "
                               "server= to its kind so the adapter sends what it accepts")

        if site is not None:
            record = await site.journaled(self.name, compute)
        else:
            record = await compute()
        reply = parse_reply(record.get("response"))
        mode = Mode(record["mode"])
        price = self.price
        call = ModelCall(provider=str(self.profile.kind), model=self.model, mode=mode_name or str(mode),
                         purpose=purpose, input_tokens=reply.input_tokens, output_tokens=reply.output_tokens,
                         latency=float(record.get("latency", 0.0)), finish_reason=reply.finish_reason,
                         attempt=attempt, http_attempts=int(record.get("http_attempts", 1)),
                         cost=None if price is None else price.cost(reply.input_tokens, reply.output_tokens))
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
        """POST ``body``; the parsed JSON (or the raw text, if it is not JSON) and the attempts made."""
        headers = {"Content-Type": "application/json", **self.headers}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        payload = json.dumps(body).encode()
        url = f"{self.base_url}/chat/completions"
        attempts = 0

        def said(text: str) -> str:
            # What the server said, cut short, and never with the key in it: some servers echo the
            # key they refused, and error messages end up in logs, results and stores.
            text = text[:300]
            return text.replace(key, "<the API key>") if key else text

        async def once() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                response = await self._client().post(url, content=payload, headers=headers)
            except httpx.TimeoutException:
                raise _Transient(f"no answer within {self.timeout} s") from None
            except httpx.TransportError as exc:
                raise _Transient(said(f"{type(exc).__name__}: {exc}")) from None
            status = response.status_code
            # Retry-After is defined for 429 and 503 (RFC 6585, RFC 9110 15.6.4); honoured on any
            # answer that is retried.
            if status in {429, 408}:
                raise _Transient(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
            if status >= 500 and (known_good or status in (502, 503, 504)):
                raise _Transient(f"HTTP {status}: {said(response.text)}",
                                 _retry_after(response.headers.get("retry-after")))
            if status >= 500 or status in _REFUSAL:
                raise _Refused(status, said(response.text))
            if status >= 400:  # 401, 403: no retry and no other mode helps
                raise ModelRefused(self.model, f"{url} answered HTTP {status}: {said(response.text)}; check the "
                                   f"API key (read from ${self.api_key_env}) and the model name")
            return _reply_body(response.text)

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
