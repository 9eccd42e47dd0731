"""Guards: named predicates on the context that compose with ``&``, ``|`` and ``~``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, overload

__all__ = ["Guard", "guard"]

C_contra = TypeVar("C_contra", contravariant=True)
D = TypeVar("D")

Predicate = Callable[[C_contra], bool]
"""A function of the (read-only) context that says whether a transition is enabled."""


class Guard(Generic[C_contra]):
    """A named predicate on the context that decides whether a transition is enabled.

    Guards compose: ``has_hits & ~too_long | forced``. A plain callable passed where a guard is
    expected is wrapped with its ``__name__``.
    """

    __slots__ = ("_fn", "name", "operands", "reads")

    name: str
    """Shown in diagrams, events and checker messages."""
    reads: frozenset[str]
    """Context fields the predicate reads; the checker proves they are written before it runs."""
    operands: tuple[Guard[Any], ...]
    """The guards this one combines; empty for a leaf."""

    def __init__(self, fn: Predicate[C_contra], *, name: str | None = None,
                 reads: Iterable[str] = ()) -> None:
        if not callable(fn):
            raise TypeError(f"a guard must be a callable taking the context, got {fn!r}")
        self._fn = fn
        self.name = name or getattr(fn, "__name__", None) or repr(fn)
        self.reads = frozenset(reads)
        self.operands = ()

    @property
    def fn(self) -> Predicate[C_contra]:
        """The predicate itself."""
        return self._fn

    def __call__(self, context: C_contra) -> bool:
        result = self._fn(context)
        if type(result) is not bool:
            raise TypeError(
                f"guard {self.name!r} returned {type(result).__name__} {result!r}; a guard must return "
                "True or False (wrap it: lambda ctx: bool(...))"
            )
        return result

    def leaves(self) -> Iterable[Guard[Any]]:
        """Every leaf guard this one is built from, left to right (iteratively: no depth limit)."""
        todo: list[Guard[Any]] = [self]
        while todo:
            g = todo.pop()
            if not g.operands:
                yield g
            todo.extend(reversed(g.operands))

    def __and__(self, other: Guard[C_contra] | Predicate[C_contra]) -> Guard[C_contra]:
        return _combine("&", self, as_guard(other))

    def __rand__(self, other: Guard[C_contra] | Predicate[C_contra]) -> Guard[C_contra]:
        return _combine("&", as_guard(other), self)

    def __or__(self, other: Guard[C_contra] | Predicate[C_contra]) -> Guard[C_contra]:
        return _combine("|", self, as_guard(other))

    def __ror__(self, other: Guard[C_contra] | Predicate[C_contra]) -> Guard[C_contra]:
        return _combine("|", as_guard(other), self)

    def __invert__(self) -> Guard[C_contra]:
        inner = self

        def negated(context: C_contra) -> bool:
            return not inner(context)

        g: Guard[C_contra] = Guard(negated, name=f"not {_paren(inner)}", reads=inner.reads)
        g.operands = (inner,)
        return g

    def __repr__(self) -> str:
        return f"Guard({self.name!r})"


def _paren(g: Guard[Any]) -> str:
    return f"({g.name})" if len(g.operands) > 1 else g.name


def _combine(op: str, left: Guard[D], right: Guard[D]) -> Guard[D]:
    if op == "&":

        def both(context: D) -> bool:
            return left(context) and right(context)

        fn: Predicate[D] = both
        word = "and"
    else:

        def either(context: D) -> bool:
            return left(context) or right(context)

        fn = either
        word = "or"
    g = Guard(fn, name=f"{_paren(left)} {word} {_paren(right)}", reads=left.reads | right.reads)
    g.operands = (left, right)
    return g


def as_guard(value: Guard[D] | Predicate[D]) -> Guard[D]:
    """Return ``value`` as a :class:`Guard`, wrapping a plain callable."""
    if isinstance(value, Guard):
        return value
    return Guard(value)


@overload
def guard(fn: Predicate[D], /, *, name: str | None = None, reads: Iterable[str] = ()) -> Guard[D]: ...


@overload
def guard(*, name: str | None = None,
          reads: Iterable[str] = ()) -> Callable[[Predicate[D]], Guard[D]]: ...


def guard(
    fn: Predicate[D] | None = None, /, *, name: str | None = None, reads: Iterable[str] = ()
) -> Guard[D] | Callable[[Predicate[D]], Guard[D]]:
    """Declare a guard: ``@guard``, ``@guard(reads=["hits"])`` or ``guard(fn, name=..., reads=...)``.

    Typed over the context: ``@guard(reads=["hits"]) def has_hits(ctx: Research) -> bool`` is a
    ``Guard[Research]``, which mypy accepts only on a workflow of ``Research`` (or a subclass).
    For a lambda, let the workflow type it: ``wf.guard(lambda ctx: ..., reads=[...])`` or pass it
    as ``transition(..., guard=lambda ctx: ...)``.
    """
    if fn is not None:
        return Guard(fn, name=name, reads=reads)

    def decorate(f: Predicate[D]) -> Guard[D]:
        return Guard(f, name=name, reads=reads)

    return decorate
