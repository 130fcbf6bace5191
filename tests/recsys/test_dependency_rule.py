"""The library in recsys/ never imports pyspark or grpc (DESIGN.md's dependency rule)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("pyspark", "grpc", "redis", "spark_jobs", "serving")
# cli.py may launch Spark stages, but only lazily inside functions.
LAZY_ALLOWED = {"recsys/cli.py"}


def _imports(tree: ast.AST, top_level_only: bool) -> list[tuple[int, str]]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))  # type: ignore[attr-defined]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "recsys").rglob("*.py"))
)
def test_library_module_never_imports_spark_or_grpc(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    lazy = path in LAZY_ALLOWED
    bad = [
        f"{path}:{line}: imports {mod}"
        for line, mod in _imports(tree, top_level_only=lazy)
        if mod.split(".")[0] in FORBIDDEN
    ]
    assert not bad, "\n".join(bad)
