"""Whether a stored run can continue under a workflow: one check for every path that continues one.

``resume``, ``reopen``, ``deliver``, ``wake_due``, ``fork`` and ``compiled.check_runs`` all call
:func:`fit` (or :func:`compatibility`) with the run as a :class:`ResumePoint`, **before** anything
is written: a refusal (:class:`~.errors.IncompatibleRun`) leaves the store as it was.

Each rule is one function taking ``(workflow, point, plan)`` and yielding problems, each with its
own code (:class:`~.errors.ResumeCode`, documented in docs/checks.md). ``migrate=`` gets the point,
returns it changed, and what it returns is checked again, in full, like a stored run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, JsonValue, ValidationError

from ._plan import Plan
from ._program import Program
from ._rules import unset_reads_from
from .context import first_non_finite
from .errors import IncompatibleRun, Problem, ResumeCode
from .spec import WorkflowSpec
from .stores._records import MAX_DEPTH, depth_ok, record_json

__all__ = ["JournalCall", "QueuedEvent", "ResumePoint", "compatibility", "fingerprint", "fit"]


class JournalCall(BaseModel):
    """A journal row of the step the run takes next (a call made before the crash): that step is
    answered from these rows. ``migrate=`` may rename ``tool``, set ``effect`` to the tool's new
    effect class (for an open at_most_once intent that says: it may run again), record the outcome
    (``status="done"`` with a ``result``), or drop the row (the call is made again)."""

    step: int
    call: int
    """The call's index in its step."""
    tool: str
    effect: Literal["read", "idempotent", "at_most_once"]
    """The effect class the call was made under."""
    status: Literal["intent", "done", "failed"]
    """``intent`` (an at_most_once call started, outcome unknown), ``done`` or ``failed``."""
    key: str
    arguments: JsonValue = None
    result: JsonValue = None


class QueuedEvent(BaseModel):
    """An event delivered to the run and not consumed yet. ``migrate=`` may change its ``event`` or
    ``payload`` (the payload as JSON), or drop it (it stays unconsumed in the store, and is offered
    to ``migrate=`` again on the next resume)."""

    seq: int
    event: str
    payload: JsonValue = None


class ResumePoint(BaseModel):
    """A stored run as ``resume(..., migrate=)`` sees it: change what the new workflow needs and
    return it (``point.model_copy(update={...})``). What it returns is checked again, in full."""

    run_id: str
    state: str
    context: dict[str, Any]
    """The context's JSON (secret fields as SecretStr/SecretBytes objects)."""
    written: list[str]
    visits: dict[str, int]
    traversals: dict[str, int]
    actions_run: int
    next_step: int = 0
    """The number of the step the run takes next (read only: a migration cannot change it)."""
    waiting_for: str | None = None
    """The event the run waits for in ``state`` (``None``: it does not wait). Set it to the new
    workflow's event, or to ``None`` to let the state run as the new workflow says."""
    calls: list[JournalCall] = []
    """Journal rows of the step the run takes next."""
    inbox: list[QueuedEvent] = []
    """Events delivered and not consumed yet, oldest first."""


# --- the fingerprint ------------------------------------------------------------------------------
def _schema(model: Any) -> Any:
    try:
        return model.model_json_schema()
    except Exception:  # a model pydantic cannot describe: its field names and annotations instead
        fields = getattr(model, "model_fields", None)
        if isinstance(fields, dict):
            return {n: repr(getattr(f, "annotation", None)) for n, f in fields.items()}
        return repr(model)


def fingerprint(spec: WorkflowSpec) -> str:
    """A hash of what a stored run depends on: states and their declarations (reads, writes,
    tools, bounds, waits with their payload schemas and timeouts), transitions and their bounds,
    error routes, tools and their effect classes, the step bound and the context's schema. A run
    stored under another fingerprint is checked in full (the unset-read analysis included)."""
    def names(value: Any) -> list[str]:
        return sorted(str(v) for v in value) if isinstance(value, (list, tuple, set, frozenset)) else []

    def wait(s: Any) -> Any:
        w = getattr(s, "wait", None)
        if w is None:
            return None
        return [str(w.event), _schema(w.payload), w.timeout, w.on_timeout]

    data = {
        "states": [[s.name, bool(s.initial), bool(s.terminal), str(s.outcome), names(s.reads), names(s.writes),
                    names(s.optional_reads), names(s.optional_writes), names(s.tools), s.max_visits,
                    bool(s.decision), wait(s)] for s in spec.states],
        "transitions": [[t.name, t.source, t.target, t.max_traversals] for t in spec.transitions],
        "errors": [[t.name, t.source, t.target, t.error.__name__, t.max_traversals]
                   for t in spec.error_transitions],
        "tools": sorted([t.name, str(t.effect)] for t in spec.tools),
        "max_steps": spec.max_steps,
        "context": _schema(spec.context),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def fingerprint_of(workflow: Program[Any]) -> str:
    """``workflow``'s fingerprint (computed once, when it was compiled)."""
    fp = getattr(workflow, "fingerprint", None)
    if isinstance(fp, str):
        return fp
    spec = getattr(workflow, "spec", None)
    return fingerprint(spec) if isinstance(spec, WorkflowSpec) else ""


# --- the rules ------------------------------------------------------------------------------------
Rule = Callable[[Program[Any], ResumePoint, "Plan | None"], Iterator[Problem]]


def _state(workflow: Program[Any], point: ResumePoint, plan: Plan | None) -> Iterator[Problem]:
    if plan is None:
        yield Problem(ResumeCode.UNKNOWN_STATE, f"the run is stored in state {point.state!r}, which this workflow "
                      "does not have", point.state)
    elif plan.terminal:
        yield Problem(ResumeCode.UNKNOWN_STATE, f"the run is stored in state {point.state!r}, which is terminal "
                      "in this workflow", point.state)


def _wait(workflow: Program[Any], point: ResumePoint, plan: Plan | None) -> Iterator[Problem]:
    event = point.waiting_for
    if event is None or plan is None or plan.terminal:
        return
    if plan.wait is None:
        yield Problem(ResumeCode.WAIT_CHANGED, f"the run waits in state {point.state!r} for event {event!r}, and "
                      f"{point.state!r} is no longer a wait state in this workflow", point.state)
    elif plan.wait.event != event:
        yield Problem(ResumeCode.WAIT_CHANGED, f"the run waits in state {point.state!r} for event {event!r}, and "
                      f"this workflow waits there for event {plan.wait.event!r}", point.state)


def _written(workflow: Program[Any], point: ResumePoint, plan: Plan | None) -> Iterator[Problem]:
    unknown = sorted(set(point.written) - set(workflow.context_type.model_fields))
    if unknown:
        yield Problem(ResumeCode.BAD_CONTEXT, f"the stored run wrote fields {unknown} that "
                      f"{workflow.context_type.__name__} no longer has")


def _counters(workflow: Program[Any], point: ResumePoint, plan: Plan | None) -> Iterator[Problem]:
    edges = set(workflow.edge_names)
    for name in sorted(set(point.traversals) - edges):
        yield Problem(ResumeCode.COUNTERS, f"the stored run took transition {name!r} {point.traversals[name]} "
                      "time(s), which this workflow does not have", name)
    for name in sorted(set(point.visits) - set(workflow.plans)):
        yield Problem(ResumeCode.COUNTERS, f"the stored run visited state {name!r}, which this workflow does "
                      "not have", name)
    counters = [(f"visits[{k!r}]", v) for k, v in sorted(point.visits.items())]
    counters += [(f"traversals[{k!r}]", v) for k, v in sorted(point.traversals.items())]
    counters.append(("actions_run", point.actions_run))
    bad = [f"{name}={v}" for name, v in counters if not 0 <= v <= _MAX_COUNT]
    if bad:
        yield Problem(ResumeCode.COUNTERS, f"the run's counters are out of range: {', '.join(bad)}; a counter "
                      f"counts what the run did, from 0 (at most {_MAX_COUNT})")


_MAX_COUNT = 2**53
"""The largest counter a store keeps (a JSON number that is exact as a float)."""


def _bounds(workflow: Program[Any], point: ResumePoint, plan: Plan | None) -> Iterator[Problem]:
    plans = workflow.plans
    for name, n in sorted(point.visits.items()):
        bound = plans[name].max_visits if name in plans else None
        if bound is not None and n > bound:
            yield Problem(ResumeCode.OVER_BOUND, f"the stored run visited state {name!r} {n} times, over its "
                          f"max_visits of {bound} in this workflow", name)
    bounds = _edge_bounds(workflow)
    for name, n in sorted(point.traversals.items()):
        bound = bounds.get(name)
        if bound is not None and n > bound:
            yield Problem(ResumeCode.OVER_BOUND, f"the stored run took transition {name!r} {n} times, over its "
                          f"max_traversals of {bound} in this workflow", name)
    if point.actions_run > workflow.max_steps:
        yield Problem(ResumeCode.OVER_BOUND, f"the stored run ran {point.actions_run} steps, over this "
                      f"workflow's bound of {workflow.max_steps}")


def _edge_bounds(workflow: Program[Any]) -> dict[str, int]:
    bounds: dict[str, int] = {}
    for p in workflow.plans.values():
        for x in p.exits:
            if x.bound is not None:
                bounds[x.name] = x.bound
        for e in p.errors:
            if e.bound is not None:
                bounds[e.spec.name] = e.bound
    return bounds


def _journal(workflow: Program[Any], point: ResumePoint, plan: Plan | None) -> Iterator[Problem]:
    for c in point.calls:
        where = f"call {c.call} of step {c.step} (made before the run stopped) was to tool {c.tool!r}"
        tool = workflow.tools.get(c.tool)
        if tool is None:
            yield Problem(ResumeCode.UNKNOWN_TOOL, f"{where}, which this workflow does not have: the step "
                          "cannot be answered from its journal", c.tool)
            continue
        if c.step == point.next_step and plan is not None and not plan.terminal and c.tool not in plan.tools:
            yield Problem(ResumeCode.UNKNOWN_TOOL, f"{where}, which state {point.state!r} no longer declares: "
                          "the step cannot be answered from its journal", c.tool)
        if c.status == "done" and not (isinstance(c.result, dict) and "$secret_result" in c.result):
            try:
                tool.load_result(c.result)
            except Exception as exc:
                text = _errors(exc, "result") if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
                yield Problem(ResumeCode.RESULT_CHANGED, f"{where}, whose journaled result no longer fits the tool's "
                              f"result type ({text[:300]}): the step cannot be answered from its journal", c.tool)
        effect = str(tool.effect)
        if c.effect != effect:
            if c.status == "intent":
                why = (f"it started under effect {c.effect!r} and its outcome is unknown; as {effect!r} it "
                       "would run again")
            else:
                why = f"it was made under effect {c.effect!r}, and the tool is {effect!r} now"
            yield Problem(ResumeCode.EFFECT_CHANGED, f"{where}: {why}", c.tool)


def _inbox(workflow: Program[Any], point: ResumePoint, plan: Plan | None) -> Iterator[Problem]:
    waits = {p.wait.event: p.wait for p in workflow.plans.values() if p.wait is not None}
    for e in point.inbox:
        wait = waits.get(e.event)
        if wait is None:  # unknown events are the next rule's (only a change of workflow is refused)
            continue
        try:
            wait.payload.model_validate(e.payload)
        except ValidationError as exc:
            yield Problem(ResumeCode.BAD_EVENT, f"event {e.event!r} (#{e.seq}) was delivered and not consumed, and "
                          f"its payload does not validate against {wait.payload.__name__}: {_errors(exc)}",
                          e.event)


def _orphaned_events(workflow: Program[Any], point: ResumePoint) -> Iterator[Problem]:
    """Queued events no wait of a *changed* workflow takes: the run would never consume them. (Under
    the same workflow such an event came from ``Store.deliver`` itself, and is left alone.)"""
    waits = {p.wait.event for p in workflow.plans.values() if p.wait is not None}
    for e in point.inbox:
        if e.event not in waits:
            yield Problem(ResumeCode.BAD_EVENT, f"event {e.event!r} (#{e.seq}) was delivered and not consumed, and "
                          "this workflow waits for no such event: the run would never take it", e.event)


def _errors(exc: ValidationError, top: str = "(payload)") -> str:
    """pydantic's errors, each as ``field.path: message`` (``top`` names the value itself)."""
    return pydantic_errors(exc.errors(), top)


def pydantic_errors(errors: Any, top: str) -> str:
    """The first five of pydantic's ``errors()`` as ``field.path: message`` (``top``: the value itself)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or top}: {e['msg']}" for e in list(errors)[:5])


RULES: tuple[Rule, ...] = (_state, _wait, _written, _counters, _bounds, _journal, _inbox)
"""The rules every stored point is held to, whatever its fingerprint (the context is validated
and, for a changed workflow, the unset-read analysis runs, in :func:`compatibility`)."""


def _validated(workflow: Program[Any], point: ResumePoint, problems: list[Problem]) -> BaseModel | None:
    """The point's context validated by the workflow's model; ``None`` with the problem added."""
    try:
        context: BaseModel = workflow.context_type.model_validate(point.context)
    except ValidationError as exc:
        problems.append(Problem(ResumeCode.BAD_CONTEXT, f"the stored context does not validate against "
                                f"{workflow.context_type.__name__}: {_errors(exc, '(context)')}"))
        return None
    return context


def compatibility(workflow: Program[Any], point: ResumePoint, stored_fingerprint: str
                  ) -> tuple[BaseModel | None, list[Problem]]:
    """Whether ``point`` can continue under ``workflow``: its validated context, or the problems."""
    plan = workflow.plans.get(point.state)
    problems: list[Problem] = []
    context = _validated(workflow, point, problems)
    for rule in RULES:
        problems.extend(rule(workflow, point, plan))
    changed = fingerprint_of(workflow) != stored_fingerprint
    if changed:
        problems.extend(_orphaned_events(workflow, point))
    spec = getattr(workflow, "spec", None)
    if isinstance(spec, WorkflowSpec) and plan is not None and not plan.terminal and changed:
        for reader, f in unset_reads_from(spec, point.state, point.written):
            where = "there" if reader == point.state else f"in state {reader!r}, reachable from it,"
            problems.append(Problem(ResumeCode.UNSET_READ, f"the run is stored in state {point.state!r} without "
                                    f"field {f!r} written, and this workflow reads it {where} before any state "
                                    "writes it", reader))
    problems.sort(key=lambda p: list(ResumeCode).index(ResumeCode(p.code)))
    return (context if not problems else None), problems


def ended_compatibility(workflow: Program[Any], point: ResumePoint) -> tuple[BaseModel | None, list[Problem]]:
    """Whether the result of an ended run can be given under ``workflow``: its terminal exists
    (as a terminal) and its context validates."""
    problems: list[Problem] = []
    plan = workflow.plans.get(point.state)
    if plan is None or not plan.terminal:
        what = "does not have" if plan is None else "has as a non-terminal state"
        problems.append(Problem(ResumeCode.UNKNOWN_STATE, f"the run ended in terminal {point.state!r}, which this "
                                f"workflow {what}", point.state))
    context = _validated(workflow, point, problems)
    return (context if not problems else None), problems


# --- migrations -----------------------------------------------------------------------------------
def _name_of(migrate: Any) -> str:
    for attr in ("__qualname__", "__name__"):
        try:
            name = getattr(migrate, attr, None)
        except Exception:
            name = None
        if isinstance(name, str) and name:
            return name
    return type(migrate).__name__


def _migrated(point: ResumePoint, migrate: Callable[[ResumePoint], Any]) -> ResumePoint | Problem:
    """What ``migrate`` made of ``point``, validated as a ResumePoint; or why it cannot be used."""
    name = _name_of(migrate)

    def bad(why: str) -> Problem:
        return Problem(ResumeCode.BAD_MIGRATION, f"migrate={name} {why}; nothing was written", name)

    try:
        out = migrate(point.model_copy(deep=True))
    except Exception as exc:
        return bad(f"raised {type(exc).__name__}: {str(exc)[:300]}")
    if inspect.isawaitable(out):
        if inspect.iscoroutine(out):
            out.close()  # refused, not left to warn "never awaited" at garbage collection
        return bad("returned an awaitable: give a plain function (def, not async def) taking and returning "
                   "the ResumePoint")
    if not isinstance(out, ResumePoint):
        return bad(f"returned {type(out).__name__}, not a ResumePoint: return the point it was given, changed "
                   "(point.model_copy(update={...}))")
    try:  # model_copy(update=) validates nothing: a point is checked like a stored run
        checked = ResumePoint.model_validate(out.model_dump(mode="python", round_trip=True, warnings=False))
    except ValidationError as exc:
        return bad(f"returned a ResumePoint that does not validate: {_errors(exc)}")
    except Exception as exc:
        return bad(f"returned a ResumePoint that cannot be read ({type(exc).__name__}: {str(exc)[:200]})")
    if checked.next_step != point.next_step:
        return bad(f"changed next_step from {point.next_step} to {checked.next_step}: the steps the run took "
                   "are its history, which a migration cannot change")
    seqs = [e.seq for e in checked.inbox]
    if len(set(seqs)) != len(seqs) or not set(seqs) <= {e.seq for e in point.inbox}:
        return bad("returned inbox events that were not delivered (a seq it did not get, or one twice): a "
                   "migration may change an event's name or payload, or drop it, never add one")
    keys = [(c.step, c.call) for c in checked.calls]
    if len(set(keys)) != len(keys) or not set(keys) <= {(c.step, c.call) for c in point.calls}:
        return bad("returned journal rows that were not journaled (a step or call index it did not get, or "
                   "one twice): a migration may change a row's tool, effect, status or result, or drop it, "
                   "never move or add one")
    given = {(c.step, c.call): c.result for c in point.calls}
    for c in checked.calls:
        if (isinstance(c.result, dict) and "$secret_result" in c.result
                and c.result != given.get((c.step, c.call))):
            return bad(f"gave call {c.call} of step {c.step} a result shaped as a sealed secret: record a plain "
                       "result (the store seals secret results itself)")
    if checked.run_id != point.run_id:
        return bad(f"changed the run's id from {point.run_id!r} to {checked.run_id!r}: a migration adapts the "
                   "run, it cannot make another one")
    return checked


def _unstorable(point: ResumePoint, context: BaseModel | None) -> list[Problem]:
    """What in a migrated point no store could keep (and so would fail the run's first commit, after
    its claim): nesting deeper than a record may (a cycle too), NaN or infinity, values with no JSON
    form, text that is not UTF-8, in the context, the queued payloads or the journal rows."""
    parts: list[tuple[str, Any]] = [("the context", point.context)]
    parts += [(f"event #{e.seq}'s payload", e.payload) for e in point.inbox]
    parts += [(f"call {c.call} of step {c.step}'s result", c.result) for c in point.calls]
    for what, value in parts:
        if not depth_ok(value):
            return [Problem(ResumeCode.BAD_CONTEXT, f"{what} nests deeper than {MAX_DEPTH} levels (or holds a "
                            "cycle): the store cannot keep it")]
        found = first_non_finite(value)
        if found is not None:
            where = ".".join(map(str, found[0]))
            field = f"context field {where!r}" if what == "the context" else f"{what} at {where or '(top)'!r}"
            return [Problem(ResumeCode.BAD_CONTEXT, f"{field} is {found[1]!r}, not a finite number: JSON, and "
                            "so the store, cannot keep it")]
        try:
            data = context.model_dump(mode="json", warnings="error") if what == "the context" and context else value
            record_json(data).encode("utf-8")
        except Exception as exc:  # whatever the value's own code raises: it cannot be stored
            return [Problem(ResumeCode.BAD_CONTEXT, f"{what} cannot be stored as JSON ({type(exc).__name__}: "
                            f"{str(exc)[:200]})")]
    return []


def _kept_events(workflow: Program[Any], before: ResumePoint, after: ResumePoint, name: str) -> Problem | None:
    """A migration may drop or rename a queued event only if no wait of ``workflow`` takes it as
    stored: the store hands a wait every event of its name, so such an event would be taken (or
    would keep the run from being stored as waiting) whatever the migration said."""
    waited = {p.wait.event for p in workflow.plans.values() if p.wait is not None}
    now = {e.seq: e.event for e in after.inbox}
    for e in before.inbox:
        if e.event in waited and now.get(e.seq) != e.event:
            what = "dropped" if e.seq not in now else f"renamed to {now[e.seq]!r}"
            return Problem(ResumeCode.BAD_MIGRATION, f"migrate={name} {what} event {e.event!r} (#{e.seq}), which "
                           "this workflow's wait takes as it is stored: change its payload instead (drop or "
                           "rename only an event no wait takes); nothing was written", name)
    return None


def fit(workflow: Program[Any], point: ResumePoint, stored_fingerprint: str,
        migrate: Callable[[ResumePoint], Any] | None, *, ended: bool = False,
        advice: str | None = None) -> tuple[ResumePoint, BaseModel, bool]:
    """``point`` (migrated if it must be and can) with its validated context, and whether it was
    migrated; or :class:`~.errors.IncompatibleRun` listing every reason. Writes nothing."""
    def check(p: ResumePoint, fp: str) -> tuple[BaseModel | None, list[Problem]]:
        try:
            return ended_compatibility(workflow, p) if ended else compatibility(workflow, p, fp)
        except Exception as exc:  # what a migration put in the point can break a model's validators
            return None, [Problem(ResumeCode.BAD_CONTEXT, f"checking the run raised {type(exc).__name__}: "
                                  f"{str(exc)[:300]}")]

    context, problems = check(point, stored_fingerprint)
    migrated = False
    if problems and migrate is not None:
        out = _migrated(point, migrate)
        advice = advice or ("nothing was written: fix migrate= so that it returns the point it was given, "
                            "changed to fit this workflow")
        if isinstance(out, Problem):
            raise IncompatibleRun(point.run_id, [out, *problems], advice)
        kept = _kept_events(workflow, point, out, _name_of(migrate))
        if kept is not None:
            raise IncompatibleRun(point.run_id, [kept, *problems], advice)
        point, migrated = out, True
        context, problems = check(point, "")  # a full check of what migrate made
        problems.extend(_unstorable(point, context))  # a stored point is storable; a migrated one may not be
        if problems:
            name = _name_of(migrate)
            problems.insert(0, Problem(ResumeCode.BAD_MIGRATION, f"migrate={name} returned a point that still "
                                       "does not fit this workflow; nothing was written", name))
    if problems or context is None:
        raise IncompatibleRun(point.run_id, problems, advice)
    return point, context, migrated
