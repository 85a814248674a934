#!/usr/bin/env python3
"""Fails on any import that points up a layer, sideways between siblings, or closes a circle.

The layer order is written once, in `[tool.layers]` of pyproject.toml (bottom first). Every
`import` and `from ... import` counts, wherever it is (inside a function or an
`if TYPE_CHECKING:` block too): an import moved into a function still runs, so it still
ties the two modules together.

Rules:
1. a module of one top-level package may import another package only if that package is
   on a lower layer (packages on one layer are independent siblings); every top-level
   package of the repository is on a layer or `outside` (tests, benchmarks: above them
   all, and nothing on a layer may import them);
2. no circle among the project's modules (inside a package as well as across packages);
3. a package listed in `pure`, and every project module it reaches, imports nothing but the
   standard library and the `pure_allow` packages (the card package must run on a PC with
   only websockets: no Django, nothing that pulls it in).

Not seen, on purpose: references by name that Django resolves at run time (a ForeignKey to
"app.Model", `reverse("admin:...")`, URL `include("app.urls")`); the README lists the
few that cross layers.

Usage: check_layers.py [ROOT]   (ROOT defaults to the repository this script is in)
Exit status 0 when clean, 1 with one line per problem (`path:line: message`)."""

from __future__ import annotations

import ast
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    source: str  # module name
    target: str
    path: str  # file of the source, relative to the root
    line: int
    implicit: bool = False  # a package's __init__ that Python runs on the way to the target


@dataclass
class Config:
    layer_of: dict[str, int]
    pure: tuple[str, ...]
    pure_allow: tuple[str, ...]
    outside: tuple[str, ...] = ()
    layers: list[list[str]] = field(default_factory=list)


def config_load(root: Path) -> Config:
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["layers"]
    layers = [entry.split() for entry in data["order"]]
    layer_of = {package: index for index, names in enumerate(layers) for package in names}
    return Config(layer_of=layer_of, pure=tuple(data.get("pure", ())), pure_allow=tuple(data.get("pure_allow", ())),
                  outside=tuple(data.get("outside", ())), layers=layers)


def top_packages(root: Path) -> set[str]:
    """The repository's own top-level packages (folders with an __init__.py)."""
    return {path.parent.name for path in root.glob("*/__init__.py") if not path.parent.name.startswith(".")}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_find(root: Path, packages: list[str]) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def imports_read(module: str, path: Path, known: dict[str, Path], root: Path) -> tuple[list[Edge], list[tuple[str, int]]]:
    """Project edges of one module, and its third-party imports (top-level name, line)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    rel = str(path.relative_to(root))
    targets: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, is_package, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.append((candidate if candidate in known else base, node.lineno))
    edges, external = [], []
    for target, line in targets:
        top = target.split(".")[0]
        if target in known or any(name.startswith(top + ".") or name == top for name in known):
            # The module itself, and the packages Python runs on the way to it.
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                name = ".".join(parts[:depth])
                if name in known and name != module:
                    edges.append(Edge(module, name, rel, line, implicit=depth < len(parts) and target in known))
        else:
            external.append((top, line))
    return edges, external


STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def check(root: Path) -> list[str]:
    config = config_load(root)
    known = modules_find(root, [p for names in config.layers for p in names])
    problems: list[str] = []
    placed = set(config.layer_of) | set(config.outside)
    for package in sorted(top_packages(root) - placed):
        problems.append(f"{package}/__init__.py:1: package {package} is on no layer: add it to [tool.layers] "
                        "order (or outside) in pyproject.toml")
    edges: list[Edge] = []
    external: dict[str, list[tuple[str, int]]] = {}
    for module, path in known.items():
        module_edges, module_external = imports_read(module, path, known, root)
        edges.extend(module_edges)
        external[module] = module_external

    # 1. layers (and nothing on a layer imports what is outside them)
    for module, imports in external.items():
        for top, line in imports:
            if top in config.outside:
                problems.append(f"{known[module].relative_to(root)}:{line}: {module} imports {top}, which is "
                                "outside the layers (only tests and tools may import it)")
    for edge in edges:
        src, dst = edge.source.split(".")[0], edge.target.split(".")[0]
        if src == dst or edge.implicit:
            continue
        a, b = config.layer_of[src], config.layer_of[dst]
        if b > a:
            problems.append(f"{edge.path}:{edge.line}: {edge.source} imports {edge.target}, "
                            f"which is a layer above ({src} is below {dst})")
        elif b == a:
            problems.append(f"{edge.path}:{edge.line}: {edge.source} imports {edge.target}: "
                            f"{src} and {dst} are siblings on one layer and must not import each other")

    # 2. circles
    graph: dict[str, set[str]] = {module: set() for module in known}
    first_edge: dict[tuple[str, str], Edge] = {}
    for edge in edges:
        graph[edge.source].add(edge.target)
        first_edge.setdefault((edge.source, edge.target), edge)
    for component in _cycles(graph):
        members = set(component)
        for (source, target), edge in sorted(first_edge.items()):
            if source in members and target in members:
                problems.append(f"{edge.path}:{edge.line}: {source} imports {target}, closing a circle of "
                                f"{len(component)} modules: {', '.join(component)}")

    # 3. pure packages, through everything they reach
    reported: set[tuple[str, str]] = set()
    for module in sorted(known):
        if module.split(".")[0] not in config.pure:
            continue
        seen, todo, via = {module}, [module], {module: [module]}
        while todo:
            current = todo.pop()
            for top, line in external[current]:
                allowed = top in STDLIB or top in config.pure_allow or top in config.outside
                if not allowed and (current, top) not in reported:
                    reported.add((current, top))
                    chain = " -> ".join(via[current])
                    problems.append(f"{known[current].relative_to(root)}:{line}: {current} imports {top}, "
                                    f"which {module.split('.')[0]}/ must run without (reached by {chain}; "
                                    "allowed: the standard library and pure_allow)")
            for target in sorted(graph[current]):
                if target not in seen:
                    seen.add(target)
                    via[target] = [*via[current], target]
                    todo.append(target)
    return sorted(set(problems))


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve() if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"import layers: {len(problems)} problem(s); the order is [tool.layers] in pyproject.toml")
        return 1
    print("import layers: every import points down, no circles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
