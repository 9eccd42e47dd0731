"""``statemachine-agent ui``: bad input gives one clear line and no traceback; a good one serves the
store at the address it prints (real process, real HTTP on loopback), and Ctrl-C stops it."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from explorer_support import browser_missing

HERE = Path(__file__).resolve().parent
COMMAND = [sys.executable, "-m", "statemachine_agent.cli", "ui"]
needs_ui = pytest.mark.skipif(browser_missing() is not None and "package" in (browser_missing() or ""),
                              reason="the ui extra is not installed")


def ui(*args: str, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
                          check=False)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("statemachine-agent: "), done.stderr
    return lines[0]


@needs_ui
def test_a_missing_store_is_one_line(tmp_path: Path) -> None:
    assert "no store at" in one_line_error(ui("--store", str(tmp_path / "nope.db")))


@needs_ui
def test_a_damaged_store_is_one_line(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    assert "store" in one_line_error(ui("--store", str(damaged)))
    text = tmp_path / "text.db"
    text.write_text("not a database at all\n" * 100)
    assert "store" in one_line_error(ui("--store", str(text)))


@needs_ui
def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import explorer_demo

    store = tmp_path / "runs.db"
    explorer_demo.fill(store)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        line = one_line_error(ui("--store", str(store), "--port", str(port)))
    assert f"port {port}" in line and "in use" in line and "--port" in line


@needs_ui
def test_bad_options_are_one_line(tmp_path: Path) -> None:
    import explorer_demo

    store = tmp_path / "runs.db"
    explorer_demo.fill(store)
    assert "--port" in one_line_error(ui("--store", str(store), "--port", "70000"))
    assert "--poll" in one_line_error(ui("--store", str(store), "--poll", "0"))
    assert "cannot import" in one_line_error(ui("--store", str(store), "--workflow", "no_such_module:wf"))
    assert "given twice" in one_line_error(ui("--store", str(store), "--workflow", "explorer_demo:compiled",
                                              "--workflow", "explorer_demo:workflow"))


@needs_ui
def test_it_serves_the_store_at_the_address_it_prints_until_ctrl_c(tmp_path: Path) -> None:
    import explorer_demo
    import httpx

    store = tmp_path / "runs.db"
    ids = explorer_demo.fill(store)
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen([*COMMAND, "--store", str(store), "--port", "0", "--workflow", "explorer_demo:compiled"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE, env=env)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the explorer printed no address"
        line = proc.stdout.readline()
        url = line.split(": ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
        with httpx.Client(follow_redirects=True) as http:
            page = http.get(url)
            assert page.status_code == 200
            assert all(f'data-run-id="{run_id}"' in page.text for run_id in ids.values())
            assert http.get(url.split("?")[0] + "run?id=" + ids["waiting"]).text.count('id="deliver"') == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_command_says_to_install_the_extra_when_it_is_missing(tmp_path: Path) -> None:
    import explorer_demo

    store = tmp_path / "runs.db"
    explorer_demo.fill(store)
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "starlette.py").write_text("raise ImportError('no starlette here', name='starlette')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{HERE}"}
    done = subprocess.run([*COMMAND, "--store", str(store)], capture_output=True, text=True, timeout=60, env=env,
                          check=False)
    line = one_line_error(done)
    assert "statemachine-agent[ui]" in line
