"""The one `Definitions` loads, validates with `dg check defs`, and follows the layout's rules."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]
LIBRARY_DIRS = ("ingestion", "ml", "expectations")


def test_definitions_load_and_resolve() -> None:
    from orchestration.definitions import defs

    assert isinstance(defs, dg.Definitions)
    repo = defs.get_repository_def()  # resolves every asset, check, job, schedule and sensor
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert "silver/ref__zones" in keys


def test_dg_check_defs_passes() -> None:
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        [str(venv / "bin" / "dg"), "check", "defs"],
        cwd=REPO,
        env={**os.environ, "VIRTUAL_ENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_library_code_has_no_dagster_import() -> None:
    offenders = []
    for folder in LIBRARY_DIRS:
        for path in (REPO / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(name == "dagster" or name.startswith(("dagster.", "dagster_")) for name in names):
                    offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"library code must not import Dagster: {sorted(set(offenders))}"


def test_no_private_dagster_imports() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("orchestration", "assets", "serving_api")
        for path in (REPO / folder).rglob("*.py")
        if "dagster._" in path.read_text()
    ]
    assert not offenders, offenders
