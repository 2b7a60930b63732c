"""Imports inside ``cyborgs/`` only point down the layers of docs/DESIGN.md ("Layers").

Every import is parsed, at module level and inside functions, relative and absolute,
``import x.y`` and ``from x import y``; an import of a higher layer, of another package of the
same layer, or of a package that has no layer fails, naming ``file:line``. ``cyborgs/__init__.py``
(which registers everything) may import every layer.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cyborgs"

# Bottom -> top. Packages on one line are peers: neither imports the other. ``config_io`` is part
# of the config layer's unit ``config``.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils",),
    ("config",),
    ("solver", "clustering"),
    ("data",),
    ("masks",),
    ("pretrain_data",),
    ("modeling",),
    ("bootstrap",),
    ("engine",),
    ("transfer",),
)
UNITS = {"config_io": "config"}


def _rank(unit: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if unit in names:
            return i
    return None


def _unit(module: str) -> str | None:
    """``cyborgs.data.image_io`` -> ``data``; None for the package root ``cyborgs``."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return UNITS.get(parts[1], parts[1])


def _module_of(path: Path, root: Path) -> tuple[str, bool]:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of ``root``'s package in ``path`` (relative imports
    resolved; ``from pkg import name`` counts as ``pkg.name``)."""
    module, is_pkg = _module_of(path, root)
    package = module if is_pkg else module.rpartition(".")[0]
    top = root.name
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*"]
            if any(a.name == "*" for a in node.names):
                out.append((node.lineno, target))
    return [(line, m) for line, m in out if m == top or m.startswith(top + ".")]


def upward_imports(root: Path) -> list[str]:
    """One line per import in ``root`` (a package directory) that breaks the layer order."""
    problems: list[str] = []
    unplaced: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        module, _ = _module_of(path, root)
        here = _unit(module)
        if here is None:  # the package root registers everything
            continue
        where = path.relative_to(root.parent)
        if _rank(here) is None:
            if here not in unplaced:
                unplaced.add(here)
                problems.append(f"{root.name}/{here}: {here!r} has no layer (add it to LAYERS)")
            continue
        for line, target in imported_modules(path, root):
            there = _unit(target)
            if there == here:
                continue
            if there is None:
                problems.append(f"{where}:{line}: imports the package root {target!r}")
            elif _rank(there) is None:
                problems.append(f"{where}:{line}: imports {target} ({there!r} has no layer)")
            elif _rank(there) >= _rank(here):
                kind = "a peer" if _rank(there) == _rank(here) else "a higher layer"
                problems.append(f"{where}:{line}: {here} imports {target} ({kind}: {there})")
    return problems


def test_cyborgs_imports_only_point_down() -> None:
    problems = upward_imports(ROOT)
    assert not problems, "imports against the layer order (docs/DESIGN.md, Layers):\n" + "\n".join(
        problems
    )


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    placed = {n for names in LAYERS for n in names} | set(UNITS)
    assert packages | modules <= placed, sorted((packages | modules) - placed)


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "cyborgs"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


def test_a_downward_tree_passes(tmp_path) -> None:
    root = _plant(
        tmp_path,
        {
            "data/reader.py": "from cyborgs.config import get_key\nfrom ..utils import atomic\n",
            "modeling/model.py": "import cyborgs.masks.store\nfrom .heads import MLP\n",
            "config/checks.py": "from .defaults import X\nfrom cyborgs.config_io import load\n",
        },
    )
    assert upward_imports(root) == []


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        # module level, absolute ``from``
        ("config/checks.py", "from cyborgs.modeling.precision import parse_switch\n",
         "cyborgs/config/checks.py:1: config imports cyborgs.modeling.precision.parse_switch"),
        # inside a function, relative with two dots
        ("data/augment.py", "def f():\n    x = 1\n    from ..masks import cell_grid\n",
         "cyborgs/data/augment.py:3: data imports cyborgs.masks.cell_grid (a higher layer"),
        # ``import x.y``
        ("bootstrap/hook.py", "import cyborgs.engine.hooks\n",
         "cyborgs/bootstrap/hook.py:1: bootstrap imports cyborgs.engine.hooks"),
        # ``from package import module``
        ("data/datasets.py", "from cyborgs import masks\n",
         "cyborgs/data/datasets.py:1: data imports cyborgs.masks"),
        # peers of one layer
        ("solver/lars.py", "from cyborgs.clustering import kmeans\n",
         "cyborgs/solver/lars.py:1: solver imports cyborgs.clustering.kmeans (a peer"),
        # relative import from a package's __init__ (one dot = the package itself)
        ("utils/__init__.py", "from .. import config\n",
         "cyborgs/utils/__init__.py:1: utils imports cyborgs.config"),
        # a package without a layer
        ("extras/thing.py", "x = 1\n", "cyborgs/extras: 'extras' has no layer"),
    ],
)  # fmt: skip
def test_a_planted_upward_import_fails_naming_file_and_line(tmp_path, name, source, expected):
    root = _plant(tmp_path, {"data/ok.py": "from cyborgs.utils import atomic\n", name: source})
    problems = upward_imports(root)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_the_package_root_may_import_everything(tmp_path) -> None:
    root = _plant(tmp_path, {"transfer/x.py": "y = 1\n"})
    (root / "__init__.py").write_text("from cyborgs import transfer\nfrom .transfer import x\n")
    assert upward_imports(root) == []
