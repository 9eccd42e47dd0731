"""What the run explorer shows, as plain data built from a store's records (no HTTP, no HTML).

Everything here reads only what a store returns (``RunRecord``, ``StoredRun``) and, when the
workflow's code was given, its spec. Values are turned into text here, and the templates escape that
text: nothing from a store reaches a page as markup. Stored secrets (``{"$secret": token}``, and the
sealed tool results ``{"$secret_result": ...}``) are shown as a mask, never as their token.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..compile import CompiledWorkflow
from ..stores import RunRecord, RunStatus, StepRecord, StoredRun, rebuild

__all__ = [
    "MASK",
    "PAGE_SIZE",
    "Change",
    "ChangeKind",
    "DecisionView",
    "ListPage",
    "ModelCallView",
    "PayloadField",
    "PayloadInput",
    "RunView",
    "StepView",
    "ToolCallView",
    "list_page",
    "masked",
    "overlay_of",
    "payload_fields",
    "payload_from_form",
    "run_view",
    "step_changes",
    "version_of",
]

MASK = "•••••• (secret: kept encrypted in the store)"
"""What a stored secret is shown as."""

PAGE_SIZE = 50
"""Runs per page of the list."""

VALUE_CHARS = 20_000
"""The longest JSON text of one value shown whole; a longer one is cut (and says so)."""

DIFF_LINES = 200
"""The most lines of one field's diff shown."""

_SECRET_KEYS = ("$secret", "$secret_result")


def masked(value: Any) -> Any:
    """``value`` with every stored secret (an object whose keys are a sealed secret's) replaced by
    :data:`MASK`. Iterative: any nesting depth."""
    if isinstance(value, dict) and any(k in value for k in _SECRET_KEYS):
        return MASK
    if not isinstance(value, (dict, list)):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        src, parent, key = stack.pop()
        if isinstance(src, dict) and any(k in src for k in _SECRET_KEYS):
            parent[key] = MASK
        elif isinstance(src, dict):
            out: dict[str, Any] = {}
            parent[key] = out
            for k, v in src.items():
                out[k] = None
                stack.append((v, out, k))
        elif isinstance(src, list):
            items: list[Any] = [None] * len(src)
            parent[key] = items
            stack.extend((v, items, i) for i, v in enumerate(src))
        else:
            parent[key] = src
    return root[0]


def as_json(value: Any, *, indent: int | None = 2, limit: int = VALUE_CHARS) -> str:
    """``value`` (masked) as JSON text for a person, cut at ``limit`` characters."""
    try:
        text = json.dumps(masked(value), indent=indent, ensure_ascii=False, default=str, allow_nan=True)
    except (ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"\n… (cut: {len(text):,} characters in all)"


def when(ts: float | None) -> str:
    """Seconds since the epoch as ISO 8601 in UTC, to the millisecond."""
    if ts is None or not math.isfinite(ts):
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return repr(ts)


def seconds(value: float) -> str:
    """A duration for a person: ``1.25 s``, ``3.1 ms``, ``42 µs``."""
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def version_of(record: RunRecord) -> str:
    """What changes whenever a stored run moves (a live page compares it to know when to redraw)."""
    return f"{record.next_step}.{record.status}.{record.epoch}.{record.updated_at!r}"


# --- the list --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListPage:
    """One page of the runs, filtered."""

    runs: list[RunRecord]
    total: int
    """Runs matching the filters (on every page)."""
    page: int
    pages: int
    workflows: list[str]
    """Every workflow with runs in the store (for the filter)."""
    events: list[str]
    """Every event a run waits for (for the filter)."""
    counts: dict[str, int]
    """Runs per status, over the whole store."""


def list_page(records: Sequence[RunRecord], *, workflow: str = "", status: str = "", waiting: str = "",
              query: str = "", page: int = 1, size: int = PAGE_SIZE) -> ListPage:
    """The runs matching every filter given (``query``: a part of the run id, any case), newest
    update first, page ``page`` (from 1) of ``size``."""
    needle = query.casefold()
    chosen = [r for r in records
              if (not workflow or r.workflow == workflow)
              and (not status or r.status == status)
              and (not waiting or (r.wait is not None and r.status is RunStatus.WAITING and r.wait.event == waiting))
              and (not needle or needle in r.run_id.casefold())]
    pages = max(1, math.ceil(len(chosen) / size))
    page = min(max(page, 1), pages)
    counts = {str(s): 0 for s in RunStatus}
    for r in records:
        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
    return ListPage(
        runs=chosen[(page - 1) * size:page * size], total=len(chosen), page=page, pages=pages,
        workflows=sorted({r.workflow for r in records}),
        events=sorted({r.wait.event for r in records if r.wait is not None and r.status is RunStatus.WAITING}),
        counts=counts)


# --- one run ---------------------------------------------------------------------------------------
class ChangeKind(enum.StrEnum):
    """What a step did to a field it wrote."""

    SET = "set"
    """The field had no value before."""
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    """Written with the value it had."""
    UNSET = "unset"
    """Set back to UNSET."""


@dataclass(frozen=True)
class Change:
    """One written field of a step: before and after, as a line diff of their JSON."""

    field: str
    kind: ChangeKind
    lines: list[tuple[str, str]]
    """``(mark, text)``: mark is ``+``, ``-``, `` `` (context) or ``@`` (a hunk's header)."""
    cut: bool = False


@dataclass(frozen=True)
class ToolCallView:
    """A journaled tool call."""

    call: int
    tool: str
    effect: str
    status: str
    key: str
    arguments: str
    result: str | None
    error: str | None
    at: str
    attempts: int = 1
    """Attempts the call took (retries included), as journaled."""
    failures: tuple[str, ...] = ()
    """What each failed attempt raised, when the call took more than one."""


@dataclass(frozen=True)
class ModelCallView:
    """A model call's usage, as its step recorded it."""

    model: str
    purpose: str
    mode: str
    input_tokens: int
    output_tokens: int
    cost: str
    latency: str
    attempt: int
    http_attempts: int


@dataclass(frozen=True)
class DecisionView:
    """A step of a decision state (or one whose policy had answers rejected)."""

    answer: str
    options: list[tuple[str, str, str, bool]]
    """The state's declared exits: ``(transition, target, description, chosen)``; empty when the
    workflow's code was not given."""
    rejected: list[str]


@dataclass(frozen=True)
class StepView:
    """One committed step."""

    number: int
    state: str
    target: str
    transition: str
    kind: str
    started: str
    offset: str
    """Since the run's first step started."""
    duration: str
    share: int
    """The duration in thousandths of the longest step's (for the timeline's bar)."""
    ran: bool
    error: str | None
    writes: list[str]
    changes: list[Change]
    calls: list[ToolCallView]
    models: list[ModelCallView]
    decision: DecisionView | None


@dataclass(frozen=True)
class RunView:
    """A stored run, for its page."""

    record: RunRecord
    version: str
    steps: list[StepView]
    context: str
    inbox: list[tuple[int, str, str, str, str]]
    """``(seq, event, payload JSON, delivered at, consumed)``."""
    calls: list[ToolCallView]
    """Journal rows of steps not committed yet (an intent a crash left, say)."""
    tokens_in: int
    tokens_out: int
    cost: str
    model_calls: int
    started: str
    updated: str
    known: bool
    """Whether the explorer was given this run's workflow's code."""
    same_version: bool
    """Whether that code's fingerprint is the run's."""
    waiting: bool
    wait_event: str | None
    wait_deadline: str | None


def _lines(value: Any) -> list[str]:
    return as_json(value).splitlines()


def _change(name: str, before: Any, after: Any, had: bool, unset: bool) -> Change:
    if unset:
        return Change(name, ChangeKind.UNSET, [("-", line) for line in _lines(before)][:DIFF_LINES] if had else [])
    new = _lines(after)
    if not had:
        return Change(name, ChangeKind.SET, [("+", line) for line in new[:DIFF_LINES]], len(new) > DIFF_LINES)
    old = _lines(before)
    if old == new:
        return Change(name, ChangeKind.UNCHANGED, [(" ", line) for line in new[:DIFF_LINES]], len(new) > DIFF_LINES)
    lines: list[tuple[str, str]] = []
    for line in list(difflib.unified_diff(old, new, lineterm="", n=2))[2:]:
        lines.append((line[0] if line[:1] in "+- @" else " ", line[1:] if line[:1] in "+- " else line))
    return Change(name, ChangeKind.CHANGED, lines[:DIFF_LINES], len(lines) > DIFF_LINES)


def _tool_call(c: Any) -> ToolCallView:
    return ToolCallView(c.call, c.tool, str(c.effect), str(c.status), c.key, as_json(c.arguments, indent=None),
                        None if c.result is None and c.error is not None else as_json(c.result, indent=None),
                        c.error, when(c.at), c.attempts, tuple(c.failures))


def _number(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else 0


def _model_call(data: Mapping[str, Any]) -> ModelCallView:
    cost = data.get("cost")
    return ModelCallView(str(data.get("model", "?")), str(data.get("purpose", "")), str(data.get("mode", "")),
                         int(_number(data.get("input_tokens"))), int(_number(data.get("output_tokens"))),
                         "-" if cost is None else f"{_number(cost):.6g}", seconds(_number(data.get("latency"))),
                         int(_number(data.get("attempt"))), int(_number(data.get("http_attempts", 1))))


def _decision(step: StepRecord, compiled: CompiledWorkflow[Any] | None) -> DecisionView | None:
    spec = compiled.spec if compiled is not None else None
    is_decision = spec is not None and spec.has_state(step.state) and spec.state(step.state).decision
    if not is_decision and not step.rejected:
        return None
    options = []
    if spec is not None and spec.has_state(step.state):
        options = [(t.name, t.target, t.description, t.name == step.transition) for t in spec.exits(step.state)]
    return DecisionView(step.transition, options, list(step.rejected))


def step_changes(step: StepRecord, before: Mapping[str, Any], run_id: str) -> list[Change]:
    """What ``step`` did to each field it wrote, from the context before it (its JSON)."""
    context = json.loads(json.dumps({k: v for k, v in before.items()
                                     if k in step.writes or k in step.delta or k in step.ops or k in step.unset}))
    touched = list(dict.fromkeys([*step.writes, *step.delta, *step.ops, *step.unset]))
    had = {f: (f in context, json.loads(json.dumps(context[f])) if f in context else None) for f in touched}
    rebuild(context, step, run_id)
    return [_change(f, had[f][1], context.get(f), had[f][0], f in step.unset) for f in touched]


def run_view(stored: StoredRun, compiled: CompiledWorkflow[Any] | None) -> RunView:
    """The page of ``stored`` (a whole load). Each step's changes are not here: they are built when
    the step is opened (:func:`step_changes`), so a run of many steps shows at once."""
    r = stored.run
    calls_by_step: dict[int, list[ToolCallView]] = {}
    for c in stored.calls:
        calls_by_step.setdefault(c.step, []).append(_tool_call(c))
    first = stored.steps[0].started_at if stored.steps else r.created_at
    longest = max((s.duration for s in stored.steps), default=0.0) or 1.0
    steps: list[StepView] = []
    tokens_in = tokens_out = model_calls = 0
    cost = 0.0
    priced = False
    for s in stored.steps:
        models = [_model_call(m) for m in s.model_calls]
        for m in s.model_calls:
            tokens_in += int(_number(m.get("input_tokens")))
            tokens_out += int(_number(m.get("output_tokens")))
            if m.get("cost") is not None:
                priced = True
                cost += _number(m.get("cost"))
        model_calls += len(models)
        steps.append(StepView(
            number=s.number, state=s.state, target=s.target, transition=s.transition, kind=str(s.kind),
            started=when(s.started_at), offset=seconds(max(0.0, s.started_at - first)), duration=seconds(s.duration),
            share=max(1, min(1000, round(1000 * s.duration / longest))), ran=s.ran, error=s.error,
            writes=list(s.writes), changes=[], calls=calls_by_step.pop(s.number, []), models=models,
            decision=_decision(s, compiled)))
    pending = [c for step in sorted(calls_by_step) for c in calls_by_step[step]]
    wait = r.wait if r.status is RunStatus.WAITING else None
    return RunView(
        record=r, version=version_of(r), steps=steps, context=as_json(stored.context),
        inbox=[(e.seq, e.event, as_json(e.payload, indent=None), when(e.at),
                "not consumed yet" if e.consumed_step is None else f"consumed by step {e.consumed_step}")
               for e in stored.inbox],
        calls=pending, tokens_in=tokens_in, tokens_out=tokens_out, cost=f"{cost:.6g}" if priced else "-",
        model_calls=model_calls, started=when(r.created_at), updated=when(r.updated_at), known=compiled is not None,
        same_version=compiled is not None and compiled.fingerprint == r.fingerprint,
        waiting=wait is not None, wait_event=wait.event if wait is not None else None,
        wait_deadline=when(wait.deadline) if wait is not None and wait.deadline is not None else None)


def overlay_of(stored: StoredRun) -> dict[str, Any]:
    """A stored run as the recorded-run dict (``RunResult.to_dict()``'s shape) the diagrams draw; a
    run that has not ended is drawn up to the state it is in, with its status as the outcome."""
    r = stored.run
    done = r.status is RunStatus.DONE
    return {
        "workflow": r.workflow, "run_id": r.run_id,
        "terminal": (r.terminal or r.state) if done else r.state,
        "outcome": str(r.outcome or "failure") if done else str(r.status),
        "steps": sum(1 for s in stored.steps if s.ran), "reason": r.reason,
        "path": [{"number": s.number, "state": s.state, "target": s.target, "transition": s.transition,
                  "kind": str(s.kind), "ran": s.ran, "error": s.error} for s in stored.steps],
    }


# --- the deliver form ------------------------------------------------------------------------------
class PayloadInput(enum.StrEnum):
    """How a payload field is entered."""

    TEXT = "text"
    NUMBER = "number"
    INTEGER = "integer"
    CHECKBOX = "checkbox"
    CHOICE = "choice"
    JSON = "json"
    """Anything else: its JSON."""


@dataclass(frozen=True)
class PayloadField:
    """One field of a wait's payload model, as the form asks for it."""

    name: str
    input: PayloadInput
    required: bool
    default: str
    """The value the form starts with (text)."""
    choices: list[str]
    description: str
    minimum: str = ""
    maximum: str = ""


def _schema_of(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        found = defs.get(ref.rsplit("/", 1)[1])
        if isinstance(found, Mapping):
            return found
    return prop


def payload_fields(model: Any) -> list[PayloadField]:
    """The form of a payload model (a pydantic model class), from its JSON schema: one input per
    top-level field."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    out: list[PayloadField] = []
    for name, raw in schema.get("properties", {}).items():
        prop = _schema_of(raw, defs)
        kind = prop.get("type")
        choices = [str(v) for v in prop.get("enum", [])] if "enum" in prop else []
        if not choices and "const" in prop:
            choices = [str(prop["const"])]
        if choices and all(isinstance(v, str) for v in prop.get("enum", [prop.get("const")])):
            how = PayloadInput.CHOICE
        elif kind == "string":
            how = PayloadInput.TEXT
        elif kind == "integer":
            how = PayloadInput.INTEGER
        elif kind == "number":
            how = PayloadInput.NUMBER
        elif kind == "boolean":
            how = PayloadInput.CHECKBOX
        else:
            how = PayloadInput.JSON
        default = raw.get("default", prop.get("default"))
        if how is PayloadInput.JSON:
            shown = "" if default is None and name in required else json.dumps(default)
        elif how is PayloadInput.CHECKBOX:
            shown = "true" if default is True else ""
        else:
            shown = "" if default is None else str(default)
        limits = [str(prop[k]) if k in prop else "" for k in ("minimum", "maximum")]
        out.append(PayloadField(name, how, name in required, shown, choices,
                                str(raw.get("description", prop.get("description", ""))), *limits))
    return out


def payload_from_form(fields: Iterable[PayloadField], form: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The payload the form's answers make (to be validated by the model), and what could not be read."""
    payload: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields:
        key = f"field.{f.name}"
        raw = form.get(key, "")
        if f.input is PayloadInput.CHECKBOX:
            payload[f.name] = key in form
            continue
        if raw == "" and not f.required:
            continue
        if f.input in (PayloadInput.TEXT, PayloadInput.CHOICE):
            payload[f.name] = raw
            continue
        try:
            value = json.loads(raw) if raw.strip() else None
        except (ValueError, RecursionError):
            problems.append(f"field {f.name!r}: {raw[:80]!r} is not " + (
                "a number" if f.input in (PayloadInput.NUMBER, PayloadInput.INTEGER) else "JSON"))
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"field {f.name!r}: give a finite number")
            continue
        payload[f.name] = value
    return payload, problems

