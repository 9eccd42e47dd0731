"""The checker: proves a workflow spec safe before it runs, or lists every problem at once.

Each rule is one small function in :mod:`statemachine_agent._rules`; :func:`analyze` reads the
spec once into a shared analysis, runs every rule, and computes the worst-case number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._rules import (
    RULES,
    Edge,
    EdgeKind,
    build,
    fields_set_at_start,
    is_count,
    worst_case_calls,
    worst_case_steps,
)
from .errors import DefinitionError, Problem
from .spec import WorkflowSpec

__all__ = ["CheckReport", "Edge", "EdgeKind", "analyze", "check", "fields_set_at_start"]


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What the checker found: the verdicts, the bound, and every problem."""

    workflow: str
    problems: tuple[Problem, ...]
    reachable: frozenset[str] = frozenset()
    """States a run can enter."""
    unreachable: frozenset[str] = frozenset()
    traps: frozenset[str] = frozenset()
    """Reachable non-terminal states from which no terminal state can be reached."""
    unbounded_cycles: tuple[frozenset[str], ...] = ()
    """Groups of states that loop with no bound (strongly connected, once bounds are removed)."""
    unset_reads: frozenset[tuple[str, str]] = frozenset()
    """``(state, field)`` pairs where the state may read a field no path has written."""
    worst_case_steps: int | None = None
    """An upper bound on the steps (actions run) of any run; ``None`` when some loop is unbounded."""
    worst_case_model_calls: int | None = None
    """An upper bound on the model calls of a run's LLM steps (``llm_step``: tool rounds and answers);
    ``None`` when some loop is unbounded."""
    worst_case_model_tool_calls: int | None = None
    """An upper bound on the tool calls the models of a run's LLM steps can have run (each round
    runs at most its step's ``max_tool_calls``); ``None`` when some loop is unbounded."""
    worst_case_decisions: int | None = None
    """An upper bound on the decisions a run asks its policy (each up to ``max_policy_attempts`` asks)."""
    graph_bound: int | None = None
    """The bound from the graph alone, before the workflow-wide ``max_steps`` cap."""
    failure_terminal: str | None = None
    """Where runs that exhaust a budget or hit an unrouted error end."""
    edges: tuple[Edge, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        """No problem was found."""
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise :class:`DefinitionError` listing every problem, if there is any."""
        if self.problems:
            raise DefinitionError(self.workflow, self.problems)


def check(spec: WorkflowSpec) -> CheckReport:
    """Check ``spec``; return the report, or raise :class:`DefinitionError` listing every problem."""
    report = analyze(spec)
    report.raise_for_problems()
    return report


def analyze(spec: WorkflowSpec) -> CheckReport:
    """Check ``spec`` and return every verdict and problem, without raising."""
    a = build(spec)
    problems = [p for rule in RULES for p in rule(a)]
    graph_bound = worst_case_steps(a) if a.initial is not None and not a.unbounded else None
    worst = graph_bound
    max_steps = getattr(spec, "max_steps", None)
    if worst is not None and is_count(max_steps):
        worst = min(worst, max_steps)
    calls = decisions = tool_calls = None
    if worst is not None:
        calls, decisions, tool_calls = worst_case_calls(a, worst)
    name = getattr(spec, "name", None)
    return CheckReport(
        workflow=name if isinstance(name, str) else repr(name),
        problems=tuple(problems),
        reachable=frozenset(a.reach),
        unreachable=frozenset(a.unreachable),
        traps=frozenset(a.traps),
        unbounded_cycles=tuple(a.unbounded),
        unset_reads=frozenset(a.unset),
        worst_case_steps=worst,
        worst_case_model_calls=calls,
        worst_case_model_tool_calls=tool_calls,
        worst_case_decisions=decisions,
        graph_bound=graph_bound,
        failure_terminal=a.failure_terminal,
        edges=tuple(a.edges),
    )
