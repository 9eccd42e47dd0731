"""A chat agent whose history is kept in segments, run (or resumed) in a process of its own, for
tests/test_segments.py's SIGKILL test: ``python segment_worker.py STORE`` prints ``go`` once it is
imported, then runs or resumes run ``r`` until it ends; the test kills it at random moments after that."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import RunNotFound
from statemachine_agent.stores import SQLiteStore

START, STEPS = 300, 600


class Chat(Context):
    history: list[dict[str, str]] = Field(default_factory=list)
    n: int = 0


def build() -> Any:
    wf = Workflow("seg-kill", Chat)

    @wf.state(initial=True, reads=["n", "history"], writes=["n", "history"])
    def talk(ctx: Any) -> None:
        ctx.n += 1
        ctx.history.append({"role": "user", "content": f"message {ctx.n} " + "x" * (ctx.n % 40)})

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("talk", "talk", guard=lambda c: c.n < STEPS, name="again", max_traversals=100_000)
    wf.transition("talk", "done", default=True, name="finish")
    return wf.compile()


def expected(after: int) -> list[dict[str, str]]:
    """The history after ``after`` committed steps."""
    return ([{"role": "system", "content": f"start {i}"} for i in range(START)]
            + [{"role": "user", "content": f"message {n} " + "x" * (n % 40)} for n in range(1, after + 1)])


def main(path: Path) -> None:
    compiled = build()
    print("go", flush=True)
    with SQLiteStore(path) as store:
        try:
            compiled.resume_sync("r", store=store, max_step_restarts=1000)
        except RunNotFound:
            compiled.run_sync(Chat(history=expected(0)), store=store, run_id="r", max_steps=100_000)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
