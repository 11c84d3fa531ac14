"""What a resolution returns: the chosen release of every agent in the closure, and why each is there.

`Resolution.required_by` keeps, for each agent, the specifiers that pulled it in (the manifest's, or a
resolved agent's), which is what `mcpz tree` and `mcpz why` print. Cycles are legal; `cycles()` finds
them and `tree()` marks where a walk would loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from packaging.version import Version


@dataclass(frozen=True)
class Requirer:
    """One edge into an agent: who asked for it (None for the manifest) and with which specifier."""

    parent: str | None
    specifier: str


@dataclass(frozen=True)
class ResolvedPackage:
    name: str
    version: Version
    commit: str
    dependencies: Mapping[str, str]
    """Dependencies of the chosen release, name -> specifier text; every one is in the resolution."""
    yanked: bool = False


@dataclass(frozen=True)
class TreeLine:
    """One line of `mcpz tree`: `mark` is "" (first visit), "seen" (printed above) or "cycle"."""

    depth: int
    name: str
    version: Version
    specifier: str
    parent: str | None
    mark: str


@dataclass(frozen=True)
class Resolution:
    roots: Mapping[str, str]
    packages: Mapping[str, ResolvedPackage]
    required_by: Mapping[str, tuple[Requirer, ...]]
    rounds: int = 0
    """How many resolver rounds it took (for figures and `-v`)."""

    def __contains__(self, name: object) -> bool:
        return name in self.packages

    def __getitem__(self, name: str) -> ResolvedPackage:
        return self.packages[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.packages)

    def __len__(self) -> int:
        return len(self.packages)

    def versions(self) -> dict[str, str]:
        """name -> version, the shape `resolve(locked=...)` takes."""
        return {name: str(p.version) for name, p in self.packages.items()}

    def cycles(self) -> list[tuple[str, ...]]:
        """Each dependency cycle once, as the agents on it, starting at the smallest name."""
        graph = {name: sorted(p.dependencies) for name, p in self.packages.items()}
        return [tuple(c) for c in _strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]

    def why(self, name: str) -> list[tuple[Requirer, ...]]:
        """For each direct requirer of `name`, one shortest chain of edges from the manifest to it."""
        paths: list[tuple[Requirer, ...]] = []
        for edge in self.required_by.get(name, ()):
            if edge.parent is None:
                paths.append((edge,))
                continue
            head = self._shortest_from_root(edge.parent)
            if head is not None:
                paths.append((*head, edge))
        return paths

    def _shortest_from_root(self, name: str) -> tuple[Requirer, ...] | None:
        frontier: list[tuple[str, tuple[Requirer, ...]]] = [
            (root, (Requirer(None, spec.strip() or "*"),)) for root, spec in sorted(self.roots.items())
        ]
        seen = {root for root, _ in frontier}
        while frontier:
            following: list[tuple[str, tuple[Requirer, ...]]] = []
            for current, path in frontier:
                if current == name:
                    return path
                package = self.packages.get(current)
                if package is None:
                    continue
                for dep, spec in sorted(package.dependencies.items()):
                    if dep not in seen:
                        seen.add(dep)
                        following.append((dep, (*path, Requirer(current, spec))))
            frontier = following
        return None

    def tree(self) -> list[TreeLine]:
        """Depth-first from the manifest's dependencies, each agent expanded once."""
        lines: list[TreeLine] = []
        expanded: set[str] = set()

        def visit(name: str, spec: str, parent: str | None, depth: int, path: tuple[str, ...]) -> None:
            package = self.packages[name]
            if name in path:
                mark = "cycle"
            elif name in expanded:
                mark = "seen"
            else:
                mark = ""
            lines.append(TreeLine(depth, name, package.version, spec, parent, mark))
            if mark:
                return
            expanded.add(name)
            for dep, dep_spec in sorted(package.dependencies.items()):
                visit(dep, dep_spec, name, depth + 1, (*path, name))

        for root, spec in sorted(self.roots.items()):
            if root in self.packages:
                visit(root, spec.strip() or "*", None, 0, ())
        return lines


def _strongly_connected(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components sorted, each rotated to start at its smallest name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = [c for c in graph[node] if c in graph]
            if i < len(children):
                work.append((node, i + 1))
                child = children[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(_cycle_order(component, graph))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(out)


def _cycle_order(component: list[str], graph: Mapping[str, list[str]]) -> list[str]:
    """The members in the order a walk along the edges meets them, from the smallest name."""
    members = set(component)
    ordered = [min(component)]
    seen = {ordered[0]}
    while len(ordered) < len(component):
        step = next((c for c in graph[ordered[-1]] if c in members and c not in seen), None)
        if step is None:
            ordered.extend(sorted(members - seen))
            break
        ordered.append(step)
        seen.add(step)
    return ordered
