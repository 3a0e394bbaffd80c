"""The storage engine's wall: nothing outside chunkfs/store/ reaches inside it.

The engine (chunkfs/store/) may change its record layouts, pack format and
storage backend without touching the filesystem above it only as long as no
module outside the package imports its private modules (``_index``,
``_packs``...) or calls its private names.  These tests read the source
(``ast``), so they fail at the line that breaks the wall.
"""

from __future__ import annotations

import ast
from pathlib import Path

import chunkfs.store

PACKAGE = Path(chunkfs.__file__).parent
STORE = PACKAGE / "store"


def _outside_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if STORE not in p.parents)


def _imported_modules(tree: ast.AST, path: Path) -> list[tuple[int, str]]:
    """(line, dotted module or module.name) of every import in a module of the chunkfs package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def test_no_module_outside_the_store_imports_its_private_modules():
    offenders = []
    for path in _outside_modules():
        for line, name in _imported_modules(ast.parse(path.read_text(), str(path)), path):
            parts = name.split(".")
            if parts[:2] == ["chunkfs", "store"] and any(p.startswith("_") for p in parts[2:]):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not offenders, "private store modules imported from outside the package:\n" + "\n".join(offenders)


def test_no_module_outside_the_store_uses_its_private_attributes():
    """``store._lock``, ``store.index``, ``store.packs``...: the engine's insides, not its face."""
    insides = {"index", "packs", "ledger", "manifest_index", "cache", "reader"}
    offenders = []
    for path in _outside_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute))
                    and _names_a_store(node.value) and (node.attr.startswith("_") or node.attr in insides)):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses store.{node.attr}")
    assert not offenders, "store internals used from outside the package:\n" + "\n".join(offenders)


def _names_a_store(node: ast.expr) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr
    return name in ("store", "_store")


def test_the_store_package_has_no_import_cycles():
    """Private modules import each other downwards only (TYPE_CHECKING imports count too)."""
    graph = {}
    for path in STORE.glob("_*.py"):
        module = path.stem
        deps = set()
        for _, name in _imported_modules(ast.parse(path.read_text(), str(path)), path):
            parts = name.split(".")
            if parts[:2] == ["chunkfs", "store"] and len(parts) > 2 and parts[2].startswith("_"):
                deps.add(parts[2])
        graph[module] = deps - {module}
    seen: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state = seen.get(module)
        assert state != 1, "import cycle: " + " -> ".join(trail + [module])
        if state == 2:
            return
        seen[module] = 1
        for dep in sorted(graph.get(module, ())):
            visit(dep, trail + [module])
        seen[module] = 2

    for module in sorted(graph):
        visit(module, [])


def test_the_public_face_is_what_callers_use():
    for name in chunkfs.store.__all__:
        assert not name.startswith("_")
        assert hasattr(chunkfs.store, name), name
