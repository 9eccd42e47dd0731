"""Compilation onto transitions: one shared machine that validates and records every move."""

from __future__ import annotations

import logging

import pytest
from broken_specs import BROKEN, Ctx, base, noop
from transitions import MachineError

from statemachine_agent import DefinitionError, guard
from statemachine_agent.compile import FAIL_TRIGGER
from statemachine_agent.runner import _Token


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
    """No auto transitions (they bypass guards): one trigger per declared edge, plus the fail move."""
    machine = compiled_loop().machine
    assert sorted(machine.events) == sorted(["t0", "t1", "t2", "e0", FAIL_TRIGGER])
    assert not [e for e in machine.events if e.startswith("to_")]
    assert machine.models == []  # runs bring their own token; the machine keeps no registry


def test_machine_refuses_an_undeclared_move() -> None:
    """Firing a transition from a state it does not leave raises MachineError."""
    wf = compiled_loop()
    token = _Token("refine")
    with pytest.raises(MachineError):
        wf.machine.events["t0"].trigger(token)  # search->done fired from refine
    assert token.state == "refine"
    assert wf.machine.events["t2"].trigger(token) is True
    assert token.state == "search"


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
