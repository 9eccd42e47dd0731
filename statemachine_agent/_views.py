"""What actions, guards and policies hold instead of the context: views whose cost is O(1) per access.

A step must not cost more when a field holds 100,000 items, yet two promises hold: a failed step
leaves the context as it found it, and a field a state only reads cannot be changed in place.
Copying what a step touches keeps both but costs O(size) per step. Instead (see docs/design.md):

* a **read-only** field of a mutable type is handed out as a *frozen* proxy: a read-only
  ``Sequence`` / ``Mapping`` / ``Set`` / model view over the real object, wrapping nested values
  lazily, so a read costs O(1) and every attempt to change it in place raises;
* a **writable** field is handed out as a *tracked* proxy that changes the real object and writes an
  undo record per change (``append`` logs a ``pop``): rolling back a failed step replays the log
  backwards, in time proportional to what the step changed, not to the size of the field;
* an assignment replaces the field's value; its old value is kept per field for the rollback.

Values of types the proxies do not know (a user's own mutable class, a ``bytearray``) fall back to
the costly way: a read-only one is deep-copied, a writable one snapshotted whole on first touch.
``thaw(value)`` turns any proxy back into plain, independent Python objects (for ``json.dumps``,
say); slices and ``copy()`` of a proxy are already plain.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import difflib
import enum
import fractions
import marshal
import operator
import pathlib
import uuid
from collections.abc import (
    Callable,
    Container,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    MutableSequence,
    MutableSet,
    Sequence,
    Set,
)
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .context import is_unset
from .errors import ContextAccessError

if TYPE_CHECKING:
    from ._plan import Plan

__all__ = ["ContextView", "ReadOnlyContext", "thaw"]

# Values that cannot change in place: handed out as they are.
SCALARS: frozenset[type] = frozenset({
    str, int, float, bool, bytes, complex, type(None), range, decimal.Decimal, fractions.Fraction,
    datetime.datetime, datetime.date, datetime.time, datetime.timedelta, uuid.UUID,
    pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath,
})


def is_scalar(value: object) -> bool:
    """Whether ``value`` can never change in place (checked by exact type first: the hot path)."""
    kind = type(value)
    return kind in SCALARS or isinstance(value, (enum.Enum, str, int, float, bytes)) or is_unset(value)


Undo = list[tuple[Callable[..., Any], tuple[Any, ...]]]
"""Undo records of one step, applied backwards on rollback: ``fn(*args)``."""

Ops = list[tuple[Any, ...]]
"""The changes a step made in place to one top-level list or dict field, in order, as a durable run
stores them instead of the whole field: ``("a", value)`` append, ``("e", values)`` extend,
``("i", index, value)`` insert, ``("s", index_or_key, value)`` set, ``("d", index_or_key)`` delete,
``("c",)`` clear (indexes already made non-negative). Values are the objects stored, dumped at commit."""

OPS_MAX = 256
"""Changes recorded per field and step at most; a step making more stores the field whole."""


class _Origin:
    """Where a proxy's value lives: which state's step, which top-level field; shared by nested proxies."""

    __slots__ = ("field", "live", "ops", "state", "top", "undo", "view")

    def __init__(self, state: str, field: str, undo: Undo | None, view: ContextView | None, *,
                 ops: Ops | None = None, top: Any = None) -> None:
        self.state = state
        self.field = field
        self.undo = undo
        self.view = view
        self.live = True
        self.ops = ops
        """Where the field's changes in place are recorded (a durable run's tracked field), until a
        change has no forward form: then ``None``, and the field is stored whole."""
        self.top = top
        """The field's value: only changes to it (not to values nested in it) are recorded as ops."""

    def check(self) -> None:
        if self.view is not None and self.view._sa_plan is None:
            raise ContextAccessError(self.state, self.field, f"the context view was used after its step "
                                     f"ended (touching {self.field!r}): a task an action starts must "
                                     "finish within the action")

    def refuse(self, what: str) -> ContextAccessError:
        if self.undo is None and self.view is None:
            return ContextAccessError(self.state, self.field, f"guards and policies cannot change the "
                                      f"context (tried to {what} {self.field!r})")
        return ContextAccessError(self.state, self.field, f"state {self.state!r} tried to {what} "
                                  f"{self.field!r} in place, but only reads it: add {self.field!r} to "
                                  f"writes=[...] of state {self.state!r}")

    def log(self, fn: Callable[..., Any], *args: Any) -> None:
        """Record a change by its undo record ``fn(*args)``; it has no forward form (a durable run
        stores the field whole)."""
        self.check()
        assert self.undo is not None
        view = self.view
        if view is not None:
            view._sa_touch(self.field)
            if self.ops is not None:
                self.whole()
        self.undo.append((fn, args))

    def change(self, target: Any, op: tuple[Any, ...], fn: Callable[..., Any], *args: Any) -> None:
        """Record a change to ``target`` by its forward form ``op`` (see :data:`Ops`) and its undo
        record ``fn(*args)``."""
        self.check()
        assert self.undo is not None
        view = self.view
        if view is not None:
            view._sa_touch(self.field)
            ops = self.ops
            if ops is not None:
                if target is self.top and len(ops) < OPS_MAX:
                    ops.append(op)
                else:
                    self.whole()
        self.undo.append((fn, args))

    def whole(self) -> None:
        """From now on the field is stored whole by this step."""
        self.ops = None
        view = self.view
        if view is not None:
            view._sa_store_whole(self.field)


def wrap(value: Any, origin: _Origin) -> Any:
    """``value`` as the holder of ``origin`` may see it: as it is, frozen, tracked or copied."""
    if type(value) in SCALARS:
        return value
    tracked = origin.undo is not None
    if isinstance(value, list):
        return TrackedList(value, origin) if tracked else FrozenList(value, origin)
    if isinstance(value, dict):
        return TrackedDict(value, origin) if tracked else FrozenDict(value, origin)
    if isinstance(value, BaseModel):
        return TrackedModel(value, origin) if tracked else FrozenModel(value, origin)
    if isinstance(value, (set, frozenset)):
        if isinstance(value, frozenset):
            return value  # hashable members: nothing inside can change
        return TrackedSet(value, origin) if tracked else FrozenSet(value, origin)
    if isinstance(value, tuple):
        return FrozenTuple(value, origin)
    if is_scalar(value) or isinstance(value, _Proxy):
        return value
    if tracked:
        # A type we cannot track: snapshot the whole field once, restore it on rollback.
        view = origin.view
        assert view is not None
        view._sa_snapshot_whole(origin.field)
        return value
    return deep_copy(value)


def deep_copy(value: Any) -> Any:
    """``copy.deepcopy(value)``, at C speed for plain data: ``marshal`` copies exactly the builtin types
    it knows (exact ``dict``, ``list``, ``tuple``, ``set``, ``str``, ``int``, ``float``, ``bool``,
    ``None``, ``bytes``...), keeping shared objects shared as deepcopy does; it refuses anything else
    (a model, an enum, a subclass), which deepcopy then copies. A run's first write to a caller's
    1,000-message history costs 0.2 ms instead of 1.4 ms."""
    try:
        return marshal.loads(marshal.dumps(value))
    except (ValueError, TypeError, RecursionError):
        return copy.deepcopy(value)


def plain(value: Any) -> Any:
    """A proxy's real object (for comparisons); anything else as it is."""
    return value._sa_target if isinstance(value, _Proxy) else value


def thaw(value: Any) -> Any:
    """Plain Python objects equal to ``value``, sharing nothing with the context (proxies unwrapped)."""
    return deep_copy(plain(value))


def _unwrap_for_store(value: Any) -> Any:
    """A value about to be stored in the context: a proxy becomes an independent copy, so two fields
    never share one object (a write through one would change the other)."""
    if isinstance(value, _Proxy):
        return deep_copy(value._sa_target)
    if isinstance(value, (list, tuple, set)) and any(isinstance(x, _Proxy) for x in value):
        return type(value)(_unwrap_for_store(x) for x in value) if not isinstance(value, tuple) \
            else tuple(_unwrap_for_store(x) for x in value)
    if isinstance(value, dict) and any(isinstance(x, _Proxy) for x in value.values()):
        return {k: _unwrap_for_store(v) for k, v in value.items()}
    return value


class _Proxy:
    __slots__ = ("_sa_origin", "_sa_target")
    _sa_target: Any
    _sa_origin: _Origin

    def __init__(self, target: Any, origin: _Origin) -> None:
        object.__setattr__(self, "_sa_target", target)
        object.__setattr__(self, "_sa_origin", origin)

    def __repr__(self) -> str:
        return repr(self._sa_target)

    def __eq__(self, other: object) -> bool:
        return bool(self._sa_target == plain(other))

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]  # like the mutable containers they stand for

    def __copy__(self) -> Any:
        return thaw(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return copy.deepcopy(self._sa_target, memo)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (copy.deepcopy, (self._sa_target,))

    def copy(self) -> Any:
        """A plain, independent copy."""
        return thaw(self)


class _SequenceReads(_Proxy):
    """What frozen and tracked sequences read alike: items wrapped on access, slices plain."""

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        self._sa_origin.check()
        if isinstance(index, slice):
            return thaw(self._sa_target[index])
        return wrap(self._sa_target[index], self._sa_origin)

    def __len__(self) -> int:
        return len(self._sa_target)

    def __iter__(self) -> Iterator[Any]:
        origin = self._sa_origin
        origin.check()
        for x in self._sa_target:
            yield wrap(x, origin)

    def __contains__(self, value: object) -> bool:
        return plain(value) in self._sa_target

    def index(self, value: Any, *args: Any) -> int:
        found: int = self._sa_target.index(plain(value), *args)
        return found

    def count(self, value: Any) -> int:
        found: int = self._sa_target.count(plain(value))
        return found


class _ListAdd:
    """``+`` on a list view gives a plain list, sharing nothing with the context."""

    __slots__ = ()

    def __add__(self, other: Any) -> list[Any]:
        return [*thaw(self), *thaw(other)]

    def __radd__(self, other: Any) -> list[Any]:
        return [*thaw(other), *thaw(self)]


# --- read-only views --------------------------------------------------------------------------
class FrozenTuple(_SequenceReads, Sequence[Any]):
    """A tuple whose nested values are frozen on access."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._sa_target)


class FrozenList(_ListAdd, FrozenTuple):
    """A list that can be read, not changed: every mutating call raises."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        raise TypeError("unhashable type: 'list'")

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise self._sa_origin.refuse("change")

    append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse



class _MappingReads(_Proxy):
    """What frozen and tracked dicts read alike: values wrapped on access."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> Any:
        self._sa_origin.check()
        return wrap(self._sa_target[key], self._sa_origin)

    def __len__(self) -> int:
        return len(self._sa_target)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._sa_target)

    def __contains__(self, key: object) -> bool:
        return key in self._sa_target


class FrozenDict(_MappingReads, Mapping[Any, Any]):
    """A dict that can be read, not changed."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise self._sa_origin.refuse("change")

    __setitem__ = __delitem__ = __ior__ = pop = popitem = setdefault = update = clear = _refuse

    def __or__(self, other: Any) -> dict[Any, Any]:
        return {**thaw(self), **thaw(other)}


class FrozenSet(_Proxy, Set[Any]):
    """A set that can be read, not changed (its members are hashable, so immutable in practice)."""

    __slots__ = ()

    def __contains__(self, value: object) -> bool:
        return value in self._sa_target

    def __len__(self) -> int:
        return len(self._sa_target)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._sa_target)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise self._sa_origin.refuse("change")

    add = discard = remove = pop = clear = update = __ior__ = __iand__ = __isub__ = __ixor__ = _refuse

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        return set(it)


class FrozenModel(_Proxy):
    """A pydantic model whose fields can be read (frozen in turn), not assigned."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        self._sa_origin.check()
        value = getattr(self._sa_target, name)
        if name in type(self._sa_target).model_fields:
            return wrap(value, self._sa_origin)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._sa_origin.refuse("change")

    def __delattr__(self, name: str) -> None:
        raise self._sa_origin.refuse("change")


# --- tracked (writable) views -----------------------------------------------------------------
def _index(target: list[Any], i: int) -> int:
    """``i`` as the non-negative ``int`` it stands for (``True``, an ``IntEnum``: ``1``), as stored."""
    i = operator.index(i)
    n = len(target)
    j = i + n if i < 0 else i
    if not 0 <= j < n:
        raise IndexError("list index out of range")
    return j


def _restore_list(target: list[Any], saved: list[Any]) -> None:
    target[:] = saved


def _truncate(target: list[Any], n: int) -> None:
    del target[n:]


class TrackedList(_ListAdd, _SequenceReads, MutableSequence[Any]):
    """A list whose changes go to the context's list, each with an undo record."""

    __slots__ = ()

    def __setitem__(self, index: Any, value: Any) -> None:
        t = self._sa_target
        if isinstance(index, slice):
            self._sa_origin.log(_restore_list, t, t.copy())
            t[index] = [_unwrap_for_store(v) for v in value]
            return
        j = _index(t, index)
        value = _unwrap_for_store(value)
        self._sa_origin.change(t, ("s", j, value), t.__setitem__, j, t[j])
        t[j] = value

    def __delitem__(self, index: Any) -> None:
        t = self._sa_target
        if isinstance(index, slice):
            self._sa_origin.log(_restore_list, t, t.copy())
            del t[index]
            return
        j = _index(t, index)
        self._sa_origin.change(t, ("d", j), t.insert, j, t[j])
        del t[j]

    def insert(self, index: int, value: Any) -> None:
        t = self._sa_target
        n = len(t)
        index = operator.index(index)
        j = max(0, index + n) if index < 0 else min(index, n)
        value = _unwrap_for_store(value)
        self._sa_origin.change(t, ("i", j, value), t.__delitem__, j)
        t.insert(j, value)

    def append(self, value: Any) -> None:
        t = self._sa_target
        value = _unwrap_for_store(value)
        self._sa_origin.change(t, ("a", value), t.pop)
        t.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        t = self._sa_target
        items = [_unwrap_for_store(v) for v in values]  # before logging: iterating may raise
        self._sa_origin.change(t, ("e", items), _truncate, t, len(t))
        t.extend(items)

    def __iadd__(self, values: Iterable[Any]) -> TrackedList:  # type: ignore[misc, override]
        self.extend(values)
        return self

    def pop(self, index: int = -1) -> Any:
        t = self._sa_target
        j = _index(t, index)
        self._sa_origin.change(t, ("d", j), t.insert, j, t[j])
        return t.pop(j)

    def remove(self, value: Any) -> None:
        t = self._sa_target
        j = t.index(plain(value))
        self._sa_origin.change(t, ("d", j), t.insert, j, t[j])
        del t[j]

    def _whole(self, op: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        t = self._sa_target
        self._sa_origin.log(_restore_list, t, t.copy())
        op(t, *args, **kwargs)

    def clear(self) -> None:
        t = self._sa_target
        self._sa_origin.change(t, ("c",), _restore_list, t, t.copy())
        t.clear()

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._whole(list.sort, key=key, reverse=reverse)

    def reverse(self) -> None:
        self._whole(list.reverse)

    def __imul__(self, n: int) -> TrackedList:
        self._whole(list.__imul__, n)
        return self



def _restore_key(target: dict[Any, Any], key: Any, existed: bool, old: Any) -> None:
    if existed:
        target[key] = old
    else:
        target.pop(key, None)


def _restore_dict(target: dict[Any, Any], saved: dict[Any, Any]) -> None:
    target.clear()
    target.update(saved)


class TrackedDict(_MappingReads, MutableMapping[Any, Any]):
    """A dict whose changes go to the context's dict, each with an undo record."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        t = self._sa_target
        hash(key)  # an unhashable key must fail before anything is logged
        value = _unwrap_for_store(value)
        if type(key) is str:
            self._sa_origin.change(t, ("s", key, value), _restore_key, t, key, key in t, t.get(key))
        else:  # only text keys are JSON object keys as they are
            self._sa_origin.log(_restore_key, t, key, key in t, t.get(key))
        t[key] = value

    def __delitem__(self, key: Any) -> None:
        t = self._sa_target
        old = t[key]
        # Undone, the key must come back where it was: at the end only if it was the last one.
        undo: tuple[Any, ...] = (t.__setitem__, key, old) if next(reversed(t)) == key else (_restore_dict, t, t.copy())
        if type(key) is str:
            self._sa_origin.change(t, ("d", key), *undo)
        else:
            self._sa_origin.log(*undo)
        del t[key]

    def clear(self) -> None:
        t = self._sa_target
        self._sa_origin.change(t, ("c",), _restore_dict, t, t.copy())
        t.clear()

    def popitem(self) -> tuple[Any, Any]:
        """The last key and its value, removed (a dict's order, not ``MutableMapping``'s first)."""
        t = self._sa_target
        if not t:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(t))
        value = self[key]
        del self[key]
        return key, value

    def __or__(self, other: Any) -> dict[Any, Any]:
        return {**thaw(self), **thaw(other)}


class TrackedSet(_Proxy, MutableSet[Any]):
    """A set whose changes go to the context's set, each with an undo record."""

    __slots__ = ()

    def __contains__(self, value: object) -> bool:
        return value in self._sa_target

    def __len__(self) -> int:
        return len(self._sa_target)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._sa_target)

    def add(self, value: Any) -> None:
        t = self._sa_target
        if value not in t:
            self._sa_origin.log(t.discard, value)
            t.add(value)

    def discard(self, value: Any) -> None:
        t = self._sa_target
        if value in t:
            self._sa_origin.log(t.add, value)
            t.discard(value)

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> set[Any]:
        return set(it)


def _restore_attr(model: BaseModel, name: str, old: Any, was_set: bool) -> None:
    model.__dict__[name] = old
    if not was_set:
        model.__pydantic_fields_set__.discard(name)


class TrackedModel(_Proxy):
    """A nested pydantic model whose assignments go to the real model (validated), with undo records."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        self._sa_origin.check()
        target = self._sa_target
        value = getattr(target, name)
        if name in type(target).model_fields:
            return wrap(value, self._sa_origin)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        target = self._sa_target
        if name not in type(target).model_fields:
            setattr(target, name, value)  # let pydantic say what is wrong
            return
        self._sa_origin.log(_restore_attr, target, name, target.__dict__.get(name),
                            name in target.__pydantic_fields_set__)
        setattr(target, name, _unwrap_for_store(value))

    def __delattr__(self, name: str) -> None:
        raise self._sa_origin.refuse("delete a field of")


# --- the views ------------------------------------------------------------------------------
_NO_HANDLERS: dict[str, Any] = {}
_MODEL_SETATTR = BaseModel.__setattr__
_HANDLERS: dict[type, dict[str, Any]] = {}
"""Per model class: pydantic's memoized ``__setattr__`` handlers, by field (see _setattr_handlers)."""


def _setattr_handlers(model: BaseModel) -> dict[str, Any]:
    """pydantic's memoized ``__setattr__`` handlers of ``model``'s class, by field: what
    ``BaseModel.__setattr__`` calls once it has set the field before. Empty when the class has its
    own ``__setattr__`` or this pydantic memoizes none: then ``setattr`` does it all."""
    kind = type(model)
    handlers: dict[str, Any] = _NO_HANDLERS
    if kind.__setattr__ is _MODEL_SETATTR:
        handlers = getattr(kind, "__pydantic_setattr_handlers__", _NO_HANDLERS)
    if len(_HANDLERS) < 1000:  # classes made on the fly must not grow it without bound
        _HANDLERS[kind] = handlers
    return handlers


class ContextView:
    """What an action receives: the context, limited to its state's declared reads and writes.

    Writes are validated by pydantic as they happen. Fields the state writes come as tracked
    proxies (changes are logged for a rollback); fields it only reads come frozen. A step that fails
    is rolled back and leaves no trace. A view serves one step; using it afterwards raises.
    """

    # No __slots__: one instance-dict assignment builds a view (a view is made for every step).
    _sa_model: BaseModel
    _sa_plan: Plan | None
    _sa_written: Container[str]
    _sa_fields: frozenset[str]
    _sa_owned: dict[str, None]
    """Fields whose mutable value the run made or copied itself (a dict of names: no set to track)."""
    _sa_old: dict[str, Any] | None = None
    """Per field assigned this step: its value before."""
    _sa_unset: set[str] | None = None
    """Fields assigned this step that were not in the model's ``fields_set`` before."""
    _sa_undo: Undo | None = None
    _sa_dirty: set[str] | None = None
    """Fields this step changed: assigned, or changed in place through a tracked proxy."""
    _sa_origins: dict[str, _Origin] | None = None
    _sa_whole: dict[str, Any] | None = None
    _sa_ops: dict[str, Ops | None] | None = None
    """A durable run's record of this step's changes in place, per field (see :data:`Ops`); ``None``
    for a field stored whole (assigned, or changed in a way ops cannot say). ``None`` as a whole
    when nothing records them (a run without a store): then changes pay nothing for it."""

    def __init__(self, model: BaseModel, plan: Plan, written: Container[str], fields: frozenset[str],
                 owned: dict[str, None]) -> None:
        object.__setattr__(self, "__dict__", {"_sa_model": model, "_sa_plan": plan, "_sa_written": written,
                                              "_sa_fields": fields, "_sa_owned": owned})

    # --- bookkeeping (called by the runner) ---------------------------------------------------
    def _sa_close(self) -> None:
        """End the step: the view and its proxies refuse any further use."""
        object.__setattr__(self, "_sa_plan", None)

    def _sa_record_ops(self) -> None:
        """Record this step's changes in place as operations (a durable run's step)."""
        self.__dict__["_sa_ops"] = {}

    def _sa_store_whole(self, name: str) -> None:
        """``name`` is stored whole by this step: a change it made has no operation."""
        ops = self._sa_ops
        if ops is not None:
            ops[name] = None

    def _sa_touch(self, name: str) -> None:
        dirty = self._sa_dirty
        if dirty is None:
            self.__dict__["_sa_dirty"] = {name}
        else:
            dirty.add(name)

    def _sa_snapshot_whole(self, name: str) -> None:
        whole = self._sa_whole
        if whole is None:
            whole = self.__dict__["_sa_whole"] = {}
        if name not in whole:
            whole[name] = deep_copy(self._sa_model.__dict__[name])
            self._sa_touch(name)
        if self._sa_ops is not None:
            self._sa_ops[name] = None

    def _sa_rollback(self) -> None:
        """Undo every change of the current step: in-place changes backwards, then assignments."""
        undo = self._sa_undo
        if undo:
            for fn, args in reversed(undo):
                fn(*args)
            undo.clear()
        model = self._sa_model
        whole = self._sa_whole
        if whole:
            for name, value in whole.items():
                model.__dict__[name] = value
        old = self._sa_old
        if old:
            for name, value in old.items():
                model.__dict__[name] = value
            unset = self._sa_unset
            if unset:
                model.__pydantic_fields_set__.difference_update(unset)
        d = self.__dict__
        d["_sa_old"] = d["_sa_dirty"] = d["_sa_whole"] = d["_sa_unset"] = None
        if self._sa_ops is not None:
            d["_sa_ops"] = {}
            for origin in (self._sa_origins or {}).values():
                origin.ops = None  # a change through a proxy of before the rollback: stored whole

    def _sa_live(self, name: str) -> Plan:
        plan = self._sa_plan
        if plan is None:
            raise ContextAccessError("", name, f"the context view was used after its step ended (touching "
                                     f"{name!r}): a task an action starts must finish within the action")
        return plan

    def _sa_origin(self, plan: Plan, name: str, tracked: bool) -> _Origin:
        origins = self._sa_origins
        if origins is None:
            origins = self.__dict__["_sa_origins"] = {}
        else:
            found = origins.get(name)
            if found is not None:
                return found
        undo: Undo | None = None
        ops: Ops | None = None
        if tracked:
            undo = self._sa_undo
            if undo is None:
                undo = self.__dict__["_sa_undo"] = []
            recorded = self._sa_ops
            if recorded is not None:
                if name in recorded:
                    ops = recorded[name]
                else:
                    ops = recorded[name] = []
        origin = origins[name] = _Origin(plan.name, name, undo, self, ops=ops, top=self._sa_model.__dict__[name])
        return origin

    # --- attribute protocol -----------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        plan = self._sa_plan
        if plan is None or name not in plan.allowed:
            if name.startswith("__"):
                raise AttributeError(name)  # Python's own protocols (copy, pickle) probe for these
            plan = self._sa_live(name)
        else:
            model = self._sa_model
            value = model.__dict__[name]
            if name not in self._sa_written:
                dirty = self._sa_dirty
                if (dirty is None or name not in dirty) and (name not in plan.optional_reads or is_unset(value)):
                    raise ContextAccessError(
                        plan.name, name,
                        f"state {plan.name!r} read {name!r} before any step set it: declare it in "
                        f"reads=[...] so the checker proves it is written first, declare it in "
                        f"optional_reads=[...] if the state handles its default, or write it before reading",
                    )
            if type(value) in SCALARS:
                return value
            if name in plan.write_set:
                owned = self._sa_owned
                if name not in owned and not is_scalar(value):
                    # Still the caller's object: the run changes its own copy (once per run).
                    value = model.__dict__[name] = deep_copy(value)
                    owned[name] = None
                return wrap(value, self._sa_origin(plan, name, True))
            return wrap(value, self._sa_origin(plan, name, False))
        if name in self._sa_fields:
            raise ContextAccessError(
                plan.name, name,
                f"state {plan.name!r} read {name!r}, which it does not declare: add {name!r} to "
                f"reads=[...] of state {plan.name!r}",
            )
        close = difflib.get_close_matches(name, sorted(self._sa_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ContextAccessError(
            plan.name, name,
            f"state {plan.name!r} used {name!r}, which is not a field of {type(self._sa_model).__name__}"
            f"{hint}: an action sees only the fields its state declares",
        )

    def __setattr__(self, name: str, value: Any) -> None:
        plan = self._sa_plan
        if plan is None:
            plan = self._sa_live(name)
        if name in plan.write_set:
            model = self._sa_model
            if isinstance(value, _Proxy) and value._sa_target is model.__dict__.get(name) \
                    and value._sa_origin.view is self:
                return  # ``ctx.items += more``: the field's own value, changed in place already
            old = self._sa_old
            if old is None:
                old = self.__dict__["_sa_old"] = {}
            if name not in old:  # its value before the step, kept for a rollback (no tuple per write)
                old[name] = model.__dict__[name]
                if name not in model.__pydantic_fields_set__:
                    unset = self._sa_unset
                    if unset is None:
                        self.__dict__["_sa_unset"] = {name}
                    else:
                        unset.add(name)
            # pydantic validates here, in the action (its memoized handler for the field, when it
            # has one: what BaseModel.__setattr__ would call, without its frame)
            kind = type(value)
            if kind is list:
                for item in value:
                    if isinstance(item, _Proxy):
                        value = _unwrap_for_store(value)
                        break
            elif kind not in SCALARS:
                value = _unwrap_for_store(value)
            handlers = _HANDLERS.get(type(model)) or _setattr_handlers(model)
            handler = handlers.get(name)
            if handler is None:
                setattr(model, name, value)
            else:
                handler(model, name, value)
            dirty = self._sa_dirty
            if dirty is None:
                self.__dict__["_sa_dirty"] = {name}
            else:
                dirty.add(name)
            if self._sa_ops is not None:
                self._sa_ops[name] = None
            origins = self._sa_origins
            if origins is not None:
                gone = origins.pop(name, None)  # proxies of the old value stay on the old value
                if gone is not None:
                    gone.ops = None
            return
        if name in self._sa_fields:
            raise ContextAccessError(
                plan.name, name,
                f"state {plan.name!r} wrote {name!r}, which it does not declare: add {name!r} to "
                f"writes=[...] of state {plan.name!r}",
            )
        raise ContextAccessError(
            plan.name, name,
            f"state {plan.name!r} set {name!r}, which is not a field of "
            f"{type(self._sa_model).__name__}: declare the field on the context model",
        )

    def __delattr__(self, name: str) -> None:
        plan = self._sa_live(name)
        raise ContextAccessError(plan.name, name, f"state {plan.name!r} deleted {name!r}: "
                                 "context fields cannot be deleted; assign None instead")

    def __repr__(self) -> str:
        plan = self._sa_plan
        return f"<context view of {self._sa_model!r} for state {plan.name if plan else '(closed)'!r}>"


_READ_ONLY_ORIGINS: dict[tuple[str, str], _Origin] = {}
"""The origins of read-only values, shared by every ReadOnlyContext: such an origin (no undo log, no
view) is never changed, so one per (state, field) serves every run, and a run in flight keeps no
dict of its own for them."""


class ReadOnlyContext:
    """The context as guards and policies see it: every field readable (frozen), nothing writable."""

    __slots__ = ("_sa_model", "_sa_state")

    def __init__(self, model: BaseModel, state: str = "") -> None:
        object.__setattr__(self, "_sa_model", model)
        object.__setattr__(self, "_sa_state", state)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        model = self._sa_model
        try:
            value = model.__dict__[name]
        except KeyError:
            return getattr(model, name)  # methods, computed fields, or pydantic's AttributeError
        if type(value) in SCALARS:
            return value
        if is_unset(value):
            raise ContextAccessError(self._sa_state, name, f"a guard or policy read {name!r} before any "
                                     "step set it: declare it in the guard's reads=[...] so the checker "
                                     "proves it is written first")
        key = (self._sa_state, name)
        origin = _READ_ONLY_ORIGINS.get(key)
        if origin is None:
            origin = _Origin(self._sa_state, name, None, None)
            if len(_READ_ONLY_ORIGINS) < 10_000:  # workflows made on the fly must not grow it without bound
                _READ_ONLY_ORIGINS[key] = origin
        return wrap(value, origin)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"guards and policies cannot change the context (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"guards and policies cannot change the context (tried to delete {name!r})")

    def __repr__(self) -> str:
        return f"<read-only {self._sa_model!r}>"
