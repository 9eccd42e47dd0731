"""Snapshots that keep big lists and dicts as shared segments (schema version 4, ``stores/_segments``).

A snapshot row refers to its segments by the hash of their text; a later snapshot shares the segments
that did not change. What must hold: a snapshot reads back as the context it was given; a run of a chat
agent loads at every step as it was; a fork keeps its own copies; and a damaged or missing segment, or a
forged row, is a ``StoreCorrupted`` naming it, never a different context.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field, SecretStr

from statemachine_agent import Context, Workflow
from statemachine_agent.errors import StoreCorrupted, StoreError
from statemachine_agent.stores import SCHEMA_VERSION, SQLiteStore
from statemachine_agent.stores._segments import SEGMENT, join, key_of, split, wanted
from statemachine_agent.stores._sqlite import _row_crc

_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                       | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                    max_size=3),
                       max_leaves=6)
_big = (st.lists(_values, min_size=0, max_size=3 * SEGMENT + 5)
        | st.dictionaries(st.text(max_size=6), _values, min_size=0, max_size=3 * SEGMENT + 5))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _big | _values, max_size=4))
def test_a_snapshot_reads_back_as_the_context_it_was_given(snapshot: dict[str, Any]) -> None:
    text, segments = split(snapshot)
    row = json.loads(text)
    texts = dict(segments)
    assert all(key_of(t) == k for k, t in segments)
    big = sum(len(v) // SEGMENT for v in snapshot.values() if type(v) in (list, dict) and len(v) >= SEGMENT)
    assert len(segments) == big
    assert wanted(row, "s") == [k for k, _ in segments]
    joined = join(row, texts, json.loads, "s")
    assert joined == snapshot
    assert list(joined) == list(snapshot)  # the fields in their order
    for name, value in snapshot.items():
        if type(value) is dict:
            assert list(joined[name]) == list(value)


class Chat(Context):
    history: list[dict[str, str]] = Field(default_factory=list)
    n: int = 0
    stop: int = 0


def chat(window: int | None = None) -> Any:
    """Each step appends a message (and with ``window``, drops the oldest past that many)."""
    wf = Workflow("seg-chat", Chat)

    @wf.state(initial=True, reads=["n", "history"], writes=["n", "history"])
    def talk(ctx: Any) -> None:
        ctx.n += 1
        ctx.history.append({"role": "user", "content": f"message {ctx.n}"})
        if window is not None and len(ctx.history) > window:
            ctx.history.pop(0)

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("talk", "talk", guard=lambda c: c.n < c.stop, name="again", max_traversals=100_000)
    wf.transition("talk", "done", default=True, name="finish")
    return wf.compile()


def _start(k: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": f"start {i}"} for i in range(k)]


def _expected(start: int, after: int, window: int | None = None) -> list[dict[str, str]]:
    history = _start(start) + [{"role": "user", "content": f"message {i}"} for i in range(1, after + 1)]
    return history if window is None else history[-window:] if len(history) > window else history


@pytest.fixture
def chat_store(tmp_path: Path) -> Path:
    """A chat run of 300 steps from 100 messages, in a closed store file."""
    path = tmp_path / "chat.db"
    with SQLiteStore(path) as store:
        result = chat().run_sync(Chat(history=_start(100), stop=300), store=store, run_id="r", max_steps=100_000)
        assert result.terminal == "done"
    return path


def test_a_chat_run_loads_as_it_was_at_every_step(chat_store: Path) -> None:
    with SQLiteStore(chat_store) as store:
        snaps = [r[0] for r in sqlite3.connect(chat_store).execute("SELECT step FROM sma_snapshots ORDER BY step")]
        assert len(snaps) >= 4  # every max(96, items // 24) steps, as the run only appends
        for at in range(0, 301, 7):
            loaded = store.load("r", at_step=at).result()
            assert loaded.context["history"] == _expected(100, at)
            assert at - loaded.snapshot_at < 96
    conn = sqlite3.connect(chat_store)
    (version,) = conn.execute("SELECT value FROM sma_meta WHERE key='schema_version'").fetchone()
    rows, items = conn.execute("SELECT COUNT(*), SUM(json_array_length(items)) FROM sma_segments").fetchone()
    conn.close()
    assert version == str(SCHEMA_VERSION) == "4"
    # Each message is in one segment at most once: shared by every snapshot after it.
    assert items == rows * SEGMENT <= 400


def test_a_sliding_window_snapshots_by_the_item_rule_only(tmp_path: Path) -> None:
    """Dropping the oldest message shifts every segment: the step rule would rewrite them all, so it
    waits for the item rule (half the context's worth of steps)."""
    path = tmp_path / "window.db"
    with SQLiteStore(path) as store:
        result = chat(window=200).run_sync(Chat(history=_start(200), stop=300), store=store, run_id="r",
                                           max_steps=100_000)
        assert result.terminal == "done"
        assert store.load("r").result().context["history"] == _expected(200, 300, window=200)
    snaps = [r[0] for r in sqlite3.connect(path).execute("SELECT step FROM sma_snapshots ORDER BY step")]
    gaps = [b - a for a, b in itertools.pairwise(snaps)]
    assert gaps and min(gaps) >= 200 // 2 // 3  # three items a step (n, the append, the pop): ~100 / 3


def _latest_segments(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        (text,) = conn.execute("SELECT context FROM sma_snapshots WHERE run_id='r' ORDER BY step DESC LIMIT 1"
                               ).fetchone()
    finally:
        conn.close()
    return wanted(json.loads(text), "s")


def _damaged(path: Path, tmp_path: Path, sql: str, *args: Any) -> Path:
    copy = tmp_path / "damaged.db"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    conn.execute(sql, args)
    conn.commit()
    conn.close()
    return copy


def test_a_missing_segment_is_named(chat_store: Path, tmp_path: Path) -> None:
    key = _latest_segments(chat_store)[-1]
    copy = _damaged(chat_store, tmp_path, "DELETE FROM sma_segments WHERE key=?", key)
    with SQLiteStore(copy) as store, pytest.raises(StoreCorrupted, match=f"segment {key} .* not in the store"):
        store.load("r").result()


def test_a_changed_segment_fails_its_checksum(chat_store: Path, tmp_path: Path) -> None:
    key = _latest_segments(chat_store)[0]
    copy = _damaged(chat_store, tmp_path, "UPDATE sma_segments SET items=replace(items, 'start', 'START') WHERE key=?",
                    key)
    with SQLiteStore(copy) as store, pytest.raises(StoreCorrupted, match="fails its checksum"):
        store.load("r").result()


def test_a_resealed_short_segment_is_refused(chat_store: Path, tmp_path: Path) -> None:
    """A segment rewritten with a valid checksum but one item fewer: not what the row says it is."""
    key = _latest_segments(chat_store)[0]
    conn = sqlite3.connect(chat_store)
    (items,) = conn.execute("SELECT items FROM sma_segments WHERE key=?", (key,)).fetchone()
    conn.close()
    short = json.dumps(json.loads(items)[1:], separators=(",", ":"))
    copy = _damaged(chat_store, tmp_path, "UPDATE sma_segments SET items=?, crc=? WHERE key=?", short,
                    _row_crc("segment", "r", key, short), key)
    with SQLiteStore(copy) as store, pytest.raises(StoreCorrupted, match=f"segment {key} .* not {SEGMENT} items"):
        store.load("r").result()


@pytest.mark.parametrize("row", ["[1, 2]", "[{}, {\"h\": [\"x\", [], []]}]", "[{\"h\": 1}, {\"h\": [\"l\", [], []]}]",
                                 "[{\"h\": null}, {\"h\": [\"l\", [3], []]}]", "\"text\""])
def test_a_forged_snapshot_row_is_refused(chat_store: Path, tmp_path: Path, row: str) -> None:
    conn = sqlite3.connect(chat_store)
    (step,) = conn.execute("SELECT MAX(step) FROM sma_snapshots").fetchone()
    conn.close()
    copy = _damaged(chat_store, tmp_path, "UPDATE sma_snapshots SET context=?, crc=? WHERE step=?", row,
                    _row_crc("snapshot", "r", step, row), step)
    with SQLiteStore(copy) as store, pytest.raises(StoreCorrupted, match="snapshot at step"):
        store.load("r").result()


def test_a_fork_keeps_its_own_segments(chat_store: Path) -> None:
    with SQLiteStore(chat_store) as store:
        chat().fork_sync("r", at_step=150, store=store, new_run_id="f")
        conn = sqlite3.connect(chat_store)
        conn.execute("DELETE FROM sma_segments WHERE run_id='r'")
        conn.commit()
        conn.close()
        for at in (0, 77, 150, 300):
            assert store.load("f", at_step=at).result().context["history"] == _expected(100, at)
        with pytest.raises(StoreCorrupted, match="segment"):
            store.load("r").result()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_flipped_byte_loads_the_same_run_or_says_it_is_damaged(chat_store: Path, tmp_path: Path,
                                                               data: st.DataObject) -> None:
    with SQLiteStore(chat_store) as store:
        before = store.load("r").result()
    raw = bytearray(chat_store.read_bytes())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    copy = tmp_path / f"flip-{at}.db"
    copy.write_bytes(bytes(raw))
    try:
        with SQLiteStore(copy, readonly=True) as store:
            after = store.load("r").result()
    except (StoreCorrupted, StoreError):
        return
    assert after.context == before.context and after.run == before.run
    assert [s.number for s in after.steps] == [s.number for s in before.steps]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_chat_run_killed_at_random_moments_loses_nothing(tmp_path: Path, seed: int) -> None:
    """tests/segment_worker.py runs a 600-step chat agent from 300 messages (snapshots by both rules, in
    segments), SIGKILLed at a drawn moment of each launch until one ends. After every kill the files as
    left (copied, so reading changes nothing) hold a run whose context at its last committed step, and
    at steps before it, is the uninterrupted run's; the run ends with the whole history once."""
    import random
    import signal
    import subprocess
    import sys

    import segment_worker

    rng = random.Random(seed)
    db = tmp_path / "runs.db"
    worker = Path(__file__).parent / "segment_worker.py"
    ended = False
    for launch in range(40):
        proc = subprocess.Popen([sys.executable, str(worker), str(db)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        try:
            proc.wait(timeout=rng.uniform(0.0, 0.12))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        else:
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            ended = True
        if not db.exists():
            continue
        image = tmp_path / f"image-{launch}"
        image.mkdir()
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                shutil.copyfile(f"{db}{suffix}", image / f"runs.db{suffix}")
        with SQLiteStore(image / "runs.db") as store:
            if not [r for r in store.list_runs().result() if r.run_id == "r"]:
                continue  # killed before the run was created: nothing stored yet
            stored = store.load("r").result()
            n = stored.run.next_step
            assert stored.context["history"] == segment_worker.expected(n)
            for at in {0, n // 3, n // 2, max(0, n - 1)}:
                assert store.load("r", at_step=at).result().context["history"] == segment_worker.expected(at)
        if ended:
            break
    assert ended
    with SQLiteStore(db) as store:
        final = store.load("r").result()
    assert final.run.status.value == "done"
    assert final.context["history"] == segment_worker.expected(segment_worker.STEPS)



class _Crash(BaseException):
    """Kills a run the way a dead process does: not routed, the run stays stored as running."""


def test_a_fenced_worker_leaves_no_segment_and_the_run_goes_on(tmp_path: Path) -> None:
    """Two workers on one stored chat run, each with its own connection: A claims it, then B claims it
    (A is fenced) and runs it to its end; A's step, whose commit would store a snapshot with a new
    segment (A's store snapshots every step), is refused whole. Every segment the file holds is one a
    snapshot of the run refers to, and the run ends with the uninterrupted run's history."""
    import asyncio

    from statemachine_agent.errors import RunFenced

    wf = Workflow("seg-two", Chat)
    crash: dict[str, Any] = {"at": 120, "hold": False}
    gate: list[asyncio.Event] = []
    tried: list[Any] = []

    @wf.state(initial=True, reads=["n", "history"], writes=["n", "history"])
    async def talk(ctx: Any) -> None:
        if ctx.n == crash["at"]:
            raise _Crash
        if crash["hold"]:  # A's step: started (marked), held here while B takes the run
            crash["hold"] = False
            await gate[0].wait()
        ctx.n += 1
        ctx.history.append({"role": "user", "content": f"message {ctx.n}"})

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("talk", "talk", guard=lambda c: c.n < c.stop, name="again", max_traversals=100_000)
    wf.transition("talk", "done", default=True, name="finish")
    compiled = wf.compile()
    path = tmp_path / "two.db"
    with SQLiteStore(path) as store, pytest.raises(_Crash):
        compiled.run_sync(Chat(history=_start(200), stop=300), store=store, run_id="r", max_steps=100_000)
    crash["at"] = -1

    async def both() -> None:
        gate.append(asyncio.Event())
        with SQLiteStore(path, snapshot_every=1) as a, SQLiteStore(path) as b:
            commit = a.commit

            def seen(request: Any) -> Any:
                tried.append(request)
                return commit(request)

            a.commit = seen  # type: ignore[method-assign]
            run_a = await compiled.reopen("r", store=a)
            crash["hold"] = True
            step_a = asyncio.create_task(run_a.step())
            while crash["hold"]:
                await asyncio.sleep(0)
            done = await compiled.resume("r", store=b)
            assert done.terminal == "done"
            gate[0].set()
            with pytest.raises(RunFenced):
                await step_a
            # A did try to commit its step, with a snapshot of 321 messages in ten segments
            assert [len(split(t["snapshot"])[1]) >= 10 for t in tried if t["snapshot"]] == [True]

    asyncio.run(both())
    conn = sqlite3.connect(path)
    try:
        held = {k for (k,) in conn.execute("SELECT key FROM sma_segments")}
        referred = set()
        for (text,) in conn.execute("SELECT context FROM sma_snapshots"):
            referred.update(wanted(json.loads(text), "s"))
    finally:
        conn.close()
    assert held == referred
    with SQLiteStore(path) as store:
        final = store.load("r").result()
    assert final.context["history"] == _expected(200, 300)



class Vault(Context):
    token: SecretStr = SecretStr("")
    history: list[dict[str, str]] = Field(default_factory=list)
    n: int = 0


def test_a_secret_beside_a_segmented_history_is_stored_encrypted_and_read_back(tmp_path: Path) -> None:
    """The snapshot row keeps the small fields, the secret among them, as a plain snapshot does: the
    store's codec encrypts it, so no byte of the file holds it, and a load decrypts it; the history's
    segments hold the messages (a secret inside a list is refused before anything is stored)."""
    from statemachine_agent.secrets import FernetSecrets

    canary = "canary-5f1d0c"
    wf = Workflow("seg-vault", Vault)

    @wf.state(initial=True, reads=["n", "history", "token"], writes=["n", "history"])
    def talk(ctx: Any) -> None:
        ctx.n += 1
        ctx.history.append({"role": "user", "content": f"message {ctx.n}"})

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("talk", "talk", guard=lambda c: c.n < 200, name="again", max_traversals=1_000)
    wf.transition("talk", "done", default=True, name="finish")
    codec = FernetSecrets(FernetSecrets.generate_key())
    path = tmp_path / "vault.db"
    with SQLiteStore(path, secrets=codec) as store:
        result = wf.compile().run_sync(Vault(token=SecretStr(canary), history=_start(100)), store=store, run_id="r")
        assert result.terminal == "done"
    conn = sqlite3.connect(path)
    segments = conn.execute("SELECT COUNT(*) FROM sma_segments").fetchone()[0]
    conn.close()
    assert segments >= 3  # the history is in segments of 32 from the first snapshot on
    for suffix in ("", "-wal"):
        if Path(f"{path}{suffix}").exists():
            assert canary.encode() not in Path(f"{path}{suffix}").read_bytes()
    with SQLiteStore(path, secrets=codec) as store:
        for at in (0, 150, 200):
            stored = store.load("r", at_step=at).result()
            assert stored.context["history"] == _expected(100, at)
            assert canary not in json.dumps(stored.context)  # loaded as stored: the ciphertext
        replayed = wf.compile().replay_sync("r", store=store)
        assert replayed.ok
