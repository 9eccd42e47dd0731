"""Hypothesis' stateful testing: a workflow as a RuleBasedStateMachine, one rule per transition."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from hypothesis.stateful import invariant as stateful_invariant

from ..clock import FakeClock
from ..compile import CompiledWorkflow
from ..errors import RunError, WaitTimedOut
from ..workflow import Workflow
from ._check import _quiet
from ._stories import Story, _as_json, _check_step, _compiled, _Instrumented, _payloads, _Script, _Session
from ._strategies import _default_faults, contexts


def _rule_names(edges: list[str]) -> dict[str, str]:
    """``take_<transition>`` for each transition, made an identifier; a clash gets a numbered suffix."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for edge in edges:
        base = "take_" + "".join(c if c.isalnum() else "_" for c in edge)
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        out[edge] = name
    return out


def workflow_state_machine(workflow: Workflow[Any] | CompiledWorkflow[Any],
                           contexts_from: st.SearchStrategy[Any] | None = None) -> type[Any]:
    """A ``RuleBasedStateMachine`` with one rule per transition, error transitions included:
    ``take_<transition>``, and ``spend_a_budget``, enabled only when no transition out of the
    current state can be taken because a budget is spent: its real step fails.

    A rule is enabled only while the run is in its transition's source state, with the budgets that
    would stop the step (the state's visits, the transition's traversals, ``max_steps``) not spent.
    It takes exactly that transition, in one real step: its guards are forced, a decision answers
    it, an error transition's state raises the error it routes (the class itself) instead of running
    its action, a wait is delivered a generated payload (or, for ``<wait>_timeout``, its timeout passes
    on the fake clock). Other actions run for real; if one raises on its own, so that the step cannot
    take the rule's transition, the example is discarded (Hypothesis' ``assume``). Then the built-in
    checks run. ``terminal_absorbs`` checks that a finished run takes no further step. Use it as
    ``TestMyAgent = workflow_state_machine(wf).TestCase``.
    """
    compiled = _compiled(workflow)
    strategy = contexts_from if contexts_from is not None else contexts(compiled.context_type)
    spec = compiled.spec
    kit = _Instrumented(compiled)
    wf = kit.compiled
    names = {t.name: t for t in spec.transitions}
    error_names = {e.name: e for e in spec.error_transitions}
    edge_index = {name: i for i, name in enumerate(wf.edge_names)}
    fault_strategy = _default_faults(compiled)

    class WorkflowMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.run: Any = None
            self.clock = FakeClock()
            self.story: Story | None = None
            self.choices: list[str] = []
            """The rule's transition, answered at a decision of its step (the run's policy reads it)."""

        def answer(self, decision: Any) -> Any:
            return self.choices[0] if self.choices else decision.options[0].name

        @initialize(context=strategy)
        def start(self, context: Any) -> None:
            self.story = Story(compiled.name, _as_json(context))
            self.run = wf.start(context, clock=self.clock, raise_errors=False, policy=self.answer)

        def teardown(self) -> None:
            self.loop.close()

        def _take(self, name: str, data: st.DataObject) -> None:
            assert self.story is not None
            story = self.story
            t, e = names.get(name), error_names.get(name)
            source = t.source if t is not None else e.source if e is not None else ""
            wait = spec.state(source).wait
            forced: list[bool] = []
            choices: list[str] = []
            inject: deque[tuple[str, type[BaseException] | None]] = deque()
            if wait is not None:
                if e is not None and issubclass(e.error, WaitTimedOut):
                    assert wait.timeout is not None
                    if self.run.result is None:  # not paused yet (an initial wait): pause it first
                        with contextlib.suppress(RunError):
                            self.loop.run_until_complete(self.run.step())
                    self.clock.advance(wait.timeout)
                    self.run.wake()  # the in-memory run takes its timeout on the next step
                else:
                    self.run.deliver(wait.event, data.draw(_payloads(wait.payload), label=f"payload of {wait.event}"))
            elif e is not None:
                inject.append((source, e.error))
            else:
                inject.append((source, None))
            if t is not None:
                exits = [x for x in spec.exits(source) if not x.default]
                if spec.state(source).decision:
                    forced = [not t.default for x in exits if x.guard is not None]
                    choices = [name]
                else:
                    for other in exits:
                        if other.guard is not None:
                            forced.append(other.name == name)
                        if other.name == name:
                            break
            kit.session = _Session(story, policy=_Script(choices, None, story.choices), faults=None,
                                   guards=_Script(forced, None, story.guards),
                                   events=_Script((), None, story.events), replies=_Script((), None, story.replies),
                                   fault_strategy=fault_strategy, fault_types={}, coverage=None, inject=inject)
            self.choices = choices
            with _quiet():
                step = self.loop.run_until_complete(self.run.step())
            # An action that raised on its own, or a guard that did: the step could not take the
            # rule's transition, so the example is discarded.
            assume(step.transition == name or step.error is None or step.kind == "transition")
            assert step.transition == name, (f"rule take_{name} took {step.transition!r} out of {step.state!r}"
                                             f"{f' ({type(step.error).__name__}: {step.error})' if step.error else ''}")
            _check_step(wf, step, self.run, names=names, error_names=error_names, bound=wf.max_steps)

        @precondition(lambda self: self.run is not None and self.run.result is not None
                      and self.run.result.waiting is None)
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

    def enabled(name: str, source: str) -> Callable[[Any], bool]:
        plan = spec.state(source)
        bound_of = {t.name: t.max_traversals for t in spec.transitions} | \
                   {e.name: e.max_traversals for e in spec.error_transitions}
        index = edge_index[name]

        def check(self: Any) -> bool:
            run = self.run
            if run is None or run.state != source:
                return False
            result = run.result
            if result is not None and result.waiting is None:
                return False
            if plan.max_visits is not None and run.visits.get(source, 0) >= plan.max_visits:
                return False
            bound = bound_of[name]
            if bound is not None and run.traversals[index] >= bound:
                return False
            return bool(run.actions_run < run.max_steps)

        return check

    def make(name: str, source: str, rule_name: str) -> Callable[..., None]:
        def take(self: Any, data: st.DataObject) -> None:
            self._take(name, data)

        take.__name__ = rule_name
        return precondition(enabled(name, source))(rule(data=st.data())(take))

    edges = [(t.name, t.source) for t in spec.transitions] + [(e.name, e.source) for e in spec.error_transitions]
    rule_names = _rule_names([n for n, _ in edges])
    checks: dict[str, list[Callable[[Any], bool]]] = {}
    for name, source in edges:
        setattr(WorkflowMachine, rule_names[name], make(name, source, rule_names[name]))
        checks.setdefault(source, []).append(enabled(name, source))

    def stuck(self: Any) -> bool:
        run = self.run
        if run is None or (run.result is not None and run.result.waiting is None):
            return False
        return not any(check(self) for check in checks.get(run.state, ()))

    def spend_a_budget(self: Any) -> None:
        """No transition can be taken (a budget is spent): the real step fails into the failure terminal."""
        with _quiet():
            step = self.loop.run_until_complete(self.run.step())
        assert step.kind == "fail", f"with its budgets spent, {step.state!r} took {step.transition!r}"
        _check_step(wf, step, self.run, names=names, error_names=error_names, bound=wf.max_steps)

    WorkflowMachine.spend_a_budget = precondition(stuck)(rule()(spend_a_budget))

    WorkflowMachine.__name__ = f"{compiled.name.title().replace('-', '')}Machine"
    return WorkflowMachine
