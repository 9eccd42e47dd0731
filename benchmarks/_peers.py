"""The peers of ``bench_durable.py``: the same workflow on LangGraph and on Burr, each checkpointed to SQLite.

Neither package is a dependency of statemachine-agent: they live only in ``.venv-bench`` (``make
bench-durable`` creates it). Without them this module still imports; ``LANGGRAPH_MISSING`` and
``BURR_MISSING`` then say why, and ``bench_durable.py`` prints that instead of a number.

Two workloads, the same for every system (``Workload``):

* ``READ`` (the favourable condition: the history is never written by a step): a state of
  ``counter: int``, ``note: str`` and ``history: list[dict]`` set at the start; node/action
  ``work`` adds 1 to ``counter`` and writes ``note``, looping back to itself while
  ``counter < steps``, then the run ends.
* ``APPEND`` (the appending chat agent): ``work`` adds 1 to ``counter`` and appends one message
  (:func:`message`, a ``{"role", "content"}`` dict of 100-300 characters) to ``history``. LangGraph:
  ``history: Annotated[list[dict], operator.add]``, the usual reducer channel, node returns
  ``{"history": [msg]}``. ``DELTA`` is the same on LangGraph's beta ``DeltaChannel``
  (``Annotated[list[dict], DeltaChannel(append_batch)]``, langgraph >= 1.1; snapshot every 100
  updates, its default), which stores each step's write instead of the whole list. Burr:
  ``state.update(counter=...).append(history=msg)``.

Resume (``bench_durable.py`` section 9): a run is left after ``K`` committed steps as a killed process
leaves it: LangGraph's and ours' step raises :class:`Crash` (a ``BaseException``, which neither
routes nor records) at ``counter == K``; Burr's application is stepped ``K`` times with
``app.step()`` and dropped (a ``BaseException`` would reach Burr's ``finally``, which saves one more
row). Resuming opens a new connection and saver/persister on the file and runs the one step left:
``graph.invoke(None, config)`` on the graph re-bound to the new saver (``graph.copy``), and Burr's
``ApplicationBuilder.initialize_from(persister, resume_at_next_action=True)...build().run(...)``.

Durability, made equal to ours (WAL, ``PRAGMA synchronous=FULL``, each step's commit on disk before
the next step starts) and checked at run time by ``bench_durable.py`` (section 0). Line numbers are
those of the pinned versions (langgraph 1.2.22, langgraph-checkpoint-sqlite 3.1.2, apache-burr 0.43.0):

* LangGraph: ``SqliteSaver.setup()`` sets ``PRAGMA journal_mode=WAL`` and nothing else
  (langgraph/checkpoint/sqlite/__init__.py:146; aio.py:323 for ``AsyncSqliteSaver``), so
  ``synchronous`` is SQLite's compile-time default (FULL in most builds, not all): we open the
  connection ourselves and set ``PRAGMA synchronous=FULL`` on it. Each ``put``/``put_writes``
  commits (``SqliteSaver.cursor`` commits on exit, __init__.py:207; ``aput``/``aput_writes``,
  aio.py:567 and 616). LangGraph's default ``durability`` is ``"async"`` (the checkpoint is
  written while the next step runs: langgraph/pregel/main.py:2715); we pass ``durability="sync"``,
  under which the loop waits for ``_put_checkpoint_fut`` after each superstep before starting the
  next (main.py:3104-3105 in ``stream``, 3574-3575 in ``astream``).
* Burr: ``SQLitePersister``/``AsyncSQLitePersister`` set no pragma at all: SQLite's default rollback
  journal (DELETE) and compile-time ``synchronous``. ``save`` commits once per step
  (burr/core/persistence.py:587; burr/integrations/persisters/b_aiosqlite.py:314), called by
  ``PersisterHook``/``PersisterHookAsync`` (persistence.py:232, 255) from the ``post_run_step``
  hook that ``Application._step``/``_astep`` run (and await) before returning (application.py:994,
  1144), so before the next step. We pass our own connection
  with ``PRAGMA synchronous=FULL`` and, for the comparison, ``journal_mode=WAL`` like the others;
  Burr's default rollback journal (with synchronous=FULL) is measured too, as information.
  Burr's terminal state must be an action that runs: ``run(halt_before=["done"])`` stops after the
  last ``work`` step, so every system commits the same 20 steps.

Every connection handed to a peer is a :class:`CountingConnection`, which counts real commits
(one Python call per commit, about a microsecond, against milliseconds per step).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import operator
import sqlite3
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypedDict

Probe = Callable[[int], None]
"""Called by ``work`` with the counter before the step's write (the durability check uses it)."""

try:
    import aiosqlite
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.graph import END, START, StateGraph
except ImportError as exc:  # pragma: no cover - depends on the venv
    LANGGRAPH_MISSING: str | None = f"{type(exc).__name__}: {exc}"
else:
    LANGGRAPH_MISSING = None

try:
    from langgraph.channels.delta import DeltaChannel
except ImportError as exc:  # pragma: no cover - langgraph < 1.1, or none
    DELTA_MISSING: str | None = f"{type(exc).__name__}: {exc}"
else:
    DELTA_MISSING = None

try:
    import aiosqlite  # Burr's async persister needs it too
    from burr.core import ApplicationBuilder, State, action, default, expr
    from burr.core.persistence import SQLitePersister
    from burr.integrations.persisters.b_aiosqlite import AsyncSQLitePersister
except ImportError as exc:  # pragma: no cover - depends on the venv
    BURR_MISSING: str | None = f"{type(exc).__name__}: {exc}"
else:
    BURR_MISSING = None

_ids = itertools.count()


class Workload(enum.Enum):
    """What a step does to the history (see the module's docstring)."""

    READ = "read"
    """Never written by a step: the favourable condition."""
    APPEND = "append"
    """One message appended per step (LangGraph: a list channel with an appending reducer)."""
    DELTA = "delta"
    """As APPEND, on LangGraph's beta ``DeltaChannel`` (LangGraph only; others treat it as APPEND)."""


class Crash(BaseException):
    """Stands for the process dying mid-step: not an ``Exception``, so no system routes or records it."""


def message(i: int) -> dict[str, str]:
    """The ``i``-th appended chat message: 100 to 300 characters of content, alternating roles."""
    filler = "the assistant considers the question, looks up the sources and answers in a few plain lines. "
    size = 100 + (i * 37) % 201
    return {"role": "assistant" if i % 2 else "user", "content": (f"message {i}: " + filler * 4)[:size]}


def crash_at(k: int) -> Probe:
    """A probe that raises :class:`Crash` at the start of the step that finds ``counter == k``."""

    def probe(counter: int) -> None:
        if counter == k:
            raise Crash

    return probe


def unique(prefix: str) -> str:
    """A thread/app id never used before in this process."""
    return f"{prefix}-{next(_ids)}"


class CountingConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` that counts the commits that commit something."""

    commits = 0

    def commit(self) -> None:
        if self.in_transaction:
            self.commits += 1
        super().commit()


def connect(path: str, *, journal_mode: str | None, threads: bool = False,
            synchronous: str = "FULL") -> CountingConnection:
    """A counting connection with ``synchronous=FULL`` and, if given, ``journal_mode``.

    ``synchronous="NORMAL"`` only to prepare the long runs that section 9 resumes (outside the timing).
    """
    conn = sqlite3.connect(path, check_same_thread=not threads, factory=CountingConnection)
    if journal_mode is not None:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def pragmas(conn: sqlite3.Connection) -> tuple[str, int]:
    """``(journal_mode, synchronous)`` of ``conn`` (synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA)."""
    return (str(conn.execute("PRAGMA journal_mode").fetchone()[0]),
            int(conn.execute("PRAGMA synchronous").fetchone()[0]))


async def aconnect(path: str, *, journal_mode: str | None) -> Any:
    """The aiosqlite twin of :func:`connect`."""
    conn = await aiosqlite.connect(path, factory=CountingConnection)
    if journal_mode is not None:
        await conn.execute(f"PRAGMA journal_mode={journal_mode}")
    await conn.execute("PRAGMA synchronous=FULL")
    return conn


async def apragmas(conn: Any) -> tuple[str, int]:
    async with conn.execute("PRAGMA journal_mode") as cur:
        journal = (await cur.fetchone())[0]
    async with conn.execute("PRAGMA synchronous") as cur:
        sync = (await cur.fetchone())[0]
    return str(journal), int(sync)


# --- LangGraph -----------------------------------------------------------------------------------------

class LGState(TypedDict):
    counter: int
    note: str
    history: list[dict[str, str]]


class LGAppendState(TypedDict):
    counter: int
    history: Annotated[list[dict[str, str]], operator.add]


def append_batch(state: list[dict[str, str]], writes: Sequence[list[dict[str, str]]]) -> list[dict[str, str]]:
    """``DeltaChannel``'s batch reducer: each write is a list of messages, appended in order
    (batching-invariant, as the channel requires)."""
    out = list(state)
    for write in writes:
        out.extend(write)
    return out


if DELTA_MISSING is None:
    class LGDeltaState(TypedDict):
        counter: int
        history: Annotated[list[dict[str, str]], DeltaChannel(append_batch)]


def langgraph_graph(steps: int, checkpointer: Any, probe: Probe | None = None,
                    workload: Workload = Workload.READ) -> Any:
    """``work`` loops on itself while ``counter < steps``, then END."""

    def work(state: dict[str, Any]) -> dict[str, Any]:
        if probe is not None:
            probe(state["counter"])
        counter = state["counter"] + 1
        if workload is Workload.READ:
            return {"counter": counter, "note": f"step {counter}"}
        return {"counter": counter, "history": [message(counter)]}

    def route(state: dict[str, Any]) -> str:
        return "work" if state["counter"] < steps else END

    schema: Any = LGState
    if workload is Workload.APPEND:
        schema = LGAppendState
    elif workload is Workload.DELTA:
        if DELTA_MISSING is not None:
            raise RuntimeError(f"langgraph's DeltaChannel is missing here: {DELTA_MISSING}")
        schema = LGDeltaState
    graph = StateGraph(schema)
    graph.add_node("work", work)
    graph.add_edge(START, "work")
    graph.add_conditional_edges("work", route, ["work", END])
    return graph.compile(checkpointer=checkpointer)


def langgraph_inputs(workload: Workload, history: list[dict[str, str]], start: int) -> dict[str, Any]:
    if workload is Workload.READ:
        return {"counter": start, "note": "", "history": history}
    return {"counter": start, "history": history}


class LangGraphSync:
    """``graph.invoke`` with ``SqliteSaver`` and ``durability="sync"``, or no checkpointer (path None)."""

    name = "LangGraph"

    def __init__(self, path: str | None, steps: int, probe: Probe | None = None, *,
                 workload: Workload = Workload.READ, synchronous: str = "FULL") -> None:
        self.steps, self.workload = steps, workload
        self.conn = (connect(path, journal_mode=None, threads=True, synchronous=synchronous)
                     if path is not None else None)
        self.saver = SqliteSaver(self.conn) if self.conn is not None else None
        if self.saver is not None:
            self.saver.setup()  # WAL, as the saver does it; synchronous=FULL was set by connect()
        self.graph = langgraph_graph(steps, self.saver, probe, workload)

    def prepare(self, history: list[dict[str, str]], start: int, runs: int) -> list[tuple[Any, Any]]:
        return [(langgraph_inputs(self.workload, history, start),
                 {"configurable": {"thread_id": unique("lg")}, "recursion_limit": self.steps + 10})
                for _ in range(runs)]

    def run(self, item: tuple[Any, Any]) -> int:
        inputs, config = item
        if self.saver is None:
            out = self.graph.invoke(inputs, config)
        else:
            out = self.graph.invoke(inputs, config, durability="sync")
        return int(out["counter"])

    def pragmas(self) -> tuple[str, int] | None:
        return pragmas(self.conn) if self.conn is not None else None

    @property
    def commits(self) -> int:
        return self.conn.commits if self.conn is not None else 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def langgraph_resume(path: str, graph: Any, config: Any) -> tuple[int, int, Callable[[], None]]:
    """Resume ``config``'s thread stored at ``path``: a new connection and saver, ``graph`` re-bound
    to it, ``invoke(None, config)``. Returns the final counter, the history's length and a closer."""
    conn = connect(path, journal_mode=None, threads=True)
    graph = graph.copy(update={"checkpointer": SqliteSaver(conn)})
    out = graph.invoke(None, config, durability="sync")
    return int(out["counter"]), len(out["history"]), conn.close


class LangGraphAsync:
    """``await graph.ainvoke``, ``AsyncSqliteSaver`` on one aiosqlite connection, ``durability="sync"``."""

    name = "LangGraph"

    def __init__(self, conn: Any, saver: Any, graph: Any, steps: int, workload: Workload) -> None:
        self.conn, self.saver, self.graph, self.steps, self.workload = conn, saver, graph, steps, workload

    @classmethod
    async def open(cls, path: str, steps: int, workload: Workload = Workload.READ) -> LangGraphAsync:
        conn = await aconnect(path, journal_mode=None)
        saver = AsyncSqliteSaver(conn)  # must be built inside the running loop
        await saver.setup()
        return cls(conn, saver, langgraph_graph(steps, saver, workload=workload), steps, workload)

    async def prepare(self, history: list[dict[str, str]], start: int, runs: int) -> list[tuple[Any, Any]]:
        return [(langgraph_inputs(self.workload, history, start),
                 {"configurable": {"thread_id": unique("lga")}, "recursion_limit": self.steps + 10})
                for _ in range(runs)]

    async def run(self, item: tuple[Any, Any]) -> int:
        inputs, config = item
        out = await self.graph.ainvoke(inputs, config, durability="sync")
        return int(out["counter"])

    async def pragmas(self) -> tuple[str, int]:
        return await apragmas(self.conn)

    @property
    def commits(self) -> int:
        raw = getattr(self.conn, "_conn", None)  # aiosqlite keeps the sqlite3 connection there
        return int(getattr(raw, "commits", -1))

    async def close(self) -> None:
        await self.conn.close()


# --- Burr ----------------------------------------------------------------------------------------------

def burr_actions(probe: Probe | None, is_async: bool, workload: Workload = Workload.READ) -> tuple[Any, Any]:
    """``work`` and the terminal ``done`` (never run: runs halt before it)."""
    append = workload is not Workload.READ
    writes = ["counter", "history"] if append else ["counter", "note"]

    def advance(state: State) -> State:
        if probe is not None:
            probe(state["counter"])
        counter = state["counter"] + 1
        if append:
            return state.update(counter=counter).append(history=message(counter))
        return state.update(counter=counter, note=f"step {counter}")

    if is_async:
        @action(reads=["counter"], writes=writes)
        async def awork(state: State) -> State:
            return advance(state)

        @action(reads=[], writes=[])
        async def adone(state: State) -> State:
            return state

        return awork, adone

    @action(reads=["counter"], writes=writes)
    def work(state: State) -> State:
        return advance(state)

    @action(reads=[], writes=[])
    def done(state: State) -> State:
        return state

    return work, done


def burr_graph(steps: int, actions: tuple[Any, Any]) -> Any:
    """A builder with the actions and transitions only (no state, entrypoint or identifiers yet)."""
    work, done = actions
    return (ApplicationBuilder()
            .with_actions(work=work, done=done)
            .with_transitions(("work", "work", expr(f"counter < {steps}")), ("work", "done", default)))


def burr_state(workload: Workload, history: list[dict[str, str]], start: int) -> dict[str, Any]:
    if workload is Workload.READ:
        return {"counter": start, "note": "", "history": history}
    return {"counter": start, "history": history}


def burr_builder(steps: int, history: list[dict[str, str]], start: int, *, app_id: str,
                 actions: tuple[Any, Any], persister: Any, workload: Workload = Workload.READ) -> Any:
    builder = (burr_graph(steps, actions)
               .with_state(**burr_state(workload, history, start))
               .with_entrypoint("work")
               .with_identifiers(app_id=app_id))
    return builder.with_state_persister(persister) if persister is not None else builder


class BurrSync:
    """``app.run(halt_before=["done"])`` with ``SQLitePersister`` on our connection, or none (path None).

    ``journal_mode``: ``"wal"`` (as the other systems) or ``None`` for Burr's default (SQLite's
    rollback journal); ``synchronous=FULL`` either way.
    """

    name = "Burr"

    def __init__(self, path: str | None, steps: int, probe: Probe | None = None, *,
                 journal_mode: str | None = "wal", workload: Workload = Workload.READ,
                 synchronous: str = "FULL") -> None:
        self.steps, self.workload = steps, workload
        self.actions = burr_actions(probe, is_async=False, workload=workload)
        # threads=True: Burr's SQLitePersister.__del__ closes the connection from whichever thread
        # collects it, which sqlite3 refuses (a printed "Exception ignored") for a same-thread connection.
        self.conn = (connect(path, journal_mode=journal_mode, threads=True, synchronous=synchronous)
                     if path is not None else None)
        self.persister = None
        if path is not None and self.conn is not None:
            self.persister = SQLitePersister(db_path=path, connection=self.conn)
            self.persister.initialize()

    def prepare(self, history: list[dict[str, str]], start: int, runs: int) -> list[Any]:
        """Built applications: one per run, as Burr is used (building is left out of the timing)."""
        return [burr_builder(self.steps, history, start, app_id=unique("burr"), actions=self.actions,
                             persister=self.persister, workload=self.workload).build()
                for _ in range(runs)]

    def run(self, app: Any) -> int:
        _action, _result, state = app.run(halt_before=["done"])
        return int(state["counter"])

    def pragmas(self) -> tuple[str, int] | None:
        return pragmas(self.conn) if self.conn is not None else None

    @property
    def commits(self) -> int:
        return self.conn.commits if self.conn is not None else 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def burr_resume(path: str, steps: int, actions: tuple[Any, Any], app_id: str) -> tuple[int, int, Callable[[], None]]:
    """Resume Burr application ``app_id`` stored at ``path``: a new connection and persister,
    ``initialize_from(..., resume_at_next_action=True)``, then run to the end. Returns the final
    counter, the history's length and a closer."""
    conn = connect(path, journal_mode="wal", threads=True)  # threads: see BurrSync
    persister = SQLitePersister(db_path=path, connection=conn)
    app = (burr_graph(steps, actions)
           .initialize_from(persister, resume_at_next_action=True, default_state={}, default_entrypoint="work")
           .with_identifiers(app_id=app_id)
           .with_state_persister(persister)
           .build())
    _action, _result, state = app.run(halt_before=["done"])
    return int(state["counter"]), len(state["history"]), conn.close


class BurrAsync:
    """``await app.arun(halt_before=["done"])`` with one ``AsyncSQLitePersister`` shared by all apps."""

    name = "Burr"

    def __init__(self, conn: Any, persister: Any, steps: int, workload: Workload) -> None:
        self.conn, self.persister, self.steps, self.workload = conn, persister, steps, workload
        self.actions = burr_actions(None, is_async=True, workload=workload)

    @classmethod
    async def open(cls, path: str, steps: int, journal_mode: str | None = "wal",
                   workload: Workload = Workload.READ) -> BurrAsync:
        conn = await aconnect(path, journal_mode=journal_mode)
        persister = AsyncSQLitePersister(conn)
        await persister.initialize()
        return cls(conn, persister, steps, workload)

    async def prepare(self, history: list[dict[str, str]], start: int, runs: int) -> list[Any]:
        return [await burr_builder(self.steps, history, start, app_id=unique("burra"),
                                   actions=self.actions, persister=self.persister,
                                   workload=self.workload).abuild()
                for _ in range(runs)]

    async def run(self, app: Any) -> int:
        _action, _result, state = await app.arun(halt_before=["done"])
        return int(state["counter"])

    async def pragmas(self) -> tuple[str, int]:
        return await apragmas(self.conn)

    @property
    def commits(self) -> int:
        raw = getattr(self.conn, "_conn", None)
        return int(getattr(raw, "commits", -1))

    async def close(self) -> None:
        await self.conn.close()


async def gather_runs(run: Callable[[Any], Any], items: Sequence[Any]) -> list[int]:
    """``asyncio.gather`` of one run per item."""
    return list(await asyncio.gather(*(run(item) for item in items)))
