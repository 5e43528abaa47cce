"""The package's shape: its packages import in one direction (imports inside functions included),
and the README's layout names every package and shows that direction."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

SRC = REPO / "src" / "lmtune"

# Lowest first: a module may import from its own layer and the layers before it, never from a later one.
# Top-level modules are layers of their own (``errors``, ``run_dir``, ...); ``recipes`` is lmtune.recipes.
LAYERS: list[set[str]] = [
    {"errors", "files"},
    {"dtypes", "precision", "resources", "fairseq2_internals", "launch", "run_dir", "safe_load"},
    {"score"},
    {"options"},
    {"catalog"},
    {"models"},
    {"adapters"},
    {"data"},
    {"preference"},
    {"generate"},
    {"training"},
    {"recipes"},
    {"export"},
    {"report"},
    {"runs"},
    {"sweep"},
    {"commands"},
    {"cli", "__main__"},
]


def _unit(module: str) -> str | None:
    """lmtune.models.loading -> models; lmtune.errors -> errors; lmtune (its version) -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "lmtune" and len(parts) > 1 else None


def _sources() -> dict[Path, str]:
    units = {p: p.relative_to(SRC).with_suffix("").parts[0] for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC}
    units.update({p: "recipes" for p in (REPO / "recipes").glob("*.py")})
    return units


def _imports(path: Path) -> set[str]:
    """Every lmtune module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] == "lmtune"}


def test_every_package_and_top_level_module_has_a_layer() -> None:
    layered = set().union(*LAYERS)
    assert set(_sources().values()) - layered == set()


def test_packages_import_only_from_lower_layers() -> None:
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    upward = []
    for path, unit in sorted(_sources().items()):
        for module in sorted(_imports(path)):
            target = _unit(module)
            if target is not None and target != unit and layer[target] > layer[unit]:
                upward.append(f"{path.relative_to(REPO)} ({unit}) imports {module} ({target})")
    assert upward == []


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from lmtune.runs.finetune import run_instruction_finetune\n")
    assert _imports(module) == {"lmtune.runs.finetune"}


def test_readme_layout_names_every_package_and_top_level_module_in_layer_order() -> None:
    layout = (REPO / "README.md").read_text().split("## Layout", 1)[1]
    packages = [p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    assert packages, SRC
    for name in packages:
        assert f"{name}/" in layout, name
    for path in SRC.glob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            assert path.name in layout, path.name
    # The import-direction line lists the packages highest first, LAYERS reversed.
    direction = next(line for line in layout.splitlines() if line.startswith("Imports point down:"))
    positions = [direction.index(f"`{p}/`") for names in LAYERS for p in sorted(names) if (SRC / p).is_dir()]
    assert positions == sorted(positions, reverse=True), direction


def test_pyproject_lists_every_package() -> None:
    """setuptools installs only the listed packages: a missing one imports in the source tree and fails installed."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for init in SRC.rglob("__init__.py"):
        package = ".".join(("lmtune", *init.parent.relative_to(SRC).parts))
        assert package in listed, package
