"""statemachine-agent: AI agents as explicit, checked finite-state machines."""

from __future__ import annotations

import logging

from ._views import thaw
from .check import CheckReport
from .compile import CompiledWorkflow
from .context import UNSET, Context, is_unset
from .errors import ContextAccessError, DefinitionError, Problem, RunError, StateMachineAgentError
from .guards import Guard, guard
from .policies import Decision, Option, Policy, first_enabled, scripted, seeded_random
from .result import RunResult, Step, result_of
from .spec import NoExit, Outcome, WorkflowSpec
from .workflow import StateRef, Workflow

__all__ = [
    "UNSET",
    "CheckReport",
    "CompiledWorkflow",
    "Context",
    "ContextAccessError",
    "Decision",
    "DefinitionError",
    "Guard",
    "NoExit",
    "Option",
    "Outcome",
    "Policy",
    "Problem",
    "RunError",
    "RunResult",
    "StateMachineAgentError",
    "StateRef",
    "Step",
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

# A library never configures logging; applications decide where our records go.
logging.getLogger("statemachine_agent").addHandler(logging.NullHandler())
