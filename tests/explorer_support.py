"""The run explorer served for real (uvicorn on a loopback port, in a thread) and a real headless
Chromium driven by Playwright: shared by the browser tests, the screenshots and the benchmark.

Chromium is Debian's (/usr/bin/chromium), never a browser Playwright downloads. Where it or the
``ui``/Playwright packages are missing, :func:`browser_missing` says why (the tests skip, saying so).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("STATEMACHINE_AGENT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "test-token-0123456789-abcdefghij"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for module, extra in (("starlette", "ui"), ("uvicorn", "ui"), ("jinja2", "ui"), ("playwright", "dev")):
        if importlib.util.find_spec(module) is None:
            return f"the Python package {module!r} is missing: make venv installs it (the {extra} extra)"
    if not CHROMIUM.is_file():
        return (f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium; `make unit` installs it "
                "when it can)")
    return None


@dataclass
class Served:
    """An explorer listening on a loopback port."""

    url: str
    """``http://127.0.0.1:PORT``."""
    explorer: Any
    port: int

    @property
    def login(self) -> str:
        """The address with the token, as the command prints it."""
        return f"{self.url}/?token={TOKEN}"


@contextlib.contextmanager
def served(store: Path, workflows: Mapping[str, Any], *, poll: float = 0.1, secrets: Any = None,
           policy: Any = None) -> Iterator[Served]:
    """The explorer of ``store`` served by uvicorn in a thread, on a free loopback port."""
    import uvicorn

    from statemachine_agent.ui import Explorer, allowed_hosts, open_socket

    sock = open_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    explorer = Explorer(str(store), workflows, token=TOKEN, hosts=allowed_hosts("127.0.0.1", port),
                        cookie=f"sma_explorer_{port}", poll=poll, secrets=secrets, policy=policy)
    server = uvicorn.Server(uvicorn.Config(explorer.app(), log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="explorer-server")
    thread.start()
    try:
        # Started when the server says so (no sleeping): uvicorn sets `started` once it listens.
        for _ in range(2000):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.005)
        assert server.started, "the explorer's server did not start"
        yield Served(f"http://127.0.0.1:{port}", explorer, port)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        explorer.close()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's), through Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
