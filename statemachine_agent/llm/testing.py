"""A scripted OpenAI-compatible server on 127.0.0.1, for testing agents without a model.

It speaks real HTTP (the standard library's server, in a thread): your agent's requests go over a
socket, exactly as to a real server, and you script what it answers: well-formed replies, prose,
invalid names, HTTP errors with or without ``Retry-After``, malformed JSON, empty choices, or no
answer at all. Every request body is recorded, for golden-body tests::

    with FakeOpenAIServer([tool_reply("choose_transition", {"transition": "approve"})]) as server:
        policy = LLMPolicy(base_url=server.url, model="fake")
        ...
        assert server.requests[0].body["tool_choice"]["function"]["name"] == "choose_transition"
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAIServer", "FakeRequest", "FakeResponse", "chat_reply", "error_reply", "tool_reply"]


@dataclass(frozen=True, slots=True)
class FakeResponse:
    """What the server answers to one request."""

    status: int = 200
    body: Any = None
    """JSON to send (ignored when ``raw`` is given)."""
    raw: bytes | None = None
    """Bytes to send as they are (malformed JSON, say)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False
    """Never answer (until the server stops): for timeouts."""
    chunks: Callable[[], Iterable[bytes]] | None = None
    """Make the body as it is sent, piece by piece, with chunked transfer encoding (no
    ``Content-Length``): for bodies too big to hold, or endless ones. Called once per request."""
    pause: float = 0.0
    """Seconds to wait before each piece of ``chunks``: a server that trickles its answer."""


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """A request the server received."""

    path: str
    headers: dict[str, str]
    body: Any
    """The parsed JSON body (``None`` if it was not JSON)."""


def chat_reply(content: str | None = None, *, tool_calls: Iterable[tuple[str, Any]] = (), finish_reason: str = "stop",
               prompt_tokens: int = 10, completion_tokens: int = 3, model: str = "fake") -> FakeResponse:
    """A well-formed chat completion saying ``content`` and/or calling ``tool_calls`` ``(name, arguments)``;
    arguments that are not a string are sent as their JSON."""
    calls = [{"id": f"call_{i}", "type": "function",
              "function": {"name": n, "arguments": a if isinstance(a, str) else json.dumps(a)}}
             for i, (n, a) in enumerate(tool_calls)]
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return FakeResponse(200, {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def tool_reply(name: str, arguments: Any, **kwargs: Any) -> FakeResponse:
    """A chat completion calling one tool ``name`` with ``arguments``."""
    return chat_reply(None, tool_calls=[(name, arguments)], **kwargs)


def error_reply(status: int, message: str = "error", *, retry_after: str | None = None) -> FakeResponse:
    """An HTTP error with an OpenAI-style error body (and ``Retry-After``, if given)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return FakeResponse(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}},
                        headers=headers)


Script = Callable[[FakeRequest, int], FakeResponse] | Iterable[FakeResponse]


class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 that answers from a script.

    ``script`` is a list of responses, answered in order (the last one again once they run out), or
    a function of ``(request, index)`` returning one. ``url`` ends in ``/v1``: give it as
    ``base_url``. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, script: Script, *, models: Iterable[str] = ("fake",)) -> None:
        if callable(script):
            self._answer: Callable[[FakeRequest, int], FakeResponse] = script
        else:
            items = list(script)
            if not items:
                raise ValueError("FakeOpenAIServer needs at least one response to give")

            def answer(_: FakeRequest, i: int) -> FakeResponse:
                return items[min(i, len(items) - 1)]

            self._answer = answer
        self.requests: list[FakeRequest] = []
        """Every chat-completions request received, in order."""
        self._models = list(models)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *_: Any) -> None:  # quiet: tests read requests, not logs
                return

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(FakeResponse(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "owned_by": "fake"} for m in server._models]}))
                else:
                    self._send(error_reply(404, f"no route {self.path}"))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                request = FakeRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(error_reply(404, f"no route {self.path}"))
                    return
                with server._lock:
                    index = len(server.requests)
                    server.requests.append(request)
                try:
                    response = server._answer(request, index)
                except Exception as exc:  # a broken script answers 500, as a broken server would
                    response = error_reply(500, f"script failed: {type(exc).__name__}: {exc}")
                if response.hang:
                    server._stop.wait()
                    return
                self._send(response)

            def _send(self, response: FakeResponse) -> None:
                if response.chunks is not None:
                    self._send_chunks(response)
                    return
                payload = response.raw if response.raw is not None else json.dumps(response.body).encode()
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in response.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _send_chunks(self, response: FakeResponse) -> None:
                assert response.chunks is not None
                self.send_response(response.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                for k, v in response.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                pieces: Iterator[bytes] = iter(response.chunks())
                try:
                    for piece in pieces:
                        if response.pause and server._stop.wait(response.pause):
                            return
                        if piece:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client hung up (it had enough): stop making the body
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # serve_forever notices shutdown() only between polls: its default 0.5 s poll made every
        # close() take half a second (a test suite starting a server per example waited minutes).
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/v1"
        """The base URL to give a client (``.../v1``)."""

    def close(self) -> None:
        """Stop serving; requests left hanging are let go."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
