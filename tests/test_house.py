"""The runner owns its state: nothing outside runner.py writes a run's private attributes, a run
rebuilt from its snapshot goes on as the original does, and the clock is asked for wall time
through its protocol."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from statemachine_agent import Context, FakeClock, Run, Workflow
from statemachine_agent.stores import MemoryStore

PACKAGE = Path(__file__).resolve().parents[1] / "statemachine_agent"


def _private_writes(path: Path) -> list[str]:
    """``x._name = ...`` / ``x._name[...] = ...`` / ``x._name += ...`` where x is not ``self``/``cls``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            t = target
            while isinstance(t, ast.Subscript):
                t = t.value
            if (isinstance(t, ast.Attribute) and t.attr.startswith("_") and not t.attr.startswith("__")
                    and not (isinstance(t.value, ast.Name) and t.value.id in ("self", "cls"))):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(t)}")
    return found


ALLOWED = {
    # Run.restore, a classmethod of Run, fills the run it just made.
    *(f"statemachine_agent/runner.py: run.{a}" for a in ("_written", "_owned", "_inbox", "_wait_deadline",
                                                            "_spent", "_journal", "_doomed", "_skipped")),
    # run_sync's loop: the default executor of abandoned sync tools is dropped, not joined
    # (asyncio has no public way to replace it).
    "statemachine_agent/runner.py: loop._default_executor",
}


def test_no_module_writes_another_objects_private_attributes() -> None:
    """Each object's private attributes are written by its own class only: the durable operations
    rebuild a run with Run.restore, and a journal gets what it commits as arguments."""
    found = {w.split(":")[0] + ":" + w.split(":", 2)[2]
             for p in sorted(PACKAGE.rglob("*.py")) for w in _private_writes(p)}
    assert found - ALLOWED == set()


class Count(Context):
    n: int = 0
    log: list[int] = Field(default_factory=list)


def _flow(stop: int) -> Any:
    wf = Workflow("count", Count)

    @wf.state(initial=True, reads=["n", "log"], writes=["n", "log"], max_visits=stop + 1)
    def tick(ctx: Count) -> None:
        ctx.n += 1
        ctx.log.append(ctx.n)

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("tick", "tick", guard=lambda c: c.n < stop, max_traversals=stop)
    wf.transition("tick", "done")
    return wf.compile()


@settings(max_examples=25, deadline=None)
@given(stop=st.integers(1, 8), at=st.integers(0, 8))
def test_a_run_restored_from_its_snapshot_goes_on_as_the_original(stop: int, at: int) -> None:
    compiled = _flow(stop)

    async def main() -> tuple[Any, Any]:
        original: Run[Count] = compiled.start(Count())
        for _ in range(min(at, stop - 1)):
            await original.step()
        copy = Run.restore(compiled, original.context.model_copy(deep=True), original.snapshot(),
                           path=original.path)
        assert copy.snapshot() == original.snapshot()
        return await original.run_to_end(), await copy.run_to_end()

    first, second = asyncio.run(main())
    assert (first.terminal, first.context, [s.transition for s in first.path]) == \
        (second.terminal, second.context, [s.transition for s in second.path])


class NoWall:
    """A clock from before wall() was part of the protocol."""

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        return None

    def timeout_at(self, when: float | None) -> asyncio.Timeout:
        return asyncio.timeout_at(None)


def test_a_clock_without_wall_time_is_refused_saying_what_a_clock_has() -> None:
    compiled = _flow(2)
    with pytest.raises(TypeError, match=r"has no now\(\), wall\(\), async sleep\(\) and timeout_at\(\)"):
        compiled.run_sync(Count(), clock=NoWall())
    with MemoryStore() as store, \
            pytest.raises(TypeError, match=r"has no now\(\), wall\(\), async sleep\(\) and timeout_at\(\)"):
        compiled.wake_due_sync(store, clock=NoWall())  # type: ignore[arg-type]
    assert compiled.run_sync(Count(), clock=FakeClock()).terminal == "done"


def test_state_and_tool_options_are_declared_once() -> None:
    """StateOptions is what a StateSpec holds besides its name, action and the terminal/wait parts;
    ToolOptions is Tool's keyword parameters; state(), add_state() and tool() take exactly them, and
    refuse another option naming the ones there are."""
    import dataclasses as dc
    import inspect

    from statemachine_agent import StateOptions, Tool, ToolOptions
    from statemachine_agent.spec import StateSpec

    spec_fields = {f.name for f in dc.fields(StateSpec)} - {"name", "action", "terminal", "outcome", "wait"}
    assert set(StateOptions.__annotations__) == spec_fields
    tool_params = {n for n, p in inspect.signature(Tool.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert set(ToolOptions.__annotations__) == tool_params
    wf = Workflow("w", Count)
    with pytest.raises(TypeError, match=r"add_state\(\) got unknown option\(s\) 'raeds': its options are .*reads"):
        wf.add_state("a", lambda c: None, raeds=["n"])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"state\(\) got unknown option\(s\) 'max_visit'"):
        wf.state(max_visit=2)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"tool\(\) got unknown option\(s\) 'efect'"):
        wf.tool(efect="read")  # type: ignore[call-overload]
