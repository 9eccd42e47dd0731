"""The LLM research demo against the real model: it ends in a declared terminal, its run is durable,
and a replay needs no model at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _server import Served

from statemachine_agent.examples.research import CORPUS
from statemachine_agent.examples.research_llm import LLMResearchContext, Summary, build
from statemachine_agent.llm import PROFILES, ChatModel, LLMPolicy, ServerKind
from statemachine_agent.stores import SQLiteStore

QUESTION = "How does the checker bound loops?"
TERMINALS = {"done", "not_found", "no_summary", "failed"}
PAGES = {p.name for p in CORPUS.glob("*.md")}


def _chat(served: Served, url: str | None = None, **kw: object) -> ChatModel:
    options: dict = {"max_tokens": 300, "timeout": 120.0, **kw}
    return ChatModel(base_url=url or served.url, model="smollm2", server=served.kind, **options)


def _assert_sane(result) -> None:  # type: ignore[no-untyped-def]
    assert result.terminal in TERMINALS
    # The question has hits, so the model is asked in assess (summarize and broaden both enabled).
    first = next(s for s in result.path if s.state == "assess")
    assert first.transition in {"summarize", "broaden"}
    assert first.rejected == ()
    assert [c.purpose for c in first.model_calls] == ["decision"]
    if result.terminal == "done":
        summary = result.context.summary
        assert isinstance(summary, Summary)
        assert 40 <= len(summary.answer) <= 600
        assert set(summary.sources) <= PAGES
        assert result.context.answer == summary.answer
    else:  # a tiny model may fail to summarize: the run says why
        assert result.terminal == "no_summary"
        assert result.reason


@pytest.mark.slow_llm
def test_research_demo_ends_in_a_declared_terminal(llm: Served) -> None:
    chat = _chat(llm)
    result = build(chat).compile().run_sync(LLMResearchContext(question=QUESTION), policy=LLMPolicy(chat=chat))
    _assert_sane(result)
    assert result.usage.calls >= 2 if result.terminal == "done" else result.usage.calls >= 1
    assert all(c.input_tokens > 0 and c.latency > 0 for s in result.path for c in s.model_calls)


def test_research_demo_command_line(llm: Served) -> None:
    out = subprocess.run([sys.executable, "-m", "statemachine_agent.examples.research_llm", QUESTION,
                          "--url", llm.url, "--server", llm.kind], check=False, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stdout.splitlines()
    path = next(line for line in lines if line.startswith("path:"))
    assert path.split("(")[0].split("->")[-1].strip() in TERMINALS
    first = PROFILES[ServerKind(llm.kind)].modes_for(decision=True)[0]
    assert any(f"mode={first} " in line and "tokens in=" in line for line in lines)
    assert any(line.startswith("usage:") for line in lines)


def test_research_demo_unreachable_server_is_one_line_exit_2(dead_url: str) -> None:
    out = subprocess.run([sys.executable, "-m", "statemachine_agent.examples.research_llm", QUESTION,
                          "--url", dead_url], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert dead_url in out.stderr
    assert "Traceback" not in out.stderr


def test_durable_run_replays_and_resumes_without_the_model(llm: Served, dead_url: str, tmp_path: Path) -> None:
    chat = _chat(llm)
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        result = build(chat).compile().run_sync(LLMResearchContext(question=QUESTION), policy=LLMPolicy(chat=chat),
                                                store=store, run_id="r1")
        _assert_sane(result)
        calls = result.usage.calls
        assert calls >= 1

        # The same workflow over a model that cannot be reached: asking it fails the run.
        dead = _chat(llm, dead_url, retries=1, timeout=5.0)
        offline = build(dead).compile()
        cut_off = offline.run_sync(LLMResearchContext(question=QUESTION), policy=LLMPolicy(chat=dead))
        assert cut_off.terminal == "no_summary"
        assert "raised ModelUnavailable" in cut_off.reason

        # ... yet the recorded run replays step for step and resumes to its stored end, from the journal.
        report = offline.replay_sync("r1", store=store)
        assert report.ok, str(report)
        assert report.matched == report.recorded == len(result.path)
        again = offline.resume_sync("r1", store=store, policy=LLMPolicy(chat=dead))
        assert again.terminal == result.terminal
        assert again.usage.calls == calls
        assert dead.working == set()  # the dead model was never answered
    finally:
        store.close()
