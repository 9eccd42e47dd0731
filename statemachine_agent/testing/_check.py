"""The one call: check_workflow explores a workflow; replay runs a saved story again."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from hypothesis.errors import Flaky

from ..compile import CompiledWorkflow
from ..events import Hook
from ..policies import Decision
from ..result import RunResult
from ..workflow import Workflow
from ._coverage import Coverage, KitReport
from ._llm import ScriptedModel
from ._stories import (
    _PHASES,
    Allowed,
    Invariant,
    PathInvariant,
    Story,
    _allowed,
    _as_json,
    _checked_invariants,
    _compiled,
    _Instrumented,
    _Options,
    _run_story,
    _Script,
    _Session,
)
from ._strategies import Fault, _default_faults, _fault_types, contexts


@contextlib.contextmanager
def _loop(policy: object = None) -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for a whole exploration: a loop per example would cost more than most runs
    (and an LLM policy's connection with it). An LLM policy's connections on it are closed after."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        try:
            for holder in (policy, getattr(policy, "chat", None)):
                aclose = getattr(holder, "aclose", None)
                if holder is not None and inspect.iscoroutinefunction(aclose):
                    with contextlib.suppress(Exception):
                        loop.run_until_complete(aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The library's per-run log lines (a WARNING per failed run) are silenced while exploring."""
    logger = logging.getLogger("statemachine_agent")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_workflow(
    workflow: Workflow[Any] | CompiledWorkflow[Any],
    *,
    contexts_from: st.SearchStrategy[Any] | None = None,
    invariants: Sequence[Invariant] = (),
    path_invariants: Sequence[PathInvariant] = (),
    tool_faults: st.SearchStrategy[Fault] | None = None,
    explore_guards: bool = False,
    policy: Callable[[Decision[Any]], Any] | None = None,
    model: ScriptedModel | None = None,
    hooks: Sequence[Hook] = (),
    allow: Iterable[Allowed] = frozenset(),
    events: bool = True,
    max_examples: int = 300,
    save_failure: str | Path | None = None,
    print_coverage: bool = True,
    derandomize: bool = False,
    explore_for: float = 1.0,
) -> KitReport:
    """Explore the workflow with Hypothesis and check every built-in and user invariant.

    ``contexts_from`` defaults to :func:`contexts` of the workflow's model; ``tool_faults`` to
    :func:`faults`. With ``explore_guards=True`` guard outcomes are generated too (so paths the real
    guards would not take are explored: use it for the built-in invariants). ``policy`` checks your
    own policy (sync or async) instead of generated answers: any answer it gives that is not an
    enabled transition is a failure; with ``model=`` (a :class:`ScriptedModel`) the model server's
    replies are generated, garbage included, and only a wrong answer to a valid reply is a failure.
    ``hooks`` are given to every run. ``allow`` lists the :class:`Allowed` endings that are not
    failures (by default an unrouted error, a guard's error, a spent budget and an unfinished run all
    are). With ``events=True`` a run that pauses in a wait state is delivered generated payloads
    (valid and invalid), or its timeout passes on the fake clock; some events come early.

    ``max_examples`` runs make a round; while no round failed and less than ``explore_for`` seconds
    (wall time) have passed, another round starts with fresh draws (Hypothesis' search climbs toward
    the paths it has found, and a round that settled on the wrong ones is not continued but restarted).
    ``explore_for=0`` makes one round; with ``derandomize=True`` there is always one.

    A failure raises ``AssertionError`` with the shrunk story, also written as JSON to
    ``save_failure`` when given. ``derandomize=True`` draws the same examples on every run
    (Hypothesis' setting of that name): for a CI that must not depend on luck.
    """
    __tracebackhide__ = True
    compiled = _compiled(workflow)
    invariants, path_invariants = _checked_invariants(invariants, path_invariants)
    if isinstance(explore_for, bool) or not isinstance(explore_for, (int, float)) or not math.isfinite(explore_for) \
            or explore_for < 0:
        raise ValueError(f"explore_for={explore_for!r}: give the seconds to keep exploring in fresh rounds, a "
                         "finite number >= 0 (0: one round of max_examples)")
    if model is not None and not isinstance(model, ScriptedModel):
        raise TypeError(f"model= takes a ScriptedModel, got {type(model).__name__}")
    if model is not None and policy is None:
        raise TypeError("model= needs policy=: the policy (an LLMPolicy on model.url) that asks the model")
    options = _Options(allow=_allowed(allow), events=bool(events), user_policy=policy, model=model,
                       hooks=tuple(hooks), invariants=invariants, path_invariants=path_invariants)
    strategy = contexts_from if contexts_from is not None else contexts(compiled.context_type)
    fault_strategy = tool_faults if tool_faults is not None else _default_faults(compiled)
    fault_types = _fault_types(fault_strategy, compiled)
    kit = _Instrumented(compiled)  # compiled once: every example runs on it
    has_tools = bool(len(compiled.tools))
    coverage = Coverage()
    failed: list[Story] = []
    last: list[Story] = []
    loops: list[asyncio.AbstractEventLoop] = []
    seen: Counter[tuple[str, str]] = Counter()

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=derandomize, phases=_PHASES,
              report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(context=strategy, data=st.data())
    def explore(context: Any, data: st.DataObject) -> None:
        __tracebackhide__ = True
        story = Story(compiled.name, _as_json(context))
        last[:] = [story]
        draw = data.draw

        def labelled(s: st.SearchStrategy[Any], label: str) -> Any:
            return draw(s, label=label)

        session = _Session(story, policy=_Script((), draw, story.choices),
                           faults=_Script((), labelled, story.faults) if has_tools else None,
                           guards=_Script((), labelled, story.guards) if explore_guards else None,
                           events=_Script((), labelled, story.events),
                           replies=_Script((), labelled, story.replies),
                           fault_strategy=fault_strategy, fault_types=fault_types, coverage=coverage)
        if model is not None:
            model.reset()
        try:
            result = loops[0].run_until_complete(_run_story(kit, session, context, options))
        except AssertionError as exc:
            failed[:] = [story]
            raise AssertionError(f"{exc}\n{story}") from None
        except Exception as exc:  # an invariant (or a strategy) that raised instead of returning False
            failed[:] = [story]
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{story}") from exc
        _steer(result, seen)

    with _quiet(), _loop(policy) as loop:
        loops.append(loop)
        started = _now()
        try:
            while True:
                seen.clear()  # each round learns which paths are rare afresh
                explore()
                # Another round, with fresh draws, while nothing was found and the time allows: a
                # search that settled on one region of the workflow starts over elsewhere.
                if derandomize or _now() - started >= explore_for:
                    break
        except Flaky as exc:
            raise AssertionError(_flaky(kit, exc, failed or last)) from None
        except AssertionError as exc:
            if save_failure is not None and failed:
                Path(save_failure).write_text(failed[0].to_json(), encoding="utf-8")
            message = str(exc)
            if save_failure:
                message += f"\n(replay it: statemachine_agent.testing.replay(workflow, {str(save_failure)!r}))"
            raise AssertionError(message) from None
    report = KitReport(coverage, compiled)
    if print_coverage:
        print(report)
    return report


_now = time.monotonic
"""The wall clock the rounds are timed on (a test replaces it)."""


def _steer(result: RunResult[Any], seen: Counter[tuple[str, str]]) -> None:
    """Hypothesis' target(): prefer runs that take many distinct edges, and runs whose pairs of edges
    (an edge and one taken later in the same run) the exploration has seen least."""
    path = result.path
    edges = list(dict.fromkeys(s.transition for s in path))
    target(float(len(edges)), label="distinct edges")
    pairs = {(a, b) for i, a in enumerate(edges) for b in edges[i + 1:]} or {(e, "") for e in edges}
    target(sum(1.0 / (1 + seen[p]) for p in pairs), label="rare paths")
    seen.update(pairs)


def _flaky(kit: _Instrumented, exc: BaseException, stories: list[Story]) -> str:
    """Hypothesis found the same draws giving different runs: say which real tool did it."""
    tools = kit.tool_log.flaky()
    story = f"\n{stories[0]}" if stories else ""
    if tools:
        names = ", ".join(repr(t) for t in tools)
        return (f"flaky tool {names}: its real calls sometimes raise and sometimes return for the same inputs "
                "(not through the kit's fault plan), so a failure cannot be replayed; make it deterministic in "
                f"tests (a fake, or a seeded random), and let the kit inject its faults{story}")
    return (f"the runs are not deterministic (the same draws gave different runs: {type(exc).__name__}); "
            f"an action, guard or tool depends on something outside its inputs{story}")


def replay(workflow: Workflow[Any] | CompiledWorkflow[Any], fixture: str | Path | dict[str, Any], *,
           invariants: Sequence[Invariant] = (), path_invariants: Sequence[PathInvariant] = (),
           tool_faults: st.SearchStrategy[Fault] | None = None, policy: Callable[[Decision[Any]], Any] | None = None,
           model: ScriptedModel | None = None, hooks: Sequence[Hook] = (),
           allow: Iterable[Allowed] = frozenset()) -> RunResult[Any]:
    """Run a saved story again exactly (same input, policy answers, tool faults, guard outcomes,
    deliveries and model replies), with the same checks; a failure raises ``AssertionError`` with
    the story.

    Pass the same ``tool_faults`` as to :func:`check_workflow` when it named exception types of
    your own (those the workflow routes are known); for an LLM policy, the same ``policy`` and ``model``.

    ``fixture`` may also be a JSONL trace (``statemachine_agent.traces.TraceWriter``'s ``FILE.jsonl``) of
    one run: it is run again from its starting context with the policy's recorded answers (tools are
    called for real), and a replay whose path leaves the trace's raises ``AssertionError``.
    """
    __tracebackhide__ = True
    compiled = _compiled(workflow)
    invariants, path_invariants = _checked_invariants(invariants, path_invariants)
    if tool_faults is None:
        tool_faults = _default_faults(compiled)
    traced = None
    if isinstance(fixture, (str, Path)) and str(fixture).endswith(".jsonl"):
        traced = _traced_story(compiled.name, fixture)
        data = traced[0]
    else:
        data = fixture if isinstance(fixture, dict) else json.loads(Path(fixture).read_text(encoding="utf-8"))
    try:
        context = compiled.context_type.model_validate(data["context"])
        story = Story(compiled.name, data["context"])
        guards = data.get("guards", [])
        checked = bool(data.get("policy_checked"))
        user_policy = policy if policy is not None else ((lambda d: None) if checked else None)
        session = _Session(story, policy=_Script(data.get("choices", []), None,
                                                 [] if checked and policy is None else story.choices),
                           faults=_Script(data.get("faults", []), None, story.faults),
                           guards=_Script(guards, None, story.guards) if guards else None,
                           events=_Script(data.get("events", []), None, story.events),
                           replies=_Script(data.get("replies", []), None, story.replies),
                           fault_strategy=tool_faults, fault_types=_fault_types(tool_faults, compiled),
                           coverage=None)
    except KeyError as exc:
        raise ValueError(f"not a story fixture (as saved by check_workflow): missing {exc}") from None
    options = _Options(allow=_allowed(allow), user_policy=user_policy, model=model, hooks=tuple(hooks),
                       invariants=invariants, path_invariants=path_invariants)
    if model is not None:
        model.reset()
    with _quiet(), _loop(policy) as loop:
        try:
            result = loop.run_until_complete(_run_story(_Instrumented(compiled), session, context, options))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{story}") from None
    if traced is not None:
        recorded = [(s["state"], s["transition"]) for s in traced[1]]
        again = [(s.state, s.transition) for s in result.path][:len(recorded)]
        if again != recorded:
            raise AssertionError(f"the replay of trace {str(fixture)!r} took {again} where the trace took {recorded}"
                                 f"\n{story}")
    return result


def _traced_story(workflow: str, path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A JSONL trace's run of ``workflow`` as a story fixture (its start and its policy's answers), and
    its recorded path."""
    from ..traces import read_trace, runs_of  # noqa: PLC0415  (only a replay of a trace needs it)

    runs = [r for r in runs_of(read_trace(path)).values() if r["workflow"] == workflow]
    if len(runs) != 1 or runs[0]["start"] is None:
        raise ValueError(f"trace {str(path)!r} holds {len(runs)} runs of workflow {workflow!r}"
                         f"{' (with its start)' if len(runs) == 1 else ''}: replay a trace of one run, from its start")
    run = runs[0]
    return {"context": run["start"], "choices": run["decisions"]}, run["path"]

