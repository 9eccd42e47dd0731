"""Snapshots whose big lists and dicts are kept as shared segments (schema version 4).

A snapshot of a context that grows (a chat agent's history) used to store the whole context each time,
so snapshots had to be rare to keep the bytes a step stores flat, and a resume then read up to half a
context's worth of step rows after the snapshot. Here a field holding a list or dict of at least
:data:`SEGMENT` items is cut into segments of :data:`SEGMENT` items (the last, shorter part stays in
the snapshot's own row). A segment is stored once per run under the hash of its JSON text: a later
snapshot whose first segments are unchanged (items appended after them) refers to the same rows and
writes only the new ones. Snapshots are then cheap enough to take every few dozen steps, and a resume
reads the segments in bulk (a JSON array each) and few step rows.

A snapshot row with segments is a JSON array ``[fields, parts]``: ``fields`` is the context as a plain
snapshot holds it, with ``null`` for each segmented field, and ``parts`` maps each segmented field to
``["l" or "d", [segment keys...], rest]``, its kind (list or dict), its segments in order and the items
after them. A plain snapshot row is a JSON object, as in version 3, so both read the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from ..errors import StoreCorrupted
from ._records import record_json

SEGMENT = 32
"""Items per segment: a list's items or a dict's pairs."""

_LIST, _DICT = "l", "d"


def key_of(text: str) -> str:
    """A segment's key: the BLAKE2b-128 hash of its JSON text, in hex (same items, same key)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def split(snapshot: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """A snapshot's row text, and the segments it refers to as (key, JSON text). ``ValueError`` or
    ``TypeError`` for what no store can keep, as :func:`~._records.record_json` says."""
    big = [name for name, value in snapshot.items()
           if type(value) in (list, dict) and len(value) >= SEGMENT]
    if not big:
        return record_json(snapshot), []
    fields = dict(snapshot)
    parts: dict[str, list[Any]] = {}
    segments: list[tuple[str, str]] = []
    for name in big:
        value = snapshot[name]
        fields[name] = None
        whole = len(value) - len(value) % SEGMENT
        is_list = type(value) is list
        items = value if is_list else list(value.items())
        keys = []
        for i in range(0, whole, SEGMENT):
            text = record_json(items[i:i + SEGMENT] if is_list else dict(items[i:i + SEGMENT]))
            keys.append(key := key_of(text))
            segments.append((key, text))
        parts[name] = [_LIST, keys, items[whole:]] if is_list else [_DICT, keys, dict(items[whole:])]
    try:
        text = record_json([fields, parts])
    except ValueError:
        # The rest of a field nests two levels deeper here than in a plain snapshot: an item near the
        # depth limit can only be kept plain.
        return record_json(snapshot), []
    return text, segments


def wanted(row: Any, what: str) -> list[str]:
    """The keys of the segments a snapshot row (its JSON, read) refers to, in order; ``[]`` for a plain
    one. ``StoreCorrupted`` naming ``what`` when the row is not a snapshot this library writes."""
    if type(row) is not list:
        return []  # a plain snapshot (or not an object at all, which the caller refuses)
    if not (type(row) is list and len(row) == 2 and type(row[0]) is dict and type(row[1]) is dict):
        raise StoreCorrupted(f"{what}: the stored snapshot is neither a JSON object nor [fields, segments]: the "
                             "file is damaged; nothing of it was loaded")
    fields, parts = row
    keys: list[str] = []
    for name, part in parts.items():
        if (name not in fields or fields[name] is not None or type(part) is not list or len(part) != 3
                or part[0] not in (_LIST, _DICT) or type(part[1]) is not list
                or type(part[2]) is not (list if part[0] == _LIST else dict)
                or not all(type(k) is str for k in part[1])):
            raise StoreCorrupted(f"{what}: field {name!r} is not stored as segments this library writes: the "
                                 "file is damaged; nothing of it was loaded")
        keys.extend(part[1])
    return keys


def join(row: Any, texts: dict[str, str], read: Callable[[str], Any], what: str) -> dict[str, Any]:
    """The context a snapshot row holds, its segments' texts given by key (each checked by its row's
    checksum already). ``StoreCorrupted`` when a segment is missing or not what the row says."""
    if type(row) is dict:
        return row
    fields, parts = row
    context = dict(fields)
    for name, (kind, keys, rest) in parts.items():
        value: Any = [] if kind == _LIST else {}
        for key in keys:
            text = texts.get(key)
            if text is None:
                raise StoreCorrupted(f"{what}: segment {key} of field {name!r} is not in the store: the file is "
                                     "damaged; nothing of it was loaded")
            try:
                items = read(text)
            except (ValueError, RecursionError):
                raise StoreCorrupted(f"{what}: segment {key} of field {name!r} is not JSON: the file is damaged; "
                                     "nothing of it was loaded") from None
            if type(items) is not type(value) or len(items) != SEGMENT:
                raise StoreCorrupted(f"{what}: segment {key} of field {name!r} is not {SEGMENT} items of a "
                                     f"{'list' if kind == _LIST else 'dict'}: the file is damaged; nothing of it "
                                     "was loaded")
            if kind == _LIST:
                value.extend(items)
            else:
                value.update(items)
        if kind == _LIST:
            value.extend(rest)
        else:
            value.update(rest)
        context[name] = value
    return context
