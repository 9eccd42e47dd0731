"""Guards: naming, composition with & | ~, declared reads, and strict booleans."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statemachine_agent import Guard, guard


@guard(reads=["hits"])
def has_hits(ctx: SimpleNamespace) -> bool:
    """Some search hits."""
    return bool(ctx.hits)


@guard
def tired(ctx: SimpleNamespace) -> bool:
    """Too many attempts."""
    return bool(ctx.attempts > 2)


def test_names_and_reads_compose() -> None:
    """Composite guards get readable names and the union of their reads."""
    g = has_hits & ~tired | (lambda c: c.forced)
    assert g.name == "(has_hits and not tired) or <lambda>"
    assert g.reads == {"hits"}
    assert [leaf.name for leaf in g.leaves()] == ["has_hits", "tired", "<lambda>"]


@given(hits=st.booleans(), attempts=st.integers(0, 5), forced=st.booleans())
def test_composition_matches_python_logic(hits: bool, attempts: int, forced: bool) -> None:
    """&, | and ~ evaluate exactly like and, or and not."""
    ctx = SimpleNamespace(hits=["x"] if hits else [], attempts=attempts, forced=forced)
    g = has_hits & ~tired | Guard(lambda c: c.forced, name="forced")
    assert g(ctx) == ((hits and not attempts > 2) or forced)
    assert (~g)(ctx) == (not g(ctx))
    assert (tired | has_hits)(ctx) == (attempts > 2 or hits)


def test_plain_callable_on_the_left() -> None:
    """A plain callable combines with a guard from either side."""
    g = (lambda c: True) & tired
    assert isinstance(g, Guard)
    assert g(SimpleNamespace(attempts=3)) is True


def test_non_bool_result_is_an_error() -> None:
    """A guard returning a truthy non-bool raises a TypeError that says how to fix it."""
    sloppy = Guard(lambda c: c.hits, name="sloppy")
    with pytest.raises(TypeError, match=r"'sloppy' returned list \['x'\]; a guard must return True or False"):
        sloppy(SimpleNamespace(hits=["x"]))


def test_non_callable_is_rejected() -> None:
    """Only callables can be guards."""
    with pytest.raises(TypeError, match="must be a callable"):
        Guard("hits")  # type: ignore[arg-type]


def test_importing_the_package_does_not_import_hypothesis() -> None:
    """The runtime package stays free of test-only dependencies."""
    import subprocess
    import sys

    code = "import sys, statemachine_agent; print('hypothesis' in sys.modules, 'pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
