"""Secrets in durable runs: ``SQLiteStore(path, secrets=FernetSecrets.from_env("SMA_SECRET_KEY"))``.

pydantic's ``SecretStr`` and ``SecretBytes`` hide their value from ``repr`` and JSON, which is where a
store would otherwise write it: dumped to JSON, a secret is the mask ``"**********"``, and a run
resumed from that would go on with the mask as its secret. So a store keeps a context's secret
fields only through a :class:`SecretCodec` it was given: each value is encrypted on its way in
(stored as ``{"$secret": "<token>"}``) and decrypted on its way back, for the fields the context
type declares secret and no others. Without a codec, a durable run whose context holds a secret is
refused at its start, before anything is stored. See docs/durability.md, "Secrets".

Supported: top-level context fields typed ``SecretStr`` or ``SecretBytes``, optionally ``| None``
and with any default (``UNSET`` included). A secret anywhere else in the context's type (inside a
sub-model, a list, a dict, a union with other types, pydantic's generic ``Secret[T]``) is refused
at the run's start, naming its path: make it a top-level field.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, SecretBytes, SecretStr

from .errors import StoreCorrupted, StoreError

try:
    from pydantic.types import _SecretBase as _AnySecret  # SecretStr, SecretBytes and Secret[T] alike
except ImportError:  # pragma: no cover - pydantic moved it
    _AnySecret = (SecretStr, SecretBytes)  # type: ignore[assignment,misc]

__all__ = [
    "FernetSecrets",
    "SecretCodec",
    "SecretKeyError",
    "SecretUnreadable",
    "SecretsNotStorable",
]

SECRET_KEY = "$secret"
"""The one key of a stored secret's JSON object: ``{"$secret": "<token>"}``."""


@runtime_checkable
class SecretCodec(Protocol):
    """Encrypts a secret's bytes for the store, and decrypts them back.

    ``decrypt`` must raise (anything) for a token it did not make or that was damaged: an
    authenticated cipher does. :class:`FernetSecrets` is one.
    """

    def encrypt(self, data: bytes) -> str:
        """A text token holding ``data``, encrypted."""
        ...

    def decrypt(self, token: str) -> bytes:
        """The bytes ``token`` holds; raise if it was not made with this key or was changed."""
        ...


# --- errors --------------------------------------------------------------------------------------
class SecretKeyError(StoreError, ValueError):
    """A secrets key is missing or unusable. The message names where the key came from, never the key."""


class SecretsNotStorable(StoreError, TypeError):
    """A durable run's context holds a secret its store cannot keep: the store has no codec
    (``secrets=``), or the secret is somewhere other than a top-level field. Raised before anything
    is stored."""

    run_id: str
    fields: tuple[str, ...]

    def __init__(self, run_id: str, fields: Iterable[str], message: str) -> None:
        self.run_id = run_id
        self.fields = tuple(fields)
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.fields, str(self)))


class SecretUnreadable(StoreCorrupted):
    """A stored secret cannot be read back: the codec's key is not the one it was stored with, the
    token was damaged, or the field holds something that is not a stored secret (the mask an older
    version stored). The run is not continued: it never goes on with a wrong secret."""

    run_id: str
    field: str

    def __init__(self, run_id: str, field: str, message: str) -> None:
        self.run_id = run_id
        self.field = field
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.field, str(self)))


# --- Fernet --------------------------------------------------------------------------------------
class FernetSecrets:
    """A :class:`SecretCodec` on Fernet (AES-128-CBC with HMAC-SHA256, from the ``cryptography``
    package: ``pip install 'statemachine-agent[secrets]'``).

    ``FernetSecrets(key, *older_keys)``: ``key`` encrypts, and every key given decrypts, so a key
    can be rotated by putting the new one first. Keys are what ``FernetSecrets.generate_key()``
    (or ``cryptography.fernet.Fernet.generate_key()``) returns: 32 random bytes, url-safe base64.
    """

    __slots__ = ("_fernet",)

    def __init__(self, key: str | bytes, *older_keys: str | bytes, _source: str = "") -> None:
        fernet = _fernet_module()
        made = []
        for i, k in enumerate((key, *older_keys)):
            where = f"{_source}, key {i + 1}" if _source else f"key {i + 1}"
            if not isinstance(k, (str, bytes)):
                raise SecretKeyError(f"FernetSecrets: {where} is a {type(k).__name__}: give the key as text "
                                     "(url-safe base64 of 32 bytes, as FernetSecrets.generate_key() makes)")
            try:
                made.append(fernet.Fernet(k.strip()))
            except (ValueError, TypeError):
                raise SecretKeyError(f"FernetSecrets: {where} is not a Fernet key (it must be url-safe base64 of "
                                     "32 bytes, as FernetSecrets.generate_key() makes)") from None
        self._fernet = fernet.MultiFernet(made)

    @classmethod
    def from_env(cls, name: str) -> FernetSecrets:
        """The codec whose key is in the environment variable ``name``; several keys separated by
        commas (the first encrypts, all decrypt) rotate it."""
        if not isinstance(name, str) or not name:
            raise SecretKeyError(f"FernetSecrets.from_env({name!r}): give the name of an environment variable")
        value = os.environ.get(name)
        if value is None or not value.strip():
            raise SecretKeyError(f"environment variable {name} is {'empty' if value is not None else 'not set'}: "
                                 f"set it to a key made by FernetSecrets.generate_key() (the same key every "
                                 f"process that resumes these runs uses)")
        keys = [k.strip() for k in value.split(",")]
        if not all(keys):
            raise SecretKeyError(f"environment variable {name} holds an empty key: separate keys by single commas")
        return cls(*keys, _source=f"environment variable {name}")

    @staticmethod
    def generate_key() -> str:
        """A new random key (keep it out of the code: in the environment or a secrets manager)."""
        return str(_fernet_module().Fernet.generate_key().decode("ascii"))

    def encrypt(self, data: bytes) -> str:
        return str(self._fernet.encrypt(bytes(data)).decode("ascii"))

    def decrypt(self, token: str) -> bytes:
        return bytes(self._fernet.decrypt(token.encode("ascii")))

    def __repr__(self) -> str:
        return "FernetSecrets(<key hidden>)"


def _fernet_module() -> Any:
    try:
        from cryptography import fernet  # noqa: PLC0415  (an optional extra)
    except ImportError:
        raise SecretKeyError("FernetSecrets needs the cryptography package: pip install "
                             "'statemachine-agent[secrets]'") from None
    return fernet


# --- which fields are secret ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class SecretFields:
    """The secrets of a context type: the top-level fields the store keeps (name -> SecretStr or
    SecretBytes) and the paths of those it cannot keep."""

    top: Mapping[str, type[SecretStr] | type[SecretBytes]]
    elsewhere: tuple[str, ...]


def secret_fields(model: type[BaseModel]) -> SecretFields:
    """Where ``model`` (a context type) holds secrets."""
    return _secret_fields(model)


@functools.lru_cache(maxsize=256)
def _secret_fields(model: Any) -> SecretFields:
    top: dict[str, type[SecretStr] | type[SecretBytes]] = {}
    elsewhere: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        kind = _top_level_kind(annotation)
        if kind is not None:
            top[name] = kind
        else:
            elsewhere.extend(_paths(annotation, name, set()))
    return SecretFields(top, tuple(elsewhere))


def _top_level_kind(annotation: Any) -> type[SecretStr] | type[SecretBytes] | None:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) != 1:
            return None
        annotation = rest[0]
    if annotation is SecretStr:
        return SecretStr
    return SecretBytes if annotation is SecretBytes else None


def _paths(annotation: Any, path: str, seen: set[Any]) -> list[str]:
    """The paths under ``path`` where ``annotation`` holds a secret."""
    if isinstance(annotation, type) and issubclass(annotation, _AnySecret):
        return [path]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return []
    if origin is typing.Annotated:
        return _paths(typing.get_args(annotation)[0], path, seen)
    if origin in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(annotation) for p in _paths(a, path, seen)]
    if origin is not None:
        if isinstance(origin, type) and issubclass(origin, _AnySecret):  # Secret[int]
            return [path]
        return [p for a in typing.get_args(annotation) for p in _paths(a, f"{path}[]", seen)]
    if not isinstance(annotation, type) or annotation in seen:
        return []
    seen.add(annotation)
    if issubclass(annotation, BaseModel):
        hints = {n: f.annotation for n, f in annotation.model_fields.items()}
    elif dataclasses.is_dataclass(annotation) or typing.is_typeddict(annotation):
        try:
            hints = typing.get_type_hints(annotation, include_extras=True)
        except Exception:  # an unresolvable forward reference: pydantic refuses such a model anyway
            hints = {}
    else:
        return []
    return [p for n, a in hints.items() for p in _paths(a, f"{path}.{n}", seen)]


def check_storable(model: type[BaseModel], codec: object, run_id: str) -> None:
    """``SecretsNotStorable`` unless every secret of ``model`` can be kept by a store with ``codec``."""
    found = secret_fields(model)
    if found.elsewhere:
        listed = ", ".join(repr(p) for p in found.elsewhere)
        raise SecretsNotStorable(run_id, found.elsewhere, (
            f"run {run_id!r} cannot be stored: {model.__name__} holds a secret at {listed}, inside another type; "
            "a store keeps secrets only in top-level fields typed SecretStr or SecretBytes (optionally "
            "| None): make each one such a field of the context"))
    if found.top and codec is None:
        listed = ", ".join(repr(f) for f in found.top)
        raise SecretsNotStorable(run_id, tuple(found.top), (
            f"run {run_id!r} cannot be stored: {model.__name__} "
            f"{f'fields {listed} hold secrets' if len(found.top) > 1 else f'field {listed} holds a secret'}, "
            "and the store has no codec to keep it (stored as JSON it would be the mask "
            "'**********'): pass secrets= to the store, e.g. SQLiteStore(path, "
            "secrets=FernetSecrets.from_env('SMA_SECRET_KEY'))"))
    if found.top and not isinstance(codec, SecretCodec):
        raise SecretsNotStorable(run_id, tuple(found.top), (
            f"the store's secrets={type(codec).__name__} object is not a SecretCodec: give one with "
            "encrypt(bytes) -> str and decrypt(str) -> bytes, such as FernetSecrets"))


# --- to and from the store -----------------------------------------------------------------------
def seal(context: BaseModel, data: dict[str, Any], codec: SecretCodec | None) -> None:
    """Replace, in ``data`` (JSON of fields of ``context``), each secret field's mask by its token."""
    top = secret_fields(type(context)).top
    if not top:
        return
    values = context.__dict__
    for name in top:
        if name not in data or data[name] is None:
            continue
        value = values.get(name)
        if not isinstance(value, (SecretStr, SecretBytes)):
            continue
        if codec is None:
            raise SecretsNotStorable("", (name,), (
                f"field {name!r} of {type(context).__name__} holds a secret and the store has no codec to keep it: "
                "pass secrets= to the store"))
        raw = value.get_secret_value()
        token = codec.encrypt(raw if isinstance(raw, bytes) else raw.encode("utf-8"))
        if not isinstance(token, str):
            raise SecretsNotStorable("", (name,), (
                f"the store's codec {type(codec).__name__}.encrypt returned {type(token).__name__}, not str: "
                f"field {name!r} cannot be stored"))
        data[name] = {SECRET_KEY: token}


def unseal(model: type[BaseModel], context: Mapping[str, Any], codec: SecretCodec | None, run_id: str,
           *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """A copy of the stored ``context`` whose secret fields hold their values again (as SecretStr or
    SecretBytes objects, so they stay hidden): ``SecretUnreadable`` naming the run and field when
    one cannot be read, ``SecretsNotStorable`` when a secret is stored and ``codec`` is None."""
    out = dict(context)
    top = secret_fields(model).top
    skipped = set(skip)
    for name, kind in top.items():
        if name in skipped or name not in out or out[name] is None:
            continue
        stored = out[name]
        token = stored.get(SECRET_KEY) if isinstance(stored, dict) and len(stored) == 1 else None
        if not isinstance(token, str):
            raise SecretUnreadable(run_id, name, (
                f"run {run_id!r}: field {name!r} is declared secret but its stored value is not a stored secret "
                "(an earlier version stored the mask '**********' in its place; the real value is lost): the run "
                f"cannot continue with it; fork it with patch={{{name!r}: ...}} to give the value again"))
        if codec is None:
            raise SecretsNotStorable(run_id, (name,), (
                f"run {run_id!r}: field {name!r} holds a secret and the store has no codec to read it: open the "
                "store with the secrets= it was written with"))
        try:
            raw = codec.decrypt(token)
            if not isinstance(raw, bytes):
                raise TypeError(f"decrypt returned {type(raw).__name__}")  # noqa: TRY301  (one message for all)
            value: Any = raw.decode("utf-8") if kind is SecretStr else raw
        except Exception as exc:
            raise SecretUnreadable(run_id, name, (
                f"run {run_id!r}: the stored secret of field {name!r} cannot be decrypted "
                f"({type(exc).__name__}): the store's secrets key is not the one it was stored with, or the "
                "token was damaged; open the store with the right key (a FernetSecrets given several keys "
                "tries each)")) from None
        out[name] = kind(value)
    return out


class Digests:
    """A stand-in codec for replays: the same secret always gives the same text, which says
    nothing of the secret (an HMAC under a key that lives as long as this object)."""

    __slots__ = ("_key",)

    def __init__(self) -> None:
        self._key = os.urandom(32)

    def encrypt(self, data: bytes) -> str:
        import hmac  # noqa: PLC0415

        return "hmac-sha256:" + hmac.new(self._key, data, "sha256").hexdigest()

    def decrypt(self, token: str) -> bytes:
        raise SecretUnreadable("", "", "a replay's digests cannot be decrypted")


def redigest(model: type[BaseModel], delta: Mapping[str, Any], codec: SecretCodec | None, digests: Digests,
             run_id: str) -> dict[str, Any]:
    """A recorded step's delta with each stored secret as ``digests`` would give it."""
    names = [n for n in secret_fields(model).top if isinstance(delta.get(n), dict)]
    if not names:
        return dict(delta)
    opened = unseal(model, {n: delta[n] for n in names}, codec, run_id)
    out = dict(delta)
    for n in names:
        raw = opened[n].get_secret_value()
        out[n] = {SECRET_KEY: digests.encrypt(raw if isinstance(raw, bytes) else raw.encode("utf-8"))}
    return out

