"""One exception base, split into definition errors (found before a run) and run errors."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Budget",
    "BudgetExceeded",
    "ContextAccessError",
    "DefinitionError",
    "EffectOutcomeUnknown",
    "GatherFailed",
    "IncompatibleRun",
    "ModelAnswerInvalid",
    "ModelError",
    "ModelRefused",
    "ModelUnavailable",
    "NondeterminismError",
    "Problem",
    "ProblemCode",
    "RecordedError",
    "ResumeCode",
    "RunError",
    "RunExists",
    "RunFenced",
    "RunNotFound",
    "StateMachineAgentError",
    "StoreCorrupted",
    "StoreError",
    "TimeoutScope",
    "ToolArgumentError",
    "ToolError",
    "ToolFailed",
    "ToolResultError",
    "ToolTimeout",
    "UndeclaredTool",
    "UnknownTool",
    "WaitTimedOut",
    "describe_error",
    "error_name",
]


class StateMachineAgentError(Exception):
    """Base of every error raised by statemachine-agent."""


class ProblemCode(enum.StrEnum):
    """What the checker found wrong with a workflow (``DefinitionError.problems[i].code``); each is
    explained, with its real message, in docs/checks.md. A ``StrEnum``: each member equals its text."""

    BAD_ACTION = "bad-action"
    BAD_BOUND = "bad-bound"
    BAD_ERROR_TYPE = "bad-error-type"
    BAD_FIELD = "bad-field"
    BAD_GUARD = "bad-guard"
    BAD_LLM_STEP = "bad-llm-step"
    BAD_NAME = "bad-name"
    BAD_OPTION = "bad-option"
    BAD_STATE = "bad-state"
    BAD_TOOL = "bad-tool"
    BAD_TRANSITION = "bad-transition"
    BAD_WAIT = "bad-wait"
    CONTEXT_MODEL = "context-model"
    DEAD_TRANSITION = "dead-transition"
    DUPLICATE_ERROR_ROUTE = "duplicate-error-route"
    DUPLICATE_NAME = "duplicate-name"
    DUPLICATE_STATE = "duplicate-state"
    DUPLICATE_TOOL = "duplicate-tool"
    FOREIGN_STATE = "foreign-state"
    GUARDED_DEFAULT = "guarded-default"
    INITIAL_TERMINAL = "initial-terminal"
    MISSING_DESCRIPTION = "missing-description"
    NO_EXIT = "no-exit"
    NO_FAILURE_TERMINAL = "no-failure-terminal"
    NO_INITIAL = "no-initial"
    NO_TERMINAL = "no-terminal"
    SEVERAL_INITIAL = "several-initial"
    TERMINAL_ACTION = "terminal-action"
    TERMINAL_DECISION = "terminal-decision"
    TERMINAL_EXIT = "terminal-exit"
    TERMINAL_OUTCOME = "terminal-outcome"
    TRAP_CYCLE = "trap-cycle"
    TRAP_STATE = "trap-state"
    UNBOUNDED_CYCLE = "unbounded-cycle"
    UNDECLARED_TOOL = "undeclared-tool"
    UNKNOWN_FIELD = "unknown-field"
    UNKNOWN_STATE = "unknown-state"
    UNKNOWN_TOOL = "unknown-tool"
    UNREACHABLE_STATE = "unreachable-state"
    UNROUTED_UNKNOWN_OUTCOME = "unrouted-unknown-outcome"
    UNSET_READ = "unset-read"


@dataclass(frozen=True, slots=True)
class Problem:
    """One offender found by the checker."""

    code: ProblemCode | ResumeCode
    """A stable identifier of the rule, e.g. ``unreachable-state`` (:class:`ProblemCode`, or
    :class:`ResumeCode` for a stored run); see docs/checks.md."""
    message: str
    """What is wrong and how to fix it, naming the culprit."""
    subject: str = ""
    """The state or transition at fault, when there is one."""

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class DefinitionError(StateMachineAgentError, TypeError):
    """A workflow declaration is unsafe or malformed; every problem is listed at once."""

    problems: tuple[Problem, ...]
    """Each offender, in the order the checker found them."""
    workflow: str
    """The workflow's name."""

    def __init__(self, workflow: str, problems: Sequence[Problem]) -> None:
        self.workflow = workflow
        self.problems = tuple(problems)
        count = len(self.problems)
        lines = [f"workflow {workflow!r} has {count} problem{'s' if count != 1 else ''}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.workflow, self.problems))


class RunError(StateMachineAgentError, RuntimeError):
    """Something went wrong while a workflow ran."""


class ContextAccessError(RunError, AttributeError):
    """An action touched a context field its state did not declare, or read one no step has set.

    Never routed by error transitions: it is a bug in the workflow, not a condition to handle.
    """

    state: str
    """The state whose action did it."""
    field: str
    """The field it touched."""

    def __init__(self, state: str, field: str, message: str) -> None:
        self.state = state
        self.field = field
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.state, self.field, str(self)))


class ToolError(RunError):
    """Base of the errors a tool call raises; each keeps the tool's name."""

    tool: str
    """The tool's name."""

    def __init__(self, tool: str, message: str) -> None:
        self.tool = tool
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.__dict__, str(self)))


def _rebuild(cls: type[ToolError], state: dict[str, object], message: str) -> ToolError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class UnknownTool(ToolError, LookupError):
    """No tool of that name is registered on the workflow."""


class UndeclaredTool(ToolError, PermissionError):
    """The tool exists, but the calling state did not declare it in ``tools=[...]``."""


class ToolArgumentError(ToolError, ValueError):
    """A tool was called with arguments that do not validate; never retried."""

    fields: tuple[str, ...]
    """The offending argument names."""

    def __init__(self, tool: str, fields: tuple[str, ...], message: str) -> None:
        super().__init__(tool, message)
        self.fields = fields


class ToolResultError(ToolError, ValueError):
    """A tool returned a value that does not validate against its declared result type."""


class TimeoutScope(enum.StrEnum):
    """Which limit a :class:`ToolTimeout` ran out of."""

    CALL = "call"
    """The tool's own ``timeout``: retryable by its retry policy."""
    STATE = "state"
    """The calling state's ``tool_deadline``: never retried."""


class ToolTimeout(ToolError, TimeoutError):
    """A tool call ran out of time: its own timeout (``scope='call'``) or its state's deadline."""

    seconds: float
    """The limit that ran out."""
    scope: TimeoutScope
    """``call`` (retryable by policy) or ``state`` (the state's tool deadline: never retried)."""

    def __init__(self, tool: str, seconds: float, scope: TimeoutScope | str) -> None:
        self.scope = TimeoutScope(scope)
        what = "its timeout" if self.scope is TimeoutScope.CALL else "the state's tool deadline"
        super().__init__(tool, f"tool {tool!r} ran out of time: {what} of {seconds:g} s passed")
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, ...]:
        # Not ToolError's: TimeoutError is an OSError, which the generic rebuild cannot create.
        return (type(self), (self.tool, self.seconds, self.scope))


class ToolFailed(ToolError):
    """A tool call failed for good (after its retries, with no fallback); carries every attempt."""

    errors: tuple[BaseException, ...]
    """What each attempt raised, in order."""

    def __init__(self, tool: str, errors: tuple[BaseException, ...], message: str | None = None) -> None:
        last = errors[-1] if errors else None
        n = len(errors)
        super().__init__(tool, message or (
            f"tool {tool!r} failed after {n} attempt{'s' if n != 1 else ''}: "
            f"{type(last).__name__}: {last}"))
        self.errors = tuple(errors)

    @property
    def last(self) -> BaseException | None:
        """The last attempt's error."""
        return self.errors[-1] if self.errors else None


class GatherFailed(ToolFailed):
    """A fail-fast ``tools.gather`` stopped at a failure; carries every failure of the group."""

    def __init__(self, errors: tuple[BaseException, ...]) -> None:
        names = ", ".join(f"{type(e).__name__}: {e}" for e in errors)
        super().__init__("gather", errors, f"{len(errors)} of the gathered tool calls failed: {names}")


class EffectOutcomeUnknown(ToolError):
    """An ``at_most_once`` tool call was interrupted (a crash, a kill) after its intent was
    committed and before its outcome was: it may or may not have had its effect, so it is never
    run again. Route it with an error transition, or give the tool ``reconcile=``."""

    key: str
    """The call's stable key (``run/step/call``), as the tool received it."""

    def __init__(self, tool: str, key: str, message: str | None = None) -> None:
        super().__init__(tool, message or (
            f"tool {tool!r} (effect at_most_once) was interrupted after its intent was committed, so its "
            f"outcome is unknown; call {key} is never run again: route EffectOutcomeUnknown with an error "
            "transition, or give the tool reconcile= to look the outcome up"))
        self.key = key


# --- durable runs ------------------------------------------------------------------------------
class StoreError(RunError):
    """A store cannot do what was asked: the database is unreadable, locked, or of another kind."""


class StoreCorrupted(StoreError):
    """What the store holds fails its checks (a bad checksum, JSON or model): nothing is loaded."""


class RunNotFound(StoreError, LookupError):
    """No run of that id is in the store."""

    run_id: str

    def __init__(self, run_id: str, message: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message or f"no run {run_id!r} in the store: list them with compiled.runs(store) "
                         "or `statemachine-agent runs list --store FILE`")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, str(self)))


class RunExists(StoreError):
    """A new run was given the id of a run already in the store."""

    run_id: str

    def __init__(self, run_id: str, message: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message or f"run {run_id!r} is already in the store: continue it with "
                         "compiled.resume(run_id, store=store), or give the new run another run_id")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, str(self)))


class RunFenced(StoreError):
    """Another worker claimed the run (a later epoch) or committed this step first: this worker
    stops without committing anything more."""

    run_id: str
    step: int

    def __init__(self, run_id: str, step: int, message: str | None = None) -> None:
        self.run_id = run_id
        self.step = step
        super().__init__(message or f"run {run_id!r}: step {step} was not committed because another worker "
                         "owns the run now (it resumed it, or committed that step first); this worker stops")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.step, str(self)))


class ResumeCode(enum.StrEnum):
    """Why a stored run cannot continue under a workflow (``IncompatibleRun.problems[i].code``);
    each is explained, with its real message, in docs/checks.md."""

    OTHER_WORKFLOW = "resume-other-workflow"
    UNKNOWN_STATE = "resume-unknown-state"
    WAIT_CHANGED = "resume-wait-changed"
    BAD_CONTEXT = "resume-bad-context"
    UNSET_READ = "resume-unset-read"
    COUNTERS = "resume-counters"
    OVER_BOUND = "resume-over-bound"
    UNKNOWN_TOOL = "resume-unknown-tool"
    EFFECT_CHANGED = "resume-effect-changed"
    RESULT_CHANGED = "resume-result-changed"
    BAD_EVENT = "resume-bad-event"
    BAD_MIGRATION = "resume-bad-migration"
    UNREADABLE = "resume-unreadable"
    """Given by ``check_runs`` only: the run cannot be read (resume raises StoreCorrupted or
    SecretUnreadable)."""


class IncompatibleRun(StoreError):
    """A stored run cannot continue under the current workflow; every reason is listed.

    Pass ``migrate=`` to ``resume`` to adapt the stored run, or resume it with the workflow that
    started it.
    """

    run_id: str
    problems: tuple[Problem, ...]

    advice: str
    """What to do, as the message's first line says it."""

    def __init__(self, run_id: str, problems: Sequence[Problem], advice: str | None = None) -> None:
        self.run_id = run_id
        self.problems = tuple(problems)
        self.advice = advice or "pass migrate= to adapt it, or resume it with the workflow that started it"
        lines = [f"run {run_id!r} cannot resume under this workflow ({len(self.problems)} "
                 f"problem{'s' if len(self.problems) != 1 else ''}); {self.advice}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.problems, self.advice))


class RecordedError(RunError):
    """An exception as a store recorded it (its type's name and message): what a loaded step's
    ``error`` is, since stored runs hold JSON, never pickled objects."""

    type_name: str

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, str(self)))


class NondeterminismError(RunError):
    """The current code did something else than a run's record says, where it must do the same: a
    replay that diverges, or a resumed step whose tool calls come in another order than its journal.

    ``step`` and ``call`` say where (``call`` is ``None`` when the step as a whole differs);
    ``expected`` is what the record holds and ``got`` what the code did now."""

    run_id: str
    step: int
    call: int | None
    expected: object
    got: object

    def __init__(self, run_id: str, step: int, call: int | None, expected: object, got: object,  # noqa: PLR0917
                 message: str | None = None) -> None:
        self.run_id, self.step, self.call, self.expected, self.got = run_id, step, call, expected, got
        where = f"step {step}" if call is None else f"step {step} call {call}"
        super().__init__(message or (
            f"run {run_id!r} {where}: the record holds {expected!r} but the code now does {got!r}: the "
            "workflow's code changed, or it is not deterministic (it reads the time, random numbers or "
            "outside state other than through its tools); make it deterministic, or fork the run"))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.step, self.call, self.expected, self.got, str(self)))


def error_name(error: BaseException) -> str:
    """The name of an exception's type: the original's for a :class:`RecordedError`."""
    return error.type_name if isinstance(error, RecordedError) else type(error).__name__


def describe_error(error: BaseException) -> str:
    """``Type: message``, as a step's record shows it (the original type for a recorded error)."""
    return f"{error_name(error)}: {error}"


class WaitTimedOut(RunError):
    """A wait state's timeout passed before its event was delivered: routed to its ``on_timeout``
    state by the transition ``wait()`` declares (``<state>_timeout``)."""

    state: str
    event: str

    def __init__(self, state: str, event: str, message: str | None = None) -> None:
        self.state = state
        self.event = event
        super().__init__(message or f"state {state!r} waited for event {event!r} past its timeout")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.state, self.event, str(self)))


class Budget(enum.StrEnum):
    """A budget a run can exhaust (it then ends in the failure terminal)."""

    MAX_STEPS = "max_steps"
    MAX_VISITS = "max_visits"
    MAX_TRAVERSALS = "max_traversals"
    DEADLINE = "deadline"
    MAX_STEP_RESTARTS = "max_step_restarts"
    """A durable run's step was resumed after crashes more times than allowed."""
    TOKENS = "token_budget"
    """The run's model calls used more tokens (input and output) than its ``token_budget``."""
    COST = "cost_budget"
    """The run's model calls cost more than its ``cost_budget`` (priced calls only)."""


class BudgetExceeded(RunError):
    """The run's model calls spent its ``token_budget`` or ``cost_budget``: the run ends in the
    failure terminal with this reason (catching it in an action does not save the run)."""

    budget: Budget
    """Which budget: :attr:`Budget.TOKENS` (``token_budget``) or :attr:`Budget.COST` (``cost_budget``)."""

    def __init__(self, budget: Budget | str, message: str) -> None:
        self.budget = Budget(budget)
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.budget, str(self)))


class ModelError(RunError):
    """A model call failed; route it with ``wf.on_error(state, ModelError, ...)``."""

    model: str

    def __init__(self, model: str, message: str) -> None:
        self.model = model
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.model, str(self)))


class ModelUnavailable(ModelError):
    """The server could not be reached, timed out, or kept failing (429, 5xx) through every retry."""


class ModelRefused(ModelError):
    """The server refused every request form the adapter knows (4xx, or 5xx on each mode)."""


class ModelAnswerInvalid(ModelError, ValueError):
    """An LLM step's answers did not validate against its output type, each fed back, within its
    ``max_attempts``."""
