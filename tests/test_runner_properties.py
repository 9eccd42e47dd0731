"""Properties of the runner over generated workflows, guard outcomes, policy answers and failures."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field

from statemachine_agent import CompiledWorkflow, Context, Decision, Outcome, Workflow, guard, result_of
from statemachine_agent.errors import ContextAccessError


class Trace(Context):
    """Each action appends its state's name to ``trace`` (a declared write) and may set ``token``."""

    trace: list[str] = Field(default_factory=list)
    token: int | None = None


class Boom(Exception):
    """A routed failure."""


class Unrouted(Exception):
    """A failure no error transition handles."""


@st.composite
def workflows(draw: st.DrawFn) -> dict[str, Any]:
    """A random valid layout: forward edges freely, back edges only into visit-bounded states."""
    n = draw(st.integers(2, 6))
    names = [f"s{i}" for i in range(n)]
    bounded = {name: draw(st.one_of(st.none(), st.integers(1, 3))) for name in names}
    edges: list[tuple[str, str, bool]] = []  # (source, target, guarded)
    for i, name in enumerate(names):
        targets = draw(st.lists(st.sampled_from([*names, "done", "failed"]), max_size=3))
        for t in targets:
            j = names.index(t) if t in names else n
            if j > i or (t in names and bounded[t] is not None):
                edges.append((name, t, True))
        if i + 1 < n:
            preds = draw(st.integers(0, i))  # keep every state reachable
            edges.append((names[preds], names[i + 1], True))
        edges.append((name, draw(st.sampled_from([*names[i + 1:], "done"])), False))  # default exit
    return {
        "names": names,
        "bounded": bounded,
        "edges": edges,
        "decision": {name: draw(st.booleans()) for name in names},
        "reads_token": {name: draw(st.booleans()) for name in names},
        "routes": {name: draw(st.sampled_from([None, "failed", "done"])) for name in names},
    }


def build(layout: dict[str, Any], data: st.DataObject) -> CompiledWorkflow[Trace]:
    """Compile the layout; guards, policy-free actions and failures draw from ``data`` at run time."""
    wf = Workflow("generated", Trace)
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    names = layout["names"]
    for i, name in enumerate(names):

        reads = ["token"] if i > 0 and layout["reads_token"][name] else []

        def action(ctx: Any, _name: str = name, _reads: bool = bool(reads)) -> None:
            if _reads:
                assert isinstance(ctx.token, int)  # set on every path in: the checker proved it
            ctx.trace = [*ctx.trace, _name]
            ctx.token = data.draw(st.integers(0, 9), label=f"token from {_name}")
            fate = data.draw(st.sampled_from(["ok", "ok", "ok", "boom", "unrouted"]), label=f"{_name} fate")
            if fate == "boom":
                raise Boom(_name)
            if fate == "unrouted":
                raise Unrouted(_name)

        wf.add_state(name, action, initial=i == 0, reads=reads, writes=["trace", "token"],
                     max_visits=layout["bounded"][name], decision=layout["decision"][name])
        if layout["routes"][name]:
            wf.on_error(name, Boom, layout["routes"][name])
    for k, (src, dst, guarded) in enumerate(layout["edges"]):
        g = guard(lambda c, _k=k: data.draw(st.booleans(), label=f"guard {_k}"), name=f"g{k}") \
            if guarded else None
        wf.transition(src, dst, guard=g, default=not guarded, description=f"go to {dst}")
    return wf.compile()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=workflows(), data=st.data(), use_sync=st.booleans())
def test_every_run_ends_in_a_terminal_within_the_bound(layout: dict[str, Any], data: st.DataObject,
                                                       use_sync: bool) -> None:
    """Any run ends in a terminal, within the static bound, via declared transitions only,
    and a failed action leaves none of its writes."""
    compiled = build(layout, data)
    spec = compiled.spec
    declared = {t.name: (t.source, t.target) for t in spec.transitions}
    declared |= {e.name: (e.source, e.target) for e in spec.error_transitions}

    def policy(decision: Decision) -> Any:
        # Valid picks, disabled names, garbage: the runner must take only enabled ones.
        return data.draw(st.one_of(
            st.sampled_from(decision.options),
            st.sampled_from([o.target for o in decision.options]),
            st.sampled_from(["s0", "nowhere", "done"]),
            st.integers(),
            st.none(),
        ), label="policy answer")

    ctx = Trace()
    raised: Exception | None = None
    try:
        found = compiled.run_sync(ctx, policy=policy) if use_sync else asyncio.run(compiled.run(ctx,
                                                                                               policy=policy))
    except Exception as exc:  # an unrouted error is loud, with the recorded run on it
        raised, found = exc, result_of(exc)
    assert found is not None
    result = found
    if raised is not None:
        assert result.error is raised
    assert spec.state(result.terminal).terminal
    assert result.steps <= compiled.report.worst_case_steps  # type: ignore[operator]
    state = compiled.initial
    committed: list[str] = []
    for step in result.path:
        assert step.state == state
        if step.kind == "fail":
            assert step.target == compiled.failure_terminal
        else:
            assert declared[step.transition] == (step.state, step.target)
        if step.kind == "transition":
            committed.append(step.state)
        state = step.target
    assert state == result.terminal
    assert result.context.trace == committed  # failed steps wrote nothing
    if result.outcome is Outcome.FAILURE:
        assert result.reason
    assert not isinstance(result.error, ContextAccessError)
    assert ctx.trace == []
