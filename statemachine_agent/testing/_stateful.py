"""Hypothesis' stateful testing: a workflow as a RuleBasedStateMachine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from hypothesis.stateful import invariant as stateful_invariant

from ..clock import FakeClock
from ..compile import CompiledWorkflow
from ..errors import RunError
from ..workflow import Workflow
from ._stories import _check_step, _compiled
from ._strategies import contexts


def _rule_names(states: list[str]) -> dict[str, str]:
    """``from_<state>`` for each state, made an identifier; a clash gets a numbered suffix."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for state in states:
        base = "from_" + "".join(c if c.isalnum() else "_" for c in state)
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        out[state] = name
    return out


def workflow_state_machine(workflow: Workflow[Any] | CompiledWorkflow[Any],
                           contexts_from: st.SearchStrategy[Any] | None = None) -> type[Any]:
    """A ``RuleBasedStateMachine`` with one rule per non-terminal state, ``from_<state>``.

    The rule ``from_<state>`` is enabled only while the run is in that state and takes exactly one
    real step out of it: the exit the workflow's own guards, policy and action choose (a transition,
    an error transition, or a failure into the failure terminal), its action run through an event
    loop of the test case's own, then the built-in invariants. A step out of any other state fails the
    rule. ``terminal_absorbs`` checks that a finished run takes no further step. Use it as
    ``TestMyAgent = workflow_state_machine(wf).TestCase``.
    """
    compiled = _compiled(workflow)
    strategy = contexts_from if contexts_from is not None else contexts(compiled.context_type)
    spec = compiled.spec
    names = {t.name: t for t in spec.transitions}
    error_names = {e.name: e for e in spec.error_transitions}

    class WorkflowMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.run: Any = None

        @initialize(context=strategy)
        def start(self, context: Any) -> None:
            self.run = compiled.start(context, clock=FakeClock(), raise_errors=False)

        def teardown(self) -> None:
            self.loop.close()

        def _step_from(self, source: str, rule_name: str) -> None:
            step = self.loop.run_until_complete(self.run.step())
            assert step.state == source, (f"rule {rule_name} fired in state {source!r}, but its step "
                                          f"left {step.state!r}")
            _check_step(compiled, step, self.run, names=names, error_names=error_names,
                        bound=compiled.max_steps, invariants=())

        @precondition(lambda self: self.run is not None and self.run.result is not None)
        @rule()
        def terminal_absorbs(self) -> None:
            assert self.run.result is not None
            assert spec.state(self.run.state).terminal
            try:
                self.loop.run_until_complete(self.run.step())
            except RunError:
                return
            raise AssertionError("a step was taken after the terminal state")

        @stateful_invariant()
        def in_a_declared_state(self) -> None:
            if self.run is not None:
                assert spec.has_state(self.run.state)

    def make(source: str, rule_name: str) -> Callable[[Any], None]:
        def step(self: Any) -> None:
            self._step_from(source, rule_name)

        step.__name__ = rule_name
        return precondition(lambda self: self.run is not None and self.run.result is None
                            and self.run.state == source)(rule()(step))

    for source, rule_name in _rule_names([s.name for s in spec.states if not s.terminal]).items():
        setattr(WorkflowMachine, rule_name, make(source, rule_name))

    WorkflowMachine.__name__ = f"{compiled.name.title().replace('-', '')}Machine"
    return WorkflowMachine
