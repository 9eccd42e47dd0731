"""End-to-end tests against a real model server (not part of `make test`).

`make test-llm` starts llama-cpp-python's server with SmolLM2-135M (see the Makefile), runs these
tests against it and stops it. Run alone (`pytest tests_llm`), they find the server at
$STATEMACHINE_AGENT_LLM_URL (default http://127.0.0.1:8765/v1) and are skipped, with the reason,
when none answers there; under `make test-llm` (STATEMACHINE_AGENT_LLM_REQUIRED=1) they fail instead.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

DEFAULT_URL = "http://127.0.0.1:8765/v1"
MODEL = "smollm2"


def _server_url() -> str:
    return (os.environ.get("STATEMACHINE_AGENT_LLM_URL") or DEFAULT_URL).rstrip("/")


def _unreachable(url: str) -> str | None:
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{url}/models", timeout=5) as response:
            names = [m.get("id") for m in json.load(response).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
        return f"no model server answers at {url}/models ({getattr(exc, 'reason', exc)})"
    if MODEL not in names:
        return f"the server at {url} serves {names}, not {MODEL!r}"
    return None


@pytest.fixture(scope="session")
def llm_url() -> str:
    """The server's base URL; skips (or fails, under make test-llm) when it does not answer."""
    url = _server_url()
    why = _unreachable(url)
    if why is not None:
        message = f"{why}: run `make test-llm`, or `make llm-server` then pytest tests_llm"
        if os.environ.get("STATEMACHINE_AGENT_LLM_REQUIRED"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def dead_url() -> str:
    """A URL where nothing listens (a port just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
