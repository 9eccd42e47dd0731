"""A step's changes in place, as a durable run stores them: the operations, not the whole field.

A chat agent appends one message per step to a history of thousands. Storing the written field
whole makes every step cost the history's size; storing the ``append`` costs the message. The
views (``_views.py``) record, next to each undo record, the change's forward form (:data:`Ops`)
when it was made to a top-level ``list`` or ``dict`` field; here those records become JSON
(:func:`encode`) and JSON is changed by them again (:func:`apply`) when a store rebuilds a context.

A field is stored as ops only when that is exactly what storing it whole would give after the
change: its declared type is ``list[X]`` or ``dict[str, X]`` (or bare ``list``/``dict``), nothing
serializes the field as a whole in its own way (a field or model serializer, ``exclude``, aliases),
it is not a secret, and the values are dumped by the same serializer the field's items have inside
the context (its model's config included). Anything else, and a step that changed the field more
times than it holds items, stores the field whole, as before.
"""

from __future__ import annotations

import typing
import weakref
from typing import Any

from pydantic import BaseModel, create_model

from .secrets import secret_fields

__all__ = ["Ops", "apply", "encode", "size"]

Ops = list[tuple[Any, ...]]


class _Items:
    """How one field's items are dumped: a model with one field ``v`` of the item's type, under the
    context's config, so an item is dumped as it is inside the context."""

    __slots__ = ("kind", "model")

    def __init__(self, kind: type, model: type[BaseModel]) -> None:
        self.kind = kind
        self.model = model

    def dump(self, value: Any) -> Any:
        holder = self.model.model_construct(v=value)
        out = self.model.__pydantic_serializer__.to_python(holder, mode="json", warnings="error",
                                                           by_alias=False)
        return out["v"]


_CACHE: weakref.WeakKeyDictionary[type[BaseModel], dict[str, _Items | None]] = weakref.WeakKeyDictionary()


def _items(model: type[BaseModel], field: str) -> _Items | None:
    """How ``field`` of ``model`` dumps its items, or ``None`` when it must be stored whole."""
    per = _CACHE.get(model)
    if per is None:
        per = _CACHE[model] = {}
    if field in per:
        return per[field]
    found = None
    try:
        found = _plan(model, field)
    except Exception:  # a type pydantic cannot model on its own: stored whole
        found = None
    per[field] = found
    return found


def _plan(model: type[BaseModel], field: str) -> _Items | None:
    info = model.model_fields.get(field)
    if info is None or info.exclude or info.metadata or info.alias or info.serialization_alias:
        return None
    config = model.model_config
    if config.get("serialize_by_alias") or config.get("alias_generator"):
        return None
    decorators = model.__pydantic_decorators__
    if decorators.model_serializers:
        return None
    for dec in decorators.field_serializers.values():
        if field in dec.info.fields or "*" in dec.info.fields:
            return None
    if field in secret_fields(model).top:
        return None
    annotation = info.annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is list or annotation is dict:
        kind: type = annotation
        item: Any = Any
    elif origin is list and len(args) == 1:
        kind, item = list, args[0]
    elif origin is dict and len(args) == 2 and args[0] is str:
        kind, item = dict, args[1]
    else:
        return None
    helper = create_model(f"_{model.__name__}_{field}_item", __config__=_config(config), v=(item, ...))
    return _Items(kind, helper)


def _config(config: Any) -> Any:
    """The context's config, as far as it shapes how values serialize (nothing that validates or
    names fields)."""
    keep = {k: v for k, v in config.items()
            if k.startswith(("ser_json", "use_enum_values", "arbitrary_types_allowed", "json_encoders"))}
    return keep or None


def encode(context: BaseModel, field: str, ops: Ops) -> list[list[Any]] | None:
    """``ops`` of ``field`` as stored (JSON lists), or ``None`` when the field must be stored whole
    (its type does not allow ops, a value does not dump, or the ops would outgrow the field)."""
    plan = _items(type(context), field)
    if plan is None:
        return None
    value = context.__dict__.get(field)
    if type(value) is not plan.kind or not isinstance(value, (list, dict)):
        return None
    if size(ops) > len(value):
        return None  # cheaper whole
    dump = plan.dump
    out: list[list[Any]] = []
    try:
        for op in ops:
            code = op[0]
            if code == "a":
                out.append(["a", dump(op[1])])
            elif code == "e":
                out.append(["e", [dump(v) for v in op[1]]])
            elif code == "i":
                out.append(["i", op[1], dump(op[2])])
            elif code == "s":
                out.append(["s", op[1], dump(op[2])])
            elif code == "d":
                out.append(["d", op[1]])
            elif code == "c":
                out.append(["c"])
            else:
                return None
    except Exception:  # the whole field's dump says what cannot be stored, naming it
        return None
    return out


def size(ops: Any) -> int:
    """The items operations (recorded or stored: both start with their code) hold: an extend its
    values, any other one 1."""
    n = 0
    for op in ops:
        n += len(op[1]) if op[0] == "e" else 1
    return n


def apply(target: Any, ops: Any) -> None:
    """Change ``target`` (a field's stored JSON: a list or an object) by stored ``ops``;
    ``ValueError`` or ``TypeError`` saying what does not fit (a damaged record)."""
    if not isinstance(ops, list):
        raise TypeError(f"its operations are {type(ops).__name__}, not a list")
    is_list = isinstance(target, list)
    if not is_list and not isinstance(target, dict):
        raise TypeError(f"operations change a {type(target).__name__}, not a list or an object")
    for op in ops:
        if not isinstance(op, list) or not op or not isinstance(op[0], str):
            raise ValueError(f"operation {op!r:.80} is not a list starting with its code")
        code, n = op[0], len(op)
        try:
            if code == "a" and n == 2 and is_list:
                target.append(op[1])
            elif code == "e" and n == 2 and is_list and isinstance(op[1], list):
                target.extend(op[1])
            elif code == "i" and n == 3 and is_list and _index(op[1]) and op[1] <= len(target):
                target.insert(op[1], op[2])
            elif code == "s" and n == 3 and ((is_list and _index(op[1]) and op[1] < len(target))
                                             or (not is_list and isinstance(op[1], str))):
                target[op[1]] = op[2]
            elif code == "d" and n == 2 and ((is_list and _index(op[1]) and op[1] < len(target))
                                             or (not is_list and isinstance(op[1], str) and op[1] in target)):
                del target[op[1]]
            elif code == "c" and n == 1:
                target.clear()
            else:
                raise ValueError(f"operation {op!r:.80} does not apply to a {'list' if is_list else 'object'} "
                                 f"of {len(target)} items")
        except (TypeError, IndexError, KeyError) as exc:  # pragma: no cover - guarded above
            raise ValueError(f"operation {op!r:.80} failed ({type(exc).__name__})") from None


def _index(value: Any) -> bool:
    return type(value) is int and value >= 0
