"""No function in ``cyborgs/`` is longer than ``LIMIT`` lines (docstring and comments included):
long functions mix an algorithm with its plumbing. Config key declarations are exempt: one
commented line per key reads best as one list."""

from __future__ import annotations

import ast
from pathlib import Path

LIMIT = 100
PACKAGE = Path(__file__).resolve().parents[1] / "cyborgs"

# (file relative to cyborgs/, function) -> why it may be longer
ALLOWED = {
    ("config/defaults.py", "add_cyborgs_config"): "config key declarations",
}
# Long today and being split; the test fails once one of them is short, so that its entry is
# removed.
PENDING: set[tuple[str, str]] = set()


def long_functions(root: Path, limit: int) -> dict[tuple[str, str], int]:
    """``{(file, qualified name): lines}`` of every function (methods and nested functions
    too) in ``root``'s Python files with more than ``limit`` lines."""
    found: dict[tuple[str, str], int] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = prefix + child.name
                    if not isinstance(child, ast.ClassDef):
                        start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                        n = child.end_lineno - start + 1
                        if n > limit:
                            found[(rel, name)] = n  # noqa: B023 - used at once
                    visit(child, name + ".")
                else:
                    visit(child, prefix)

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), "")
    return found


def test_no_function_in_the_package_is_too_long() -> None:
    found = long_functions(PACKAGE, LIMIT)
    too_long = {k: n for k, n in found.items() if k not in ALLOWED and k not in PENDING}
    assert not too_long, (
        f"functions over {LIMIT} lines (split the algorithm from its plumbing): "
        + ", ".join(f"cyborgs/{f}:{name} ({n})" for (f, name), n in sorted(too_long.items()))
    )
    done = sorted(PENDING - set(found))
    assert not done, f"no longer long, remove from PENDING: {done}"


def test_the_check_finds_a_long_function_and_counts_its_lines(tmp_path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(
        f"class C:\n    @staticmethod\n    def long():\n{'    ' + body.replace(chr(10), chr(10) + '    ')}\n"
        f"def short():\n    return 1\n"
    )
    # decorator + def + LIMIT body lines
    assert long_functions(tmp_path, LIMIT) == {("m.py", "C.long"): LIMIT + 2}
    assert long_functions(tmp_path, LIMIT + 2) == {}
