"""What a run needs of a compiled workflow: the :class:`Program` protocol (layer "run").

The runner, the durable operations and the resume checks take a ``Program``, which
``CompiledWorkflow`` (``compile.py``, a layer above them) satisfies. It lives here rather than in
``_plan.py`` because it names the run's hooks (``events.py``), which sit above the compiler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from ._journal import Journal
    from ._plan import Plan
    from ._tooldef import ToolRegistry
    from .events import Hook

C_co = TypeVar("C_co", covariant=True)

__all__ = ["Program"]


class Program(Protocol[C_co]):
    """What a run needs of its compiled workflow (a ``CompiledWorkflow`` is one): the runner depends
    on this, not on ``compile.py``, which sits above it."""

    @property
    def name(self) -> str: ...

    @property
    def context_type(self) -> type[C_co]: ...

    @property
    def plans(self) -> dict[str, Plan]: ...

    @property
    def edge_names(self) -> list[str]: ...

    @property
    def field_names(self) -> frozenset[str]: ...

    @property
    def fields_at_start(self) -> frozenset[str]: ...

    @property
    def hooks(self) -> list[Hook]: ...

    @property
    def initial(self) -> str: ...

    @property
    def machine(self) -> Any: ...

    @property
    def max_steps(self) -> int: ...

    @property
    def failure_terminal(self) -> str: ...

    @property
    def tools(self) -> ToolRegistry: ...

    def check_store(self, store: object) -> None:
        """``TypeError`` saying what to give when ``store`` is not a store runs can be kept in."""
        ...

    async def open_journal(self, run: Any, store: Any) -> Journal:
        """Insert ``run`` (not started yet) into ``store`` and return its journal (``RunExists``
        if its id is taken: nothing is stored)."""
        ...
