"""End-to-end tests against real model servers, with SmolLM2-135M on this machine's CPU.

Two server kinds, each test running against both where it is cheap (the ``llm`` fixture is
parametrized):

- ``llama.cpp``: llama.cpp's own server from the prebuilt ``xllamacpp`` wheel (``_server.py``),
  started once per pytest run on a free loopback port and stopped at the end, on failure and
  Ctrl-C too. ``make test`` installs the wheel and the model into .venv and runs these tests;
  where either cannot be installed, the tests of this kind are skipped and the reason says why.
- ``llama-cpp-python``: its ``python -m llama_cpp.server``, compiled from source, which
  ``make test-llm`` builds, starts and passes as $STATEMACHINE_AGENT_LLM_URL (default
  http://127.0.0.1:8765/v1, ``make llm-server``). Without a server there, its tests are skipped.

Under ``make test-llm`` (STATEMACHINE_AGENT_LLM_REQUIRED=1) a missing server of either kind fails
the tests instead. ``make test`` leaves out the tests marked ``slow_llm``; ``make test-llm`` runs them.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _server import MODEL, LocalServer, Served, ServerFailed, serves_model, unavailable

from statemachine_agent.llm import Mode

DEFAULT_URL = "http://127.0.0.1:8765/v1"
KINDS = ("llama.cpp", "llama-cpp-python")
"""The server kinds (``ServerKind`` values) these tests run against."""


def _required() -> bool:
    return bool(os.environ.get("STATEMACHINE_AGENT_LLM_REQUIRED"))


def _missing(message: str) -> None:
    if _required():
        pytest.fail(message)
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow_llm: a slower real-model test, run by `make test-llm` only")


def _local(tmp_path_factory: pytest.TempPathFactory, *, jinja: bool) -> Iterator[LocalServer]:
    why = unavailable()
    if why is not None:
        _missing(f"llama.cpp's prebuilt server cannot run: {why}")
    log = tmp_path_factory.mktemp("llama-cpp") / "server.log"
    server = LocalServer(log=log, jinja=jinja)
    try:
        server.start()
    except ServerFailed as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:  # also on failures and Ctrl-C: pytest tears session fixtures down then too
        server.stop()


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """llama.cpp's server (xllamacpp) with the model's own chat template, once per run."""
    yield from _local(tmp_path_factory, jinja=True)


@pytest.fixture(scope="session")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """llama.cpp's server with its built-in chat template, which refuses ``tools`` (HTTP 500)."""
    yield from _local(tmp_path_factory, jinja=False)


def remote_server() -> Served:
    """llama-cpp-python's server at $STATEMACHINE_AGENT_LLM_URL; skipped (failed under ``make test-llm``)
    when none serves the model there."""
    url = (os.environ.get("STATEMACHINE_AGENT_LLM_URL") or DEFAULT_URL).rstrip("/")
    if not serves_model(url):
        _missing(f"the second server kind, llama-cpp-python's, is not serving {MODEL!r} at {url}: "
                 "`make test-llm` builds, starts and tests it")
    return Served("llama-cpp-python", url)


@pytest.fixture(scope="session", params=KINDS)
def llm(request: pytest.FixtureRequest) -> Served:
    """A running server of each kind in turn; skipped (failed under ``make test-llm``) when the
    kind cannot run here."""
    if request.param == "llama.cpp":
        return Served("llama.cpp", request.getfixturevalue("local_server").url)
    return remote_server()


@pytest.fixture(params=KINDS)
def refusing(request: pytest.FixtureRequest) -> tuple[Served, Mode]:
    """A server of each kind, and a form it refuses with an HTTP error: llama.cpp's server without
    the model's chat template refuses ``tools`` (HTTP 500 "tools param requires --jinja flag");
    llama-cpp-python's refuses OpenAI's json_schema (HTTP 500)."""
    if request.param == "llama.cpp":
        return Served("llama.cpp", request.getfixturevalue("refusing_server").url), Mode.NAMED_TOOL
    return remote_server(), Mode.JSON_SCHEMA


@pytest.fixture
def dead_url() -> str:
    """A URL where nothing listens (a port just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
