"""The import graph of mpsearch and its built-in plugins: circles and plugin boundaries.

    python tools/import_graph.py [ROOT] [--top]

Prints the import circles (groups of modules that import each other, directly or
through others), the imports from one built-in plugin into another, and the host
modules the plugins import. By default an import inside a function counts too
(it still ties the two modules together); ``--top`` counts only the imports that
run when a module is imported.
"""

from __future__ import annotations

import ast
import collections
import os
import sys

PLUGINS_INSTALLED_AS = "mpsearch.plugins"  # pyproject.toml installs plugins/ under this name


def modules(root: str) -> dict[str, str]:
    """Dotted module name -> file, for mpsearch/ and plugins/ under ``root``."""
    found = {}
    for top in ("mpsearch", "plugins"):
        for folder, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _resolve(name: str, mods: dict[str, str]) -> str:
    if name.startswith(PLUGINS_INSTALLED_AS):
        name = "plugins" + name[len(PLUGINS_INSTALLED_AS):]
    while name and name not in mods:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


def imports(mods: dict[str, str], top_only: bool = False) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for mod, path in mods.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
        for node in (tree.body if top_only else ast.walk(tree)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                for alias in node.names:  # `from pkg import module` imports the module
                    sub = _resolve(f"{base}.{alias.name}", mods)
                    targets.append(sub if sub == f"{base}.{alias.name}".replace(
                        PLUGINS_INSTALLED_AS, "plugins", 1) else base)
            for target in targets:
                resolved = _resolve(target, mods)
                if resolved and resolved != mod:
                    edges[mod].add(resolved)
    return edges


def circles(edges: dict[str, set[str]], mods) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(mods):
        if v not in index:
            visit(v)
    return groups


def plugin_to_plugin(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from one built-in plugin (a module or package under plugins/) into another."""
    def owner(mod: str) -> str:
        return ".".join(mod.split(".")[:2])
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if a.startswith("plugins.") and b.startswith("plugins.") and owner(a) != owner(b))


def main(argv: list[str]) -> None:
    root = next((a for a in argv if not a.startswith("--")), ".")
    top_only = "--top" in argv
    mods = modules(root)
    edges = imports(mods, top_only)
    groups = circles(edges, mods)
    print(f"import circles ({'module-level imports' if top_only else 'function-level imports included'}):"
          f" {len(groups)}")
    for group in groups:
        print("   ", " <-> ".join(group))
    pairs = plugin_to_plugin(edges)
    print(f"plugin -> plugin imports: {len(pairs)}")
    for a, b in pairs:
        print(f"    {a} -> {b}")
    host = sorted({b for a, targets in edges.items() for b in targets
                   if a.startswith("plugins") and b.startswith("mpsearch")})
    print(f"host modules imported by plugins: {len(host)}: {', '.join(host)}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BrokenPipeError:  # the reader (head, grep -q) stopped early
        sys.stderr.close()
