"""What the runner needs of a run's link to its store, and the run's own resumable state.

The runner (layer 4) depends only on these: the durable operations above it (``_durable.py``)
implement :class:`Journal` and build a run back from a :class:`RunState` with
:meth:`~.runner.Run.restore`; replay implements the same protocol. A run without a store has no
journal and pays nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel

if TYPE_CHECKING:
    from ._tooldef import Tool
    from .result import Step
    from .secrets import SecretCodec

__all__ = ["Journal", "RunState", "ToolRunner"]


@dataclass(frozen=True, slots=True)
class RunState:
    """A run's resumable state, as a value: where it is and what it has used. The runner owns the
    live copy; :meth:`~.runner.Run.restore` builds a run from one, and :meth:`~.runner.Run.snapshot`
    gives the current one."""

    state: str
    """The state the run's next step runs in."""
    actions_run: int = 0
    visits: dict[str, int] = field(default_factory=dict)
    traversals: dict[str, int] = field(default_factory=dict)
    """Times each transition was taken, by name."""
    written: frozenset[str] = frozenset()
    """Fields some step (or the start) wrote."""
    inbox: Sequence[tuple[int, str, Any]] = ()
    """Events delivered and not consumed yet: (seq, event, payload)."""
    wait_deadline: float | None = None
    """When the current wait state's timeout passes (wall clock), if the run waits in it."""
    spent_tokens: int = 0
    spent_cost: float = 0.0
    restarts: int = 0
    """Times the next step was resumed after a crash."""
    skipped: frozenset[int] = frozenset()
    """Inbox events (by seq) a migration dropped: the run never takes them, though the store keeps them."""
    trace: dict[str, str] = field(default_factory=dict)
    """The run's trace context, carried across its attempts (see ``RunStarted.trace``)."""


class ToolRunner(Protocol):
    """What a journal calls to make a tool call for real (``Tools``)."""

    async def _run_call(self, tool: Tool, arguments: dict[str, Any], key: str | None = None,
                        failures: list[BaseException] | None = None) -> Any: ...


Delta = tuple[dict[str, Any], list[str], dict[str, list[Any]]]
"""A step's writes as a store keeps them: the fields stored whole (their JSON), those set back to
UNSET, and those changed in place, as their operations (``_ops``)."""


@runtime_checkable
class Journal(Protocol):
    """A run's link to its store, for as long as this process holds the run (see ``_durable.Durable``)."""

    unmarked: bool
    """Claimed and not yet started: :meth:`mark_started` is due before the first step runs."""

    def delta(self, context: BaseModel, fields: Any, ops: dict[str, Any] | None = None) -> Delta:
        """The JSON of ``fields`` of ``context`` (those changed in place only, by their ``ops``, as
        operations where that is exact), and those of them that are UNSET (``TypeError`` naming a
        field that has no JSON form: then the step fails and nothing is committed)."""
        ...

    async def commit(self, run: Any, step: Step, reason: str | None,
                     wait: tuple[str, str, float | None] | None = None, *,
                     delta: Delta = ({}, [], {}), consume: int | None = None
                     ) -> list[tuple[int, str, Any]]:
        """Commit ``step`` (taken in memory): ``delta`` (what :meth:`delta` gave for the step's
        writes), ``consume`` (the inbox event the step took), ``wait`` (state, event, deadline: the
        step entered a wait with nothing to take). Returns events found in the inbox meanwhile."""
        ...

    async def suspend(self, run: Any, state: str, event: str, deadline: float | None
                      ) -> list[tuple[int, str, Any]]:
        """Commit the run as waiting in ``state``, unless its event is in the inbox (then those events)."""
        ...

    async def mark_started(self) -> None:
        """The claimer starts its first step: a crash from here on is a restart."""
        ...

    async def call(self, tools: ToolRunner, tool: Tool, *, step: int, index: int, key: str,
                   arguments: dict[str, Any], run_id: str) -> Any:
        """Make a tool call through the journal (a journaled outcome answers it)."""
        ...

    async def memo(self, name: str, compute: Callable[[], Awaitable[Any]], *, step: int, index: int,
                   key: str) -> Any:
        """A journaled read that is not a tool (a model's answer)."""
        ...

    @property
    def secrets(self) -> SecretCodec | None:
        """What encrypts the context's secret fields, if any."""
        ...
