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


def workflow_state_machine(workflow: Workflow[Any] | CompiledWorkflow[Any],
                           contexts_from: st.SearchStrategy[Any] | None = None) -> type[Any]:
    """A ``RuleBasedStateMachine`` with one rule per transition, gated by the current state.

    Each rule runs one step of a real run (its action through an event loop of the test case's
    own) and the built-in invariants; use it as ``TestMyAgent = workflow_state_machine(wf).TestCase``.
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

        def _step(self, expected: str) -> None:
            step = self.loop.run_until_complete(self.run.step())
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

    def make(t_name: str, source: str) -> Callable[[Any], None]:
        def step(self: Any) -> None:
            self._step(t_name)

        step.__name__ = "step_from_" + "".join(c if c.isalnum() else "_" for c in t_name)
        return precondition(lambda self: self.run is not None and self.run.result is None
                            and self.run.state == source)(rule()(step))

    for t in spec.transitions:
        fn = make(t.name, t.source)
        setattr(WorkflowMachine, fn.__name__, fn)

    WorkflowMachine.__name__ = f"{compiled.name.title().replace('-', '')}Machine"
    return WorkflowMachine
