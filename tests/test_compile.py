"""Compilation onto transitions: one shared machine that validates and records every move."""

from __future__ import annotations

import logging

import pytest
from broken_specs import BROKEN, Ctx, base, noop
from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import MachineError
from transitions.core import Event

from statemachine_agent import Context, DefinitionError, Workflow, guard
from statemachine_agent._plan import FAIL_TRIGGER, Token


def compiled_loop():  # type: ignore[no-untyped-def]
    """search <-> refine, then done; errors from search go to failed."""
    wf = base("loop")
    wf.add_state("search", noop, initial=True)
    wf.add_state("refine", noop, max_visits=2)
    wf.transition("search", "done", guard=guard(lambda c: c.attempts > 0, name="tried"))
    wf.transition("search", "refine", default=True)
    wf.transition("refine", "search")
    wf.on_error("search", OSError, "failed")
    return wf.compile()


def test_machine_has_only_declared_moves() -> None:
    """No auto transitions (they bypass guards): a trigger per transition name, one per state for
    its first enabled exit, one per error route, plus the fail move."""
    machine = compiled_loop().machine
    assert sorted(machine.events) == sorted([
        "search_to_done", "search_to_refine", "refine_to_search", "search_on_OSError",
        "@next:search", "@next:refine", FAIL_TRIGGER])
    assert not [e for e in machine.events if e.startswith("to_")]
    assert machine.models == []  # runs bring their own token; the machine keeps no registry


def test_machine_refuses_an_undeclared_move() -> None:
    """Firing a transition from a state it does not leave raises MachineError."""
    wf = compiled_loop()
    token = Token("refine", None, [0] * 4)
    with pytest.raises(MachineError):
        wf.machine.events["search_to_done"].trigger(token)  # fired from refine
    assert token.state == "refine"
    assert wf.machine.events["refine_to_search"].trigger(token) is True
    assert token.state == "search"


def test_guards_and_bounds_are_the_machines_conditions() -> None:
    """Each transition's guard is its condition in the machine's table, under the state's @next
    trigger in declaration order (default last); under its own name, the bound is one too."""
    wf = compiled_loop()
    nxt = wf.machine.events["@next:search"].transitions["search"]
    assert [t.dest for t in nxt] == ["done", "refine"]
    plan = wf.plans["search"]
    assert [c.func for t in nxt for c in t.conditions] == [*plan.exits, plan.default]
    named = wf.machine.events["search_to_done"].transitions["search"][0]
    assert named.conditions[0].func == wf.plans["search"].exits[0].enabled


class Counter(Context):
    n: int = 0


@st.composite
def counting_workflows(draw: st.DrawFn) -> tuple[Workflow[Counter], list[int]]:
    """A chain of states, each adding to a counter, with guarded forward jumps and bounded
    backward loops (guards on the counter), the last state's default exit to done."""
    size = draw(st.integers(2, 6))
    adds = draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
    wf: Workflow[Counter] = Workflow("gen", Counter)
    for i in range(size):
        def act(ctx: Counter, k: int = adds[i]) -> None:
            ctx.n = ctx.n + k
        wf.add_state(f"s{i}", act, initial=i == 0, reads=["n"], writes=["n"])
    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    for i in range(size):
        for _ in range(draw(st.integers(0, 2))):
            target = draw(st.integers(0, size))
            limit = draw(st.integers(0, 12))
            g = guard(lambda c, limit=limit: c.n < limit, name=f"n<{limit}", reads=["n"])
            dest = "done" if target == size else f"s{target}"
            wf.transition(f"s{i}", dest, guard=g, max_traversals=draw(st.integers(1, 3)))
        wf.transition(f"s{i}", f"s{i + 1}" if i + 1 < size else "done", default=True)
    return wf, adds


@settings(max_examples=200, deadline=None)
@given(counting_workflows())
def test_driving_the_machine_alone_follows_the_runners_path(
        case: tuple[Workflow[Counter], list[int]]) -> None:
    """transitions' own Event.trigger on the compiled table, with the actions applied by hand,
    takes exactly the runner's path on generated workflows (guards, order, defaults and bounds)."""
    wf, adds = case
    compiled = wf.compile()
    result = compiled.run_sync(Counter())
    machine = compiled.machine
    ctx = Counter()
    traversals = [0] * len(compiled.edge_names)
    token = Token(compiled.initial, ctx, traversals)
    states = []
    steps = 0
    while not compiled.plans[token.state].terminal:
        state = token.state
        states.append(state)
        if steps >= compiled.max_steps:
            Event.trigger(machine.events[FAIL_TRIGGER], token)
            break
        steps += 1
        ctx.n += adds[int(state[1:])]
        assert Event.trigger(machine.events[f"@next:{state}"], token, token) is True
        taken = next(x for x in (*compiled.plans[state].exits, compiled.plans[state].default)
                     if x is not None and x.target == token.state and x(token))
        if taken.bound is not None and traversals[taken.key] >= taken.bound:
            token.state = state
            Event.trigger(machine.events[FAIL_TRIGGER], token)
            break
        traversals[taken.key] += 1
    assert [*states, token.state] == result.states


def test_fail_move_exists_from_every_non_terminal_only() -> None:
    """The failure move leaves every non-terminal state and no terminal one."""
    wf = compiled_loop()
    fail = wf.machine.events[FAIL_TRIGGER]
    assert sorted(fail.transitions) == ["refine", "search"]


def test_compile_of_a_broken_spec_raises() -> None:
    """compile() checks first."""
    with pytest.raises(DefinitionError):
        BROKEN["unbounded-cycle"]().compile()


def test_transitions_logger_is_quiet_unless_the_user_chose() -> None:
    """The transitions logger is set to WARNING when unset, and left alone when the user set it."""
    core = logging.getLogger("transitions.core")
    core.setLevel(logging.NOTSET)
    compiled_loop()
    assert core.level == logging.WARNING
    core.setLevel(logging.DEBUG)
    try:
        compiled_loop()
        assert core.level == logging.DEBUG
    finally:
        core.setLevel(logging.WARNING)


def test_default_step_budget_is_the_checkers_bound() -> None:
    """A compiled workflow's max_steps is the worst-case bound the checker computed."""
    wf = compiled_loop()
    assert wf.max_steps == wf.report.worst_case_steps == 5
    assert repr(wf) == "<CompiledWorkflow 'loop': 4 states, worst case 5 steps>"


def test_context_type_and_fields_at_start() -> None:
    """The compiled workflow knows its context model and which fields start set."""
    wf = compiled_loop()
    assert wf.context_type is Ctx
    assert wf.fields_at_start == {"question", "attempts"}
