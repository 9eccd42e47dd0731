"""Quiet, useful, fast failures (issue 18, item 6): a failure prints the story and the broken promise,
not the kit's source nor per-run log lines; replay() prints its story; the workflow is compiled once
per exploration; a flaky real tool is named as such."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

import statemachine_agent.testing._stories as stories
from statemachine_agent import Context, Workflow, guard
from statemachine_agent.errors import ToolFailed
from statemachine_agent.testing import check_workflow, contexts, faults, invariant, replay
from statemachine_agent.tools import Tools

SEEDED = textwrap.dedent('''
    from hypothesis import strategies as st
    from statemachine_agent import Context, Workflow, guard
    from statemachine_agent.errors import ToolFailed
    from statemachine_agent.testing import check_workflow, contexts, invariant
    from statemachine_agent.tools import Tools

    class Job(Context):
        attempts: int = 0
        result: str | None = None

    wf = Workflow("retrying", Job)

    @wf.tool
    async def fetch() -> str:
        return "data"

    @wf.state(initial=True, writes=["result"], tools=["fetch"])
    async def call(ctx: Job, tools: Tools) -> None:
        ctx.result = await tools.call("fetch")

    @wf.state(reads=["attempts"], writes=["attempts"], max_visits=3)
    def backoff(ctx: Job) -> None:
        ctx.attempts += 1

    wf.terminal("done")
    wf.terminal("gave_up", outcome="failure")
    wf.transition(call, "done")
    wf.on_error(call, ToolFailed, backoff)
    wf.transition(backoff, call, guard=guard(lambda c: c.attempts <= 2, name="may retry", reads=["attempts"]))
    wf.transition(backoff, "gave_up", default=True)

    @invariant
    def at_most_two_retries(ctx: Job) -> bool:
        return ctx.attempts <= 2

    def test_retrying() -> None:
        check_workflow(wf, contexts_from=contexts(Job, attempts=st.just(0)), invariants=[at_most_two_retries])
''')


def test_a_failure_under_pytest_prints_the_story_and_nothing_of_the_kit(tmp_path: Path) -> None:
    """Before: 120 to 225 lines, 68 of them the kit's source and about 100 WARNING log lines."""
    (tmp_path / "test_seeded.py").write_text(SEEDED, encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                          "test_seeded.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         check=False).stdout
    lines = out.splitlines()
    assert "1 failed" in lines[-1]
    assert "invariant 'at_most_two_retries' failed after step 5" in out
    assert "5: backoff --backoff_to_gave_up--> gave_up  writes attempts=3" in out
    assert "WARNING" not in out
    assert "statemachine_agent" not in out.replace("statemachine_agent.testing import", "")  # no kit frames
    assert len(lines) < 40, out


class Job(Context):
    attempts: int = 0
    result: str | None = None


FRESH = contexts(Job, attempts=st.just(0))


def retrying(*, off_by_one: bool = True) -> Workflow[Job]:
    wf = Workflow("retrying", Job)

    @wf.tool
    async def fetch() -> str:
        return "data"

    @wf.state(initial=True, writes=["result"], tools=["fetch"])
    async def call(ctx: Job, tools: Tools) -> None:
        ctx.result = await tools.call("fetch")

    @wf.state(reads=["attempts"], writes=["attempts"], max_visits=3)
    def backoff(ctx: Job) -> None:
        ctx.attempts += 1

    limit = (lambda c: c.attempts <= 2) if off_by_one else (lambda c: c.attempts < 2)
    wf.terminal("done")
    wf.terminal("gave_up", outcome="failure")
    wf.transition(call, "done")
    wf.on_error(call, ToolFailed, backoff)
    wf.transition(backoff, call, guard=guard(limit, name="may retry", reads=["attempts"]))
    wf.transition(backoff, "gave_up", default=True)
    return wf


@invariant
def at_most_two_retries(ctx: Any) -> bool:
    return bool(ctx.attempts <= 2)


def test_the_library_logs_nothing_while_exploring_and_its_level_is_restored(caplog: pytest.LogCaptureFixture) -> None:
    """Failed runs log a WARNING each in a real run; while the kit explores they are silenced."""
    logger = logging.getLogger("statemachine_agent")
    before = logger.level
    wf = retrying()
    with caplog.at_level(logging.DEBUG), pytest.raises(AssertionError):
        check_workflow(wf, contexts_from=FRESH, invariants=[at_most_two_retries], print_coverage=False)
    assert [r for r in caplog.records if r.name.startswith("statemachine_agent")] == []
    assert logger.level == before
    with caplog.at_level(logging.WARNING):
        wf.compile().run_sync(Job(attempts=3))  # a real run still logs
    assert logger.level == before


def test_replay_prints_its_story_when_it_fails(tmp_path: Path) -> None:
    """Before: one line, no story."""
    fixture = tmp_path / "story.json"
    with pytest.raises(AssertionError):
        check_workflow(retrying(), contexts_from=FRESH,
                       invariants=[at_most_two_retries], save_failure=fixture, print_coverage=False)
    with pytest.raises(AssertionError) as info:
        replay(retrying(), fixture, invariants=[at_most_two_retries])
    message = str(info.value)
    assert message.startswith("invariant 'at_most_two_retries' failed after step 5\nstory of a run of 'retrying'")
    assert "tool fetch() -> raise ConnectionError" in message
    assert "5: backoff --backoff_to_gave_up--> gave_up  writes attempts=3" in message


def test_the_workflow_is_compiled_once_per_exploration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: once per example (about 55% of the time)."""
    calls: list[str] = []
    real = stories.compile_spec

    def counted(spec: Any) -> Any:
        calls.append(spec.name)
        return real(spec)

    monkeypatch.setattr(stories, "compile_spec", counted)
    report = check_workflow(retrying(off_by_one=False), contexts_from=FRESH, invariants=[at_most_two_retries],
                            print_coverage=False)
    assert report.coverage.runs >= 300  # the default max_examples, in one round or more
    assert report.coverage.runs % 300 == 0
    assert calls == ["retrying"]


def test_a_flaky_real_tool_is_named_with_the_story() -> None:
    """A tool that fails now and then on its own (not through the kit's faults) is reported as a flaky
    tool, with a story: before, Hypothesis' Flaky error and no story."""
    calls = itertools.count()

    wf = Workflow("flaky", Job)

    @wf.tool
    async def fetch() -> str:
        if next(calls) % 3 == 2:
            raise ConnectionError("the network said no")
        return "data"

    @wf.state(initial=True, writes=["result"], tools=["fetch"])
    async def call(ctx: Job, tools: Tools) -> None:
        ctx.result = await tools.call("fetch")

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition(call, "done")
    with pytest.raises(AssertionError) as info:
        check_workflow(wf, tool_faults=faults(errors=(), hang=False, invalid=False), print_coverage=False)
    message = str(info.value)
    assert message.startswith("flaky tool 'fetch': its real calls sometimes raise and sometimes return")
    assert "story of a run of 'flaky'" in message
    assert "tool fetch() -> really raised ConnectionError: the network said no" in message


def test_rounds_go_on_while_nothing_failed_and_time_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    """explore_for: fresh rounds of max_examples while no round failed and the time allows (on a fake
    clock here: each look at it is 0.4 s later); one round with explore_for=0 or derandomize=True."""
    from statemachine_agent.testing import _check

    ticks = iter(x * 0.4 for x in range(1000))
    monkeypatch.setattr(_check, "_now", lambda: next(ticks))
    wf = retrying(off_by_one=False)
    kw: dict[str, Any] = {"contexts_from": FRESH, "max_examples": 10, "print_coverage": False}
    assert check_workflow(wf, explore_for=1.0, **kw).coverage.runs == 30  # started at 0, then 0.4, 0.8, 1.2
    assert check_workflow(wf, explore_for=0, **kw).coverage.runs == 10
    assert check_workflow(wf, explore_for=5.0, derandomize=True, **kw).coverage.runs == 10
    for bad in (-1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="explore_for="):
            check_workflow(wf, explore_for=bad, **kw)
