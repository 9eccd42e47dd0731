"""Shortest paths: a deterministic case per state and per transition."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..compile import CompiledWorkflow
from ..result import RunResult
from ..workflow import Workflow
from ._stories import Story, _as_json, _compiled, _run_story, _Script
from ._strategies import faults


@dataclass(frozen=True, slots=True)
class PathCase:
    """A shortest path from the initial state that reaches ``goal`` (a state or a transition)."""

    goal: str
    transitions: tuple[str, ...]
    """Transition names, in order."""
    states: tuple[str, ...]

    def __str__(self) -> str:
        return self.goal


def shortest_paths(workflow: Workflow[Any] | CompiledWorkflow[Any]) -> list[PathCase]:
    """One shortest path to each state and through each transition (error transitions included):
    ``@pytest.mark.parametrize("case", shortest_paths(wf), ids=str)``."""
    compiled = _compiled(workflow)
    spec = compiled.spec
    edges = [(t.source, t.target, t.name) for t in spec.transitions] + \
            [(e.source, e.target, e.name) for e in spec.error_transitions]
    parent: dict[str, tuple[str, str] | None] = {compiled.initial: None}
    todo = deque([compiled.initial])
    while todo:
        v = todo.popleft()
        for src, dst, name in edges:
            if src == v and dst not in parent:
                parent[dst] = (src, name)
                todo.append(dst)

    def route(state: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        names: list[str] = []
        states = [state]
        p = parent[state]
        while p is not None:
            names.append(p[1])
            states.append(p[0])
            p = parent[p[0]]
        return tuple(reversed(names)), tuple(reversed(states))

    cases = []
    for s in spec.states:
        if s.name in parent:
            names, states = route(s.name)
            cases.append(PathCase(f"state {s.name}", names, states))
    for src, dst, name in edges:
        if src in parent:
            names, states = route(src)
            cases.append(PathCase(f"transition {name}", (*names, name), (*states, dst)))
    return cases


def follow(workflow: Workflow[Any] | CompiledWorkflow[Any], case: PathCase, context: Any) -> RunResult[Any]:
    """Drive a run along ``case`` by forcing guards and policy answers (actions run for real)."""
    compiled = _compiled(workflow)
    plan = list(case.transitions)
    spec = compiled.spec
    by_name = {t.name: t for t in spec.transitions}
    forced: list[bool] = []
    choices: list[str] = []
    for name in plan:
        t = by_name.get(name)
        if t is None:
            raise ValueError(f"{name!r} is an error transition: make the action raise to follow it")
        exits = [x for x in spec.exits(t.source) if not x.default]
        if spec.state(t.source).decision:
            # Every guard is evaluated to find the enabled exits. For the default exit, disable
            # them all (and leave no unguarded exit, or it cannot be reached); else enable all and choose.
            if t.default:
                forced += [False for x in exits if x.guard is not None]
                continue
            forced += [True for x in exits if x.guard is not None]
            if len(exits) > 1:
                choices.append(name)
            continue
        for other in exits:  # tried in order; the default only when none is enabled
            if other.guard is not None:
                forced.append(other.name == name)
            if other.name == name:
                break
    story = Story(compiled.name, _as_json(context))
    result = _run_story(compiled, story, context, policy_script=_Script(choices, None, story.choices),
                        fault_script=None,
                        guard_script=_Script(forced, None, story.guards) if forced else None,
                        fault_strategy=faults(), invariants=(), path_invariants=(), coverage=None)
    taken = [step.transition for step in result.path]
    for i, planned in enumerate(plan):
        if i >= len(taken) or taken[i] != planned:
            got = taken[i] if i < len(taken) else "the end of the run"
            raise AssertionError(f"follow() left the path at step {i}: planned {planned!r}, took {got!r} "
                                 f"(an action failed, or a default exit sits behind an unguarded one)\n"
                                 f"{story}")
    return result
