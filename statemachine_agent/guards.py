"""Guards: named predicates on the context that compose with ``&``, ``|`` and ``~``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, overload

__all__ = ["Guard", "guard"]

Predicate = Callable[[Any], object]


class Guard:
    """A named predicate on the context that decides whether a transition is enabled.

    Guards compose: ``has_hits & ~too_long | forced``. A plain callable passed where a guard is
    expected is wrapped with its ``__name__``.
    """

    __slots__ = ("_fn", "name", "operands", "reads")

    name: str
    """Shown in diagrams, events and checker messages."""
    reads: frozenset[str]
    """Context fields the predicate reads; the checker proves they are written before it runs."""
    operands: tuple[Guard, ...]
    """The guards this one combines; empty for a leaf."""

    def __init__(self, fn: Predicate, *, name: str | None = None, reads: Iterable[str] = ()) -> None:
        if not callable(fn):
            raise TypeError(f"a guard must be a callable taking the context, got {fn!r}")
        self._fn = fn
        self.name = name or getattr(fn, "__name__", None) or repr(fn)
        self.reads = frozenset(reads)
        self.operands = ()

    @property
    def fn(self) -> Predicate:
        """The predicate itself."""
        return self._fn

    def __call__(self, context: Any) -> bool:
        result = self._fn(context)
        if type(result) is not bool:
            raise TypeError(
                f"guard {self.name!r} returned {type(result).__name__} {result!r}; a guard must return "
                "True or False (wrap it: lambda ctx: bool(...))"
            )
        return result

    def leaves(self) -> Iterable[Guard]:
        """Every leaf guard this one is built from, left to right (iteratively: no depth limit)."""
        todo: list[Guard] = [self]
        while todo:
            g = todo.pop()
            if not g.operands:
                yield g
            todo.extend(reversed(g.operands))

    def __and__(self, other: Guard | Predicate) -> Guard:
        return _combine("&", self, as_guard(other))

    def __rand__(self, other: Guard | Predicate) -> Guard:
        return _combine("&", as_guard(other), self)

    def __or__(self, other: Guard | Predicate) -> Guard:
        return _combine("|", self, as_guard(other))

    def __ror__(self, other: Guard | Predicate) -> Guard:
        return _combine("|", as_guard(other), self)

    def __invert__(self) -> Guard:
        inner = self

        def negated(context: Any) -> bool:
            return not inner(context)

        g = Guard(negated, name=f"not {_paren(inner)}", reads=inner.reads)
        g.operands = (inner,)
        return g

    def __repr__(self) -> str:
        return f"Guard({self.name!r})"


def _paren(g: Guard) -> str:
    return f"({g.name})" if len(g.operands) > 1 else g.name


def _combine(op: str, left: Guard, right: Guard) -> Guard:
    if op == "&":

        def both(context: Any) -> bool:
            return left(context) and right(context)

        fn: Predicate = both
        word = "and"
    else:

        def either(context: Any) -> bool:
            return left(context) or right(context)

        fn = either
        word = "or"
    g = Guard(fn, name=f"{_paren(left)} {word} {_paren(right)}", reads=left.reads | right.reads)
    g.operands = (left, right)
    return g


def as_guard(value: Guard | Predicate) -> Guard:
    """Return ``value`` as a :class:`Guard`, wrapping a plain callable."""
    if isinstance(value, Guard):
        return value
    return Guard(value)


@overload
def guard(fn: Predicate, /, *, name: str | None = None, reads: Iterable[str] = ()) -> Guard: ...


@overload
def guard(*, name: str | None = None, reads: Iterable[str] = ()) -> Callable[[Predicate], Guard]: ...


def guard(
    fn: Predicate | None = None, /, *, name: str | None = None, reads: Iterable[str] = ()
) -> Guard | Callable[[Predicate], Guard]:
    """Declare a guard: ``@guard``, ``@guard(reads=["hits"])`` or ``guard(fn, name=..., reads=...)``."""
    if fn is not None:
        return Guard(fn, name=name, reads=reads)

    def decorate(f: Predicate) -> Guard:
        return Guard(f, name=name, reads=reads)

    return decorate
