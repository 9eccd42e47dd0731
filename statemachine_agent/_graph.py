"""Small graph algorithms for the checker: iterative, so deep specs never hit the recursion limit."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = ["bfs_path", "reachable", "strongly_connected_components", "topological_order"]


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
    """Tarjan's algorithm; components come out in reverse topological order (sinks first)."""
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
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            children = [w for w in succ.get(v, ()) if w in node_set]
            recursed = False
            while i < len(children):
                w = children[i]
                i += 1
                if w not in index:
                    work.append((v, i))
                    work.append((w, 0))
                    recursed = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if recursed:
                continue
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
