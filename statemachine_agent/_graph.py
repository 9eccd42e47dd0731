"""Small graph algorithms for the checker: iterative and linear, so deep or wide specs stay fast."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

__all__ = ["Arc", "bfs_edges", "bfs_path", "reachable", "strongly_connected_components", "topological_order"]

E = TypeVar("E")
_FINISHED = 1 << 62
"""The low-link of a state whose component is out: above every index."""


class Arc(Protocol):
    """An edge, as the graph algorithms see it: where it leads."""

    @property
    def target(self) -> str: ...


def reachable(starts: Iterable[str], out: Mapping[str, Iterable[Arc]]) -> dict[str, None]:
    """Every node reachable from ``starts`` (included) along the edges ``out`` gives each node, as
    the keys of a dict (a fifth of the memory of a set: what keeps large graphs in the caches)."""
    seen = dict.fromkeys(starts)
    todo = list(seen)
    while todo:
        for e in out.get(todo.pop(), ()):
            if e.target not in seen:
                seen[e.target] = None
                todo.append(e.target)
    return seen


def strongly_connected_components(
    nodes: Iterable[str], out: Mapping[str, Iterable[Arc]]
) -> list[list[str]]:
    """Tarjan's algorithm over the subgraph induced by ``nodes`` along the edges ``out`` gives each
    node; linear in its size. Every edge given for a node of ``nodes`` must lead to one of ``nodes``.

    Components come out in reverse topological order (sinks first), each in the order its states
    leave Tarjan's stack. Iterative, and it keeps no per-state object beyond two integers: a
    finished state's low-link is raised past every index, so it needs no on-stack set.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    get = out.get
    counter = 0
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        path = [root]  # the DFS path, with the iterator over each state's successors beside it
        children: list[Iterator[Arc]] = [iter(get(root, ()))]
        while path:
            v = path[-1]
            for e in children[-1]:
                w = e.target
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    path.append(w)
                    children.append(iter(get(w, ())))
                    break
                if low[w] < low[v]:  # finished states have a low-link past every index  # noqa: PLR1730
                    low[v] = low[w]
            else:
                path.pop()
                children.pop()
                lv = low[v]
                if lv == index[v]:
                    i = len(stack) - 1
                    while stack[i] != v:
                        i -= 1
                    comp = stack[i:]
                    del stack[i:]
                    comp.reverse()
                    for w in comp:
                        low[w] = _FINISHED
                    found.append(comp)
                if path and lv < low[path[-1]]:
                    low[path[-1]] = lv
    return found


def topological_order(nodes: Sequence[str], succ: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Kahn's algorithm over the subgraph induced by ``nodes``; ``None`` when it has a cycle."""
    node_set = set(nodes)
    indeg = dict.fromkeys(nodes, 0)
    for v in nodes:
        for w in succ.get(v, ()):
            if w in node_set:
                indeg[w] += 1
    todo = deque(v for v in nodes if indeg[v] == 0)
    order: list[str] = []
    while todo:
        v = todo.popleft()
        order.append(v)
        for w in succ.get(v, ()):
            if w in node_set:
                indeg[w] -= 1
                if indeg[w] == 0:
                    todo.append(w)
    return order if len(order) == len(nodes) else None


def bfs_path(
    start: str,
    goal: Callable[[str], bool],
    succ: Callable[[str], Iterable[str]],
    *,
    min_length: int = 0,
) -> list[str] | None:
    """A shortest path from ``start`` to a node satisfying ``goal`` with at least ``min_length`` edges.

    ``min_length=1`` finds cycles back to ``start``.
    """
    if min_length == 0 and goal(start):
        return [start]
    parent: dict[str, str | None] = {}
    todo: deque[str] = deque()
    for w in succ(start):
        if w not in parent:
            parent[w] = None
            todo.append(w)
    while todo:
        v = todo.popleft()
        if goal(v):
            path = [v]
            p = parent[v]
            while p is not None:
                path.append(p)
                p = parent[p]
            path.append(start)
            path.reverse()
            return path
        for w in succ(v):
            if w not in parent:
                parent[w] = v
                todo.append(w)
    return None


def bfs_edges(
    start: str, out: Callable[[str], Iterable[E]], target: Callable[[E], str]
) -> dict[str, E | None]:
    """A shortest-path tree from ``start``: for each node reached, the edge it was first reached by.

    ``start`` maps to ``None``; walk the edges back with :func:`edge_path`.
    """
    via: dict[str, E | None] = {start: None}
    todo = deque([start])
    while todo:
        v = todo.popleft()
        for e in out(v):
            w = target(e)
            if w not in via:
                via[w] = e
                todo.append(w)
    return via


def edge_path(via: Mapping[str, E | None], node: str, source: Callable[[E], str]) -> list[E]:
    """The edges from the root of a :func:`bfs_edges` tree to ``node``, in order."""
    path: list[E] = []
    e = via[node]
    while e is not None:
        path.append(e)
        e = via[source(e)]
    path.reverse()
    return path
