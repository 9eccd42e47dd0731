"""A checked workflow, compiled and ready to run many times, concurrently (see ``_plan.py``).

Diagrams of it are functions of ``diagrams.py`` (a layer above this one): ``diagram(compiled)``,
``mermaid(compiled)``. Jupyter's display goes through :func:`set_display`, which the package facade
calls with ``diagrams.jupyter_display``, so this module never imports the diagrams.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack

from pydantic import BaseModel

from ._durable import (
    Durable,
    ReplayReport,
    ResumePoint,
    _require_store,
    check_runs,
    deliver,
    fingerprint,
    fork,
    reopen,
    replay,
    wake_due,
)
from ._journal import Journal
from ._plan import build_machine, build_plans
from .check import CheckReport, check, fields_set_at_start
from .policies import safe_repr
from .runner import ResumeOptions, Run, run_blocking
from .spec import WorkflowSpec
from .stores._base import Store
from .stores._records import RunRecord
from .tools import ToolRegistry

if TYPE_CHECKING:
    from .errors import IncompatibleRun
    from .events import Hook
    from .result import RunResult, Step

__all__ = ["CompiledWorkflow", "DisplayRenderer", "RunOptions", "compile_spec", "set_display"]

C = TypeVar("C", bound=BaseModel)

DisplayRenderer = Callable[["CompiledWorkflow[Any]", "RunResult[Any] | None"], dict[str, str]]
"""How Jupyter shows a compiled workflow, with a run over it or ``None``: a ``_repr_mimebundle_``
answer (``{"text/plain": ..., "image/svg+xml": ...}``)."""

_display: list[DisplayRenderer] = []
"""The renderer :func:`set_display` installed (none: text only)."""


def set_display(renderer: DisplayRenderer) -> None:
    """Install how Jupyter shows compiled workflows and run results. The package facade installs
    ``statemachine_agent.diagrams.jupyter_display`` (SVG, from the diagrams layer above this one)."""
    if not callable(renderer):
        raise TypeError(f"set_display() takes a callable (compiled, run) -> mime bundle, not {renderer!r}")
    _display[:] = [renderer]


class RunOptions(ResumeOptions[C], total=False):
    """The options of a run, as keyword arguments of ``run``, ``run_sync``, ``iter`` and ``start``."""

    run_id: str | None
    """The run's id (default: random); with a store, the key to resume it by."""
    store: Store | None
    """Commit every step there, so the run survives a crash (see docs/durability.md)."""


class CompiledWorkflow(Generic[C]):
    """A checked workflow, compiled and ready to run many times, concurrently."""

    def __init__(self, spec: WorkflowSpec, report: CheckReport) -> None:
        self.spec = spec
        """The declaration, as plain data."""
        self.report = report
        """The checker's verdicts, the worst-case step bound among them."""
        self.name = spec.name
        self.context_type: type[C] = spec.context
        self.fields_at_start = fields_set_at_start(spec.context)
        self.field_names: frozenset[str] = frozenset(spec.context.model_fields)
        assert report.failure_terminal is not None, "check() guarantees a failure terminal"
        assert report.worst_case_steps is not None, "check() guarantees a finite bound"
        self.failure_terminal: str = report.failure_terminal
        self.max_steps: int = report.worst_case_steps
        """The default step budget: the checker's worst-case bound (capped by the spec's max_steps)."""
        self.tools = ToolRegistry(spec.tools)
        """The workflow's tools, by name."""
        self.hooks: list[Hook] = []
        """Hooks called with every event of every run of this workflow."""
        initial = next(s.name for s in spec.states if s.initial)
        self.initial: str = initial

        self.plans, self.edge_names = build_plans(spec)
        """Everything the runner needs about each state; the names index traversal counters."""
        self.machine: Any = build_machine(spec, self.plans, initial, self.failure_terminal)
        """The ``transitions.Machine`` shared by every run (each run's token is its model)."""
        self.fingerprint: str = fingerprint(spec)
        """A hash of this version's shape (states, transitions, bounds, waits and their payload
        schemas, tools and their effects, the context's schema), stored with each run: a run stored
        under another fingerprint is checked in full before it continues."""

    # --- running (see runner.py) ----------------------------------------------------------------
    def run(self, context: C | dict[str, Any],
            **options: Unpack[RunOptions[C]]) -> Coroutine[Any, Any, RunResult[C]]:
        """Run the workflow on ``context`` until a terminal state: ``await compiled.run(ctx)``.

        See :class:`~.runner.RunOptions` for the options; bad ones raise at the call. An exception
        that no error transition routes ends the run in the failure terminal and is then raised
        (``raise_errors=False`` returns the failed result instead); the recorded run is on it:
        ``statemachine_agent.result_of(exc)``.
        """
        # A plain function returning the run's own coroutine: one coroutine per run, not two.
        return Run(self, context, **options).run_to_end()

    def run_sync(self, context: C | dict[str, Any], **options: Unpack[RunOptions[C]]) -> RunResult[C]:
        """Run from synchronous code (no event loop running in this thread)."""
        run = Run(self, context, **options)
        return run_blocking(run.run_to_end())

    async def iter(self, context: C | dict[str, Any],
                   **options: Unpack[RunOptions[C]]) -> AsyncIterator[Step]:
        """Yield each step as it completes.

        ``async for step in wf.iter(ctx): ...`` gives control back between steps; use
        :meth:`start` to keep a handle on the run and read ``run.result`` at the end.
        """
        async for step in Run(self, context, **options):
            yield step

    def start(self, context: C | dict[str, Any], **options: Unpack[RunOptions[C]]) -> Run[C]:
        """A :class:`~.runner.Run` not yet started: ``async for step in run`` then ``run.result``."""
        return Run(self, context, **options)

    # --- durable runs (see _durable.py and stores/) ---------------------------------------------
    async def resume(self, run_id: str, *, store: Store, migrate: Callable[[ResumePoint], ResumePoint] | None = None,
                     **options: Unpack[ResumeOptions[C]]) -> RunResult[C]:
        """Continue a stored run at its first uncommitted step, until a terminal state.

        A run that already ended returns its stored result. Under a workflow that changed since the
        run was stored, the run must still fit it (its state exists, its context validates, no
        read of an unwritten field lies ahead, its counters fit the bounds): otherwise
        :class:`~.errors.IncompatibleRun` lists why, unless ``migrate`` adapts the stored run.
        """
        run = await self.reopen(run_id, store=store, migrate=migrate, **options)
        if run.result is not None:
            return run.result
        return await run.run_to_end()

    def resume_sync(self, run_id: str, *, store: Store,
                    migrate: Callable[[ResumePoint], ResumePoint] | None = None,
                    **options: Unpack[ResumeOptions[C]]) -> RunResult[C]:
        """:meth:`resume` from synchronous code."""
        return run_blocking(self.resume(run_id, store=store, migrate=migrate, **options))

    async def reopen(self, run_id: str, *, store: Store,
                     migrate: Callable[[ResumePoint], ResumePoint] | None = None,
                     **options: Unpack[ResumeOptions[C]]) -> Run[C]:
        """Claim a stored run and return it as a :class:`~.runner.Run` to drive step by step
        (``run.result`` is already set when the stored run had ended)."""
        return await reopen(self, run_id, store, migrate, options.copy())

    async def deliver(self, run_id: str, event: str, payload: Any, *, store: Store,
                      **options: Unpack[ResumeOptions[C]]) -> RunResult[C] | None:
        """Deliver ``event`` to a stored run: validated by the wait's payload model and committed to
        the run's inbox, where the wait state consumes it exactly once, in its step's commit.

        A run waiting for it continues here, until it ends or waits again: its result. A run not
        waiting for it yet (running elsewhere, or crashed) takes it when it reaches the wait:
        ``None``. An unknown event or a payload that does not validate raises and stores nothing.
        """
        return await deliver(self, run_id, event, payload, store=store, options=options.copy())

    def deliver_sync(self, run_id: str, event: str, payload: Any, *, store: Store,
                     **options: Unpack[ResumeOptions[C]]) -> RunResult[C] | None:
        """:meth:`deliver` from synchronous code."""
        return run_blocking(self.deliver(run_id, event, payload, store=store, **options))

    async def fork(self, run_id: str, *, at_step: int, store: Store, patch: dict[str, Any] | None = None,
                   new_run_id: str | None = None, **options: Unpack[ResumeOptions[C]]) -> RunResult[C]:
        """Start a new run from stored run ``run_id`` as it was before step ``at_step``, with ``patch``
        applied to its context, and run it. Steps and journal rows before that point are copied
        to the new run (a journaled tool call before it is never made again).

        The patched context is validated by the model, and the checker's unset-read analysis runs
        from the fork's state: :class:`~.errors.IncompatibleRun` when something ahead would read
        a field nothing wrote.
        """
        return await fork(self, run_id, at_step=at_step, patch=patch, store=store, new_run_id=new_run_id,
                          options=options.copy())

    def fork_sync(self, run_id: str, *, at_step: int, store: Store, patch: dict[str, Any] | None = None,
                  new_run_id: str | None = None, **options: Unpack[ResumeOptions[C]]) -> RunResult[C]:
        """:meth:`fork` from synchronous code."""
        return run_blocking(self.fork(run_id, at_step=at_step, store=store, patch=patch, new_run_id=new_run_id,
                                      **options))

    async def replay(self, run_id: str, *, store: Store, raise_on_divergence: bool = False) -> ReplayReport:
        """Follow a recorded run with the current code, every policy answer and tool result taken
        from the record (nothing external is called), and report the first step that differs.

        Steps that failed are followed too: where the record has no answer for a call because the
        step failed there (a tool or model error, an unknown outcome, a ``reconcile`` that raised),
        the recorded error is raised again and takes its recorded route. With
        ``raise_on_divergence=True`` a divergence raises :class:`~.errors.NondeterminismError`."""
        report = await replay(self, run_id, store, {})
        if raise_on_divergence and report.error is not None:
            raise report.error
        return report

    def replay_sync(self, run_id: str, *, store: Store, raise_on_divergence: bool = False) -> ReplayReport:
        """:meth:`replay` from synchronous code."""
        return run_blocking(self.replay(run_id, store=store, raise_on_divergence=raise_on_divergence))

    async def wake_due(self, store: Store, **options: Unpack[ResumeOptions[C]]) -> list[RunResult[C]]:
        """Continue every waiting run of this workflow in ``store`` that can go on now: its wait's
        timeout has passed (on ``clock=``'s wall time; default the system's) or its event is in its
        inbox. Call it from a timer or a worker loop (``statemachine-agent runs wake`` does): nobody
        has to resume a timed-out run by hand. Each run is claimed only while it is still waiting,
        so several wakers, and deliveries, may run at once; a run that cannot continue is logged
        and skipped. The results of the runs continued, each until it ended or waits again."""
        return await wake_due(self, store, options.copy())

    def wake_due_sync(self, store: Store, **options: Unpack[ResumeOptions[C]]) -> list[RunResult[C]]:
        """:meth:`wake_due` from synchronous code."""
        return run_blocking(self.wake_due(store, **options))

    def runs(self, store: Store) -> list[RunRecord]:
        """This workflow's runs in ``store``, most recently updated first."""
        _require_store(store)
        return store.list_runs(self.name).result()

    def check_store(self, store: object) -> None:
        """``TypeError`` unless ``store`` is a :class:`~.stores.Store` (what ``Run`` asks of ``store=``)."""
        if not isinstance(store, Store):
            raise TypeError(f"store={safe_repr(store)}: give a statemachine_agent.stores.Store such as "
                            "SQLiteStore('runs.db')")

    async def open_journal(self, run: Any, store: Any) -> Journal:
        """Insert ``run`` (not started yet) into ``store``; its journal (``RunExists``: nothing stored)."""
        return await Durable.create(run, store)

    def check_runs(self, store: Store) -> list[IncompatibleRun]:
        """Every stored run of this workflow (by name) that this version would refuse to continue
        (resume, deliver, wake) without ``migrate=``, each as the :class:`~.errors.IncompatibleRun`
        it would raise, with every reason; an empty list when all fit. Writes nothing: run it
        before a deploy."""
        return check_runs(self, store)

    # --- display (diagrams: statemachine_agent.diagrams.diagram(compiled)) ------------------------
    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None,
                          run: RunResult[Any] | None = None) -> dict[str, str]:
        """Jupyter shows the workflow (with ``run`` over it) through the installed renderer: SVG, text
        when Graphviz is missing (see :func:`set_display`)."""
        if not _display:
            return {"text/plain": repr(run) if run is not None else repr(self)}
        return _display[0](self, run)

    def __repr__(self) -> str:
        return (f"<CompiledWorkflow {self.name!r}: {len(self.spec.states)} states, "
                f"worst case {self.max_steps} steps>")


def compile_spec(spec: WorkflowSpec) -> CompiledWorkflow[Any]:
    """Check ``spec`` (raising :class:`~.errors.DefinitionError`) and compile it."""
    report = check(spec)
    return CompiledWorkflow(spec, report)
