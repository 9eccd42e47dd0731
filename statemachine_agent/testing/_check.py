"""The one call: check_workflow explores a workflow; replay runs a saved story again."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from ..compile import CompiledWorkflow
from ..policies import Decision
from ..result import RunResult
from ..workflow import Workflow
from ._coverage import Coverage, KitReport
from ._stories import Invariant, PathInvariant, Story, _as_json, _compiled, _run_story, _Script
from ._strategies import Fault, _default_faults, contexts


def check_workflow(
    workflow: Workflow[Any] | CompiledWorkflow[Any],
    *,
    contexts_from: st.SearchStrategy[Any] | None = None,
    invariants: Sequence[Invariant] = (),
    path_invariants: Sequence[PathInvariant] = (),
    tool_faults: st.SearchStrategy[Fault] | None = None,
    explore_guards: bool = False,
    policy: Callable[[Decision[Any]], Any] | None = None,
    max_examples: int = 100,
    save_failure: str | Path | None = None,
    print_coverage: bool = True,
    derandomize: bool = False,
) -> KitReport:
    """Explore the workflow with Hypothesis and check every built-in and user invariant.

    ``contexts_from`` defaults to :func:`contexts` of the workflow's model; ``tool_faults`` to
    :func:`faults`. With ``explore_guards=True`` guard outcomes are generated too (so paths the real
    guards would not take are explored: use it for the built-in invariants). ``policy`` checks your
    own (synchronous) policy instead of generated answers: any answer it gives that is not an enabled
    transition is a failure. A failure raises
    ``AssertionError`` with the shrunk story, also written as JSON to ``save_failure`` when given.
    ``derandomize=True`` draws the same examples on every run (Hypothesis' setting of that name):
    for a CI that must not depend on luck, at the price of exploring less over time.
    """
    compiled = _compiled(workflow)
    strategy = contexts_from if contexts_from is not None else contexts(compiled.context_type)
    fault_strategy = tool_faults if tool_faults is not None else _default_faults(compiled)
    coverage = Coverage()
    last_story: list[Story] = []

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(context=strategy, data=st.data())
    def explore(context: Any, data: st.DataObject) -> None:
        story = Story(compiled.name, _as_json(context))
        last_story[:] = [story]
        draw = data.draw
        try:
            _run_story(compiled, story, context,
                       policy_script=_Script((), draw, story.choices),
                       fault_script=_Script((), lambda s, label: draw(s, label=label), story.faults)
                       if len(compiled.tools) else None,
                       guard_script=_Script((), lambda s, label: draw(s, label=label), story.guards)
                       if explore_guards else None,
                       fault_strategy=fault_strategy, invariants=invariants,
                       path_invariants=path_invariants, coverage=coverage, user_policy=policy)
        except AssertionError as exc:
            note(str(story))
            raise AssertionError(f"{exc}\n{story}") from None
        except Exception as exc:  # an invariant (or a strategy) that raised instead of returning False
            note(str(story))
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{story}") from exc

    try:
        explore()
    except AssertionError as exc:
        if save_failure is not None and last_story:
            Path(save_failure).write_text(last_story[0].to_json(), encoding="utf-8")
        raise AssertionError(f"{exc}\n(replay it: statemachine_agent.testing.replay(workflow, "
                             f"{str(save_failure)!r}))" if save_failure else str(exc)) from None
    report = KitReport(coverage, compiled)
    if print_coverage:
        print(report)
    return report



def replay(workflow: Workflow[Any] | CompiledWorkflow[Any], fixture: str | Path | dict[str, Any], *,
           invariants: Sequence[Invariant] = (), path_invariants: Sequence[PathInvariant] = (),
           tool_faults: st.SearchStrategy[Fault] | None = None) -> RunResult[Any]:
    """Run a saved story again exactly (same input, policy answers, tool faults and guard outcomes).

    Pass the same ``tool_faults`` as to :func:`check_workflow` when it named exception types of
    your own (the defaults are known).
    """
    compiled = _compiled(workflow)
    if tool_faults is None:
        tool_faults = _default_faults(compiled)  # also registers the error types by name
    data = fixture if isinstance(fixture, dict) else json.loads(Path(fixture).read_text(encoding="utf-8"))
    try:
        context = compiled.context_type.model_validate(data["context"])
        story = Story(compiled.name, data["context"])
        guards = data.get("guards", [])
        recorded = data.get("choices", [])
        checked = bool(data.get("policy_checked"))
        return _run_story(compiled, story, context,
                          policy_script=_Script(recorded, None, [] if checked else story.choices),
                          user_policy=(lambda d: None) if checked else None,
                          fault_script=_Script(data.get("faults", []), None, story.faults),
                          guard_script=_Script(guards, None, story.guards) if guards else None,
                          fault_strategy=tool_faults, invariants=invariants,
                          path_invariants=path_invariants, coverage=None)
    except KeyError as exc:
        raise ValueError(f"not a story fixture (as saved by check_workflow): missing {exc}") from None
