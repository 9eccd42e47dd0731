"""What the explored runs exercised, and the report of check_workflow."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..compile import CompiledWorkflow
from ..diagrams import RunOverlay, to_dot


@dataclass
class Coverage:
    """What the explored runs exercised."""

    states: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)
    terminals: Counter[str] = field(default_factory=Counter)
    guards: Counter[tuple[str, bool]] = field(default_factory=Counter)
    """How often each guarded transition's guard came out True and False."""
    runs: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)
    """What the kit did at wait states: ``valid`` and ``invalid`` payloads delivered, ``timeout``s
    let pass on the fake clock, and ``early`` deliveries (before the run reached the wait)."""

    def guard_gaps(self, compiled: CompiledWorkflow[Any]) -> list[str]:
        """Guard outcomes never seen, as ``transition=True|False``."""
        out = []
        for t in compiled.spec.transitions:
            if t.guard is not None:
                out += [f"{t.name}={v}" for v in (True, False) if (t.name, v) not in self.guards]
        return out

    def overlay(self, compiled: CompiledWorkflow[Any]) -> Any:
        """The coverage as a diagram overlay: ``to_dot(compiled, coverage.overlay(compiled))``."""
        visits = dict(self.states) | dict(self.terminals)
        return RunOverlay(f"{self.runs} runs", "coverage", "coverage", sum(self.states.values()), None,
                          visits, dict(self.transitions), {})

    def missing(self, compiled: CompiledWorkflow[Any]) -> tuple[list[str], list[str]]:
        """States and transitions no run reached."""
        spec = compiled.spec
        states = [s.name for s in spec.states if s.name not in self.states and s.name not in self.terminals]
        names = [t.name for t in spec.transitions] + [e.name for e in spec.error_transitions]
        return states, [n for n in names if n not in self.transitions]

    def summary(self, compiled: CompiledWorkflow[Any]) -> str:
        spec = compiled.spec
        n_states = len(spec.states)
        n_edges = len(spec.transitions) + len(spec.error_transitions)
        states, edges = self.missing(compiled)
        lines = [f"{self.runs} runs of {spec.name!r}: states {n_states - len(states)}/{n_states}, "
                 f"transitions {n_edges - len(edges)}/{n_edges}",
                 f"  terminals: {dict(self.terminals)}"]
        if states:
            lines.append(f"  states never reached: {', '.join(states)}")
        if edges:
            lines.append(f"  transitions never taken: {', '.join(edges)}")
        gaps = self.guard_gaps(compiled)
        n_guards = 2 * sum(1 for t in spec.transitions if t.guard is not None)
        lines.append(f"  guard outcomes seen: {n_guards - len(gaps)}/{n_guards}"
                     + (f" (never: {', '.join(gaps)})" if gaps else ""))
        if self.deliveries:
            lines.append("  at waits: " + ", ".join(f"{k} {n}" for k, n in sorted(self.deliveries.items())))
        return "\n".join(lines)


@dataclass
class KitReport:
    """What :func:`check_workflow` explored."""

    coverage: Coverage
    compiled: CompiledWorkflow[Any]

    def __str__(self) -> str:
        return self.coverage.summary(self.compiled)

    def diagram(self) -> Any:
        """The workflow's diagram with the coverage drawn on it (visit and traversal counts)."""
        return to_dot(self.compiled, self.coverage.overlay(self.compiled))
