"""Issue 17: a durable step stores what it changed in place as operations (``_ops.py``), and a store
rebuilds the context from a snapshot and those operations. The promise attacked here: what a store
rebuilds at any step is exactly what storing the fields whole would have given (the JSON of
``context.model_dump(mode="json")``), for every context type; anything operations cannot say exactly
falls back to storing the field whole.

The core property runs a one-state loop whose steps apply generated scripts of in-place changes and
assignments (through the step's views) to many kinds of field, and the same scripts to a plain pydantic
model (the reference); every step the store rebuilds must be the reference's JSON after that step.
Real SQLite files throughout; damaged rows are written with sqlite3 directly, their CRC fixed, so only
their content is wrong.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_serializer,
    model_serializer,
)
from pydantic.alias_generators import to_camel
from pydantic_core import to_jsonable_python

from statemachine_agent import Context, Workflow
from statemachine_agent.stores import SQLiteStore, StoreCorrupted
from statemachine_agent.stores._sqlite import _row_crc

# --- the field kinds --------------------------------------------------------------------------------
BASE = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = 3


class Item(BaseModel):
    a: int = 0
    tags: list[int] = Field(default_factory=list)


class SubItem(Item):
    """Put into a ``list[Item]`` at run time: dumped as an ``Item`` (its own field is not)."""

    b: str = ""


class Point(BaseModel):
    x: int = 0

    @model_serializer
    def _out(self) -> dict[str, Any]:
        return {"x": self.x, "kind": "point"}


class Key(str):
    """A ``str`` subclass used as a dict key."""

    __slots__ = ()


Shown = Annotated[int, PlainSerializer(str, return_type=str)]


class Plain(Context):
    i: int = 0
    ld: list[dict[str, Any]] = Field(default_factory=list)
    lm: list[Item] = Field(default_factory=list)
    dt: list[datetime.datetime] = Field(default_factory=list)
    dsi: dict[str, int] = Field(default_factory=dict)
    dsl: dict[str, list[int]] = Field(default_factory=dict)
    ann: list[Shown] = Field(default_factory=list)
    fs: list[int] = Field(default_factory=list)
    pts: list[Point] = Field(default_factory=list)
    sal: list[int] = Field(default_factory=list, serialization_alias="salias")
    lu: list[int | str] = Field(default_factory=list)
    le: list[Color] = Field(default_factory=list)
    ol: list[int] | None = None
    bl: list = Field(default_factory=list)  # type: ignore[type-arg]
    bd: dict = Field(default_factory=dict)  # type: ignore[type-arg]
    si: set[int] = Field(default_factory=set)

    @field_serializer("fs")
    def _fs(self, v: list[int]) -> list[str]:
        return [f"{x:+d}" for x in v]


class Configured(Context):
    """Serialization settings of the context's config that its items' JSON depends on."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid", ser_json_timedelta="float",
                              ser_json_bytes="base64", val_json_bytes="base64")
    i: int = 0
    td: list[datetime.timedelta] = Field(default_factory=list)
    lb: list[bytes] = Field(default_factory=list)
    dtd: dict[str, datetime.timedelta] = Field(default_factory=dict)


class Aliased(Context):
    model_config = ConfigDict(validate_assignment=True, extra="forbid", alias_generator=to_camel,
                              populate_by_name=True)
    i: int = 0
    long_items: list[int] = Field(default_factory=list)
    by_key: dict[str, int] = Field(default_factory=dict)


class Encoded(Context):
    """``json_encoders`` (deprecated, still honoured by pydantic 2): a datetime dumps as the encoder says
    (``+00:00``, where pydantic writes ``Z``)."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid",
                              json_encoders={datetime.datetime: lambda d: d.isoformat()})
    i: int = 0
    when: list[datetime.datetime] = Field(default_factory=list)
    by: dict[str, datetime.datetime] = Field(default_factory=dict)


def _dt(n: int) -> datetime.datetime:
    return BASE + datetime.timedelta(minutes=n)


# Per field: how an int becomes an item, and the kind of container (which ops make sense).
ITEMS: dict[str, tuple[str, Callable[[int], Any]]] = {
    "ld": ("list", lambda n: {"k": n, "v": [n]}),
    "lm": ("list", lambda n: SubItem(a=n, tags=[n], b=str(n)) if n % 3 == 0 else Item(a=n, tags=[n])),
    "dt": ("list", _dt),
    "dsi": ("dict", lambda n: n),
    "dsl": ("dict", lambda n: [n, n + 1]),
    "ann": ("list", lambda n: n),
    "fs": ("list", lambda n: n),
    "pts": ("list", lambda n: Point(x=n)),
    "sal": ("list", lambda n: n),
    "lu": ("list", lambda n: n if n % 2 else f"s{n}"),
    "le": ("list", lambda n: list(Color)[n % 3]),
    "ol": ("list", lambda n: n),
    "bl": ("list", lambda n: [n] if n % 2 else {"n": n}),
    "bd": ("dict", lambda n: {"n": [n]}),
    "si": ("set", lambda n: n),
    "td": ("list", lambda n: datetime.timedelta(seconds=n * 1.5)),
    "lb": ("list", lambda n: bytes([n % 256]) * (n % 4 + 1)),
    "dtd": ("dict", lambda n: datetime.timedelta(milliseconds=n)),
    "long_items": ("list", lambda n: n),
    "by_key": ("dict", lambda n: n),
    "when": ("list", _dt),
    "by": ("dict", _dt),
}


def _key(n: int) -> Any:
    return f"k{n % 5}"


# --- the scripts ------------------------------------------------------------------------------------
N = st.integers(-6, 9)
LIST_OPS = st.one_of(
    st.tuples(st.just("append"), N), st.tuples(st.just("extend"), st.lists(N, max_size=4)),
    st.tuples(st.just("iadd"), st.lists(N, max_size=3)), st.tuples(st.just("insert"), N, N),
    st.tuples(st.just("set"), N, N), st.tuples(st.just("del"), N), st.tuples(st.just("pop"), N),
    st.tuples(st.just("pop_last")), st.tuples(st.just("remove"), N), st.tuples(st.just("clear")),
    st.tuples(st.just("sort")), st.tuples(st.just("reverse")),
    st.tuples(st.just("slice_set"), N, N, st.lists(N, max_size=3)),
    st.tuples(st.just("slice_del"), N, N), st.tuples(st.just("imul"), st.integers(0, 2)),
    st.tuples(st.just("nested"), N, N), st.tuples(st.just("assign"), st.lists(N, max_size=4)),
    st.tuples(st.just("own")), st.tuples(st.just("stale"), N),
)
DICT_OPS = st.one_of(
    st.tuples(st.just("dset"), N, N), st.tuples(st.just("ddel"), N), st.tuples(st.just("dpop"), N),
    st.tuples(st.just("popitem")), st.tuples(st.just("setdefault"), N, N),
    st.tuples(st.just("update"), st.lists(st.tuples(N, N), max_size=3)), st.tuples(st.just("clear")),
    st.tuples(st.just("nested"), N, N), st.tuples(st.just("assign"), st.lists(st.tuples(N, N), max_size=3)),
    st.tuples(st.just("own")), st.tuples(st.just("intkey"), N, N), st.tuples(st.just("strsub"), N, N),
)
SET_OPS = st.one_of(st.tuples(st.just("add"), N), st.tuples(st.just("discard"), N), st.tuples(st.just("clear")),
                    st.tuples(st.just("assign"), st.lists(N, max_size=3)))


def _nested(value: Any, n: int) -> None:
    """A change inside an item (not to the field itself): what ops cannot say."""
    if isinstance(value, (Item, SubItem)) or hasattr(value, "tags"):
        if n % 2:
            value.tags.append(n)
        else:
            value.a = n
    elif hasattr(value, "x") and not isinstance(value, (dict, list)) and not hasattr(value, "append"):
        value.x = n
    elif isinstance(value, dict) or hasattr(value, "keys"):
        if "v" in value:
            value["v"].append(n)
        else:
            value["k"] = n
    elif isinstance(value, list) or hasattr(value, "append"):
        value.append(n)


def do(holder: Any, field: str, op: tuple[Any, ...]) -> None:
    """Apply ``op`` to ``holder.<field>``: ``holder`` is a step's context view or a plain model."""
    kind, item = ITEMS[field]
    name, *args = op
    x = getattr(holder, field)
    if name == "own":
        setattr(holder, field, x)
    elif name == "assign":
        if kind == "dict":
            setattr(holder, field, {_key(k): item(v) for k, v in args[0]})
        elif kind == "set":
            setattr(holder, field, {item(v) for v in args[0]})
        else:
            setattr(holder, field, [item(v) for v in args[0]])
    elif name == "clear":
        x.clear()
    elif kind == "set":
        getattr(x, name)(item(args[0]))
    elif kind == "list":
        if name == "append":
            x.append(item(args[0]))
        elif name == "extend":
            x.extend(item(v) for v in args[0])
        elif name == "iadd":
            x += [item(v) for v in args[0]]
            setattr(holder, field, x)
        elif name == "insert":
            x.insert(args[0], item(args[1]))
        elif name == "set":
            x[args[0]] = item(args[1])
        elif name == "del":
            del x[args[0]]
        elif name == "pop":
            x.pop(args[0])
        elif name == "pop_last":
            x.pop()
        elif name == "remove":
            x.remove(x[args[0]])
        elif name == "sort":
            # By the items' JSON, which a store keeps: their repr names a SubItem's class, which an item of
            # a list[Item] field does not keep across a resume (pydantic stores it by the declared type),
            # so a resumed run sorted differently and the workflow itself was not deterministic.
            x.sort(key=lambda v: json.dumps(to_jsonable_python(v), sort_keys=True))
        elif name == "reverse":
            x.reverse()
        elif name == "slice_set":
            x[args[0]:args[1]] = [item(v) for v in args[2]]
        elif name == "slice_del":
            del x[args[0]:args[1]]
        elif name == "imul":
            x *= args[0]
            setattr(holder, field, x)
        elif name == "nested":
            _nested(x[args[0]], args[1])
        elif name == "stale":  # a proxy kept from before an assignment, used after it
            setattr(holder, field, [item(args[0])])
            x.append(item(args[0] + 1))
            getattr(holder, field).append(item(args[0] + 2))
    elif name == "dset":
        x[_key(args[0])] = item(args[1])
    elif name == "ddel":
        del x[_key(args[0])]
    elif name == "dpop":
        x.pop(_key(args[0]))
    elif name == "popitem":
        x.popitem()
    elif name == "setdefault":
        x.setdefault(_key(args[0]), item(args[1]))
    elif name == "update":
        x.update({_key(k): item(v) for k, v in args[0]})
    elif name == "nested":
        _nested(x[_key(args[0])], args[1])
    elif name == "intkey":  # a key JSON turns into text: put in at run time, not validated
        x[args[0] if field == "bd" else _key(args[0])] = item(args[1])
    elif name == "strsub":
        x[Key(_key(args[0]))] = item(args[1])


def run_script(holder: Any, fields: list[str], entry: list[tuple[str, tuple[Any, ...]]], log: list[str]) -> None:
    for field, op in entry:
        try:
            do(holder, field, op)
        except (IndexError, KeyError, ValueError, TypeError, AttributeError) as exc:
            log.append(f"{field} {op[0]}: {type(exc).__name__}")
        else:
            log.append(f"{field} {op[0]}: ok")


class Boom(Exception):
    """An action's failure: its step is rolled back and stores nothing."""


class Crash(BaseException):
    """Stands for the process dying inside an action."""


Entry = list[tuple[str, tuple[Any, ...]]]
Script = list[tuple[Entry, bool]]


def build(ctx_type: type[Context], fields: list[str], script: Script, log: list[str], *,
          crash_at: set[int] | None = None, bump: int | None = None) -> Any:
    """``loop`` runs ``script[ctx.i]`` (then fails when its flag says so: routed to ``skip``, which
    only counts it); ``bump``: a changed action that appends one more item at that entry."""
    wf = Workflow(f"ops_{ctx_type.__name__}", ctx_type)
    crash = crash_at if crash_at is not None else set()

    @wf.state(initial=True, reads=["i"], optional_reads=fields, writes=["i"], optional_writes=fields)
    def loop(ctx: Any) -> None:
        entry, fails = script[ctx.i]
        if ctx.i in crash:
            run_script(ctx, fields, entry, [])
            crash.discard(ctx.i)
            raise Crash
        run_script(ctx, fields, entry, log)
        if bump is not None and ctx.i == bump:
            getattr(ctx, fields[0]).append(ITEMS[fields[0]][1](7))
        if fails:
            raise Boom
        ctx.i += 1

    @wf.state(reads=["i"], writes=["i"])
    def skip(ctx: Any) -> None:
        ctx.i += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    more = wf.guard(lambda c: c.i < len(script), reads=["i"])
    wf.transition("loop", "loop", guard=more, max_traversals=len(script) + 1)
    wf.transition("loop", "done")
    wf.on_error("loop", Boom, "skip", max_traversals=len(script) + 1)
    wf.transition("skip", "loop", guard=more, max_traversals=len(script) + 1)
    wf.transition("skip", "done")
    return wf.compile()


def references(ctx_type: type[Context], fields: list[str], script: Script, log: list[str]) -> list[Any]:
    """The plain model's context before each step the run takes (and after the last one)."""
    ref = ctx_type()
    out = [ref.model_copy(deep=True)]
    for entry, fails in script:
        trial = ref.model_copy(deep=True)
        run_script(trial, fields, entry, log)
        if fails:
            out.append(ref.model_copy(deep=True))  # the failed step: nothing of it
            ref = ref.model_copy(deep=True, update={"i": ref.i + 1})  # skip counts it
        else:
            ref = trial
            ref.i += 1
        out.append(ref.model_copy(deep=True))
    return out


def scripts(fields: list[str], steps: int = 6) -> st.SearchStrategy[Script]:
    def ops(field: str) -> st.SearchStrategy[tuple[str, tuple[Any, ...]]]:
        kind = ITEMS[field][0]
        found = LIST_OPS if kind == "list" else DICT_OPS if kind == "dict" else SET_OPS
        return st.tuples(st.just(field), found)

    entry = st.lists(st.one_of([ops(f) for f in fields]), max_size=6)
    return st.lists(st.tuples(entry, st.sampled_from([False, False, False, True])), min_size=1, max_size=steps)


@contextlib.contextmanager
def store_at(snapshot_every: int | None) -> Iterator[SQLiteStore]:
    with tempfile.TemporaryDirectory() as tmp, SQLiteStore(Path(tmp) / "runs.db", snapshot_every=snapshot_every) as s:
        yield s


def dumped(model: BaseModel) -> Any:
    return canon(json.loads(json.dumps(model.model_dump(mode="json"))))


def canon(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its set's items sorted: a set's order is its hashes', whatever was stored."""
    if isinstance(data.get("si"), list):
        data["si"] = sorted(data["si"])
    return data


def check_steps(store: SQLiteStore, run_id: str, refs: list[Any]) -> None:
    stored = store.load(run_id).result()
    assert len(stored.steps) == len(refs) - 1
    for k, ref in enumerate(refs):
        got = canon(store.load(run_id, at_step=k).result().context)
        # As JSON text: the order of an object's keys is part of what storing it whole gives.
        assert json.dumps(got) == json.dumps(dumped(ref)), f"step {k}: rebuilt {got} != whole {dumped(ref)}"


CASES: dict[str, tuple[type[Context], list[str]]] = {
    "plain-lists": (Plain, ["ld", "lm", "dt", "ann", "fs", "pts"]),
    "plain-more": (Plain, ["sal", "lu", "le", "ol", "bl", "si"]),
    "plain-dicts": (Plain, ["dsi", "dsl", "bd"]),
    "configured": (Configured, ["td", "lb", "dtd"]),
    "aliased": (Aliased, ["long_items", "by_key"]),
    "encoded": (Encoded, ["when", "by"]),
}


def _property(case: str, every: int | None, data: st.DataObject) -> None:
    ctx_type, fields = CASES[case]
    script = data.draw(scripts(fields), label="script")
    ran: list[str] = []
    expected: list[str] = []
    refs = references(ctx_type, fields, script, expected)
    with store_at(every) as store:
        result = build(ctx_type, fields, script, ran).run_sync(ctx_type(), store=store, run_id="r")
        assert ran == expected  # the views did what plain lists and dicts do, op by op
        assert json.dumps(dumped(result.context)) == json.dumps(dumped(refs[-1]))
        check_steps(store, "r", refs)
        again = build(ctx_type, fields, script, []).resume_sync("r", store=store)
        assert dumped(again.context) == dumped(refs[-1])


@pytest.mark.parametrize("every", [None, 2], ids=["adaptive", "every-2"])
@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_step_rebuilds_what_storing_fields_whole_gives(case: str, every: int | None, data: st.DataObject) -> None:
    """For every kind of field and every mix of in-place changes, assignments and failed steps, the
    store rebuilds at each step the JSON the plain model has after that step."""
    _property(case, every, data)


# --- findings, each pinned by one plain case ---------------------------------------------------------
def _one(ctx_type: type[Context], fields: list[str], script: Script) -> tuple[list[Any], Callable[[], None]]:
    """Run ``script`` in a store; the references and the check of every stored step."""
    refs = references(ctx_type, fields, script, [])

    def check() -> None:
        with store_at(None) as store:
            result = build(ctx_type, fields, script, []).run_sync(ctx_type(), store=store, run_id="r")
            assert json.dumps(dumped(result.context)) == json.dumps(dumped(refs[-1]))
            check_steps(store, "r", refs)

    return refs, check


def test_popitem_of_a_written_dict_removes_its_last_key() -> None:
    """``dict.popitem`` is LIFO; the tracked dict used ``MutableMapping.popitem``, which removes the
    first key: the run's context (and what it stored) was not what the action's code says."""
    _, check = _one(Plain, ["dsi"], [([("dsi", ("update", [(0, 1), (1, 2)])), ("dsi", ("popitem",))], False)])
    check()


def test_a_failed_step_that_deleted_a_key_leaves_the_dict_in_its_order() -> None:
    """Rolling back ``del d[k]`` put ``k`` back at the end: after a failed step the dict's order (its
    JSON, and which key ``popitem`` takes) was not the one before the step."""
    refs, check = _one(Plain, ["dsi"], [([("dsi", ("update", [(1, 0), (0, 0)]))], False),
                                        ([("dsi", ("ddel", 1))], True), ([("dsi", ("dset", 2, 0))], False)])
    assert list(refs[-1].dsi) == ["k1", "k0", "k2"]
    check()


def test_items_appended_are_stored_as_the_contexts_json_encoders_say() -> None:
    """A context whose config has ``json_encoders``: an appended datetime was stored as operations
    dumped without them (``Z``, where storing the field whole gives ``+00:00``)."""
    _, check = _one(Encoded, ["when", "by"], [([("when", ("append", 1)), ("by", ("dset", 1, 2))], False)])
    check()


def test_a_loaded_steps_whole_field_is_not_changed_by_the_operations_after_it() -> None:
    """A store rebuilt the context by putting a step's whole field into it and then applying the next
    steps' operations to that very object: the loaded step record (and the replay's expectation, so
    an unchanged workflow was reported as diverging) showed the field as a later step left it."""
    script: Script = [([("dsl", ("clear",))], False), ([("dsl", ("dset", 0, 0))], False)]
    with store_at(None) as store:
        build(Plain, FIELDS, script, []).run_sync(Plain(), store=store, run_id="r")
        steps = store.load("r").result().steps
        assert steps[0].delta["dsl"] == {} and steps[1].ops == {"dsl": [["s", "k0", [0, 1]]]}
        assert build(Plain, FIELDS, script, []).replay_sync("r", store=store).ok


class Slot(enum.IntEnum):
    FIRST = 0
    SECOND = 1


def test_a_bool_or_int_enum_index_is_stored_as_the_int_it_stands_for(tmp_path: Path) -> None:
    """``x[True] = v``, ``x.insert(Slot.SECOND, v)``, ``x.pop(False)`` are list operations Python
    accepts; they were stored with the index as given (``true``), which the store then refused as
    damaged: the run could not be loaded, resumed or forked again."""
    def act(ctx: Any) -> None:
        if ctx.i == 0:
            ctx.bl.extend(range(40))  # a snapshot after this step: the next one loads from its ops
        else:
            ctx.bl[True] = 9
            ctx.bl.insert(Slot.SECOND, 8)
            del ctx.bl[Slot.FIRST]
            ctx.bl.pop(False)

    plain = list(range(40))
    plain[True] = 9
    plain.insert(Slot.SECOND, 8)
    del plain[Slot.FIRST]
    plain.pop(False)
    with SQLiteStore(tmp_path / "runs.db") as store:
        result = _single(Plain, ["bl"], act, "b", store=store, steps=2)
        assert result.context.bl == plain
        stored = store.load("b").result()
        assert stored.context["bl"] == plain and stored.steps[1].ops["bl"] == [["s", 1, 9], ["i", 1, 8], ["d", 0],
                                                                              ["d", 0]]


# --- resume, fork, replay ----------------------------------------------------------------------------
FIELDS = ["ld", "lm", "dsl"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts(FIELDS, steps=5), data=st.data())
def test_a_run_crashed_resumed_forked_and_replayed_rebuilds_every_step(script: Script, data: st.DataObject) -> None:
    """A run that dies inside an action (after changing fields in place) and is resumed stores the
    same steps as one that never died; a fork at any step starts from the context the run had there;
    a replay by the same code matches every step."""
    crash = data.draw(st.integers(0, len(script) - 1), label="crash before step")
    refs = references(Plain, FIELDS, script, [])
    at = data.draw(st.integers(0, len(refs) - 2), label="fork at")
    with store_at(None) as store:
        with pytest.raises(Crash):
            build(Plain, FIELDS, script, [], crash_at={crash}).run_sync(Plain(), store=store, run_id="r")
        done = build(Plain, FIELDS, script, []).resume_sync("r", store=store)
        assert json.dumps(dumped(done.context)) == json.dumps(dumped(refs[-1]))
        check_steps(store, "r", refs)
        report = build(Plain, FIELDS, script, []).replay_sync("r", store=store)
        assert report.ok and report.matched == len(refs) - 1
        fork = store.load("r", at_step=at).result()
        forked = build(Plain, FIELDS, script, []).fork_sync("r", at_step=at, store=store, new_run_id="f")
        assert store.load("f", at_step=at).result().context == fork.context
        assert json.dumps(dumped(forked.context)) == json.dumps(dumped(refs[-1]))


def test_replay_of_a_changed_action_reports_the_step_that_appends_something_else() -> None:
    """The changed code appends one more item at entry 2: the replay diverges at that step, whose
    field the record holds as operations (rebuilt whole to be compared)."""
    script: Script = [([("ld", ("append", 1))], False), ([("ld", ("append", 2))], True),
                      ([("ld", ("append", 3))], False), ([("ld", ("append", 4))], False)]
    with store_at(None) as store:
        build(Plain, ["ld"], script, []).run_sync(Plain(), store=store, run_id="r")
        assert any(s.ops for s in store.load("r").result().steps)
        report = build(Plain, ["ld"], script, [], bump=2).replay_sync("r", store=store)
    assert report.diverged_at == 3  # steps: 0 (entry 0), 1 (entry 1 fails), 2 (skip), 3 (entry 2)
    assert report.expected is not None and report.got is not None
    assert report.got["delta"]["ld"] == [*report.expected["delta"]["ld"], {"k": 7, "v": [7]}]


# --- damage -----------------------------------------------------------------------------------------
def _damaged(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> SQLiteStore:
    """A run that appended in place for four steps, its step 1 row's record changed by ``change``
    (its CRC fixed, so only the content is wrong)."""
    path = tmp_path / "runs.db"
    script: Script = [([("ld", ("append", n)), ("dsi", ("dset", n, n))], False) for n in range(4)]
    with SQLiteStore(path, snapshot_every=100) as store:
        build(Plain, ["ld", "dsi"], script, []).run_sync(Plain(), store=store, run_id="r")
    conn = sqlite3.connect(path)
    with conn:
        (text,) = conn.execute("SELECT record FROM sma_steps WHERE run_id='r' AND number=1").fetchone()
        record = json.loads(text)
        assert record["ops"]["ld"] == [["a", {"k": 1, "v": [1]}]]
        change(record)
        text = json.dumps(record, separators=(",", ":"))
        conn.execute("UPDATE sma_steps SET record=?, crc=? WHERE run_id='r' AND number=1",
                     (text, _row_crc("step", "r", 1, text)))
    conn.close()
    return SQLiteStore(path, snapshot_every=100)


DAMAGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "index-past-the-end": lambda r: r["ops"].update(ld=[["s", 5, 1]]),
    "delete-past-the-end": lambda r: r["ops"].update(ld=[["d", 1]]),
    "insert-past-the-end": lambda r: r["ops"].update(ld=[["i", 3, 1]]),
    "negative-index": lambda r: r["ops"].update(ld=[["s", -1, 1]]),
    "bool-index": lambda r: r["ops"].update(ld=[["d", True]]),
    "float-index": lambda r: r["ops"].update(ld=[["s", 0.0, 1]]),
    "unknown-code": lambda r: r["ops"].update(ld=[["z", 1]]),
    "code-not-text": lambda r: r["ops"].update(ld=[[1, 1]]),
    "empty-op": lambda r: r["ops"].update(ld=[[]]),
    "append-no-value": lambda r: r["ops"].update(ld=[["a"]]),
    "append-two-values": lambda r: r["ops"].update(ld=[["a", 1, 2]]),
    "extend-not-a-list": lambda r: r["ops"].update(ld=[["e", 5]]),
    "clear-with-argument": lambda r: r["ops"].update(ld=[["c", 1]]),
    "op-not-a-list": lambda r: r["ops"].update(ld=["a"]),
    "list-op-on-object": lambda r: r["ops"].update(dsi=[["a", 1]]),
    "int-key-on-object": lambda r: r["ops"].update(dsi=[["s", 1, 1]]),
    "missing-key": lambda r: r["ops"].update(dsi=[["d", "nope"]]),
    "text-index-on-list": lambda r: r["ops"].update(ld=[["s", "0", 1]]),
    "missing-field": lambda r: r["ops"].update(nope=[["a", 1]]),
    "ops-on-a-number": lambda r: r["ops"].update(i=[["a", 1]]),
    "ops-not-a-list": lambda r: r["ops"].update(ld=5),
    "ops-not-an-object": lambda r: r.update(ops=[["a", 1]]),
    "field-unset-then-changed": lambda r: r["unset"].append("ld"),
    "field-whole-and-changed": lambda r: r["delta"].update(ld=[{"k": 9, "v": []}]),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_stored_operation_that_does_not_fit_is_store_corrupted(tmp_path: Path, damage: str) -> None:
    """Loading the run at or after the damaged step raises StoreCorrupted naming the run and step (and
    the field, where the damage is in one field's operations), never a wrong context or another error."""
    invalid = damage in ("ops-not-a-list", "ops-not-an-object")  # the record itself does not validate
    with _damaged(tmp_path, DAMAGE[damage]) as store:
        if not invalid:
            assert store.load("r", at_step=1).result().context["ld"] == [{"k": 0, "v": [0]}]
        for at in (2, 3):  # (the terminal snapshot, at step 4, is whole: loading the run reads that)
            with pytest.raises(StoreCorrupted) as caught:
                store.load("r", at_step=at).result()
            text = str(caught.value)
            assert "'r'" in text and "1" in text
            if damage not in ("ops-not-an-object", "field-unset-then-changed"):
                field = "nope" if damage == "missing-field" else "i" if damage == "ops-on-a-number" else \
                    "dsi" if "object" in damage or "key" in damage else "ld"
                assert repr(field) in text or f"ops.{field}" in text, text


# --- hostile values and big steps ---------------------------------------------------------------------
class Hostile:
    """Equal to everything, hash of nothing, a repr that raises: in a bare list, dumped by its type."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        raise TypeError("no hash")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _single(ctx_type: type[Context], fields: list[str], action: Callable[[Any], None], run_id: str, *,
            store: SQLiteStore, steps: int = 2) -> Any:
    wf = Workflow(f"one_{run_id}", ctx_type)

    @wf.state(initial=True, reads=["i"], optional_reads=fields, writes=["i"], optional_writes=fields)
    def loop(ctx: Any) -> None:
        action(ctx)
        ctx.i += 1

    wf.terminal("done")
    wf.terminal("failed", outcome="failure")
    wf.transition("loop", "loop", guard=wf.guard(lambda c: c.i < steps, reads=["i"]), max_traversals=steps)
    wf.transition("loop", "done")
    return wf.compile().run_sync(ctx_type(), store=store, run_id=run_id)


def _whole_each_step(store: SQLiteStore, run_id: str, final: BaseModel) -> None:
    assert store.load(run_id).result().context == dumped(final)


def test_big_and_many_changes_in_one_step(tmp_path: Path) -> None:
    """100,000 items in one extend; 300 appends in one step (past OPS_MAX: stored whole); 256 exactly;
    two proxies of one field; a str subclass key; a value whose __eq__ says yes to everything."""
    def big(ctx: Any) -> None:
        ctx.bl.extend(range(100_000)) if ctx.i == 0 else ctx.bl.append(-1)

    def many(ctx: Any) -> None:
        for n in range(300 if ctx.i == 1 else 256):
            ctx.ld.append({"k": n})

    def two(ctx: Any) -> None:
        a, b = ctx.dsl, ctx.dsl
        a["x"] = [ctx.i]
        b.setdefault("y", []).append(ctx.i)
        del a["x"]
        b[Key("z")] = [1]

    def liar(ctx: Any) -> None:
        ctx.bl.append([ctx.i])
        ctx.bl.remove(Hostile()) if ctx.i == 1 else None

    with SQLiteStore(tmp_path / "runs.db") as store:
        for name, action in (("big", big), ("many", many), ("two", two), ("liar", liar)):
            result = _single(Plain, ["bl", "ld", "dsl"], action, name, store=store)
            _whole_each_step(store, name, result.context)
            stored = store.load(name).result()
            assert stored.context == dumped(result.context)
        steps = store.load("many").result().steps
        assert "ld" in steps[1].delta and "ld" in steps[0].ops  # 300 changes: whole; 256: operations
