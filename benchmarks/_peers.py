"""The peers of ``bench_durable.py``: the same workflow on LangGraph and on Burr, each checkpointed to SQLite.

Neither package is a dependency of statemachine-agent: they live only in ``.venv-bench`` (``make
bench-durable`` creates it). Without them this module still imports; ``LANGGRAPH_MISSING`` and
``BURR_MISSING`` then say why, and ``bench_durable.py`` prints that instead of a number.

The workflow, for both: a state of ``counter: int``, ``note: str`` and ``history: list[dict]`` (the
history is set at the start and never written by a step); node/action ``work`` adds 1 to ``counter``
and writes ``note``, looping back to itself while ``counter < steps``, then the run ends.

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
import itertools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

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
    import aiosqlite  # Burr's async persister needs it too
    from burr.core import ApplicationBuilder, State, action, default, expr
    from burr.core.persistence import SQLitePersister
    from burr.integrations.persisters.b_aiosqlite import AsyncSQLitePersister
except ImportError as exc:  # pragma: no cover - depends on the venv
    BURR_MISSING: str | None = f"{type(exc).__name__}: {exc}"
else:
    BURR_MISSING = None

_ids = itertools.count()


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


def connect(path: str, *, journal_mode: str | None, threads: bool = False) -> CountingConnection:
    """A counting connection with ``synchronous=FULL`` and, if given, ``journal_mode``."""
    conn = sqlite3.connect(path, check_same_thread=not threads, factory=CountingConnection)
    if journal_mode is not None:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("PRAGMA synchronous=FULL")
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


def langgraph_graph(steps: int, checkpointer: Any, probe: Probe | None = None) -> Any:
    """``work`` loops on itself while ``counter < steps``, then END."""

    def work(state: LGState) -> dict[str, Any]:
        if probe is not None:
            probe(state["counter"])
        counter = state["counter"] + 1
        return {"counter": counter, "note": f"step {counter}"}

    def route(state: LGState) -> str:
        return "work" if state["counter"] < steps else END

    graph = StateGraph(LGState)
    graph.add_node("work", work)
    graph.add_edge(START, "work")
    graph.add_conditional_edges("work", route, ["work", END])
    return graph.compile(checkpointer=checkpointer)


class LangGraphSync:
    """``graph.invoke`` with ``SqliteSaver`` and ``durability="sync"``, or no checkpointer (path None)."""

    name = "LangGraph"

    def __init__(self, path: str | None, steps: int, probe: Probe | None = None) -> None:
        self.steps = steps
        self.conn = connect(path, journal_mode=None, threads=True) if path is not None else None
        self.saver = SqliteSaver(self.conn) if self.conn is not None else None
        if self.saver is not None:
            self.saver.setup()  # WAL, as the saver does it; synchronous=FULL was set by connect()
        self.graph = langgraph_graph(steps, self.saver, probe)

    def prepare(self, history: list[dict[str, str]], start: int, runs: int) -> list[tuple[Any, Any]]:
        return [({"counter": start, "note": "", "history": history},
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


class LangGraphAsync:
    """``await graph.ainvoke``, ``AsyncSqliteSaver`` on one aiosqlite connection, ``durability="sync"``."""

    name = "LangGraph"

    def __init__(self, conn: Any, saver: Any, graph: Any, steps: int) -> None:
        self.conn, self.saver, self.graph, self.steps = conn, saver, graph, steps

    @classmethod
    async def open(cls, path: str, steps: int) -> LangGraphAsync:
        conn = await aconnect(path, journal_mode=None)
        saver = AsyncSqliteSaver(conn)  # must be built inside the running loop
        await saver.setup()
        return cls(conn, saver, langgraph_graph(steps, saver), steps)

    async def prepare(self, history: list[dict[str, str]], start: int, runs: int) -> list[tuple[Any, Any]]:
        return [({"counter": start, "note": "", "history": history},
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

def burr_actions(probe: Probe | None, is_async: bool) -> tuple[Any, Any]:
    """``work`` and the terminal ``done`` (never run: runs halt before it)."""
    if is_async:
        @action(reads=["counter"], writes=["counter", "note"])
        async def awork(state: State) -> State:
            if probe is not None:
                probe(state["counter"])
            counter = state["counter"] + 1
            return state.update(counter=counter, note=f"step {counter}")

        @action(reads=[], writes=[])
        async def adone(state: State) -> State:
            return state

        return awork, adone

    @action(reads=["counter"], writes=["counter", "note"])
    def work(state: State) -> State:
        if probe is not None:
            probe(state["counter"])
        counter = state["counter"] + 1
        return state.update(counter=counter, note=f"step {counter}")

    @action(reads=[], writes=[])
    def done(state: State) -> State:
        return state

    return work, done


def burr_builder(steps: int, history: list[dict[str, str]], start: int, *, app_id: str,
                 actions: tuple[Any, Any], persister: Any) -> Any:
    work, done = actions
    builder = (
        ApplicationBuilder()
        .with_actions(work=work, done=done)
        .with_transitions(("work", "work", expr(f"counter < {steps}")), ("work", "done", default))
        .with_state(counter=start, note="", history=history)
        .with_entrypoint("work")
        .with_identifiers(app_id=app_id)
    )
    return builder.with_state_persister(persister) if persister is not None else builder


class BurrSync:
    """``app.run(halt_before=["done"])`` with ``SQLitePersister`` on our connection, or none (path None).

    ``journal_mode``: ``"wal"`` (as the other systems) or ``None`` for Burr's default (SQLite's
    rollback journal); ``synchronous=FULL`` either way.
    """

    name = "Burr"

    def __init__(self, path: str | None, steps: int, probe: Probe | None = None,
                 journal_mode: str | None = "wal") -> None:
        self.steps = steps
        self.actions = burr_actions(probe, is_async=False)
        self.conn = connect(path, journal_mode=journal_mode) if path is not None else None
        self.persister = None
        if path is not None and self.conn is not None:
            self.persister = SQLitePersister(db_path=path, connection=self.conn)
            self.persister.initialize()

    def prepare(self, history: list[dict[str, str]], start: int, runs: int) -> list[Any]:
        """Built applications: one per run, as Burr is used (building is left out of the timing)."""
        return [burr_builder(self.steps, history, start, app_id=unique("burr"), actions=self.actions,
                             persister=self.persister).build()
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


class BurrAsync:
    """``await app.arun(halt_before=["done"])`` with one ``AsyncSQLitePersister`` shared by all apps."""

    name = "Burr"

    def __init__(self, conn: Any, persister: Any, steps: int) -> None:
        self.conn, self.persister, self.steps = conn, persister, steps
        self.actions = burr_actions(None, is_async=True)

    @classmethod
    async def open(cls, path: str, steps: int, journal_mode: str | None = "wal") -> BurrAsync:
        conn = await aconnect(path, journal_mode=journal_mode)
        persister = AsyncSQLitePersister(conn)
        await persister.initialize()
        return cls(conn, persister, steps)

    async def prepare(self, history: list[dict[str, str]], start: int, runs: int) -> list[Any]:
        return [await burr_builder(self.steps, history, start, app_id=unique("burra"),
                                   actions=self.actions, persister=self.persister).abuild()
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
