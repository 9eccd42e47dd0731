"""Property-test your agent with Hypothesis: one call explores inputs, policy choices and tool faults.

Needs the ``hypothesis`` extra (``pip install statemachine-agent[hypothesis]``)::

    from statemachine_agent.testing import check_workflow

    def test_my_agent():
        check_workflow(my_workflow)

Every run is checked after each step (a declared state; a declared, enabled transition; no undeclared
or unset field touched; the context still validates; within the static step bound) and at the end
(a terminal state that absorbs), plus your own invariants. A failure shrinks to a minimal story that
prints as a readable path and saves as a JSON fixture :func:`replay` runs again exactly.

The kit is a package; everything public is imported from here. Its parts: strategies
(:func:`contexts`, :func:`faults`), stories (:class:`Story`, the invariants, running one story),
coverage (:class:`Coverage`, :class:`KitReport`), the one-call test (:func:`check_workflow`,
:func:`replay`), deterministic paths (:func:`shortest_paths`, :func:`follow`) and the stateful
bridge (:func:`workflow_state_machine`).
"""

from __future__ import annotations

try:
    import hypothesis as _hypothesis  # noqa: F401  (only to say what is missing)
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError("statemachine_agent.testing needs Hypothesis: pip install "
                      "'statemachine-agent[hypothesis]'") from exc

from ._check import check_workflow, replay
from ._coverage import Coverage, KitReport
from ._crash import CrashPoint, check_crashes, replay_crashes
from ._llm import ModelReply, ScriptedModel, llm_replies
from ._paths import PathCase, follow, shortest_paths
from ._stateful import workflow_state_machine
from ._stories import Allowed, Invariant, PathInvariant, Story, invariant, path_invariant
from ._strategies import Fault, contexts, faults

__all__ = [
    "Allowed",
    "Coverage",
    "CrashPoint",
    "Fault",
    "Invariant",
    "KitReport",
    "ModelReply",
    "PathCase",
    "PathInvariant",
    "ScriptedModel",
    "Story",
    "check_crashes",
    "check_workflow",
    "contexts",
    "faults",
    "follow",
    "invariant",
    "llm_replies",
    "path_invariant",
    "replay",
    "replay_crashes",
    "shortest_paths",
    "workflow_state_machine",
]
