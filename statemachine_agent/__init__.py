"""statemachine-agent: AI agents as explicit, checked finite-state machines."""

from __future__ import annotations

import logging

from ._compat import JournalCall, QueuedEvent, ResumePoint
from ._views import thaw
from .check import CheckReport
from .clock import Clock, FakeClock, SystemClock
from .compile import CompiledWorkflow, RunOptions, set_display
from .context import UNSET, Context, is_unset
from .diagrams import jupyter_display
from .errors import (
    BudgetExceeded,
    ContextAccessError,
    DefinitionError,
    GatherFailed,
    ModelAnswerInvalid,
    ModelError,
    ModelRefused,
    ModelUnavailable,
    NondeterminismError,
    Problem,
    ProblemCode,
    ResumeCode,
    RunError,
    StateMachineAgentError,
    TimeoutScope,
    ToolArgumentError,
    ToolError,
    ToolFailed,
    ToolResultError,
    ToolTimeout,
    UndeclaredTool,
    UnknownTool,
)
from .events import Budget, Event, Hook
from .guards import Guard, guard
from .policies import Decision, NoChoice, Option, Policy, first_enabled, scripted, seeded_random
from .result import RunResult, Step, StepKind, result_of
from .runner import MissingWrite, Run
from .spec import NoExit, Outcome, WorkflowSpec
from .tools import Retry, Tool, Tools
from .usage import ModelCall, Price, Usage
from .workflow import Action, StateOptions, StateRef, ToolOptions, Workflow

__all__ = [
    "UNSET",
    "Action",
    "Budget",
    "BudgetExceeded",
    "CheckReport",
    "Clock",
    "CompiledWorkflow",
    "Context",
    "ContextAccessError",
    "Decision",
    "DefinitionError",
    "Event",
    "FakeClock",
    "GatherFailed",
    "Guard",
    "Hook",
    "JournalCall",
    "MissingWrite",
    "ModelAnswerInvalid",
    "ModelCall",
    "ModelError",
    "ModelRefused",
    "ModelUnavailable",
    "NoChoice",
    "NoExit",
    "NondeterminismError",
    "Option",
    "Outcome",
    "Policy",
    "Price",
    "Problem",
    "ProblemCode",
    "QueuedEvent",
    "ResumeCode",
    "ResumePoint",
    "Retry",
    "Run",
    "RunError",
    "RunOptions",
    "RunResult",
    "StateMachineAgentError",
    "StateOptions",
    "StateRef",
    "Step",
    "StepKind",
    "SystemClock",
    "TimeoutScope",
    "Tool",
    "ToolArgumentError",
    "ToolError",
    "ToolFailed",
    "ToolOptions",
    "ToolResultError",
    "ToolTimeout",
    "Tools",
    "UndeclaredTool",
    "UnknownTool",
    "Usage",
    "Workflow",
    "WorkflowSpec",
    "first_enabled",
    "guard",
    "is_unset",
    "result_of",
    "scripted",
    "seeded_random",
    "thaw",
]

# Jupyter shows compiled workflows and run results as SVG: compile.py sits below the diagrams and
# leaves this slot to the facade (tests/test_layers.py).
set_display(jupyter_display)

# A library never configures logging; applications decide where our records go.
logging.getLogger("statemachine_agent").addHandler(logging.NullHandler())
