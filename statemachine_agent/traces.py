"""JSONL traces: one JSON object per event of a run, written by a hook and read back.

``compiled.run(ctx, hooks=[TraceWriter("runs.jsonl")])`` appends a line per event. Each line is an
object ``{"schema": "statemachine_agent.trace", "version": 1, "type": "<EventClass>", "at": <wall
time>, "run_id": ..., "workflow": ..., <the event's fields>}``; a ``RunFinished`` line's ``result``
is exactly ``RunResult.to_dict()``. Values are JSON: a context as pydantic dumps it (secret fields
are the mask ``"**********"``), an exception as ``Type: message``, an enum as its value.

:func:`read_trace` reads a file back (checking every line); :func:`runs_of` gives each run in it as
the dict ``RunResult.to_dict()`` makes (for a run that has not ended, built from its steps, with
``outcome`` ``waiting`` or ``running``), which ``statemachine-agent diagram --run FILE.jsonl`` draws and
``statemachine_agent.testing.replay`` replays.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from .errors import StateMachineAgentError, describe_error
from .events import (
    BudgetExhausted,
    DecisionOffered,
    ErrorRouted,
    Event,
    ModelCalled,
    PolicyChoiceRejected,
    RunFinished,
    RunStarted,
    RunWaiting,
    StepStarted,
    ToolAttemptFailed,
    ToolCallFailed,
    ToolCallFinished,
    ToolCallStarted,
    TransitionTaken,
)
from .policies import safe_repr

__all__ = ["SCHEMA", "VERSION", "TraceError", "TraceWriter", "read_trace", "record_of", "runs_of"]

SCHEMA = "statemachine_agent.trace"
VERSION = 1
"""The version of the lines' layout; a reader refuses a newer one."""

EVENTS: dict[str, type[Event]] = {e.__name__: e for e in (
    RunStarted, StepStarted, DecisionOffered, PolicyChoiceRejected, ModelCalled, ToolCallStarted,
    ToolAttemptFailed, ToolCallFinished, ToolCallFailed, ErrorRouted, BudgetExhausted, TransitionTaken,
    RunWaiting, RunFinished)}
"""The events a trace holds, by the name its lines give (``"type"``)."""

MAX_LINE = 16 * 1024 * 1024
"""The longest line a reader takes (a context of a long run can be large; a bigger one is refused)."""


class TraceError(StateMachineAgentError, ValueError):
    """A trace file cannot be read: the message names the line and what is wrong with it."""


def _json(value: Any) -> Any:
    """``value`` as JSON-ready data (what the trace keeps of a field)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, BaseException):
        return describe_error(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    enum_value = getattr(value, "value", None)
    if isinstance(enum_value, (str, int)) and type(value).__module__.startswith("statemachine_agent"):
        return enum_value
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return safe_repr(value)


def record_of(event: Event) -> dict[str, Any]:
    """The trace line of ``event``, as a dict."""
    out: dict[str, Any] = {"schema": SCHEMA, "version": VERSION, "type": type(event).__name__, "at": time.time()}
    for name in event.fields:
        if name == "trace":  # the run's trace context: the OpenTelemetry spans' business, not the record's
            continue
        value = getattr(event, name)
        if name == "choice":  # a policy's answer: kept as the testing kit's stories keep it
            out[name] = value if isinstance(value, (str, int, type(None))) and type(value) is not bool \
                else safe_repr(value)
        else:
            out[name] = _json(value)
    return out


class TraceWriter:
    """A hook writing every event of the runs it is given to ``file`` (a path, appended to, or an
    open text file), one JSON object a line. ``close()`` it (or use ``with``) when done with a path."""

    __slots__ = ("_file", "_lock", "_own")

    def __init__(self, file: str | Path | IO[str]) -> None:
        if isinstance(file, (str, Path)):
            try:
                self._file: IO[str] = open(file, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())
            except OSError as exc:
                raise TraceError(f"cannot open trace file {str(file)!r} ({exc.strerror or exc}): give a path in a "
                                 "folder that exists and is writable") from None
            self._own = True
        elif callable(getattr(file, "write", None)):
            self._file = file
            self._own = False
        else:
            raise TypeError(f"TraceWriter({type(file).__name__}): give a path or a text file open for writing")
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(record_of(event), ensure_ascii=False, allow_nan=False, default=safe_repr)
        with self._lock:  # runs on several threads' loops may share one writer
            self._file.write(line + "\n")
            if isinstance(event, (RunFinished, RunWaiting)):
                self._file.flush()

    def close(self) -> None:
        """Flush, and close the file when this writer opened it (again: nothing)."""
        with self._lock:
            if self._file.closed:
                return
            self._file.flush()
            if self._own:
                self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- reading ---------------------------------------------------------------------------------------
def read_trace(source: str | Path | Iterable[str]) -> list[dict[str, Any]]:
    """The records of a trace file (or of its lines), in order, each checked: ``TraceError`` naming
    the line for anything that is not a record of this layout."""
    if isinstance(source, (str, Path)):
        try:
            with open(source, encoding="utf-8") as f:
                return _records(f, str(source))
        except OSError as exc:
            raise TraceError(f"cannot read trace file {str(source)!r} ({exc.strerror or exc}): give the file a "
                             "TraceWriter wrote") from None
        except UnicodeDecodeError:
            raise TraceError(f"trace file {str(source)!r} is not UTF-8 text: give the file a TraceWriter wrote"
                             ) from None
    return _records(source, "the trace")


def _records(lines: Iterable[str], where: str) -> list[dict[str, Any]]:
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE:
            raise TraceError(f"{where}, line {number}: longer than {MAX_LINE} characters")
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise TraceError(f"{where}, line {number} is not JSON ({type(exc).__name__}): give a file TraceWriter "
                             "wrote, one JSON object a line") from None
        if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
            raise TraceError(f"{where}, line {number} is not a trace record (no \"schema\": {SCHEMA!r}): give a "
                             "file TraceWriter wrote")
        version = rec.get("version")
        if type(version) is not int or not 1 <= version <= VERSION:
            raise TraceError(f"{where}, line {number} has version {version!r}; this reader knows versions 1 to "
                             f"{VERSION}: read it with the release that wrote it, or a newer one")
        kind = EVENTS.get(rec.get("type"))  # type: ignore[arg-type]
        if kind is None:
            raise TraceError(f"{where}, line {number}: unknown event type {rec.get('type')!r}; known: "
                             f"{', '.join(sorted(EVENTS))}")
        missing = [n for n in kind.fields if n != "trace" and n not in rec]
        if missing or not isinstance(rec.get("run_id"), str) or not isinstance(rec.get("workflow"), str):
            raise TraceError(f"{where}, line {number}: {kind.__name__} lacks {missing or ['run_id', 'workflow']}")
        out.append(rec)
    return out


def runs_of(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each run of the records, by run id, as ``RunResult.to_dict()`` gives it, plus ``"start"``: the
    context it started with (``None`` when the trace holds no ``RunStarted`` of it) and
    ``"decisions"``: every answer its policy gave, in order (what a replay answers with). A run that
    has not ended is built from its steps, its ``outcome`` ``waiting`` (``waiting`` says for what)
    or ``running``. A run traced over several attempts (resumed, or continued after a wait) is one run."""
    runs: dict[str, dict[str, Any]] = {}
    pending: dict[str, dict[int, dict[str, Any]]] = {}
    for rec in records:
        run_id = rec["run_id"]
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = {"workflow": rec["workflow"], "run_id": run_id, "terminal": None,
                                  "outcome": "running", "steps": 0, "reason": None, "error": None, "context": None,
                                  "path": [], "waiting": None, "usage": None, "start": None, "decisions": []}
        steps = pending.setdefault(run_id, {})
        event = rec["type"]
        if event == "RunStarted":
            if run["start"] is None:
                run["start"] = rec["context"]
            run["outcome"], run["waiting"] = "running", None
        elif event == "PolicyChoiceRejected":
            run["decisions"].append(rec["choice"])
            steps.setdefault(rec["step"], {}).setdefault("rejected", []).append(rec["reason"])
        elif event == "ErrorRouted":
            steps.setdefault(rec["step"], {})["error"] = rec["error"]
        elif event == "DecisionOffered":
            steps.setdefault(rec["step"], {})["decision"] = True
        elif event == "StepStarted":
            steps.setdefault(rec["step"], {})["started"] = rec["at"]
        elif event == "ModelCalled":
            steps.setdefault(rec["step"], {}).setdefault("model_calls", []).append(rec["call"])
        elif event == "TransitionTaken":
            seen = steps.pop(rec["step"], {})
            if seen.get("decision"):
                run["decisions"].append(rec["transition"])
            run["path"].append({
                "number": rec["step"], "state": rec["source"], "target": rec["target"],
                "transition": rec["transition"], "kind": rec["kind"],
                "started_at": seen.get("started", rec["at"] - rec["duration"]), "duration": rec["duration"],
                "error": seen.get("error"), "rejected": seen.get("rejected", []),
                "ran": "started" in seen, "writes": [], "model_calls": seen.get("model_calls", [])})
            run["terminal"] = rec["target"]
        elif event == "RunWaiting":
            run.update(outcome="waiting", terminal=rec["state"], waiting=rec["event"],
                       reason=f"waiting in {rec['state']!r} for event {rec['event']!r}")
        elif event == "RunFinished":
            result = rec["result"]
            if isinstance(result, dict):
                run.update({k: v for k, v in result.items() if k in run})
    for run in runs.values():
        if run["usage"] is None:
            calls = [c for s in run["path"] for c in s["model_calls"] if isinstance(c, dict)]
            costs = [c.get("cost") for c in calls if isinstance(c.get("cost"), (int, float))]
            run["usage"] = {"calls": len(calls), "input_tokens": sum(int(c.get("input_tokens", 0)) for c in calls),
                            "output_tokens": sum(int(c.get("output_tokens", 0)) for c in calls),
                            "cost": sum(costs) if costs else None}
        if run["outcome"] == "running" and run["path"]:
            run["terminal"] = run["path"][-1]["target"]
        run["steps"] = run["steps"] or sum(1 for s in run["path"] if s["ran"])
    return runs
