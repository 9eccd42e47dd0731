"""Shortest paths: a deterministic case per state and per transition."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ..compile import CompiledWorkflow
from ..errors import WaitTimedOut
from ..result import RunResult
from ..workflow import Workflow
from ._check import _quiet
from ._stories import Allowed, Story, _as_json, _compiled, _Instrumented, _Options, _run_story, _Script, _Session
from ._strategies import _qualified, faults


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


def follow(workflow: Workflow[Any] | CompiledWorkflow[Any], case: PathCase, context: Any, *,
           payloads: Mapping[str, Any] | None = None) -> RunResult[Any]:
    """Drive a run along ``case`` by forcing guards and policy answers (actions run for real). An
    error transition is followed by making its state's action raise the error it routes (its
    class itself); a wait's timeout by letting the time pass on the fake clock. A wait left by a
    transition is delivered ``payloads[event]`` (default: the payload model's defaults)."""
    __tracebackhide__ = True
    compiled = _compiled(workflow)
    plan = list(case.transitions)
    spec = compiled.spec
    by_name = {t.name: t for t in spec.transitions}
    errors = {e.name: e for e in spec.error_transitions}
    waits = {s.name: s.wait for s in spec.states if s.wait is not None}
    given = dict(payloads or {})
    forced: list[bool] = []
    choices: list[str] = []
    events: list[Any] = [{"at": "start", "count": 0}] if waits else []
    inject: deque[tuple[str, type[BaseException] | None]] = deque()
    for name in plan:
        t = by_name.get(name)
        e = errors.get(name)
        source = t.source if t is not None else e.source if e is not None else None
        if source is None:
            raise ValueError(f"{case.goal}: {name!r} is no transition of {compiled.name!r}")
        wait = waits.get(source)
        if wait is not None:
            if e is not None and issubclass(e.error, WaitTimedOut):
                events.append("timeout")
                continue
            events += ["valid", _payload(wait, given)]
        elif e is not None or t is not None:
            inject.append((source, e.error if e is not None else None))
        if e is not None or t is None:
            continue
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
    known = {_qualified(e.error): e.error for e in spec.error_transitions if issubclass(e.error, Exception)}
    session = _Session(story, policy=_Script(choices, None, story.choices), faults=None,
                       guards=_Script(forced, None, story.guards) if forced else None,
                       events=_Script(events, None, story.events),
                       replies=_Script((), None, story.replies), fault_strategy=faults(), fault_types=known,
                       coverage=None, inject=inject)
    with _quiet():
        try:
            result = asyncio.run(_run_story(_Instrumented(compiled), session, context,
                                            _Options(allow=frozenset(Allowed))))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{story}") from None
    taken = [step.transition for step in result.path]
    for i, planned in enumerate(plan):
        if i >= len(taken) or taken[i] != planned:
            got = taken[i] if i < len(taken) else "the end of the run"
            raise AssertionError(f"follow() left the path at step {i}: planned {planned!r}, took {got!r} "
                                 f"(an action failed, or a default exit sits behind an unguarded one)\n"
                                 f"{story}")
    return result


def _payload(wait: Any, given: dict[str, Any]) -> Any:
    if wait.event in given:
        value = given[wait.event]
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    try:
        return wait.payload.model_validate({}).model_dump(mode="json")
    except ValidationError:
        raise ValueError(f"follow() must deliver {wait.event!r} and {wait.payload.__name__} has required fields: "
                         f"pass follow(..., payloads={{{wait.event!r}: {wait.payload.__name__}(...)}})") from None
