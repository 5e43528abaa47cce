"""The package's shape: no import circles (lazy imports included), and the README's layout names every stage."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

SRC = REPO / "src" / "lmtune"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        mods["lmtune." + ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")] = path
    for path in (REPO / "recipes").glob("*.py"):
        mods[f"lmtune.recipes.{path.stem}"] = path
    return mods


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_module_imports_itself_through_others() -> None:
    mods = _modules()
    graph = {m: {d for d in _imports(p) if d in mods and d != m} for m, p in mods.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_readme_layout_names_every_package_and_top_level_module() -> None:
    layout = (REPO / "README.md").read_text().split("## Layout", 1)[1]
    packages = [p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    assert packages, SRC
    for name in packages:
        assert f"{name}/" in layout, name
    for path in SRC.glob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            assert path.name in layout, path.name


def test_pyproject_lists_every_package() -> None:
    """setuptools installs only the listed packages: a missing one imports in the source tree and fails installed."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for init in SRC.rglob("__init__.py"):
        package = ".".join(("lmtune", *init.parent.relative_to(SRC).parts))
        assert package in listed, package
