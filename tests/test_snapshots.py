"""The adaptive snapshot rule of docs/durability.md ("Storage"), checked on what a real SQLite store
holds: a snapshot once the steps since the last one stored half as many items as it holds (at least
16), and at least every 500 steps; so what a load replays stays under about half a context's worth,
and the snapshots cost at most three times what the steps changed (twice when steps overwrite, three
times when the context only grows). A store whose snapshots share items (SQLiteStore keeps big lists
in segments, ``stores/_segments``) also takes one every ``max(96, items // 24)`` steps while the steps
only append: then a snapshot stores what was appended, the rest of the list after its last whole
segment and the small fields, and a load replays few steps."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field

from statemachine_agent import Context, Workflow
from statemachine_agent.stores import SQLiteStore
from statemachine_agent.stores._segments import SEGMENT, join, wanted


class Notes(Context):
    items: list[str] = Field(default_factory=list)
    big: list[int] = Field(default_factory=list)
    script: list[int] = Field(default_factory=list)
    n: int = 0


def notes() -> Any:
    """Step i appends ``script[i]`` items (a negative number: replaces the list by that many)."""
    wf = Workflow("snap-notes", Notes)

    @wf.state(initial=True, reads=["script", "n", "items"], writes=["items", "n"])
    def step(ctx: Any) -> None:
        k = ctx.script[ctx.n]
        if k >= 0:
            ctx.items.extend(f"item {ctx.n}.{j}" for j in range(k))
        else:
            ctx.items = [f"new {ctx.n}.{j}" for j in range(-k)]
        ctx.n += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("step", "step", guard=lambda c: c.n < len(c.script), name="again", max_traversals=100_000)
    wf.transition("step", "done", default=True, name="finish")
    return wf.compile()


def _items(data: dict[str, Any]) -> int:
    return sum(len(v) if isinstance(v, (list, dict)) else 1 for v in data.values())


def _stored(path: Path) -> tuple[dict[int, int], list[int], dict[int, tuple[int, int]], set[int]]:
    """Snapshot sizes by step, the items each step stored (whole fields, operations, unsets), the items
    each snapshot stored itself (its own row's, and those of its segments no earlier snapshot stored),
    and the steps that changed a list in place by more than appending."""
    conn = sqlite3.connect(path)
    try:
        segments = {key: json.loads(text) for key, text in
                    conn.execute("SELECT key, items FROM sma_segments WHERE run_id='r'")}
        texts = {key: json.dumps(items) for key, items in segments.items()}
        snaps, new = {}, {}
        seen: set[str] = set()
        for step, text in conn.execute("SELECT step, context FROM sma_snapshots WHERE run_id='r' ORDER BY step"):
            row = json.loads(text)
            keys = wanted(row, "snapshot")
            snaps[step] = _items(join(row, texts, json.loads, "snapshot"))
            own = _items(row) if not keys else _items(row[0]) - len(row[1]) + sum(
                len(part[2]) for part in row[1].values())
            new[step] = (own, sum(len(segments[k]) for k in set(keys) - seen))
            seen.update(keys)
        per_step, reshaped = [], set()
        for number, text in conn.execute("SELECT number, record FROM sma_steps WHERE run_id='r' ORDER BY number"):
            rec = json.loads(text)
            ops = sum(len(op[1]) if op[0] == "e" else 1 for o in rec.get("ops", {}).values() for op in o)
            per_step.append(_items(rec["delta"]) + ops + len(rec["unset"]))
            if any(op[0] not in ("a", "e") for o in rec.get("ops", {}).values() for op in o):
                reshaped.add(number)
    finally:
        conn.close()
    return snaps, per_step, new, reshaped


def _step_cap(size: int, shares: bool) -> int:
    """Steps after which a snapshot is due whatever the steps stored (``snapshots_share_items``: while they
    only appended)."""
    return min(500, max(96, size // 24)) if shares else 500


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(st.integers(-40, 12), min_size=1, max_size=150), start=st.integers(0, 300),
       shares=st.booleans())
def test_snapshots_bound_the_replay_and_cost_at_most_three_times_the_changes(tmp_path: Path, script: list[int],
                                                                             start: int, shares: bool) -> None:
    path = tmp_path / "snap.db"
    path.unlink(missing_ok=True)
    with SQLiteStore(path) as store:
        store.snapshots_share_items = shares
        result = notes().run_sync(Notes(script=script, items=[f"start {i}" for i in range(start)]), store=store,
                                  run_id="r", max_steps=100_000)
    assert result.terminal == "done"
    snaps, per_step, new, reshaped = _stored(path)
    marks = sorted(snaps)
    assert marks[0] == 0
    for a, b in zip(marks, [*marks[1:], len(per_step)], strict=True):
        if a == b:  # a snapshot after the last step
            continue
        since = per_step[a:b]
        size = snaps[a]
        cap = _step_cap(size, shares and not reshaped & set(range(a, b - 1)))
        # What a load from snapshot a replays: under half of it (or 16 items), and fewer steps than the
        # step rule's, plus the step that crossed.
        assert sum(since[:-1]) < max(size // 2, 16)
        assert b - 1 - a < cap
        if b in snaps:  # a snapshot the rule took
            by_items = sum(since) >= max(size // 2, 16)
            assert by_items or b - a >= cap
            # It holds at most what there was plus what was stored since; a snapshot the item rule took
            # stores at most three times that (half its size rounds down: one item more at most).
            assert snaps[b] <= size + sum(since)
            own, segments = new[b]
            if by_items:
                assert own + segments <= 3 * sum(since) + 1
            elif shares:  # the step rule, steps that only appended: its new segments hold what was
                # appended and the items after the last whole segment before (under one segment); its
                # own row the items after its whole segments (under one per list) and the small fields
                assert segments <= sum(since) + SEGMENT - 1


def test_a_snapshot_at_least_every_500_steps(tmp_path: Path) -> None:
    """A context of 3,000 items that steps change by one: the item rule alone would wait 1,500 steps."""
    path = tmp_path / "every500.db"
    with SQLiteStore(path) as store:
        store.snapshots_share_items = False
        result = notes().run_sync(Notes(script=[1] * 1_100, big=list(range(3_000))), store=store, run_id="r",
                                  max_steps=100_000)
    assert result.terminal == "done"
    snaps, _per_step, _new, _reshaped = _stored(path)
    assert sorted(snaps) == [0, 500, 1000]


def test_a_growing_history_is_snapshot_by_steps_at_the_cost_of_what_it_appended(tmp_path: Path) -> None:
    """1,500 items, one appended a step: the item rule alone would wait 750 steps; the step rule takes a
    snapshot every max(96, items // 24) steps, each storing the segments of what was appended."""
    path = tmp_path / "grow.db"
    with SQLiteStore(path) as store:
        result = notes().run_sync(Notes(script=[1] * 400, items=[f"start {i}" for i in range(1_500)]), store=store,
                                  run_id="r", max_steps=100_000)
    assert result.terminal == "done"
    snaps, per_step, new, reshaped = _stored(path)
    marks = sorted(snaps)
    assert not reshaped
    expected = [0]
    while expected[-1] + _step_cap(snaps[expected[-1]], True) <= len(per_step):
        expected.append(expected[-1] + _step_cap(snaps[expected[-1]], True))
    assert marks == expected and len(marks) >= 3
    for a, b in itertools.pairwise(marks):
        own, segments = new[b]
        assert segments <= sum(per_step[a:b]) + SEGMENT - 1
        assert own < 2 * SEGMENT + 10  # the rests of `items` and `script`, and the counter
