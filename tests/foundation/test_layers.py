"""The layers only point down: the import-linter contracts in pyproject.toml hold, and no package reaches a
higher layer through a module name in a string (`importlib.import_module("...")`, `python -m ...`), which
the import graph cannot see."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Top to bottom; packages on one line are siblings.
LAYERS = [
    {"app"},
    {"serving_api", "orchestration"},
    {"assets"},
    {"ingestion", "ml", "expectations"},
    {"infra"},
]
MODULE_NAME = re.compile(r"^([a-z_]+)(\.[a-z_][a-z0-9_]*)+(:[A-Za-z_]\w*)?$")


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (they may name any module)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _named_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and MODULE_NAME.match(node.value)
    ]


def test_no_package_names_a_higher_layer_in_a_string() -> None:
    offenders = []
    for depth, packages in enumerate(LAYERS):
        for package in packages:
            forbidden = set().union(*LAYERS[: depth + 1]) - {package}
            for path in sorted((REPO / package).rglob("*.py")):
                for line, name in _named_modules(path):
                    if name.split(".", 1)[0] in forbidden:
                        offenders.append(f"{path.relative_to(REPO)}:{line} names {name!r}")
    assert not offenders, "a lower layer names a module above it (or a sibling):\n" + "\n".join(offenders)
