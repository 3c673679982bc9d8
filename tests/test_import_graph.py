"""The package's import graph: no cycle, and no module importing another one's private names.

Parsed from the source (ast), type-only imports under `TYPE_CHECKING` included: an import that
must hide there to avoid a loop is a loop (STYLE.md 13). A private name is one with a single
leading underscore; a module's private names are its own (STYLE.md 1, docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import oai_adapter

PACKAGE = Path(oai_adapter.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["oai_adapter", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None) for every import of a package module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target not in MODULES:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (target, alias.name))
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_graph_sees_the_modules_it_should() -> None:
    assert ("oai_adapter._adapter", None) in GRAPH["oai_adapter"] or any(
        target == "oai_adapter._adapter" for target, _ in GRAPH["oai_adapter"]
    )
    assert len(MODULES) > 20


def test_no_import_cycle_among_the_package_modules() -> None:
    edges = {name: {target for target, _ in imports} - {name} for name, imports in GRAPH.items()}
    # A package's `__init__` re-exports its modules; a module importing its own package
    # (for `__version__`) is an edge back only when the package imports that module.
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for target in sorted(edges.get(node, ())):
            visit(target)
        path.pop()
        done.add(node)

    for name in sorted(edges):
        visit(name)


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{name} imports {imported} from {target}"
        for name, imports in GRAPH.items()
        for target, imported in imports
        if imported is not None and _is_private(imported) and target != name
    ]
    assert offenders == []
