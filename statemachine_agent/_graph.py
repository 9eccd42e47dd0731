"""Small graph algorithms for the checker: iterative and linear, so deep or wide specs stay fast."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

__all__ = ["bfs_edges", "bfs_path", "reachable", "strongly_connected_components", "topological_order"]

E = TypeVar("E")


def reachable(starts: Iterable[str], succ: Mapping[str, Sequence[str]]) -> set[str]:
    """Every node reachable from ``starts`` (included)."""
    seen = set(starts)
    todo = deque(seen)
    while todo:
        for w in succ.get(todo.popleft(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def strongly_connected_components(
    nodes: Sequence[str], succ: Mapping[str, Sequence[str]]
) -> list[list[str]]:
    """Tarjan's algorithm over the subgraph induced by ``nodes``; linear in its size.

    Components come out in reverse topological order (sinks first).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    node_set = set(nodes)
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterable[str]]] = [(root, iter(succ.get(root, ())))]
        while work:
            v, children = work[-1]
            descended = False
            for w in children:
                if w not in node_set:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ.get(w, ()))))
                    descended = True
                    break
                if w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
            if descended:
                continue
            work.pop()
            if low[v] == index[v]:
                comp: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


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
