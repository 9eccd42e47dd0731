"""`runs show` tells what a stored run's model calls cost, read from the store alone."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from statemachine_agent import Context, Workflow
from statemachine_agent.cli import main
from statemachine_agent.llm import LLMPolicy, Price
from statemachine_agent.llm.testing import FakeOpenAIServer, chat_reply, tool_reply
from statemachine_agent.stores import SQLiteStore


class Ctx(Context):
    """A pull request."""

    text: str


def test_show_sums_the_model_calls_per_step_and_per_run(tmp_path: Path) -> None:
    """A stored run whose decision needed two asks shows both calls on its step and the run's total."""
    wf = Workflow("review", Ctx)
    wf.add_state("triage", lambda ctx: None, initial=True, reads=["text"], decision=True)
    wf.terminal("approved")
    wf.terminal("rejected", outcome="failure")
    wf.transition("triage", "approved", name="approve", description="good")
    wf.transition("triage", "rejected", name="reject", description="bad")
    db = tmp_path / "runs.db"
    script = [chat_reply("I am not sure.", prompt_tokens=100, completion_tokens=7),
              tool_reply("choose_transition", {"transition": "approve"}, prompt_tokens=130, completion_tokens=5)]
    with FakeOpenAIServer(script) as server:
        store = SQLiteStore(db)
        try:
            policy = LLMPolicy(base_url=server.url, model="smollm2", server="llama-cpp-python",
                               prices={"smollm2": Price(input=1.0, output=2.0)})
            result = wf.compile().run_sync(Ctx(text="ok"), policy=policy, store=store, run_id="pr-1")
        finally:
            store.close()
    assert result.terminal == "approved"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["runs", "show", "pr-1", "--store", str(db)])
    assert code == 0
    text = out.getvalue()
    cost = (230 * 1.0 + 12 * 2.0) / 1e6
    assert "       models: 2 calls to smollm2, 230 tokens in, 12 out" in text
    assert "models:   2 calls to smollm2, 230 tokens in, 12 out" in text
    assert f"cost {cost:.6g}" in text
